/* otamq_rx.c - see otamq_rx.h. */
#include "otamq_rx.h"

#include <string.h>

otamq_rx_result_t otamq_rx_first(otamq_rx_buf_t *buf, const char *topic, int topic_len,
                                 const char *data, int data_len, int total_len)
{
    if (topic == NULL || topic_len <= 0 || topic_len >= OTAMQ_RX_TOPIC_MAX || data_len < 0 ||
        total_len < data_len || (size_t)total_len > buf->cap || (data == NULL && data_len > 0))
        return OTAMQ_RX_DROP;
    memcpy(buf->topic, topic, (size_t)topic_len);
    buf->topic[topic_len] = '\0';
    buf->len = (size_t)total_len;
    buf->filled = 0;
    return otamq_rx_next(buf, data, data_len, 0, total_len);
}

otamq_rx_result_t otamq_rx_next(otamq_rx_buf_t *buf, const char *data, int data_len, int offset,
                                int total_len)
{
    if (data_len < 0 || offset < 0 || (size_t)total_len != buf->len ||
        (size_t)offset != buf->filled || (size_t)data_len > buf->len - buf->filled ||
        (data == NULL && data_len > 0))
        return OTAMQ_RX_DROP;
    if (data_len > 0)
        memcpy(buf->data + offset, data, (size_t)data_len);
    buf->filled += (size_t)data_len;
    return buf->filled == buf->len ? OTAMQ_RX_COMPLETE : OTAMQ_RX_MORE;
}

/* otamq_rx.h - reassembly of esp-mqtt's fragmented MQTT_EVENT_DATA (private
 * to the ESP-IDF port; plain C so the host tests exercise it).
 *
 * esp-mqtt hands a payload larger than its buffer over as several data
 * events: each has current_data_offset, data_len and total_data_len, and only
 * the first (offset 0) carries the topic. Fragments arrive in order. */
#ifndef OTAMQ_ESP_RX_H
#define OTAMQ_ESP_RX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define OTAMQ_RX_TOPIC_MAX 128

typedef struct otamq_rx_buf {
    char topic[OTAMQ_RX_TOPIC_MAX];
    uint8_t *data;  /* capacity cap, owned by the caller */
    size_t cap;
    size_t len;     /* total payload length */
    size_t filled;  /* bytes received so far */
} otamq_rx_buf_t;

typedef enum otamq_rx_result {
    OTAMQ_RX_MORE = 0,     /* fragment stored, message not complete yet */
    OTAMQ_RX_COMPLETE = 1, /* buf holds the whole message */
    OTAMQ_RX_DROP = -1     /* fragment refused; the message is lost */
} otamq_rx_result_t;

/* Starts a message from its first fragment (offset 0) in buf. Refuses a
 * topic that does not fit, a payload larger than buf->cap, or a first
 * fragment that is not at offset 0. */
otamq_rx_result_t otamq_rx_first(otamq_rx_buf_t *buf, const char *topic, int topic_len,
                                 const char *data, int data_len, int total_len);

/* Adds a following fragment; it must continue exactly where the previous
 * one ended and stay within the announced total. */
otamq_rx_result_t otamq_rx_next(otamq_rx_buf_t *buf, const char *data, int data_len, int offset,
                                int total_len);

#endif

/* test_esp_rx.c - the ESP-IDF port's reassembly of fragmented
 * MQTT_EVENT_DATA (esp-mqtt: only the first fragment has the topic). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "otamq_rx.h"

static uint8_t store[64];
static otamq_rx_buf_t buf;

static int setup(void **state)
{
    (void)state;
    memset(&buf, 0, sizeof(buf));
    memset(store, 0, sizeof(store));
    buf.data = store;
    buf.cap = sizeof(store);
    return 0;
}

static void test_single_fragment(void **state)
{
    (void)state;
    assert_int_equal(otamq_rx_first(&buf, "dm/d/cmd", 8, "abc", 3, 3), OTAMQ_RX_COMPLETE);
    assert_string_equal(buf.topic, "dm/d/cmd");
    assert_int_equal(buf.len, 3);
    assert_memory_equal(store, "abc", 3);
}

static void test_three_fragments(void **state)
{
    const char *msg = "0123456789abcdefghij";
    (void)state;
    assert_int_equal(otamq_rx_first(&buf, "dm/d/ota/blk!", 12, msg, 8, 20), OTAMQ_RX_MORE);
    assert_string_equal(buf.topic, "dm/d/ota/blk");
    /* later fragments have no topic */
    assert_int_equal(otamq_rx_next(&buf, msg + 8, 8, 8, 20), OTAMQ_RX_MORE);
    assert_int_equal(otamq_rx_next(&buf, msg + 16, 4, 16, 20), OTAMQ_RX_COMPLETE);
    assert_memory_equal(store, msg, 20);
}

static void test_refusals(void **state)
{
    (void)state;
    /* larger than the buffer (the broker ignored Maximum Packet Size) */
    assert_int_equal(otamq_rx_first(&buf, "t", 1, "x", 1, 65), OTAMQ_RX_DROP);
    /* no topic */
    assert_int_equal(otamq_rx_first(&buf, NULL, 0, "x", 1, 1), OTAMQ_RX_DROP);
    /* topic too long */
    {
        char t[OTAMQ_RX_TOPIC_MAX + 1];
        memset(t, 'a', sizeof(t));
        assert_int_equal(otamq_rx_first(&buf, t, (int)sizeof(t), "x", 1, 1), OTAMQ_RX_DROP);
    }
    /* a gap, an overlap, a changed total, an overrun */
    assert_int_equal(otamq_rx_first(&buf, "t", 1, "abcd", 4, 10), OTAMQ_RX_MORE);
    assert_int_equal(otamq_rx_next(&buf, "ef", 2, 5, 10), OTAMQ_RX_DROP);
    assert_int_equal(otamq_rx_next(&buf, "ef", 2, 3, 10), OTAMQ_RX_DROP);
    assert_int_equal(otamq_rx_next(&buf, "ef", 2, 4, 11), OTAMQ_RX_DROP);
    assert_int_equal(otamq_rx_next(&buf, "efghijk", 7, 4, 10), OTAMQ_RX_DROP);
    assert_int_equal(otamq_rx_next(&buf, "efghij", 6, 4, 10), OTAMQ_RX_COMPLETE);
    assert_memory_equal(store, "abcdefghij", 10);
    /* negative lengths from a corrupt event */
    assert_int_equal(otamq_rx_first(&buf, "t", 1, "x", -1, 1), OTAMQ_RX_DROP);
    /* an empty payload is a complete message */
    assert_int_equal(otamq_rx_first(&buf, "t", 1, NULL, 0, 0), OTAMQ_RX_COMPLETE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_single_fragment, setup),
        cmocka_unit_test_setup(test_three_fragments, setup),
        cmocka_unit_test_setup(test_refusals, setup),
    };
    return cmocka_run_group_tests_name("esp_rx", tests, NULL, NULL);
}

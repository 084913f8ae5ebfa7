/* test_esp_rx.c - the ESP-IDF port's host-testable parts: reassembly of
 * fragmented MQTT_EVENT_DATA (esp-mqtt: only the first fragment has the
 * topic) and the mapping of ESP-IDF's reset reasons. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "otamq/ota_port.h"
#include "otamq_reset.h"
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

/* Every reset reason of ESP-IDF 5.3 to 6.0 (esp_system.h) counts toward
 * the trigger it belongs to (otamq_reset.h), and has its name. */
static void test_reset_reasons(void **state)
{
    static const struct {
        esp_reset_reason_t r;
        uint8_t boot;
        const char *name;
    } want[] = {
        {ESP_RST_UNKNOWN, OTA_BOOT_PANIC, "UNKNOWN"},
        {ESP_RST_POWERON, OTA_BOOT_POWER_ON, "POWERON"},
        {ESP_RST_EXT, OTA_BOOT_POWER_ON, "EXT"},
        {ESP_RST_SW, OTA_BOOT_SOFTWARE, "SW"},
        {ESP_RST_PANIC, OTA_BOOT_PANIC, "PANIC"},
        {ESP_RST_INT_WDT, OTA_BOOT_WATCHDOG, "INT_WDT"},
        {ESP_RST_TASK_WDT, OTA_BOOT_WATCHDOG, "TASK_WDT"},
        {ESP_RST_WDT, OTA_BOOT_WATCHDOG, "WDT"},
        {ESP_RST_DEEPSLEEP, OTA_BOOT_SOFTWARE, "DEEPSLEEP"},
        {ESP_RST_BROWNOUT, OTA_BOOT_BROWNOUT, "BROWNOUT"},
        {ESP_RST_SDIO, OTA_BOOT_POWER_ON, "SDIO"},
        {ESP_RST_USB, OTA_BOOT_POWER_ON, "USB"},
        {ESP_RST_JTAG, OTA_BOOT_POWER_ON, "JTAG"},
        {ESP_RST_EFUSE, OTA_BOOT_PANIC, "EFUSE"},
        {ESP_RST_PWR_GLITCH, OTA_BOOT_BROWNOUT, "PWR_GLITCH"},
        {ESP_RST_CPU_LOCKUP, OTA_BOOT_PANIC, "CPU_LOCKUP"},
    };
    size_t i;
    (void)state;
    for (i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        assert_int_equal(want[i].r, (esp_reset_reason_t)i); /* every value, in order */
        assert_int_equal(otamq_boot_reason(want[i].r), want[i].boot);
        assert_string_equal(otamq_reset_name(want[i].r), want[i].name);
    }
    /* a reason a later ESP-IDF adds is blamed on the image, and named "?" */
    assert_int_equal(otamq_boot_reason((esp_reset_reason_t)(ESP_RST_CPU_LOCKUP + 1)),
                     OTA_BOOT_PANIC);
    assert_string_equal(otamq_reset_name((esp_reset_reason_t)(ESP_RST_CPU_LOCKUP + 1)), "?");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reset_reasons),
        cmocka_unit_test_setup(test_single_fragment, setup),
        cmocka_unit_test_setup(test_three_fragments, setup),
        cmocka_unit_test_setup(test_refusals, setup),
    };
    return cmocka_run_group_tests_name("esp_rx", tests, NULL, NULL);
}

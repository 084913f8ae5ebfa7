/* otamq_reset.c - see otamq_reset.h. */
#include "otamq_reset.h"

#include "otamq/ota_port.h"

/* By esp_reset_reason_t value (ESP-IDF 5.3 to 6.0 define these 16). */
static const struct {
    uint8_t boot;
    const char *name;
} reasons[] = {
    [ESP_RST_UNKNOWN] = {OTA_BOOT_PANIC, "UNKNOWN"},
    [ESP_RST_POWERON] = {OTA_BOOT_POWER_ON, "POWERON"},
    [ESP_RST_EXT] = {OTA_BOOT_POWER_ON, "EXT"},
    [ESP_RST_SW] = {OTA_BOOT_SOFTWARE, "SW"},
    [ESP_RST_PANIC] = {OTA_BOOT_PANIC, "PANIC"},
    [ESP_RST_INT_WDT] = {OTA_BOOT_WATCHDOG, "INT_WDT"},
    [ESP_RST_TASK_WDT] = {OTA_BOOT_WATCHDOG, "TASK_WDT"},
    [ESP_RST_WDT] = {OTA_BOOT_WATCHDOG, "WDT"},
    [ESP_RST_DEEPSLEEP] = {OTA_BOOT_SOFTWARE, "DEEPSLEEP"},
    [ESP_RST_BROWNOUT] = {OTA_BOOT_BROWNOUT, "BROWNOUT"},
    [ESP_RST_SDIO] = {OTA_BOOT_POWER_ON, "SDIO"},
    [ESP_RST_USB] = {OTA_BOOT_POWER_ON, "USB"},
    [ESP_RST_JTAG] = {OTA_BOOT_POWER_ON, "JTAG"},
    [ESP_RST_EFUSE] = {OTA_BOOT_PANIC, "EFUSE"},
    [ESP_RST_PWR_GLITCH] = {OTA_BOOT_BROWNOUT, "PWR_GLITCH"},
    [ESP_RST_CPU_LOCKUP] = {OTA_BOOT_PANIC, "CPU_LOCKUP"},
};

uint8_t otamq_boot_reason(esp_reset_reason_t r)
{
    /* a reason a later ESP-IDF adds: a reset the image did not ask for */
    return (unsigned)r < sizeof(reasons) / sizeof(reasons[0]) ? reasons[r].boot
                                                                : (uint8_t)OTA_BOOT_PANIC;
}

const char *otamq_reset_name(esp_reset_reason_t r)
{
    return (unsigned)r < sizeof(reasons) / sizeof(reasons[0]) ? reasons[r].name : "?";
}

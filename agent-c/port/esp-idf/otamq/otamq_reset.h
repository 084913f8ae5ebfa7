/* otamq_reset.h - ESP-IDF's reset reasons as the agent counts them (private
 * to the ESP-IDF port; plain C so the host tests check every one). */
#ifndef OTAMQ_ESP_RESET_H
#define OTAMQ_ESP_RESET_H

#include <stdint.h>

#include "esp_system.h"

/* The boot reason (ota_boot_reason_t) the agent gets for an ESP-IDF reset
 * reason, and so the trigger it counts toward (every boot counts toward the
 * reboot trigger):
 *   watchdogs (INT_WDT, TASK_WDT, WDT)            -> OTA_BOOT_WATCHDOG: also
 *                                                    the watchdog trigger
 *   faults of the running image (PANIC,
 *   CPU_LOCKUP, EFUSE, UNKNOWN)                   -> OTA_BOOT_PANIC: an
 *                                                    unconfirmed image that
 *                                                    reset this way is blamed
 *   its own restarts (SW, DEEPSLEEP)              -> OTA_BOOT_SOFTWARE
 *   power (BROWNOUT, PWR_GLITCH)                  -> OTA_BOOT_BROWNOUT
 *   from outside (POWERON, EXT pin, SDIO host,
 *   USB host, JTAG debugger)                      -> OTA_BOOT_POWER_ON
 * The last two are not the image's fault: an unconfirmed image reverted
 * after them may be tried again. */
uint8_t otamq_boot_reason(esp_reset_reason_t r);

/* The name of a reset reason for the log ("CPU_LOCKUP"), "?" if unknown. */
const char *otamq_reset_name(esp_reset_reason_t r);

#endif

/* shim: esp_efuse.h (subset) */
#ifndef SHIM_ESP_EFUSE_H
#define SHIM_ESP_EFUSE_H
#include <stdint.h>
uint32_t esp_efuse_read_secure_version(void);
#endif

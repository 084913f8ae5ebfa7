/* shim: nvs_flash.h (subset) */
#ifndef SHIM_NVS_FLASH_H
#define SHIM_NVS_FLASH_H
#include "esp_err.h"
#define ESP_ERR_NVS_NO_FREE_PAGES (0x1100 + 0x0d)
#define ESP_ERR_NVS_NEW_VERSION_FOUND (0x1100 + 0x10)
esp_err_t nvs_flash_init(void);
esp_err_t nvs_flash_erase(void);
#endif

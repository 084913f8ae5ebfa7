/* shim: esp_netif.h (subset) */
#ifndef SHIM_ESP_NETIF_H
#define SHIM_ESP_NETIF_H
#include "esp_err.h"
esp_err_t esp_netif_init(void);
#endif

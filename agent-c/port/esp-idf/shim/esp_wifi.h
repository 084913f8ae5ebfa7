/* shim: esp_wifi.h (subset; wifi_ap_record_t reduced to the member used) */
#ifndef SHIM_ESP_WIFI_H
#define SHIM_ESP_WIFI_H
#include <stdint.h>
#include "esp_err.h"
typedef struct {
    uint8_t bssid[6];
    uint8_t ssid[33];
    uint8_t primary;
    int second;
    int8_t rssi;
} wifi_ap_record_t;
esp_err_t esp_wifi_sta_get_ap_info(wifi_ap_record_t *ap_info);
#endif

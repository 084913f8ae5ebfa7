/* main.c - otamq example: connects to the network and starts the agent.
 * Fill in the broker, device ID, token and the fleet's release key(s);
 * see ../README.md. */
#include <stdint.h>
#include <string.h>

#include "esp_event.h"
#include "esp_log.h"
#include "esp_netif.h"
#include "nvs_flash.h"
#include "otamq_esp.h"
#include "protocol_examples_common.h"

/* The release key, as printed by `otactl keygen` (uncompressed P-256 point,
 * 0x04 || X || Y). Replace with your fleet's key. */
static const uint8_t release_keys[1][65] = {{0x04}};

/* The application's own health: return both bits when it works. Here:
 * always fine. A real application checks its sensors, peripherals, ... */
static uint8_t app_health(void *arg)
{
    (void)arg;
    return (uint8_t)(OTA_HEALTH_APP | OTA_HEALTH_RESOURCES);
}

void app_main(void)
{
    otamq_esp_config_t cfg;
    esp_err_t err = nvs_flash_init();
    if (err == ESP_ERR_NVS_NO_FREE_PAGES || err == ESP_ERR_NVS_NEW_VERSION_FOUND) {
        (void)nvs_flash_erase();
        err = nvs_flash_init();
    }
    if (err != ESP_OK || esp_netif_init() != ESP_OK || esp_event_loop_create_default() != ESP_OK ||
        example_connect() != ESP_OK) {
        ESP_LOGE("app", "network setup failed");
        return;
    }
    memset(&cfg, 0, sizeof(cfg));
    cfg.broker_uri = "mqtt://otamq.local:1883";
    cfg.device_id = "esp32-0001";
    cfg.token = "device-token";
    cfg.hardware = "esp32-v2";
    cfg.bootloader_version = "2.1.0";
    cfg.keys = release_keys;
    cfg.nkeys = 1;
    cfg.app_health = app_health;
    if (otamq_esp_start(&cfg) != ESP_OK)
        ESP_LOGE("app", "otamq agent not started");
}

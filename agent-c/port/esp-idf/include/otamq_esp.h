/*
 * otamq_esp.h - the otamq agent on ESP-IDF.
 *
 * otamq_esp_start() creates one FreeRTOS task that owns the agent: it
 * receives complete MQTT messages (esp-mqtt's fragments are reassembled into
 * the port's block buffers first), connection changes, and calls the
 * agent's tick every OTAMQ tick period. Slots are the two OTA app
 * partitions (esp_ota_ops with CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE), state
 * lives in NVS namespace "otamq", crypto is PSA (mbedTLS).
 *
 * Call it after nvs_flash_init(), esp_netif_init(), the default event loop
 * and the network are up; psa_crypto_init() is called by the port.
 */
#ifndef OTAMQ_ESP_H
#define OTAMQ_ESP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "esp_err.h"
#include "otamq/ota_agent.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct otamq_esp_config {
    const char *broker_uri;          /* "mqtts://broker.example:8883" */
    const char *ca_pem;              /* broker CA for mqtts (NULL: none) */
    const char *device_id;           /* client ID and username */
    const char *token;               /* password */
    const char *hardware;            /* e.g. "esp32-v2" */
    const char *bootloader_version;  /* semver of the second-stage bootloader */
    const uint8_t (*keys)[65];       /* trusted manifest keys (0x04||X||Y) */
    size_t nkeys;
    bool mqtt_v311;                  /* MQTT 3.1.1 instead of 5 */
    int32_t utc_offset_min;
    /* The application's health check: returns OTA_HEALTH_APP |
     * OTA_HEALTH_RESOURCES when fine. Called from the agent task; keep it
     * short. NULL: always healthy. */
    uint8_t (*app_health)(void *arg);
    void *app_arg;
    ota_settings_t settings;         /* zero = Kconfig defaults */
} otamq_esp_config_t;

/* Starts the agent task. The configuration is copied; its strings and keys
 * must stay valid. ESP_OK, ESP_ERR_INVALID_ARG, ESP_ERR_NO_MEM, ESP_FAIL. */
esp_err_t otamq_esp_start(const otamq_esp_config_t *cfg);

#ifdef __cplusplus
}
#endif
#endif /* OTAMQ_ESP_H */

/*
 * otamq_esp.h - the otamq agent on ESP-IDF.
 *
 * otamq_esp_start() creates one FreeRTOS task that owns the agent: it
 * receives complete MQTT messages (esp-mqtt's fragments are reassembled into
 * the port's receive buffers first), connection changes and PUBACKs, and
 * calls the agent's tick every CONFIG_OTAMQ_TICK_MS. Firmware slots are the
 * two OTA app partitions (esp_ota_ops with CONFIG_BOOTLOADER_APP_ROLLBACK_
 * ENABLE), configurations and feature flags live in the data partition
 * labelled "otamq_cfg" (when the partition table has one), the agent's state
 * in NVS namespace "otamq", crypto is PSA (mbedTLS).
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
    const char *token;               /* password; NULL with a client certificate */
    /* Client certificate from the fleet CA (Subject CN = device_id) and its
     * private key, PEM, NUL-terminated, for mqtts://: the broker then needs
     * no token. NULL: none. */
    const char *client_cert_pem;
    const char *client_key_pem;
    const char *hardware;            /* e.g. "esp32-v2" */
    const char *bootloader_version;  /* semver of the second-stage bootloader */
    const uint8_t (*keys)[65];       /* trusted manifest keys (0x04||X||Y) */
    size_t nkeys;
    bool mqtt_v311;                  /* MQTT 3.1.1 instead of 5 (always 3.1.1
                                        without CONFIG_MQTT_PROTOCOL_5) */
    int32_t utc_offset_min;
    /* The application's health check: returns OTA_HEALTH_APP |
     * OTA_HEALTH_RESOURCES when fine. Called from the agent task; keep it
     * short. NULL: always healthy. */
    uint8_t (*app_health)(void *arg);
    /* A configuration (kind OTA_KIND_CONFIG) or the feature flags
     * (OTA_KIND_FLAGS) in use changed: read it with otamq_esp_config_read.
     * Called from the agent task after an update's swap and after a
     * rollback. NULL: not told. */
    void (*config_changed)(uint8_t kind, void *arg);
    /* Asked before a new configuration of kind is put in use: true to have
     * the device restart for it (it is then in use from the next start)
     * instead of using it at once. NULL: never. */
    bool (*config_needs_restart)(uint8_t kind, void *arg);
    void *app_arg;                   /* passed to the three hooks above */
    ota_settings_t settings;         /* zero = Kconfig defaults */
} otamq_esp_config_t;

/* Starts the agent task. The configuration is copied; its strings and keys
 * must stay valid. ESP_OK, ESP_ERR_INVALID_ARG, ESP_ERR_NO_MEM, ESP_FAIL. */
esp_err_t otamq_esp_start(const otamq_esp_config_t *cfg);

/* Reads the configuration (OTA_KIND_CONFIG) or feature flags
 * (OTA_KIND_FLAGS) in use into buf (capacity cap) and sets *len. After
 * otamq_esp_start (which puts back the previous one if the last update of
 * that kind was not confirmed before a reset). ESP_OK; ESP_ERR_NOT_FOUND
 * when there is none (use built-in defaults); ESP_ERR_INVALID_SIZE when it
 * is larger than cap; ESP_ERR_INVALID_STATE before otamq_esp_start or
 * without an "otamq_cfg" partition. Safe to call from any task. */
esp_err_t otamq_esp_config_read(uint8_t kind, void *buf, size_t cap, size_t *len);

#ifdef __cplusplus
}
#endif
#endif /* OTAMQ_ESP_H */

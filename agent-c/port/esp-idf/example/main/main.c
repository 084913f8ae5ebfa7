/* main.c - otamq example: connects to the network and starts the agent.
 * Fill in the device ID, the hardware string and the fleet's release
 * key(s); credentials come from NVS or from files built in; see
 * ../README.md. */
#include <stdint.h>
#include <string.h>

#include "esp_event.h"
#include "esp_log.h"
#include "esp_netif.h"
#include "nvs.h"
#include "nvs_flash.h"
#include "otamq_esp.h"
#include "protocol_examples_common.h"

static const char *TAG = "app";

/* The release key, as printed by `otactl keygen` (uncompressed P-256 point,
 * 0x04 || X || Y). Replace with your fleet's key. */
static const uint8_t release_keys[1][65] = {{0x04}};

#if CONFIG_EXAMPLE_EMBED_CLIENT_CERT
extern const char client_crt[] __asm__("_binary_client_crt_start");
extern const char client_key[] __asm__("_binary_client_key_start");
#endif

/* Credentials provisioned into NVS (namespace "otamq_id"), kept for the
 * life of the agent. */
static char nvs_token[128], nvs_ca[2048], nvs_cert[2048], nvs_key[2048];

static const char *nvs_secret(nvs_handle_t h, const char *key, char *buf, size_t cap)
{
    size_t n = cap;
    return nvs_get_str(h, key, buf, &n) == ESP_OK && n > 1u ? buf : NULL;
}

/* The application's own health: return both bits when it works. Here:
 * always fine. A real application checks its sensors, peripherals, and
 * whether its configuration works (the agent rolls a bad one back). */
static uint8_t app_health(void *arg)
{
    (void)arg;
    return (uint8_t)(OTA_HEALTH_APP | OTA_HEALTH_RESOURCES);
}

/* A new configuration or set of feature flags is in use (or an old one is
 * back after a rollback): read it and apply it. */
static void config_changed(uint8_t kind, void *arg)
{
    static uint8_t buf[4096];
    size_t n = 0;
    esp_err_t err = otamq_esp_config_read(kind, buf, sizeof(buf), &n);
    (void)arg;
    if (err == ESP_ERR_NOT_FOUND)
        ESP_LOGI(TAG, "%s: none, built-in defaults", kind == OTA_KIND_CONFIG ? "config" : "flags");
    else if (err == ESP_OK)
        ESP_LOGI(TAG, "%s: %u bytes in use", kind == OTA_KIND_CONFIG ? "config" : "flags",
                 (unsigned)n);
}

/* Wi-Fi settings and endpoints are taken at start; feature flags at once. */
static bool config_needs_restart(uint8_t kind, void *arg)
{
    (void)arg;
    return kind == OTA_KIND_CONFIG;
}

void app_main(void)
{
    otamq_esp_config_t cfg;
    nvs_handle_t id;
    esp_err_t err = nvs_flash_init();
    if (err == ESP_ERR_NVS_NO_FREE_PAGES || err == ESP_ERR_NVS_NEW_VERSION_FOUND) {
        (void)nvs_flash_erase();
        err = nvs_flash_init();
    }
    if (err != ESP_OK || esp_netif_init() != ESP_OK || esp_event_loop_create_default() != ESP_OK ||
        example_connect() != ESP_OK) {
        ESP_LOGE(TAG, "network setup failed");
        return;
    }
    memset(&cfg, 0, sizeof(cfg));
    cfg.broker_uri = CONFIG_EXAMPLE_BROKER_URI;
    cfg.device_id = "esp32-0001";
    if (nvs_open("otamq_id", NVS_READONLY, &id) == ESP_OK) {
        cfg.token = nvs_secret(id, "token", nvs_token, sizeof(nvs_token));
        cfg.ca_pem = nvs_secret(id, "ca", nvs_ca, sizeof(nvs_ca)); /* the broker's CA */
        cfg.client_cert_pem = nvs_secret(id, "cert", nvs_cert, sizeof(nvs_cert));
        cfg.client_key_pem = nvs_secret(id, "key", nvs_key, sizeof(nvs_key));
        nvs_close(id);
    }
#if CONFIG_EXAMPLE_EMBED_CLIENT_CERT
    if (cfg.client_cert_pem == NULL) {
        cfg.client_cert_pem = client_crt;
        cfg.client_key_pem = client_key;
    }
#endif
    if ((cfg.client_cert_pem == NULL) != (cfg.client_key_pem == NULL)) {
        ESP_LOGE(TAG, "a client certificate needs its key (and the key its certificate)");
        return;
    }
    cfg.hardware = "esp32-v2";
    cfg.bootloader_version = "2.1.0";
    cfg.keys = release_keys;
    cfg.nkeys = 1;
    cfg.app_health = app_health;
    cfg.config_changed = config_changed;
    cfg.config_needs_restart = config_needs_restart;
    if (otamq_esp_start(&cfg) != ESP_OK) {
        ESP_LOGE(TAG, "otamq agent not started");
        return;
    }
    config_changed(OTA_KIND_CONFIG, NULL); /* what is in use from the start */
    config_changed(OTA_KIND_FLAGS, NULL);
}

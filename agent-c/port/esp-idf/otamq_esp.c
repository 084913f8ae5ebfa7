/* otamq_esp.c - ESP-IDF port of the otamq agent (see otamq_esp.h). */
#include "otamq_esp.h"

#include <string.h>
#include <time.h>

#include "esp_app_desc.h"
#include "esp_log.h"
#include "esp_ota_ops.h"
#include "esp_partition.h"
#include "esp_system.h"
#include "esp_timer.h"
#include "freertos/FreeRTOS.h"
#include "freertos/queue.h"
#include "freertos/task.h"
#include "mqtt_client.h"
#include "nvs.h"
#include "otamq_rx.h"
#include "psa/crypto.h"
#if CONFIG_OTAMQ_REPORT_RSSI
#include "esp_wifi.h"
#endif

#ifndef CONFIG_OTAMQ_RX_BUFFERS
#define CONFIG_OTAMQ_RX_BUFFERS 2
#endif
#ifndef CONFIG_OTAMQ_TASK_STACK
#define CONFIG_OTAMQ_TASK_STACK 6144
#endif
#ifndef CONFIG_OTAMQ_TASK_PRIORITY
#define CONFIG_OTAMQ_TASK_PRIORITY 5
#endif
#ifndef CONFIG_OTAMQ_TICK_MS
#define CONFIG_OTAMQ_TICK_MS 200
#endif

#define RX_SIZE (OTA_CFG_BLOCK_SIZE + OTA_CFG_BLOCK_OVERHEAD)

typedef char psa_hash_fits[sizeof(psa_hash_operation_t) <= sizeof(ota_sha256_t) ? 1 : -1];

static const char *TAG = "otamq";

/* One reassembled message (or a connection change) handed to the task. */
typedef struct rx_buf {
    otamq_rx_buf_t rx;
    uint8_t data[RX_SIZE];
} rx_buf_t;

typedef struct rx_item {
    int kind; /* 1 connected, 2 disconnected, 3 message */
    rx_buf_t *buf;
} rx_item_t;

typedef struct esp_port {
    otamq_esp_config_t cfg;
    ota_port_t port;
    ota_agent_t agent;
    esp_mqtt_client_handle_t mqtt;
    QueueHandle_t ready; /* rx_item_t: to the agent task */
    QueueHandle_t free;  /* rx_buf_t *: back to the MQTT handler */
    rx_buf_t *filling;   /* message being reassembled (MQTT task only) */
    const esp_partition_t *update;
    esp_ota_handle_t handle;
    bool writing;
    nvs_handle_t nvs;
} esp_port_t;

static esp_port_t s_port;
static rx_buf_t s_rx[CONFIG_OTAMQ_RX_BUFFERS];

static esp_port_t *E(void *ctx)
{
    return (esp_port_t *)ctx;
}

/* ---- MQTT (runs in the esp-mqtt task: only copies and queues) ---------- */

static void post(esp_port_t *p, int kind, rx_buf_t *buf)
{
    rx_item_t it = {kind, buf};
    if (xQueueSend(p->ready, &it, portMAX_DELAY) != pdTRUE && buf != NULL)
        (void)xQueueSend(p->free, &buf, 0);
}

/* esp-mqtt delivers a payload larger than its buffer as several
 * MQTT_EVENT_DATA events; only the first has the topic. They are copied into
 * one rx buffer in order (otamq_rx.c) and posted when complete. */
static void on_data(esp_port_t *p, const esp_mqtt_event_t *ev)
{
    otamq_rx_result_t r;
    if (ev->current_data_offset == 0) {
        if (p->filling != NULL) /* the previous message never completed */
            (void)xQueueSend(p->free, &p->filling, 0);
        p->filling = NULL;
        /* backpressure: wait for the agent to hand a buffer back */
        if (xQueueReceive(p->free, &p->filling, pdMS_TO_TICKS(2000)) != pdTRUE) {
            p->filling = NULL;
            ESP_LOGW(TAG, "no rx buffer, message dropped");
            return;
        }
        r = otamq_rx_first(&p->filling->rx, ev->topic, ev->topic_len, ev->data, ev->data_len,
                           ev->total_data_len);
    } else if (p->filling != NULL) {
        r = otamq_rx_next(&p->filling->rx, ev->data, ev->data_len, ev->current_data_offset,
                          ev->total_data_len);
    } else {
        return; /* rest of a dropped message */
    }
    if (r == OTAMQ_RX_DROP) {
        ESP_LOGW(TAG, "message dropped (%d bytes)", ev->total_data_len);
        (void)xQueueSend(p->free, &p->filling, 0);
        p->filling = NULL;
    } else if (r == OTAMQ_RX_COMPLETE) {
        post(p, 3, p->filling);
        p->filling = NULL;
    }
}

static void mqtt_handler(void *arg, esp_event_base_t base, int32_t id, void *data)
{
    esp_port_t *p = (esp_port_t *)arg;
    const esp_mqtt_event_t *ev = (const esp_mqtt_event_t *)data;
    (void)base;
    switch (id) {
    case MQTT_EVENT_CONNECTED:
        post(p, 1, NULL);
        break;
    case MQTT_EVENT_DISCONNECTED:
        post(p, 2, NULL);
        break;
    case MQTT_EVENT_DATA:
        on_data(p, ev);
        break;
    default:
        break;
    }
}

static int ep_publish(void *ctx, const char *topic, const uint8_t *payload, size_t len, int qos)
{
    /* enqueue: never blocks the agent task on the network */
    int id = esp_mqtt_client_enqueue(E(ctx)->mqtt, topic, (const char *)payload, (int)len, qos,
                                     0, true);
    return id < 0 ? OTA_ERR_IO : OTA_OK;
}

static int ep_subscribe(void *ctx, const char *topic, int qos)
{
    return esp_mqtt_client_subscribe_single(E(ctx)->mqtt, topic, qos) < 0 ? OTA_ERR_IO : OTA_OK;
}

/* ---- slots --------------------------------------------------------------- */

static int map_ota_err(esp_err_t err)
{
    if (err == ESP_OK)
        return OTA_OK;
    if (err == ESP_ERR_OTA_ROLLBACK_INVALID_STATE)
        return OTA_ERR_STATE;
    if (err == ESP_ERR_INVALID_SIZE)
        return OTA_ERR_NOSPACE;
    return OTA_ERR_FLASH;
}

static int ep_slot_begin(void *ctx, uint32_t size, uint32_t resume)
{
    esp_port_t *p = E(ctx);
    esp_err_t err;
    p->update = esp_ota_get_next_update_partition(NULL);
    if (p->update == NULL)
        return OTA_ERR_FLASH;
    if (size > p->update->size)
        return OTA_ERR_NOSPACE;
    if (p->writing) {
        (void)esp_ota_abort(p->handle);
        p->writing = false;
    }
    /* in-order blocks allow lazy, sequential erasing */
    if (resume == 0u)
        err = esp_ota_begin(p->update, OTA_WITH_SEQUENTIAL_WRITES, &p->handle);
    else
        err = esp_ota_resume(p->update, OTA_WITH_SEQUENTIAL_WRITES, resume, &p->handle);
    if (err != ESP_OK) {
        ESP_LOGW(TAG, "ota begin/resume: %s", esp_err_to_name(err));
        return map_ota_err(err);
    }
    p->writing = true;
    return OTA_OK;
}

static int ep_slot_write(void *ctx, uint32_t off, const uint8_t *data, size_t len)
{
    esp_port_t *p = E(ctx);
    (void)off; /* the core writes strictly in order */
    if (!p->writing)
        return OTA_ERR_FLASH;
    return esp_ota_write(p->handle, data, len) == ESP_OK ? OTA_OK : OTA_ERR_FLASH;
}

static int ep_slot_read(void *ctx, uint32_t off, uint8_t *buf, size_t len)
{
    esp_port_t *p = E(ctx);
    if (p->update == NULL)
        p->update = esp_ota_get_next_update_partition(NULL);
    if (p->update == NULL)
        return OTA_ERR_FLASH;
    return esp_partition_read(p->update, off, buf, len) == ESP_OK ? OTA_OK : OTA_ERR_FLASH;
}

static int ep_slot_finish(void *ctx)
{
    esp_port_t *p = E(ctx);
    esp_err_t err;
    if (!p->writing)
        return OTA_ERR_FLASH;
    p->writing = false;
    err = esp_ota_end(p->handle); /* also validates the app image */
    if (err != ESP_OK)
        ESP_LOGW(TAG, "esp_ota_end: %s", esp_err_to_name(err));
    return err == ESP_OK ? OTA_OK : OTA_ERR_FLASH;
}

static void ep_slot_abort(void *ctx)
{
    esp_port_t *p = E(ctx);
    if (p->writing)
        (void)esp_ota_abort(p->handle);
    p->writing = false;
}

static int ep_slot_activate(void *ctx)
{
    esp_port_t *p = E(ctx);
    if (p->update == NULL)
        p->update = esp_ota_get_next_update_partition(NULL);
    if (p->update == NULL)
        return OTA_ERR_FLASH;
    return esp_ota_set_boot_partition(p->update) == ESP_OK ? OTA_OK : OTA_ERR_FLASH;
}

/* ---- boot ---------------------------------------------------------------- */

static uint8_t reason(void)
{
    switch (esp_reset_reason()) {
    case ESP_RST_SW:
        return OTA_BOOT_SOFTWARE;
    case ESP_RST_PANIC:
        return OTA_BOOT_PANIC;
    case ESP_RST_INT_WDT:
    case ESP_RST_TASK_WDT:
    case ESP_RST_WDT:
        return OTA_BOOT_WATCHDOG;
    case ESP_RST_BROWNOUT:
        return OTA_BOOT_BROWNOUT;
    default:
        return OTA_BOOT_POWER_ON;
    }
}

static int ep_boot_state(void *ctx, ota_boot_info_t *bi)
{
    const esp_partition_t *run = esp_ota_get_running_partition();
    esp_ota_img_states_t st = ESP_OTA_IMG_UNDEFINED;
    (void)ctx;
    if (run == NULL || run->subtype < ESP_PARTITION_SUBTYPE_APP_OTA_0 ||
        run->subtype > ESP_PARTITION_SUBTYPE_APP_OTA_1) {
        ESP_LOGE(TAG, "running from a non-OTA partition: use the two-slot table");
        return OTA_ERR_IO;
    }
    bi->running_slot = (uint8_t)(run->subtype - ESP_PARTITION_SUBTYPE_APP_OTA_0);
    if (esp_ota_get_state_partition(run, &st) != ESP_OK)
        st = ESP_OTA_IMG_UNDEFINED;
    bi->img_state = st == ESP_OTA_IMG_PENDING_VERIFY ? OTA_IMG_PENDING_VERIFY
                    : st == ESP_OTA_IMG_VALID        ? OTA_IMG_VALID
                                                     : OTA_IMG_UNDEFINED;
    bi->reason = reason();
    bi->other_slot_bootable = esp_ota_check_rollback_is_possible();
    return OTA_OK;
}

static int ep_confirm(void *ctx)
{
    (void)ctx;
    return esp_ota_mark_app_valid_cancel_rollback() == ESP_OK ? OTA_OK : OTA_ERR_IO;
}

static void flush_and_restart(esp_port_t *p)
{
    int i;
    /* give queued events (QoS 1) up to 2 s to leave */
    for (i = 0; i < 20 && esp_mqtt_client_get_outbox_size(p->mqtt) > 0; i++)
        vTaskDelay(pdMS_TO_TICKS(100));
    esp_restart();
}

static int ep_rollback(void *ctx)
{
    esp_port_t *p = E(ctx);
    const esp_partition_t *run = esp_ota_get_running_partition();
    esp_ota_img_states_t st = ESP_OTA_IMG_UNDEFINED;
    if (run != NULL && esp_ota_get_state_partition(run, &st) == ESP_OK &&
        st == ESP_OTA_IMG_PENDING_VERIFY) {
        /* not confirmed yet: mark invalid, the bootloader takes the other */
        for (int i = 0; i < 20 && esp_mqtt_client_get_outbox_size(p->mqtt) > 0; i++)
            vTaskDelay(pdMS_TO_TICKS(100));
        (void)esp_ota_mark_app_invalid_rollback_and_reboot();
        return OTA_ERR_IO;
    }
    /* confirmed: boot the other slot if it still holds a valid image */
    if (!esp_ota_check_rollback_is_possible())
        return OTA_ERR_STATE;
    if (esp_ota_set_boot_partition(esp_ota_get_next_update_partition(NULL)) != ESP_OK)
        return OTA_ERR_IO;
    flush_and_restart(p);
    return OTA_OK;
}

static void ep_reboot(void *ctx)
{
    flush_and_restart(E(ctx));
}

/* ---- crypto (PSA) -------------------------------------------------------- */

static int ep_sha_start(void *ctx, ota_sha256_t *h)
{
    psa_hash_operation_t *op = (psa_hash_operation_t *)(void *)h->opaque;
    (void)ctx;
    *op = psa_hash_operation_init();
    return psa_hash_setup(op, PSA_ALG_SHA_256) == PSA_SUCCESS ? OTA_OK : OTA_ERR_CRYPTO;
}

static int ep_sha_update(void *ctx, ota_sha256_t *h, const uint8_t *d, size_t n)
{
    (void)ctx;
    return psa_hash_update((psa_hash_operation_t *)(void *)h->opaque, d, n) == PSA_SUCCESS
               ? OTA_OK
               : OTA_ERR_CRYPTO;
}

static int ep_sha_finish(void *ctx, ota_sha256_t *h, uint8_t out[32])
{
    size_t n = 0;
    psa_hash_operation_t *op = (psa_hash_operation_t *)(void *)h->opaque;
    (void)ctx;
    if (psa_hash_finish(op, out, 32, &n) != PSA_SUCCESS || n != 32u) {
        (void)psa_hash_abort(op);
        return OTA_ERR_CRYPTO;
    }
    return OTA_OK;
}

/* PSA takes the raw r||s signature that COSE carries. */
static int ep_verify(void *ctx, const uint8_t pub[65], const uint8_t hash[32],
                     const uint8_t sig[64])
{
    psa_key_attributes_t attr = psa_key_attributes_init();
    mbedtls_svc_key_id_t key;
    psa_status_t st;
    (void)ctx;
    psa_set_key_usage_flags(&attr, PSA_KEY_USAGE_VERIFY_HASH);
    psa_set_key_algorithm(&attr, PSA_ALG_ECDSA(PSA_ALG_SHA_256));
    psa_set_key_type(&attr, PSA_KEY_TYPE_ECC_PUBLIC_KEY(PSA_ECC_FAMILY_SECP_R1));
    psa_set_key_bits(&attr, 256);
    if (psa_import_key(&attr, pub, 65, &key) != PSA_SUCCESS)
        return OTA_ERR_CRYPTO;
    st = psa_verify_hash(key, PSA_ALG_ECDSA(PSA_ALG_SHA_256), hash, 32, sig, 64);
    (void)psa_destroy_key(key);
    if (st == PSA_SUCCESS)
        return OTA_OK;
    return st == PSA_ERROR_INVALID_SIGNATURE ? OTA_ERR_SIGNATURE : OTA_ERR_CRYPTO;
}

/* ---- NVS, clock, device ----------------------------------------------- */

static int ep_kv_get(void *ctx, const char *key, uint8_t *buf, size_t *len)
{
    esp_err_t err = nvs_get_blob(E(ctx)->nvs, key, buf, len);
    if (err == ESP_OK)
        return OTA_OK;
    if (err == ESP_ERR_NVS_NOT_FOUND)
        return OTA_ERR_NOT_FOUND;
    return err == ESP_ERR_NVS_INVALID_LENGTH ? OTA_ERR_NOSPACE : OTA_ERR_IO;
}

/* NVS replaces an entry atomically: a power loss leaves the old or the new
 * value. */
static int ep_kv_set(void *ctx, const char *key, const uint8_t *buf, size_t len)
{
    esp_port_t *p = E(ctx);
    if (nvs_set_blob(p->nvs, key, buf, len) != ESP_OK || nvs_commit(p->nvs) != ESP_OK)
        return OTA_ERR_IO;
    return OTA_OK;
}

static uint64_t ep_now(void *ctx)
{
    (void)ctx;
    return (uint64_t)(esp_timer_get_time() / 1000);
}

static uint64_t ep_unix(void *ctx)
{
    time_t t = time(NULL);
    (void)ctx;
    return t > (time_t)1600000000 ? (uint64_t)t : 0u; /* 0 until SNTP set it */
}

static uint8_t ep_health(void *ctx)
{
    esp_port_t *p = E(ctx);
    return p->cfg.app_health != NULL ? p->cfg.app_health(p->cfg.app_arg)
                                     : (uint8_t)(OTA_HEALTH_APP | OTA_HEALTH_RESOURCES);
}

static uint32_t ep_heap(void *ctx)
{
    (void)ctx;
    return esp_get_free_heap_size();
}

#if CONFIG_OTAMQ_REPORT_RSSI
static bool ep_rssi(void *ctx, int32_t *dbm)
{
    wifi_ap_record_t ap;
    (void)ctx;
    if (esp_wifi_sta_get_ap_info(&ap) != ESP_OK)
        return false;
    *dbm = ap.rssi;
    return true;
}
#endif

/* ---- the agent task ---------------------------------------------------- */

static void agent_task(void *arg)
{
    esp_port_t *p = (esp_port_t *)arg;
    rx_item_t it;
    int rc = ota_agent_on_boot(&p->agent);
    if (rc != OTA_OK)
        ESP_LOGE(TAG, "boot: %s", ota_strerror(rc));
    (void)esp_mqtt_client_start(p->mqtt);
    for (;;) {
        if (xQueueReceive(p->ready, &it, pdMS_TO_TICKS(CONFIG_OTAMQ_TICK_MS)) == pdTRUE) {
            if (it.kind == 1) {
                ota_agent_on_connect(&p->agent);
            } else if (it.kind == 2) {
                ota_agent_on_disconnect(&p->agent);
            } else if (it.buf != NULL) {
                rc = ota_agent_on_message(&p->agent, it.buf->rx.topic, it.buf->data,
                                          it.buf->rx.len);
                if (rc != OTA_OK)
                    ESP_LOGD(TAG, "%s: %s", it.buf->rx.topic, ota_strerror(rc));
                (void)xQueueSend(p->free, &it.buf, portMAX_DELAY);
            }
        }
        ota_agent_tick(&p->agent);
    }
}

esp_err_t otamq_esp_start(const otamq_esp_config_t *cfg)
{
    esp_port_t *p = &s_port;
    const esp_app_desc_t *app = esp_app_get_description();
    esp_mqtt_client_config_t mc;
    ota_agent_config_t ac;
    int i;

    if (cfg == NULL || cfg->broker_uri == NULL || cfg->device_id == NULL || app == NULL)
        return ESP_ERR_INVALID_ARG;
    memset(p, 0, sizeof(*p));
    p->cfg = *cfg;
    if (psa_crypto_init() != PSA_SUCCESS)
        return ESP_FAIL;
    if (nvs_open("otamq", NVS_READWRITE, &p->nvs) != ESP_OK)
        return ESP_FAIL;

    p->port.ctx = p;
    p->port.mqtt_publish = ep_publish;
    p->port.mqtt_subscribe = ep_subscribe;
    p->port.slot_begin = ep_slot_begin;
    p->port.slot_write = ep_slot_write;
    p->port.slot_read = ep_slot_read;
    p->port.slot_finish = ep_slot_finish;
    p->port.slot_abort = ep_slot_abort;
    p->port.slot_activate = ep_slot_activate;
    p->port.boot_state = ep_boot_state;
    p->port.confirm = ep_confirm;
    p->port.rollback = ep_rollback;
    p->port.reboot = ep_reboot;
    p->port.sha256_start = ep_sha_start;
    p->port.sha256_update = ep_sha_update;
    p->port.sha256_finish = ep_sha_finish;
    p->port.ecdsa_p256_verify = ep_verify;
    p->port.kv_get = ep_kv_get;
    p->port.kv_set = ep_kv_set;
    p->port.now_ms = ep_now;
    p->port.unix_time = ep_unix;
    p->port.app_health = ep_health;
    p->port.free_heap = ep_heap;
#if CONFIG_OTAMQ_REPORT_RSSI
    p->port.rssi = ep_rssi;
#endif

    memset(&ac, 0, sizeof(ac));
    ac.port = &p->port;
    ac.device_id = cfg->device_id;
    ac.hardware = cfg->hardware;
    ac.bootloader_version = cfg->bootloader_version;
    ac.fw_version = app->version;
    ac.secure_version = app->secure_version;
    ac.connectivity = 0; /* wifi */
    ac.utc_offset_min = cfg->utc_offset_min;
    ac.keys = cfg->keys;
    ac.nkeys = cfg->nkeys;
    ac.settings = cfg->settings;
    if (ota_agent_init(&p->agent, &ac) != OTA_OK)
        return ESP_ERR_INVALID_ARG;

    p->ready = xQueueCreate(CONFIG_OTAMQ_RX_BUFFERS + 4, sizeof(rx_item_t));
    p->free = xQueueCreate(CONFIG_OTAMQ_RX_BUFFERS, sizeof(rx_buf_t *));
    if (p->ready == NULL || p->free == NULL)
        return ESP_ERR_NO_MEM;
    for (i = 0; i < CONFIG_OTAMQ_RX_BUFFERS; i++) {
        rx_buf_t *b = &s_rx[i];
        b->rx.data = b->data;
        b->rx.cap = sizeof(b->data);
        (void)xQueueSend(p->free, &b, 0);
    }

    memset(&mc, 0, sizeof(mc));
    mc.broker.address.uri = cfg->broker_uri;
    mc.broker.verification.certificate = cfg->ca_pem;
    mc.credentials.client_id = cfg->device_id;
    mc.credentials.username = cfg->device_id;
    mc.credentials.authentication.password = cfg->token;
    mc.session.protocol_ver = cfg->mqtt_v311 ? MQTT_PROTOCOL_V_3_1_1 : MQTT_PROTOCOL_V_5;
    mc.session.keepalive = 30;
    mc.buffer.size = 1024; /* larger payloads arrive fragmented */
    p->mqtt = esp_mqtt_client_init(&mc);
    if (p->mqtt == NULL)
        return ESP_ERR_NO_MEM;
    if (!cfg->mqtt_v311) {
        /* never let the broker send more than one rx buffer holds */
        esp_mqtt5_connection_property_config_t cp;
        memset(&cp, 0, sizeof(cp));
        cp.maximum_packet_size = RX_SIZE;
        if (esp_mqtt5_client_set_connect_property(p->mqtt, &cp) != ESP_OK)
            return ESP_FAIL;
    }
    if (esp_mqtt_client_register_event(p->mqtt, MQTT_EVENT_ANY, mqtt_handler, p) != ESP_OK)
        return ESP_FAIL;
    if (xTaskCreate(agent_task, "otamq", CONFIG_OTAMQ_TASK_STACK, p, CONFIG_OTAMQ_TASK_PRIORITY,
                    NULL) != pdPASS)
        return ESP_ERR_NO_MEM;
    return ESP_OK;
}

/* otamq_esp.c - ESP-IDF port of the otamq agent (see otamq_esp.h). */
#include "otamq_esp.h"

#include <string.h>
#include <time.h>

#include "esp_app_desc.h"
#include "esp_idf_version.h"
#include "esp_log.h"
#include "esp_ota_ops.h"
#include "esp_partition.h"
#include "esp_system.h"
#include "esp_timer.h"
#include "freertos/FreeRTOS.h"
#include "freertos/queue.h"
#include "freertos/semphr.h"
#include "freertos/task.h"
#include "mqtt_client.h"
#include "nvs.h"
#include "otamq_reset.h"
#include "otamq_rx.h"
#include "psa/crypto.h"
#if CONFIG_OTAMQ_REPORT_RSSI
#include "esp_wifi.h"
#endif
#if CONFIG_BOOTLOADER_APP_ANTI_ROLLBACK
#include "esp_efuse.h"
#endif

/* esp_ota_resume (resuming a download after a reset) exists from these on */
#if ESP_IDF_VERSION < ESP_IDF_VERSION_VAL(5, 3, 3) ||                                      \
    (ESP_IDF_VERSION >= ESP_IDF_VERSION_VAL(5, 4, 0) &&                                    \
     ESP_IDF_VERSION < ESP_IDF_VERSION_VAL(5, 4, 2))
#error "otamq needs esp_ota_resume: ESP-IDF 5.3.3 or later 5.3, 5.4.2 or later 5.4, or 5.5+"
#endif

#ifndef CONFIG_OTAMQ_RX_BUFFERS
#define CONFIG_OTAMQ_RX_BUFFERS 3
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

/* The MQTT handler never waits for a receive buffer (it runs with
 * esp-mqtt's API lock held, which the agent task needs to publish): a whole
 * window of blocks must find buffers, and one more stays free for an offer
 * or a command arriving meanwhile. */
#if CONFIG_OTAMQ_RX_BUFFERS < OTA_CFG_WINDOW + 1
#error "CONFIG_OTAMQ_RX_BUFFERS must be at least CONFIG_OTAMQ_WINDOW + 1"
#endif
#if CONFIG_OTAMQ_TICK_MS < (1000 / configTICK_RATE_HZ)
#error "CONFIG_OTAMQ_TICK_MS is shorter than one FreeRTOS tick"
#endif

#define RX_SIZE (OTA_CFG_BLOCK_SIZE + OTA_CFG_BLOCK_OVERHEAD)
#define TICKS(ms) (pdMS_TO_TICKS(ms) > 0 ? pdMS_TO_TICKS(ms) : (TickType_t)1)

typedef char psa_hash_fits[sizeof(psa_hash_operation_t) <= sizeof(ota_sha256_t) ? 1 : -1];

static const char *TAG = "otamq";

/* One reassembled message (or another MQTT event) handed to the task. */
typedef struct rx_buf {
    otamq_rx_buf_t rx;
    uint8_t data[RX_SIZE];
} rx_buf_t;

enum { RX_CONNECTED = 1, RX_DISCONNECTED, RX_MESSAGE, RX_PUBACK };

typedef struct rx_item {
    int kind;
    rx_buf_t *buf;   /* RX_MESSAGE */
    int msg_id;      /* RX_PUBACK */
    uint8_t reason;  /* RX_PUBACK */
} rx_item_t;

/* The configuration store: each kind's two slots are areas of the
 * "otamq_cfg" partition; which one is in use is one NVS record per kind
 * (NVS replaces a blob atomically, so a swap is one write). */
#define CFG_NONE 0xffu
#define CFG_SECTOR 4096u
typedef struct cfg_rec {
    uint8_t version;  /* 1 */
    uint8_t active;   /* slot in use, CFG_NONE: none */
    uint8_t previous; /* slot to go back to, CFG_NONE: none */
    uint8_t state;    /* ESP_OTA_IMG_NEW / _PENDING_VERIFY / _VALID */
    uint32_t size[2];
} cfg_rec_t;

typedef struct esp_port {
    otamq_esp_config_t cfg;
    ota_port_t port;
    ota_agent_t agent;
    esp_mqtt_client_handle_t mqtt;
    volatile bool connected; /* set by the MQTT handler */
    bool v5;
    QueueHandle_t ready; /* rx_item_t: to the agent task */
    QueueHandle_t free;  /* rx_buf_t *: back to the MQTT handler */
    rx_buf_t *filling;   /* message being reassembled (MQTT task only) */
    uint32_t dropped;    /* messages dropped by the handler (MQTT task) */
    const esp_partition_t *update;
    esp_ota_handle_t handle;
    bool writing;
    nvs_handle_t nvs;
    const esp_partition_t *cfgpart;
    SemaphoreHandle_t cfg_lock; /* guards rec (otamq_esp_config_read) */
    cfg_rec_t rec[OTA_KINDS - 1];
    uint32_t cfg_area;
    uint8_t cfg_target;
    TaskHandle_t task;
} esp_port_t;

static esp_port_t s_port;
static rx_buf_t s_rx[CONFIG_OTAMQ_RX_BUFFERS];

static esp_port_t *E(void *ctx)
{
    return (esp_port_t *)ctx;
}

/* ---- MQTT (runs in the esp-mqtt task: copies and queues, never waits) --- */

/* Hands an item to the agent task without waiting: a full queue loses it
 * (a block is asked for again, an event PUBACK is made up for by the
 * agent's resend). */
static void post(esp_port_t *p, const rx_item_t *it)
{
    if (xQueueSend(p->ready, it, 0) != pdTRUE) {
        p->dropped++;
        if (it->buf != NULL)
            (void)xQueueSend(p->free, &it->buf, 0);
    }
}

static bool is_block(const char *topic, int len)
{
    return len >= 8 && memcmp(topic + len - 8, "/ota/blk", 8) == 0;
}

/* esp-mqtt delivers a payload larger than its buffer as several
 * MQTT_EVENT_DATA events; only the first has the topic. They are copied into
 * one rx buffer in order (otamq_rx.c) and posted when complete. The last
 * free buffer is kept for a message that is not a block: a lost block is
 * asked for again, a lost offer or command is not sent again. */
static void on_data(esp_port_t *p, const esp_mqtt_event_t *ev)
{
    otamq_rx_result_t r;
    rx_item_t it = {RX_MESSAGE, NULL, 0, 0};
    if (ev->current_data_offset == 0) {
        if (p->filling != NULL) /* the previous message never completed */
            (void)xQueueSend(p->free, &p->filling, 0);
        p->filling = NULL;
        if ((is_block(ev->topic, ev->topic_len) && uxQueueMessagesWaiting(p->free) <= 1u) ||
            xQueueReceive(p->free, &p->filling, 0) != pdTRUE) {
            p->filling = NULL;
            p->dropped++;
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
        p->dropped++;
        (void)xQueueSend(p->free, &p->filling, 0);
        p->filling = NULL;
    } else if (r == OTAMQ_RX_COMPLETE) {
        it.buf = p->filling;
        p->filling = NULL;
        post(p, &it);
    }
}

/* The PUBACK reason code of an MQTT_EVENT_PUBLISHED. With MQTT 5, esp-mqtt
 * (1.0 as bundled with ESP-IDF 5.x, and the managed component of IDF 6)
 * points event->data at the PUBACK's reason code byte (data_len 1), or has
 * no data when the PUBACK left it out (success); esp-mqtt >= 1.1 also sets
 * event->reason_code. MQTT 3.1.1 PUBACKs have no reason code. */
static uint8_t puback_reason(const esp_port_t *p, const esp_mqtt_event_t *ev)
{
#ifdef CONFIG_MQTT_PROTOCOL_5
    if (p->v5 && ev->protocol_ver == MQTT_PROTOCOL_V_5 && ev->data != NULL && ev->data_len == 1)
        return (uint8_t)ev->data[0];
#else
    (void)p;
    (void)ev;
#endif
    return 0;
}

static void mqtt_handler(void *arg, esp_event_base_t base, int32_t id, void *data)
{
    esp_port_t *p = (esp_port_t *)arg;
    const esp_mqtt_event_t *ev = (const esp_mqtt_event_t *)data;
    rx_item_t it = {0, NULL, 0, 0};
    (void)base;
    switch (id) {
    case MQTT_EVENT_CONNECTED:
        p->connected = true;
        it.kind = RX_CONNECTED;
        post(p, &it);
        break;
    case MQTT_EVENT_DISCONNECTED:
        p->connected = false;
        it.kind = RX_DISCONNECTED;
        post(p, &it);
        break;
    case MQTT_EVENT_PUBLISHED:
        it.kind = RX_PUBACK;
        it.msg_id = ev->msg_id;
        it.reason = puback_reason(p, ev);
        post(p, &it);
        break;
    case MQTT_EVENT_DATA:
        on_data(p, ev);
        break;
    default:
        break;
    }
}

/* As ota_port.h demands, nothing is queued while disconnected: esp-mqtt's
 * enqueue would take it, and drop it from its outbox after
 * OUTBOX_EXPIRED_TIMEOUT_MS (30 s) without telling anyone. */
static int ep_publish(void *ctx, const char *topic, const uint8_t *payload, size_t len, int qos)
{
    esp_port_t *p = E(ctx);
    int id;
    if (!p->connected)
        return OTA_ERR_IO;
    /* enqueue: never blocks the agent task on the network */
    id = esp_mqtt_client_enqueue(p->mqtt, topic, (const char *)payload, (int)len, qos, 0, true);
    return id < 0 ? OTA_ERR_IO : id;
}

static int ep_subscribe(void *ctx, const char *topic, int qos)
{
    esp_port_t *p = E(ctx);
    if (!p->connected)
        return OTA_ERR_IO;
    return esp_mqtt_client_subscribe_single(p->mqtt, topic, qos) < 0 ? OTA_ERR_IO : OTA_OK;
}

/* ---- configuration store ------------------------------------------------- */

static const char *cfg_key(uint8_t kind)
{
    return kind == OTA_KIND_CONFIG ? "otamq.cfg1" : "otamq.cfg2";
}

static uint32_t cfg_base(const esp_port_t *p, uint8_t kind, uint8_t slot)
{
    return ((uint32_t)(kind - 1u) * 2u + slot) * p->cfg_area;
}

static int cfg_save(esp_port_t *p, uint8_t kind, const cfg_rec_t *r)
{
    if (nvs_set_blob(p->nvs, cfg_key(kind), r, sizeof(*r)) != ESP_OK ||
        nvs_commit(p->nvs) != ESP_OK)
        return OTA_ERR_IO;
    (void)xSemaphoreTake(p->cfg_lock, portMAX_DELAY);
    p->rec[kind - 1u] = *r;
    (void)xSemaphoreGive(p->cfg_lock);
    return OTA_OK;
}

/* At start: the configurations start by the rules images do. */
static void cfg_boot(esp_port_t *p)
{
    uint8_t k;
    for (k = OTA_KIND_CONFIG; k < OTA_KINDS; k++) {
        cfg_rec_t r;
        size_t n = sizeof(r);
        if (nvs_get_blob(p->nvs, cfg_key(k), &r, &n) != ESP_OK || n != sizeof(r) ||
            r.version != 1u) {
            memset(&r, 0, sizeof(r));
            r.version = 1;
            r.active = r.previous = CFG_NONE;
            r.state = (uint8_t)ESP_OTA_IMG_VALID;
        }
        if (r.active != CFG_NONE && r.state == ESP_OTA_IMG_PENDING_VERIFY) {
            /* started once and not confirmed: the previous one again */
            ESP_LOGW(TAG, "%s not confirmed before the reset: previous one back",
                     k == OTA_KIND_CONFIG ? "configuration" : "feature flags");
            r.size[r.active] = 0;
            r.active = r.previous;
            r.previous = CFG_NONE;
            r.state = (uint8_t)ESP_OTA_IMG_VALID;
        } else if (r.active != CFG_NONE && r.state == ESP_OTA_IMG_NEW) {
            r.state = (uint8_t)ESP_OTA_IMG_PENDING_VERIFY;
        }
        (void)cfg_save(p, k, &r);
    }
}

static int cfg_begin(esp_port_t *p, uint8_t kind, uint32_t size, uint32_t resume)
{
    cfg_rec_t r = p->rec[kind - 1u];
    if (size > p->cfg_area)
        return OTA_ERR_NOSPACE;
    p->cfg_target = r.active == CFG_NONE ? 0u : (uint8_t)(r.active ^ 1u);
    if (resume == 0u && esp_partition_erase_range(p->cfgpart, cfg_base(p, kind, p->cfg_target),
                                                  p->cfg_area) != ESP_OK)
        return OTA_ERR_FLASH;
    /* the slot is no fallback any more; its size is kept for activate */
    if (r.previous == p->cfg_target)
        r.previous = CFG_NONE;
    r.size[p->cfg_target] = size;
    return cfg_save(p, kind, &r) == OTA_OK ? OTA_OK : OTA_ERR_FLASH;
}

static void cfg_told(esp_port_t *p, uint8_t kind)
{
    if (p->cfg.config_changed != NULL)
        p->cfg.config_changed(kind, p->cfg.app_arg);
}

static int cfg_activate(esp_port_t *p, uint8_t kind)
{
    cfg_rec_t r = p->rec[kind - 1u];
    uint8_t t = r.active == CFG_NONE ? 0u : (uint8_t)(r.active ^ 1u);
    bool restart =
        p->cfg.config_needs_restart != NULL && p->cfg.config_needs_restart(kind, p->cfg.app_arg);
    r.previous = r.active;
    r.active = t;
    r.state = (uint8_t)(restart ? ESP_OTA_IMG_NEW : ESP_OTA_IMG_PENDING_VERIFY);
    if (cfg_save(p, kind, &r) != OTA_OK)
        return OTA_ERR_FLASH;
    if (restart)
        return OTA_ACTIVATE_RESTART;
    cfg_told(p, kind);
    return OTA_OK;
}

static int cfg_rollback(esp_port_t *p, uint8_t kind)
{
    cfg_rec_t r = p->rec[kind - 1u];
    if (r.active != CFG_NONE)
        r.size[r.active] = 0; /* never used again */
    r.active = r.previous;
    r.previous = CFG_NONE;
    r.state = (uint8_t)ESP_OTA_IMG_VALID;
    if (cfg_save(p, kind, &r) != OTA_OK)
        return OTA_ERR_IO;
    cfg_told(p, kind);
    return OTA_OK;
}

esp_err_t otamq_esp_config_read(uint8_t kind, void *buf, size_t cap, size_t *len)
{
    esp_port_t *p = &s_port;
    cfg_rec_t r;
    if (kind < OTA_KIND_CONFIG || kind >= OTA_KINDS || buf == NULL || len == NULL)
        return ESP_ERR_INVALID_ARG;
    if (p->cfgpart == NULL || p->cfg_lock == NULL)
        return ESP_ERR_INVALID_STATE;
    (void)xSemaphoreTake(p->cfg_lock, portMAX_DELAY);
    r = p->rec[kind - 1u];
    (void)xSemaphoreGive(p->cfg_lock);
    if (r.active == CFG_NONE || r.size[r.active] == 0u)
        return ESP_ERR_NOT_FOUND;
    if (r.size[r.active] > cap)
        return ESP_ERR_INVALID_SIZE;
    *len = r.size[r.active];
    return esp_partition_read(p->cfgpart, cfg_base(p, kind, r.active), buf, *len);
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

static int ep_slot_begin(void *ctx, uint8_t kind, uint32_t size, uint32_t resume)
{
    esp_port_t *p = E(ctx);
    esp_err_t err;
    if (kind != OTA_KIND_FIRMWARE)
        return cfg_begin(p, kind, size, resume);
    p->update = esp_ota_get_next_update_partition(NULL);
    if (p->update == NULL)
        return OTA_ERR_FLASH;
    if (size > p->update->size)
        return OTA_ERR_NOSPACE;
    if (p->writing) {
        (void)esp_ota_abort(p->handle);
        p->writing = false;
    }
    /* in-order blocks allow lazy, sequential erasing; resume_offset is a
     * multiple of 16 (the core's), as flash encryption needs */
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

static int ep_slot_write(void *ctx, uint8_t kind, uint32_t off, const uint8_t *data, size_t len)
{
    esp_port_t *p = E(ctx);
    if (kind != OTA_KIND_FIRMWARE)
        return esp_partition_write(p->cfgpart, cfg_base(p, kind, p->cfg_target) + off, data,
                                   len) == ESP_OK
                   ? OTA_OK
                   : OTA_ERR_FLASH;
    if (!p->writing)
        return OTA_ERR_FLASH;
    /* the core writes strictly in order: off is where esp_ota_write is */
    return esp_ota_write(p->handle, data, len) == ESP_OK ? OTA_OK : OTA_ERR_FLASH;
}

static int ep_slot_read(void *ctx, uint8_t kind, uint32_t off, uint8_t *buf, size_t len)
{
    esp_port_t *p = E(ctx);
    if (kind != OTA_KIND_FIRMWARE) {
        cfg_rec_t r = p->rec[kind - 1u];
        uint8_t t = r.active == CFG_NONE ? 0u : (uint8_t)(r.active ^ 1u);
        return esp_partition_read(p->cfgpart, cfg_base(p, kind, t) + off, buf, len) == ESP_OK
                   ? OTA_OK
                   : OTA_ERR_FLASH;
    }
    if (p->update == NULL)
        p->update = esp_ota_get_next_update_partition(NULL);
    if (p->update == NULL)
        return OTA_ERR_FLASH;
    return esp_partition_read(p->update, off, buf, len) == ESP_OK ? OTA_OK : OTA_ERR_FLASH;
}

static int ep_slot_finish(void *ctx, uint8_t kind)
{
    esp_port_t *p = E(ctx);
    esp_err_t err;
    if (kind != OTA_KIND_FIRMWARE)
        return OTA_OK; /* the digest was the check */
    if (!p->writing)
        return OTA_ERR_FLASH;
    p->writing = false;
    err = esp_ota_end(p->handle); /* also validates the app image */
    if (err != ESP_OK)
        ESP_LOGW(TAG, "esp_ota_end: %s", esp_err_to_name(err));
    return err == ESP_OK ? OTA_OK : OTA_ERR_FLASH;
}

static void ep_slot_abort(void *ctx, uint8_t kind)
{
    esp_port_t *p = E(ctx);
    if (kind == OTA_KIND_FIRMWARE && p->writing)
        (void)esp_ota_abort(p->handle);
    p->writing = false;
}

static int ep_slot_activate(void *ctx, uint8_t kind)
{
    esp_port_t *p = E(ctx);
    esp_err_t err;
    if (kind != OTA_KIND_FIRMWARE)
        return cfg_activate(p, kind);
    if (p->update == NULL)
        p->update = esp_ota_get_next_update_partition(NULL);
    if (p->update == NULL)
        return OTA_ERR_FLASH;
    /* validates the image (and its secure version with eFuse anti-rollback)
     * and writes its otadata NEW: the bootloader starts it PENDING_VERIFY */
    err = esp_ota_set_boot_partition(p->update);
    if (err != ESP_OK)
        ESP_LOGW(TAG, "esp_ota_set_boot_partition: %s", esp_err_to_name(err));
    return err == ESP_OK ? OTA_OK : OTA_ERR_FLASH;
}

/* ---- boot ---------------------------------------------------------------- */

static int ep_boot_state(void *ctx, uint8_t kind, ota_boot_info_t *bi)
{
    esp_port_t *p = E(ctx);
    const esp_partition_t *run;
    esp_ota_img_states_t st = ESP_OTA_IMG_UNDEFINED;
    bi->reason = otamq_boot_reason(esp_reset_reason());
    if (kind != OTA_KIND_FIRMWARE) {
        cfg_rec_t r = p->rec[kind - 1u];
        bi->running_slot = r.active == CFG_NONE ? 1u : r.active;
        st = (esp_ota_img_states_t)r.state;
    } else {
        run = esp_ota_get_running_partition();
        if (run == NULL || run->subtype < ESP_PARTITION_SUBTYPE_APP_OTA_0 ||
            run->subtype > ESP_PARTITION_SUBTYPE_APP_OTA_1) {
            ESP_LOGE(TAG, "running from a non-OTA partition: use the two-slot table");
            return OTA_ERR_IO;
        }
        bi->running_slot = (uint8_t)(run->subtype - ESP_PARTITION_SUBTYPE_APP_OTA_0);
        if (esp_ota_get_state_partition(run, &st) != ESP_OK)
            st = ESP_OTA_IMG_UNDEFINED;
    }
    bi->img_state = st == ESP_OTA_IMG_PENDING_VERIFY ? OTA_IMG_PENDING_VERIFY
                    : st == ESP_OTA_IMG_VALID        ? OTA_IMG_VALID
                                                     : OTA_IMG_UNDEFINED;
    return OTA_OK;
}

static int ep_confirm(void *ctx, uint8_t kind)
{
    esp_port_t *p = E(ctx);
    if (kind != OTA_KIND_FIRMWARE) {
        cfg_rec_t r = p->rec[kind - 1u];
        r.state = (uint8_t)ESP_OTA_IMG_VALID;
        return cfg_save(p, kind, &r);
    }
    /* with CONFIG_BOOTLOADER_APP_ANTI_ROLLBACK this also raises the secure
     * version in eFuse to the running image's */
    return esp_ota_mark_app_valid_cancel_rollback() == ESP_OK ? OTA_OK : OTA_ERR_IO;
}

static int ep_rollback(void *ctx, uint8_t kind)
{
    esp_port_t *p = E(ctx);
    const esp_partition_t *run = esp_ota_get_running_partition();
    esp_ota_img_states_t st = ESP_OTA_IMG_UNDEFINED;
    esp_err_t err;
    if (kind != OTA_KIND_FIRMWARE)
        return cfg_rollback(p, kind);
    if (run != NULL && esp_ota_get_state_partition(run, &st) == ESP_OK &&
        st == ESP_OTA_IMG_PENDING_VERIFY) {
        /* not confirmed yet: mark invalid, the bootloader takes the other;
         * returns only when there is none */
        (void)esp_ota_mark_app_invalid_rollback_and_reboot();
        return OTA_ERR_STATE;
    }
    /* confirmed: boot the other slot if it still holds a valid image.
     * esp_ota_set_boot_partition validates it, whatever otadata says of it
     * (its entry may be ABORTED when it was rolled back to and reset before
     * its confirmation), and makes it NEW: it starts PENDING_VERIFY, and the
     * agent confirms it at once (ota_agent_on_boot). With eFuse
     * anti-rollback it would erase an image below the eFuse secure version:
     * esp_ota_check_rollback_is_possible refuses those first. */
#if CONFIG_BOOTLOADER_APP_ANTI_ROLLBACK
    if (!esp_ota_check_rollback_is_possible())
        return OTA_ERR_STATE;
#endif
    err = esp_ota_set_boot_partition(esp_ota_get_next_update_partition(NULL));
    if (err == ESP_ERR_OTA_VALIDATE_FAILED)
        return OTA_ERR_STATE;
    if (err != ESP_OK)
        return OTA_ERR_IO;
    esp_restart();
}

#if ESP_IDF_VERSION >= ESP_IDF_VERSION_VAL(5, 5, 0)
static int ep_invalidate_other(void *ctx)
{
    (void)ctx;
    return esp_ota_invalidate_inactive_ota_data_slot() == ESP_OK ? OTA_OK : OTA_ERR_IO;
}
#endif

/* The core keeps what it has not delivered: nothing to flush. */
static void ep_reboot(void *ctx)
{
    (void)ctx;
    esp_restart();
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

/* On ESP-IDF 6 with hardware SHA, psa_hash_setup allocates the context on
 * the heap (DMA-capable RAM): only finish or abort frees it. */
static void ep_sha_abort(void *ctx, ota_sha256_t *h)
{
    (void)ctx;
    (void)psa_hash_abort((psa_hash_operation_t *)(void *)h->opaque);
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

static const char *const state_names[] = {"idle",       "downloading", "verified",
                                          "installing", "rebooting",   "trial",
                                          "committed",  "rolled back", "failed"};

static bool policy_status(int rc)
{
    return rc == OTA_ERR_SIGNATURE || rc == OTA_ERR_UNKNOWN_KEY || rc == OTA_ERR_HARDWARE ||
           rc == OTA_ERR_BOOTLOADER || rc == OTA_ERR_VERSION || rc == OTA_ERR_SEQUENCE ||
           rc == OTA_ERR_SECURE_VERSION || rc == OTA_ERR_TIMEOUT || rc == OTA_ERR_COSE;
}

static void on_message(esp_port_t *p, rx_buf_t *b)
{
    int rc = ota_agent_on_message(&p->agent, b->rx.topic, b->data, b->rx.len);
    const char *t = strrchr(b->rx.topic, '/');
    bool offer = t != NULL && strcmp(t, "/manifest") == 0;
    unsigned st = (unsigned)ota_agent_state(&p->agent);
    if (offer && policy_status(rc))
        ESP_LOGI(TAG, "offer refused: %s", ota_strerror(rc));
    else if (offer && rc == OTA_ERR_STATE)
        ESP_LOGI(TAG, "offer not taken now: an update is in state %s",
                 st <= OTA_STATE_FAILED ? state_names[st] : "?");
    else if (rc != OTA_OK)
        ESP_LOGD(TAG, "%s: %s", b->rx.topic, ota_strerror(rc));
}

static void agent_task(void *arg)
{
    esp_port_t *p = (esp_port_t *)arg;
    rx_item_t it;
    uint32_t dropped = 0;
    int64_t stack_logged = 0;
    esp_reset_reason_t why = esp_reset_reason();
    int rc;
    ESP_LOGI(TAG, "reset reason %s (counted as %s)", otamq_reset_name(why),
             (const char *[]){"power-on", "software", "watchdog", "panic",
                              "brownout"}[otamq_boot_reason(why)]);
    rc = ota_agent_on_boot(&p->agent);
    if (rc != OTA_OK)
        ESP_LOGE(TAG, "boot: %s", ota_strerror(rc));
    (void)esp_mqtt_client_start(p->mqtt);
    for (;;) {
        if (xQueueReceive(p->ready, &it, TICKS(CONFIG_OTAMQ_TICK_MS)) == pdTRUE) {
            if (it.kind == RX_CONNECTED) {
                ota_agent_on_connect(&p->agent);
            } else if (it.kind == RX_DISCONNECTED) {
                ota_agent_on_disconnect(&p->agent);
            } else if (it.kind == RX_PUBACK) {
                rc = ota_agent_on_puback(&p->agent, it.msg_id, it.reason);
                if (rc == OTA_ERR_MSG)
                    ESP_LOGW(TAG, "the broker refused an event (PUBACK 0x%02x): dropped",
                             it.reason);
                else if (rc == OTA_ERR_IO)
                    ESP_LOGI(TAG, "the broker could not record an event (PUBACK 0x%02x): "
                                  "sent again later",
                             it.reason);
            } else if (it.buf != NULL) {
                on_message(p, it.buf);
                (void)xQueueSend(p->free, &it.buf, 0);
            }
        }
        ota_agent_tick(&p->agent);
        if (p->dropped != dropped) {
            dropped = p->dropped;
            ESP_LOGD(TAG, "%u incoming messages dropped so far (no buffer)", (unsigned)dropped);
        }
        if (esp_timer_get_time() - stack_logged >= 600 * 1000000LL) {
            stack_logged = esp_timer_get_time();
            ESP_LOGI(TAG, "agent task stack: %u bytes never used",
                     (unsigned)uxTaskGetStackHighWaterMark(NULL));
        }
    }
}

esp_err_t otamq_esp_start(const otamq_esp_config_t *cfg)
{
    esp_port_t *p = &s_port;
    const esp_app_desc_t *app = esp_app_get_description();
    esp_mqtt_client_config_t mc;
    ota_agent_config_t ac;
    int i;

    if (cfg == NULL || cfg->broker_uri == NULL || cfg->device_id == NULL || app == NULL ||
        (cfg->client_cert_pem == NULL) != (cfg->client_key_pem == NULL))
        return ESP_ERR_INVALID_ARG;
    memset(p, 0, sizeof(*p));
    p->cfg = *cfg;
#ifdef CONFIG_MQTT_PROTOCOL_5
    p->v5 = !cfg->mqtt_v311;
#endif
    if (psa_crypto_init() != PSA_SUCCESS)
        return ESP_FAIL;
    if (nvs_open("otamq", NVS_READWRITE, &p->nvs) != ESP_OK)
        return ESP_FAIL;
    p->cfg_lock = xSemaphoreCreateMutex();
    if (p->cfg_lock == NULL)
        return ESP_ERR_NO_MEM;
    p->cfgpart = esp_partition_find_first(ESP_PARTITION_TYPE_DATA, ESP_PARTITION_SUBTYPE_ANY,
                                          "otamq_cfg");
    if (p->cfgpart != NULL) {
        p->cfg_area = (p->cfgpart->size / 4u) & ~(CFG_SECTOR - 1u);
        if (p->cfg_area == 0u) {
            ESP_LOGE(TAG, "otamq_cfg partition too small (4 areas of 4 KB at least)");
            p->cfgpart = NULL;
        } else {
            cfg_boot(p);
            p->port.kinds = 1u << OTA_KIND_CONFIG | 1u << OTA_KIND_FLAGS;
        }
    }

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
#if ESP_IDF_VERSION >= ESP_IDF_VERSION_VAL(5, 5, 0)
    p->port.invalidate_other = ep_invalidate_other;
#endif
    p->port.reboot = ep_reboot;
    p->port.sha256_start = ep_sha_start;
    p->port.sha256_update = ep_sha_update;
    p->port.sha256_finish = ep_sha_finish;
    p->port.sha256_abort = ep_sha_abort;
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
#if CONFIG_BOOTLOADER_APP_ANTI_ROLLBACK
    if (esp_efuse_read_secure_version() > ac.secure_version)
        ac.secure_version = esp_efuse_read_secure_version();
#endif
    ac.connectivity = 0; /* wifi */
    ac.utc_offset_min = cfg->utc_offset_min;
    ac.keys = cfg->keys;
    ac.nkeys = cfg->nkeys;
    ac.settings = cfg->settings;
    if (ota_agent_init(&p->agent, &ac) != OTA_OK)
        return ESP_ERR_INVALID_ARG;

    /* more room than buffers: connection changes and PUBACKs too */
    p->ready = xQueueCreate(CONFIG_OTAMQ_RX_BUFFERS + 8, sizeof(rx_item_t));
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
    mc.credentials.authentication.certificate = cfg->client_cert_pem;
    mc.credentials.authentication.key = cfg->client_key_pem;
    mc.session.protocol_ver = p->v5 ? MQTT_PROTOCOL_V_5 : MQTT_PROTOCOL_V_3_1_1;
    mc.session.keepalive = 30;
    mc.buffer.size = 1024; /* larger payloads arrive fragmented */
    p->mqtt = esp_mqtt_client_init(&mc);
    if (p->mqtt == NULL)
        return ESP_ERR_NO_MEM;
#ifdef CONFIG_MQTT_PROTOCOL_5
    if (p->v5) {
        /* never let the broker send more than one rx buffer holds */
        esp_mqtt5_connection_property_config_t cp;
        memset(&cp, 0, sizeof(cp));
        cp.maximum_packet_size = RX_SIZE;
        if (esp_mqtt5_client_set_connect_property(p->mqtt, &cp) != ESP_OK)
            return ESP_FAIL;
    }
#endif
    if (esp_mqtt_client_register_event(p->mqtt, MQTT_EVENT_ANY, mqtt_handler, p) != ESP_OK)
        return ESP_FAIL;
    if (xTaskCreate(agent_task, "otamq", CONFIG_OTAMQ_TASK_STACK, p, CONFIG_OTAMQ_TASK_PRIORITY,
                    &p->task) != pdPASS)
        return ESP_ERR_NO_MEM;
    return ESP_OK;
}

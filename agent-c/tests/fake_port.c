/* fake_port.c - see fake_port.h. */
#include "fake_port.h"

#include <stdio.h>
#include <string.h>

#include "cbor_util.h"
#include "crypto_mbedtls.h"

static fake_dev_t *D(void *ctx)
{
    return (fake_dev_t *)ctx;
}

static void reset(fake_dev_t *d, int why)
{
    d->resets[why]++;
    d->last_reset = why;
    longjmp(d->jb, 1);
}

/* A write that survives a power loss: counted, and cut here when the test
 * says so. */
static bool power_cut(fake_dev_t *d)
{
    d->pwrites++;
    if (d->cut_at != 0 && !d->cut_done && d->pwrites == d->cut_at) {
        d->cut_done = true;
        return true;
    }
    return false;
}

/* ---- port: mqtt ---------------------------------------------------------- */

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

void fd_push(fake_dev_t *d, const char *suffix, const uint8_t *p, size_t n)
{
    fd_in_t *m;
    if (d->nin >= FD_MAX_IN || n > sizeof(d->in[0].payload))
        return; /* dropped, like a full queue */
    m = &d->in[d->nin++];
    snprintf(m->topic, sizeof(m->topic), "dm/%s/%s", d->cfg.device_id, suffix);
    memcpy(m->payload, p, n);
    m->len = n;
}

/* As ota_port.h demands: nothing is queued while not connected. */
static int p_publish(void *ctx, const char *topic, const uint8_t *payload, size_t len, int qos)
{
    fake_dev_t *d = D(ctx);
    fd_out_t *o;
    if (!d->connected || d->nout >= FD_MAX_OUT || len > sizeof(d->out[0].payload))
        return OTA_ERR_IO;
    o = &d->out[d->nout++];
    snprintf(o->topic, sizeof(o->topic), "%s", topic);
    memcpy(o->payload, payload, len);
    o->len = len;
    o->qos = qos;
    o->id = qos > 0 ? (d->next_id = d->next_id % 65535 + 1) : 0;
    return o->id;
}

static int p_subscribe(void *ctx, const char *topic, int qos)
{
    fake_dev_t *d = D(ctx);
    (void)qos;
    if (!d->connected)
        return OTA_ERR_IO;
    d->subs++;
    if (ends_with(topic, "/ota/manifest") && d->offer_len != 0u && d->offer_on_subscribe)
        fd_push(d, "ota/manifest", d->offer, d->offer_len);
    return OTA_OK;
}

/* ---- otadata and the configuration store ------------------------------ */

static bool image_ok(const fake_dev_t *d, int s)
{
    ota_sim_header_t h;
    return ota_sim_header_parse(d->slot[s], FD_SLOT_SIZE, &h);
}

/* Writes the otadata entries of mask (one sector each, in order); a cut
 * leaves the sector being written erased and the later ones as they were
 * (before). */
static void commit_od(fake_dev_t *d, const ota_otadata_t *before, unsigned mask)
{
    int i, j;
    for (i = 0; i < 2; i++) {
        if (!(mask >> i & 1u) || !power_cut(d))
            continue;
        memset(&d->od.e[i], 0xff, sizeof(d->od.e[i]));
        for (j = i + 1; j < 2; j++)
            d->od.e[j] = before->e[j];
        reset(d, FD_RESET_POWER);
    }
}

static void ok_slots(const fake_dev_t *d, bool ok[2])
{
    ok[0] = image_ok(d, 0);
    ok[1] = image_ok(d, 1);
}

/* The application's health: the image's, and not with a configuration
 * that says "#fail-health". */
static uint8_t img_health(const fake_dev_t *d)
{
    ota_sim_header_t h;
    if (d->running < 0 || !ota_sim_header_parse(d->slot[d->running], FD_SLOT_SIZE, &h))
        return 0;
    return h.behaviour == OTA_SIM_HEALTH_FAIL ? 0u : 3u;
}

static void compute_health(fake_dev_t *d)
{
    int k;
    uint8_t h = img_health(d);
    for (k = 1; k <= 2; k++) {
        uint32_t n;
        const uint8_t *c = fd_config(d, (uint8_t)k, &n);
        if (n >= 12u && memcmp(c, "#fail-health", 12) == 0)
            h = 0;
    }
    d->app_health = h;
}

/* The application is told that a configuration changed. */
static void app_config_changed(fake_dev_t *d)
{
    d->cfg_changes++;
    compute_health(d);
}

static void commit_cfg(fake_dev_t *d, int k, const ota_cfgdata_t *before)
{
    if (power_cut(d)) {
        d->cd[k] = *before; /* one atomic record: the old one stays */
        reset(d, FD_RESET_POWER);
    }
}

static uint8_t cfg_target(const fake_dev_t *d, uint8_t kind)
{
    const ota_cfgdata_t *c = &d->cd[kind - 1u];
    return c->active == OTA_CFG_NONE ? 0u : (uint8_t)(c->active ^ 1u);
}

/* ---- port: slots ------------------------------------------------------- */

static int p_slot_begin(void *ctx, uint8_t kind, uint32_t size, uint32_t resume)
{
    fake_dev_t *d = D(ctx);
    uint32_t st;
    if (d->fail_begin)
        return OTA_ERR_FLASH;
    if (kind == 0u) {
        if (ota_od_state(&d->od, d->running, &st) && st == OTA_OD_PENDING_VERIFY)
            return OTA_ERR_STATE; /* like esp_ota_begin */
        if (size > FD_SLOT_SIZE)
            return OTA_ERR_NOSPACE;
        d->target = d->running ^ 1;
        if (resume == 0u) {
            ota_otadata_t before = d->od;
            unsigned w = 0;
            memset(d->slot[d->target], 0xff, FD_SLOT_SIZE);
            /* esp_ota_begin (ESP-IDF >= 5.5, rollback enabled) */
            if (d->invalidate_supported)
                (void)ota_od_invalidate_inactive(&d->od, d->running, &w);
            commit_od(d, &before, w);
        }
    } else {
        if (size > FD_CFG_SIZE)
            return OTA_ERR_NOSPACE;
        d->target = cfg_target(d, kind);
        if (resume == 0u)
            memset(d->cfg_slot[kind - 1u][d->target], 0xff, FD_CFG_SIZE);
    }
    d->writing = true;
    d->write_size = size;
    d->written = resume;
    return OTA_OK;
}

static uint8_t *slot_bytes(fake_dev_t *d, uint8_t kind, int s)
{
    return kind == 0u ? d->slot[s] : d->cfg_slot[kind - 1u][s];
}

static int p_slot_write(void *ctx, uint8_t kind, uint32_t off, const uint8_t *p, size_t n)
{
    fake_dev_t *d = D(ctx);
    uint8_t *dst = slot_bytes(d, kind, d->target);
    if (!d->writing || off != d->written || off + n > d->write_size)
        return OTA_ERR_FLASH;
    if (d->fail_write_at != 0 && ++d->nwrites == d->fail_write_at)
        return OTA_ERR_FLASH;
    if (power_cut(d)) {
        memcpy(dst + off, p, n / 2u); /* torn write */
        reset(d, FD_RESET_POWER);
    }
    memcpy(dst + off, p, n);
    d->written += (uint32_t)n;
    return OTA_OK;
}

static int p_slot_read(void *ctx, uint8_t kind, uint32_t off, uint8_t *buf, size_t n)
{
    fake_dev_t *d = D(ctx);
    if (off + n > (kind == 0u ? FD_SLOT_SIZE : FD_CFG_SIZE))
        return OTA_ERR_FLASH;
    memcpy(buf, slot_bytes(d, kind, kind == 0u ? d->running ^ 1 : cfg_target(d, kind)) + off, n);
    return OTA_OK;
}

static int p_slot_finish(void *ctx, uint8_t kind)
{
    fake_dev_t *d = D(ctx);
    if (d->fail_finish)
        return OTA_ERR_FLASH;
    /* like esp_ota_end: the image must look like an image */
    if (kind == 0u && !image_ok(d, d->running ^ 1))
        return OTA_ERR_FLASH;
    if (kind != 0u)
        d->cfg_len[kind - 1u][d->target] = d->written;
    d->writing = false;
    return OTA_OK;
}

static void p_slot_abort(void *ctx, uint8_t kind)
{
    (void)kind;
    D(ctx)->writing = false;
}

static int p_slot_activate(void *ctx, uint8_t kind)
{
    fake_dev_t *d = D(ctx);
    if (d->fail_activate)
        return OTA_ERR_FLASH;
    if (kind == 0u) {
        ota_otadata_t before = d->od;
        unsigned w;
        if (!image_ok(d, d->running ^ 1)) /* esp_ota_set_boot_partition validates */
            return OTA_ERR_FLASH;
        ota_od_set_boot(&d->od, d->running ^ 1, &w);
        commit_od(d, &before, w);
        return OTA_OK;
    } else {
        ota_cfgdata_t *c = &d->cd[kind - 1u], before = *c;
        uint8_t t = cfg_target(d, kind);
        ota_cfgdata_activate(c, t, d->cfg_len[kind - 1u][t], d->cfg_restart);
        commit_cfg(d, kind - 1u, &before);
        if (d->cfg_restart)
            return OTA_ACTIVATE_RESTART;
        app_config_changed(d);
        return OTA_OK;
    }
}

/* ---- port: boot -------------------------------------------------------- */

static int p_boot_state(void *ctx, uint8_t kind, ota_boot_info_t *bi)
{
    fake_dev_t *d = D(ctx);
    uint32_t st = OTA_OD_UNDEFINED;
    bi->reason = d->hw_reason;
    if (kind == 0u) {
        bi->running_slot = (uint8_t)d->running;
        (void)ota_od_state(&d->od, d->running, &st);
    } else {
        const ota_cfgdata_t *c = &d->cd[kind - 1u];
        bi->running_slot = c->active == OTA_CFG_NONE ? 1u : c->active;
        st = c->state;
    }
    bi->img_state = st == OTA_OD_PENDING_VERIFY ? OTA_IMG_PENDING_VERIFY
                    : st == OTA_OD_VALID        ? OTA_IMG_VALID
                                                : OTA_IMG_UNDEFINED;
    return OTA_OK;
}

static int p_confirm(void *ctx, uint8_t kind)
{
    fake_dev_t *d = D(ctx);
    if (d->fail_confirm)
        return OTA_ERR_IO;
    if (d->fail_confirms > 0) {
        d->fail_confirms--;
        return OTA_ERR_IO;
    }
    if (kind == 0u) {
        ota_otadata_t before = d->od;
        unsigned w;
        if (!ota_od_mark_valid(&d->od, &w))
            return OTA_ERR_IO;
        commit_od(d, &before, w);
    } else {
        ota_cfgdata_t *c = &d->cd[kind - 1u], before = *c;
        c->state = OTA_OD_VALID;
        commit_cfg(d, kind - 1u, &before);
    }
    return OTA_OK;
}

/* As the ESP-IDF port: unconfirmed, esp_ota_mark_app_invalid_rollback_and_
 * reboot; confirmed, esp_ota_set_boot_partition of the other slot (which
 * makes the old image NEW) and esp_restart. */
static int p_rollback(void *ctx, uint8_t kind)
{
    fake_dev_t *d = D(ctx);
    ota_otadata_t before = d->od;
    bool ok[2];
    unsigned w;
    uint32_t st = OTA_OD_UNDEFINED;
    if (kind != 0u) {
        ota_cfgdata_t *c = &d->cd[kind - 1u], cb = *c;
        ota_cfgdata_rollback(c);
        commit_cfg(d, kind - 1u, &cb);
        app_config_changed(d);
        return OTA_OK;
    }
    ok_slots(d, ok);
    (void)ota_od_state(&d->od, d->running, &st);
    if (st == OTA_OD_PENDING_VERIFY) {
        if (!ota_od_mark_invalid(&d->od, ok, &w))
            return OTA_ERR_STATE;
    } else {
        /* esp_ota_set_boot_partition validates the other image */
        if (!ok[d->running ^ 1])
            return OTA_ERR_STATE;
        ota_od_set_boot(&d->od, d->running ^ 1, &w);
    }
    commit_od(d, &before, w);
    reset(d, FD_RESET_ROLLBACK);
    return OTA_OK;
}

static int p_invalidate_other(void *ctx)
{
    fake_dev_t *d = D(ctx);
    ota_otadata_t before = d->od;
    unsigned w;
    if (!ota_od_invalidate_inactive(&d->od, d->running, &w))
        return OTA_ERR_IO;
    commit_od(d, &before, w);
    return OTA_OK;
}

static void p_reboot(void *ctx)
{
    reset(D(ctx), FD_RESET_REBOOT);
}

/* ---- port: hashes (every start ends) ----------------------------------- */

static int open_slot(fake_dev_t *d, const void *h)
{
    int i;
    for (i = 0; i < FD_HASHES; i++)
        if (d->open_hash[i] == h)
            return i;
    return -1;
}

static int p_sha_start(void *ctx, ota_sha256_t *h)
{
    fake_dev_t *d = D(ctx);
    int i = open_slot(d, h);
    if (i >= 0) {
        d->hash_leaks++; /* started again, never ended: leaked on ESP-IDF 6 */
    } else if ((i = open_slot(d, NULL)) >= 0) {
        d->open_hash[i] = h;
    } else {
        d->hash_leaks++;
    }
    return ota_mbedtls_sha256_start(ctx, h);
}

static int p_sha_update(void *ctx, ota_sha256_t *h, const uint8_t *p, size_t n)
{
    fake_dev_t *d = D(ctx);
    if (open_slot(d, h) < 0)
        d->hash_leaks++; /* used without a start */
    if (d->fail_hash_update != 0 && ++d->nhash_updates == d->fail_hash_update)
        return OTA_ERR_CRYPTO;
    return ota_mbedtls_sha256_update(ctx, h, p, n);
}

static void hash_end(fake_dev_t *d, const void *h)
{
    int i = open_slot(d, h);
    if (i >= 0)
        d->open_hash[i] = NULL;
}

static int p_sha_finish(void *ctx, ota_sha256_t *h, uint8_t out[32])
{
    hash_end(D(ctx), h);
    return ota_mbedtls_sha256_finish(ctx, h, out);
}

static void p_sha_abort(void *ctx, ota_sha256_t *h)
{
    hash_end(D(ctx), h);
    ota_mbedtls_sha256_abort(ctx, h);
}

/* ---- port: kv, clock, app ---------------------------------------------- */

static fd_kv_t *kv_find(fake_dev_t *d, const char *key, bool create)
{
    int i;
    for (i = 0; i < FD_KV_KEYS; i++)
        if (d->kv[i].used && strcmp(d->kv[i].key, key) == 0)
            return &d->kv[i];
    for (i = 0; create && i < FD_KV_KEYS; i++) {
        if (!d->kv[i].used) {
            snprintf(d->kv[i].key, sizeof(d->kv[i].key), "%s", key);
            return &d->kv[i];
        }
    }
    return NULL;
}

static int p_kv_get(void *ctx, const char *key, uint8_t *buf, size_t *len)
{
    fd_kv_t *k = kv_find(D(ctx), key, false);
    if (k == NULL)
        return OTA_ERR_NOT_FOUND;
    if (*len < k->len)
        return OTA_ERR_NOSPACE;
    memcpy(buf, k->val, k->len);
    *len = k->len;
    return OTA_OK;
}

static int p_kv_set(void *ctx, const char *key, const uint8_t *buf, size_t len)
{
    fake_dev_t *d = D(ctx);
    fd_kv_t *k = kv_find(d, key, true);
    if (d->fail_kv || k == NULL || len > sizeof(k->val))
        return OTA_ERR_IO;
    if (power_cut(d))
        reset(d, FD_RESET_POWER); /* atomic: the old value stays */
    memcpy(k->val, buf, len);
    k->len = len;
    k->used = true;
    return OTA_OK;
}

static uint64_t p_now(void *ctx)
{
    fake_dev_t *d = D(ctx);
    return d->now - d->boot_at;
}

static uint64_t p_unix(void *ctx)
{
    fake_dev_t *d = D(ctx);
    return d->unix_s != 0u ? d->unix_s + d->now / 1000u : 0u;
}

static uint8_t p_health(void *ctx)
{
    return D(ctx)->app_health;
}

static uint32_t p_heap(void *ctx)
{
    (void)ctx;
    return 123456u;
}

/* ---- device lifecycle -------------------------------------------------- */

void fd_init(fake_dev_t *d, const char *v1)
{
    memset(d, 0, sizeof(*d));
    d->port.ctx = d;
    d->port.kinds = 1u << OTA_KIND_CONFIG | 1u << OTA_KIND_FLAGS;
    d->port.mqtt_publish = p_publish;
    d->port.mqtt_subscribe = p_subscribe;
    d->port.slot_begin = p_slot_begin;
    d->port.slot_write = p_slot_write;
    d->port.slot_read = p_slot_read;
    d->port.slot_finish = p_slot_finish;
    d->port.slot_abort = p_slot_abort;
    d->port.slot_activate = p_slot_activate;
    d->port.boot_state = p_boot_state;
    d->port.confirm = p_confirm;
    d->port.rollback = p_rollback;
    d->port.invalidate_other = p_invalidate_other;
    d->port.reboot = p_reboot;
    d->port.sha256_start = p_sha_start;
    d->port.sha256_update = p_sha_update;
    d->port.sha256_finish = p_sha_finish;
    d->port.sha256_abort = p_sha_abort;
    d->port.ecdsa_p256_verify = ota_mbedtls_ecdsa_p256_verify;
    d->port.kv_get = p_kv_get;
    d->port.kv_set = p_kv_set;
    d->port.now_ms = p_now;
    d->port.unix_time = p_unix;
    d->port.app_health = p_health;
    d->port.free_heap = p_heap;
    tk_keygen(&d->key, 1);
    memcpy(d->pubs[0], d->key.pub, 65);
    d->cfg.port = &d->port;
    d->cfg.device_id = "dev-1";
    d->cfg.hardware = "esp32-v2";
    d->cfg.bootloader_version = "2.1.0";
    d->cfg.keys = (const uint8_t(*)[65])d->pubs;
    d->cfg.nkeys = 1;
    d->cfg.settings.request_timeout_ms = 2000;
    d->cfg.settings.heartbeat_ms = 10000;
    d->cfg.settings.trial_timeout_ms = 20000;
    d->cfg.settings.probation_ms = 60000;
    d->cfg.settings.reboot_window_ms = 30000;
    d->cfg.settings.wdt_window_ms = 60000;
    d->cfg.settings.health_fail_ms = 12000;
    d->cfg.settings.no_broker_ms = 30000;
    d->cfg.settings.trial_persist_ms = 3000;
    d->cfg.settings.block_size = 1024;
    d->cfg.settings.window = 4;
    tk_image(d->slot[0], 8192, OTA_SIM_HEALTHY, 0, v1, 7);
    memset(d->slot[1], 0xff, FD_SLOT_SIZE);
    /* as the bootloader leaves a fresh device after its first start */
    ota_od_init(&d->od);
    ota_od_set(&d->od, 0, 1, OTA_OD_VALID);
    d->invalidate_supported = true;
    ota_cfgdata_init(&d->cd[0]);
    ota_cfgdata_init(&d->cd[1]);
    d->link_up = true;
    d->offer_on_subscribe = true;
    d->unix_s = 1764000000u;
    d->hw_reason = OTA_BOOT_POWER_ON;
}

static void after_reset(fake_dev_t *d, int why)
{
    d->connected = false;
    d->nin = 0;
    d->nout = 0; /* what was not sent is gone with the RAM */
    d->has_unacked = false;
    d->writing = false;
    if (d->offline_after_reset) {
        d->offline_after_reset = false;
        d->link_up = false;
    }
    d->hw_reason = why == FD_RESET_POWER ? OTA_BOOT_POWER_ON : OTA_BOOT_SOFTWARE;
    d->now += 100; /* the restart itself */
}

void fd_boot(fake_dev_t *d)
{
    int k;
    if (setjmp(d->jb) != 0)
        after_reset(d, d->last_reset);
    memset(d->open_hash, 0, sizeof(d->open_hash)); /* RAM is gone */
    d->port.invalidate_other = d->invalidate_supported ? p_invalidate_other : NULL;
    for (;;) {
        bool ok[2];
        ota_otadata_t before = d->od;
        ota_sim_header_t h;
        unsigned w;
        int s;
        ok_slots(d, ok);
        s = ota_od_boot(&d->od, ok, &w);
        commit_od(d, &before, w);
        if (s < 0) {
            d->running = -1; /* bricked: tests check for this */
            return;
        }
        d->running = s;
        /* the application starts its configurations as the bootloader
         * starts images */
        for (k = 0; k < 2; k++) {
            ota_cfgdata_t cb = d->cd[k];
            if (ota_cfgdata_boot(&d->cd[k]))
                commit_cfg(d, k, &cb);
        }
        d->boots++;
        d->boot_at = d->now;
        if (d->cfg_allowed[0] != NULL) {
            uint32_t n;
            const uint8_t *c = fd_config(d, 1, &n);
            bool ok = (n == 0u && d->cfg_allowed_len[0] == 0u) ||
                      (n == d->cfg_allowed_len[0] && memcmp(c, d->cfg_allowed[0], n) == 0) ||
                      (n == d->cfg_allowed_len[1] && memcmp(c, d->cfg_allowed[1], n) == 0);
            d->cfg_mixed += !ok;
        }
        ota_sim_header_parse(d->slot[s], FD_SLOT_SIZE, &h);
        snprintf(d->version, sizeof(d->version), "%s", h.version);
        if (h.behaviour == OTA_SIM_CRASH) {
            d->hw_reason = OTA_BOOT_PANIC;
            d->now += 200;
            continue;
        }
        if (h.behaviour == OTA_SIM_HANG) {
            d->hw_reason = OTA_BOOT_WATCHDOG;
            d->now += 3000;
            continue;
        }
        compute_health(d);
        break;
    }
    d->cfg.fw_version = d->version;
    if (ota_agent_init(&d->agent, &d->cfg) != OTA_OK) {
        d->running = -1;
        return;
    }
    ota_agent_on_boot(&d->agent);
    d->hw_reason = OTA_BOOT_POWER_ON;
}

#define FD_CALL(d, stmt)                                                                  \
    do {                                                                                  \
        if (setjmp((d)->jb) == 0) {                                                       \
            stmt;                                                                         \
        } else {                                                                          \
            after_reset((d), (d)->last_reset);                                            \
            fd_boot(d);                                                                   \
        }                                                                                 \
    } while (0)

void fd_connect(fake_dev_t *d)
{
    if (!d->link_up || d->connected || d->running < 0)
        return;
    d->connected = true;
    if (d->has_unacked && !d->no_lib_resend && d->nout < FD_MAX_OUT)
        d->out[d->nout++] = d->unacked; /* the client's DUP resend */
    d->has_unacked = false;
    FD_CALL(d, ota_agent_on_connect(&d->agent));
}

void fd_disconnect(fake_dev_t *d)
{
    if (!d->connected)
        return;
    d->connected = false;
    d->nin = 0;
    d->nout = 0; /* unsent and unacknowledged: lost with the connection */
    FD_CALL(d, ota_agent_on_disconnect(&d->agent));
}

/* ---- broker peer ------------------------------------------------------- */

typedef struct kv_u {
    uint64_t u[16];
    const char *s[16];
    size_t slen[16];
} kv_u_t;

static void decode_map(const uint8_t *p, size_t n, kv_u_t *o)
{
    ota_cbor_reader_t r;
    ota_cbor_map_t m;
    uint64_t key;
    memset(o, 0, sizeof(*o));
    ota_cbor_reader_init(&r, p, n);
    if (ota_cbor_map_begin(&m, &r) != OTA_OK)
        return;
    while (ota_cbor_map_next(&m, &key) == 1) {
        ota_cbor_reader_t peek = r;
        uint8_t major;
        uint64_t arg;
        if (ota_cbor_read_head(&peek, &major, &arg) != OTA_OK || key >= 16u)
            return;
        if (major == OTA_CBOR_UINT) {
            ota_cbor_read_uint(&r, &o->u[key]);
        } else if (major == OTA_CBOR_TSTR) {
            ota_cbor_read_tstr(&r, &o->s[key], &o->slen[key]);
        } else if (major == OTA_CBOR_BSTR) {
            const uint8_t *b;
            ota_cbor_read_bstr(&r, &b, &o->slen[key]);
            o->s[key] = (const char *)b;
        } else {
            ota_cbor_skip(&r);
        }
    }
}

static void serve(fake_dev_t *d, const fd_out_t *o)
{
    kv_u_t m;
    uint32_t off, bs, i;
    static uint8_t buf[OTA_CFG_BLOCK_SIZE + 512];
    decode_map(o->payload, o->len, &m);
    if (d->req_boot != d->boots) {
        d->req_boot = d->boots;
        if (m.u[2] != 0u && d->requests > 0)
            d->resumed_from = (uint32_t)m.u[2];
    }
    if (d->requests < 512) {
        d->req_offsets[d->requests] = (uint32_t)m.u[2];
        d->req_counts[d->requests] = (uint32_t)m.u[4];
        d->req_times[d->requests] = d->now;
    }
    d->requests++;
    if (d->drop_all || d->image == NULL)
        return;
    if (d->blk_error) {
        size_t n = tk_block_error(buf, sizeof(buf), (uint32_t)m.u[5], (uint32_t)m.u[2],
                                  (unsigned)d->blk_error, d->blk_retry_ms, "test");
        fd_push(d, "ota/blk", buf, n);
        if (d->blk_errors_left > 0 && --d->blk_errors_left == 0)
            d->blk_error = 0;
        return;
    }
    off = (uint32_t)m.u[2];
    bs = d->served_block_size ? d->served_block_size : (uint32_t)m.u[3];
    if (d->served_window != 0u && m.u[4] > d->served_window)
        m.u[4] = d->served_window; /* "up to count" blocks (DESIGN §3) */
    if (d->served_window_for > 0 && --d->served_window_for == 0)
        d->served_window = 0;
    for (i = 0; i < m.u[4] && off < d->image_size; i++) {
        uint32_t len = d->image_size - off < bs ? d->image_size - off : bs;
        size_t n;
        d->blocks_sent++;
        if (d->drop_every && d->blocks_sent % d->drop_every == 0) {
            off += len;
            continue;
        }
        n = tk_block(buf, sizeof(buf), (uint32_t)m.u[5], off, d->image_size, d->image + off, len);
        if (d->corrupt > 0 && off >= 2048u && off < 2048u + bs) {
            buf[n - 1] ^= 0x55u;
            d->corrupt--;
        }
        fd_push(d, "ota/blk", buf, n);
        off += len;
    }
}

/* The broker's side of an event: recorded (and acknowledged) unless the
 * test makes its store fail. */
static void take_event(fake_dev_t *d, const fd_out_t *o)
{
    kv_u_t m;
    volatile uint8_t reason = 0;
    if (d->ev_publishes < FD_MAX_EVENTS)
        d->ev_times[d->ev_publishes] = d->now;
    d->ev_publishes++;
    if (d->ev_no_puback) {
        d->unacked = *o; /* until a PUBACK, the client may send it again */
        d->has_unacked = true;
        return;
    }
    d->has_unacked = false;
    if (d->ev_fail > 0) {
        d->ev_fail--;
        reason = d->ev_fail_code;
    }
    if (reason == 0u && d->nev < FD_MAX_EVENTS) {
        fd_event_t *e = &d->ev[d->nev++];
        decode_map(o->payload, o->len, &m);
        e->code = (unsigned)m.u[1];
        e->error = (unsigned)m.u[5];
        e->progress = (unsigned)m.u[4];
        snprintf(e->detail, sizeof(e->detail), "%.*s", (int)m.slen[6], m.s[6] ? m.s[6] : "");
        snprintf(e->rollout, sizeof(e->rollout), "%.*s", (int)m.slen[2], m.s[2] ? m.s[2] : "");
    }
    FD_CALL(d, ota_agent_on_puback(&d->agent, o->id, reason));
}

static void pump(fake_dev_t *d)
{
    int i;
    for (i = 0; i < d->nout; i++) {
        fd_out_t o = d->out[i];
        kv_u_t m;
        if (ends_with(o.topic, "/ev")) {
            take_event(d, &o);
        } else if (ends_with(o.topic, "/birth")) {
            decode_map(o.payload, o.len, &m);
            d->births++;
            d->last_birth_reason = (unsigned)m.u[5];
            d->last_birth_state = (unsigned)m.u[7];
            d->last_birth_slot = (unsigned)m.u[4];
            d->last_birth_guard = m.u[12];
            d->last_birth_sv = (unsigned)m.u[11];
            d->saw_committed |= m.u[7] == OTA_STATE_COMMITTED;
            snprintf(d->last_birth_version, sizeof(d->last_birth_version), "%.*s",
                     (int)m.slen[1], m.s[1] ? m.s[1] : "");
        } else if (ends_with(o.topic, "/hb")) {
            decode_map(o.payload, o.len, &m);
            d->heartbeats++;
            d->last_hb_state = (unsigned)m.u[6];
            d->last_hb_health = (unsigned)m.u[2];
            d->saw_committed |= m.u[6] == OTA_STATE_COMMITTED;
        } else if (ends_with(o.topic, "/ota/get")) {
            serve(d, &o);
        }
    }
    d->nout = 0;
}

void fd_step(fake_dev_t *d)
{
    int i, n;
    ota_sim_header_t h;
    if (d->running < 0)
        return;
    if (!d->connected && d->link_up)
        fd_connect(d);
    if (d->connected && !d->link_up)
        fd_disconnect(d);
    pump(d);
    n = d->nin;
    for (i = 0; i < n && i < d->nin; i++) {
        fd_in_t *m = &d->in[i];
        FD_CALL(d, ota_agent_on_message(&d->agent, m->topic, m->payload, m->len));
        if (!d->connected)
            break; /* reset: the rest is lost */
    }
    if (d->nin >= n) {
        memmove(d->in, d->in + n, sizeof(d->in[0]) * (size_t)(d->nin - n));
        d->nin -= n;
    } else {
        d->nin = 0;
    }
    pump(d);
    d->now += 100;
    /* the running simulated image misbehaves later */
    if (ota_sim_header_parse(d->slot[d->running], FD_SLOT_SIZE, &h) && h.delay_s != 0u &&
        d->now - d->boot_at >= (uint64_t)h.delay_s * 1000u) {
        if (h.behaviour == OTA_SIM_CRASH_LATER) {
            d->resets[0]++; /* a crash of the application */
            after_reset(d, FD_RESET_REBOOT);
            d->hw_reason = OTA_BOOT_PANIC;
            fd_boot(d);
            return;
        }
        if (h.behaviour == OTA_SIM_HEALTH_FAIL_LATER)
            d->app_health = 0;
    }
    FD_CALL(d, ota_agent_tick(&d->agent));
    pump(d);
}

bool fd_run_until(fake_dev_t *d, bool (*pred)(fake_dev_t *), uint64_t max_ms)
{
    uint64_t end = d->now + max_ms;
    while (d->now < end) {
        if (pred(d))
            return true;
        if (d->running < 0)
            return false;
        fd_step(d);
    }
    return pred(d);
}

void fd_run_for(fake_dev_t *d, uint64_t ms)
{
    uint64_t end = d->now + ms;
    while (d->now < end && d->running >= 0)
        fd_step(d);
}

void fd_offer_kind(fake_dev_t *d, uint8_t *image, uint32_t size, const char *version,
                   const char *rollout, unsigned mode, uint64_t seq, uint32_t sv, uint8_t kind,
                   uint32_t max_window)
{
    tk_manifest_t m;
    uint8_t payload[512], cose[1024];
    size_t plen, clen;
    memset(&m, 0, sizeof(m));
    m.seq = seq;
    m.version = version;
    m.build = "build-1";
    m.targets[0] = "esp32-v2";
    m.targets[1] = "esp32-v3";
    m.ntargets = 2;
    m.min_bootloader = "2.0.0";
    m.size = size;
    tk_sha256(image, size, m.digest);
    m.secure_version = sv;
    m.kind = kind;
    plen = tk_manifest_payload(&m, payload, sizeof(payload));
    clen = tk_sign(&d->key, payload, plen, cose, sizeof(cose));
    d->image = image;
    d->image_size = size;
    d->offer_len = tk_offer_window(d->offer, sizeof(d->offer), rollout, cose, clen, mode, 0, 0,
                                   max_window);
    if (d->connected)
        fd_push(d, "ota/manifest", d->offer, d->offer_len);
}

void fd_offer_image(fake_dev_t *d, uint8_t *image, uint32_t size, const char *version,
                    const char *rollout, unsigned mode, uint64_t seq, uint32_t sv)
{
    fd_offer_kind(d, image, size, version, rollout, mode, seq, sv, 0, 0);
}

void fd_dump_events(const fake_dev_t *d)
{
    int i;
    for (i = 0; i < d->nev; i++)
        fprintf(stderr, "  ev %u err %u pct %u %s [%s]\n", d->ev[i].code, d->ev[i].error,
                d->ev[i].progress, d->ev[i].detail, d->ev[i].rollout);
}

bool fd_has_event(const fake_dev_t *d, unsigned code, unsigned error)
{
    int i;
    for (i = 0; i < d->nev; i++)
        if (d->ev[i].code == code && (error == 0u || d->ev[i].error == error))
            return true;
    return false;
}

int fd_count_event(const fake_dev_t *d, unsigned code)
{
    int i, c = 0;
    for (i = 0; i < d->nev; i++)
        c += d->ev[i].code == code;
    return c;
}

const char *fd_running_version(const fake_dev_t *d)
{
    return d->version;
}

const uint8_t *fd_config(const fake_dev_t *d, uint8_t kind, uint32_t *size)
{
    const ota_cfgdata_t *c = &d->cd[kind - 1u];
    if (c->active == OTA_CFG_NONE) {
        *size = 0;
        return NULL;
    }
    *size = c->size[c->active];
    return d->cfg_slot[kind - 1u][c->active];
}

bool fd_bootable(const fake_dev_t *d, int s)
{
    int i;
    for (i = 0; i < 2; i++) {
        const ota_od_entry_t *e = &d->od.e[i];
        ota_otadata_t one;
        ota_od_init(&one);
        ota_od_set(&one, 0, e->seq, e->state);
        if (e->seq != OTA_OD_ERASED && (int)((e->seq - 1u) % 2u) == s &&
            ota_od_active(&one) == 0 && one.e[0].crc == e->crc)
            return true;
    }
    return false;
}

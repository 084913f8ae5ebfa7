/* fake_port.c - see fake_port.h. */
#include "fake_port.h"

#include <stdio.h>
#include <string.h>

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
    return OTA_OK;
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

/* ---- port: slots ------------------------------------------------------- */

static bool power_cut(fake_dev_t *d)
{
    d->pwrites++;
    if (d->cut_at != 0 && !d->cut_done && d->pwrites == d->cut_at) {
        d->cut_done = true;
        return true;
    }
    return false;
}

static int p_slot_begin(void *ctx, uint32_t size, uint32_t resume)
{
    fake_dev_t *d = D(ctx);
    if (d->fail_begin)
        return OTA_ERR_FLASH;
    if (d->od.state[d->running] == OTA_SLOT_PENDING_VERIFY)
        return OTA_ERR_STATE; /* like esp_ota_begin */
    if (size > FD_SLOT_SIZE)
        return OTA_ERR_NOSPACE;
    d->target = d->running ^ 1;
    if (resume == 0u) {
        memset(d->slot[d->target], 0xff, FD_SLOT_SIZE);
        d->od.state[d->target] = OTA_SLOT_UNDEFINED;
    }
    d->writing = true;
    d->write_size = size;
    d->written = resume;
    return OTA_OK;
}

static int p_slot_write(void *ctx, uint32_t off, const uint8_t *p, size_t n)
{
    fake_dev_t *d = D(ctx);
    if (!d->writing || off != d->written || off + n > d->write_size)
        return OTA_ERR_FLASH;
    if (d->fail_write_at != 0 && ++d->nwrites == d->fail_write_at)
        return OTA_ERR_FLASH;
    if (power_cut(d)) {
        memcpy(&d->slot[d->target][off], p, n / 2u); /* torn write */
        reset(d, FD_RESET_POWER);
    }
    memcpy(&d->slot[d->target][off], p, n);
    d->written += (uint32_t)n;
    return OTA_OK;
}

static int p_slot_read(void *ctx, uint32_t off, uint8_t *buf, size_t n)
{
    fake_dev_t *d = D(ctx);
    if (off + n > FD_SLOT_SIZE)
        return OTA_ERR_FLASH;
    memcpy(buf, &d->slot[d->running ^ 1][off], n);
    return OTA_OK;
}

static int p_slot_finish(void *ctx)
{
    fake_dev_t *d = D(ctx);
    ota_sim_header_t h;
    if (d->fail_finish)
        return OTA_ERR_FLASH;
    /* like esp_ota_end: the image must look like an image */
    if (!ota_sim_header_parse(d->slot[d->running ^ 1], FD_SLOT_SIZE, &h))
        return OTA_ERR_FLASH;
    d->writing = false;
    return OTA_OK;
}

static void p_slot_abort(void *ctx)
{
    D(ctx)->writing = false;
}

static int p_slot_activate(void *ctx)
{
    fake_dev_t *d = D(ctx);
    int t = d->running ^ 1;
    if (d->fail_activate)
        return OTA_ERR_FLASH;
    d->od.state[t] = OTA_SLOT_NEW;
    d->od.boot_slot = (uint8_t)t;
    return OTA_OK;
}

/* ---- port: boot -------------------------------------------------------- */

static bool image_ok(const fake_dev_t *d, int s)
{
    ota_sim_header_t h;
    return ota_sim_header_parse(d->slot[s], FD_SLOT_SIZE, &h);
}

static int p_boot_state(void *ctx, ota_boot_info_t *bi)
{
    fake_dev_t *d = D(ctx);
    uint8_t st = d->od.state[d->running], other = d->od.state[d->running ^ 1];
    bi->running_slot = (uint8_t)d->running;
    bi->img_state = st == OTA_SLOT_PENDING_VERIFY ? OTA_IMG_PENDING_VERIFY
                    : st == OTA_SLOT_VALID        ? OTA_IMG_VALID
                                                  : OTA_IMG_UNDEFINED;
    bi->reason = d->hw_reason;
    bi->other_slot_bootable =
        (other == OTA_SLOT_VALID || other == OTA_SLOT_UNDEFINED) && image_ok(d, d->running ^ 1);
    return OTA_OK;
}

static int p_confirm(void *ctx)
{
    fake_dev_t *d = D(ctx);
    if (d->fail_confirm)
        return OTA_ERR_IO;
    d->od.state[d->running] = OTA_SLOT_VALID;
    return OTA_OK;
}

static int p_rollback(void *ctx)
{
    fake_dev_t *d = D(ctx);
    int o = d->running ^ 1;
    uint8_t st = d->od.state[o];
    if (d->od.state[d->running] != OTA_SLOT_PENDING_VERIFY &&
        !((st == OTA_SLOT_VALID || st == OTA_SLOT_UNDEFINED) && image_ok(d, o)))
        return OTA_ERR_STATE;
    d->od.state[d->running] = OTA_SLOT_INVALID;
    d->od.boot_slot = (uint8_t)o;
    reset(d, FD_RESET_ROLLBACK);
    return OTA_OK;
}

static void p_reboot(void *ctx)
{
    reset(D(ctx), FD_RESET_REBOOT);
}

/* ---- port: kv, clock, app ---------------------------------------------- */

static int p_kv_get(void *ctx, const char *key, uint8_t *buf, size_t *len)
{
    fake_dev_t *d = D(ctx);
    if (strcmp(key, OTA_KV_STATE) != 0 || !d->kv_used)
        return OTA_ERR_NOT_FOUND;
    if (*len < d->kv_len)
        return OTA_ERR_NOSPACE;
    memcpy(buf, d->kv, d->kv_len);
    *len = d->kv_len;
    return OTA_OK;
}

static int p_kv_set(void *ctx, const char *key, const uint8_t *buf, size_t len)
{
    fake_dev_t *d = D(ctx);
    if (strcmp(key, OTA_KV_STATE) != 0 || len > sizeof(d->kv))
        return OTA_ERR_IO;
    if (power_cut(d))
        reset(d, FD_RESET_POWER); /* atomic: the old value stays */
    memcpy(d->kv, buf, len);
    d->kv_len = len;
    d->kv_used = true;
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
    d->port.reboot = p_reboot;
    d->port.sha256_start = ota_mbedtls_sha256_start;
    d->port.sha256_update = ota_mbedtls_sha256_update;
    d->port.sha256_finish = ota_mbedtls_sha256_finish;
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
    d->od.boot_slot = 0;
    d->link_up = true;
    d->offer_on_subscribe = true;
    d->unix_s = 1764000000u;
    d->hw_reason = OTA_BOOT_POWER_ON;
}

static void after_reset(fake_dev_t *d, int why)
{
    d->connected = false;
    d->nin = 0;
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
    if (setjmp(d->jb) != 0)
        after_reset(d, d->last_reset);
    for (;;) {
        bool ok[2] = {image_ok(d, 0), image_ok(d, 1)};
        ota_sim_header_t h;
        int s = ota_otadata_select(&d->od, ok);
        if (s < 0) {
            d->running = -1; /* bricked: tests check for this */
            return;
        }
        d->running = s;
        d->boots++;
        d->boot_at = d->now;
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
        d->app_health = h.behaviour == OTA_SIM_HEALTH_FAIL ? 0u : 3u;
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
    FD_CALL(d, ota_agent_on_connect(&d->agent));
}

void fd_disconnect(fake_dev_t *d)
{
    if (!d->connected)
        return;
    d->connected = false;
    d->nin = 0;
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
        return;
    }
    off = (uint32_t)m.u[2];
    bs = d->served_block_size ? d->served_block_size : (uint32_t)m.u[3];
    if (d->served_window != 0u && m.u[4] > d->served_window)
        m.u[4] = d->served_window; /* "up to count" blocks (DESIGN §3) */
    for (i = 0; i < m.u[4] && off < d->image_size; i++) {
        uint32_t len = d->image_size - off < bs ? d->image_size - off : bs;
        size_t n;
        d->blocks_sent++;
        if (d->drop_every && d->blocks_sent % d->drop_every == 0) {
            off += len;
            continue;
        }
        n = tk_block(buf, sizeof(buf), (uint32_t)m.u[5], off, d->image_size, d->image + off, len);
        if (d->corrupt && off >= 2048u && off < 2048u + bs) {
            buf[n - 1] ^= 0x55u;
        }
        fd_push(d, "ota/blk", buf, n);
        off += len;
    }
}

static void pump(fake_dev_t *d)
{
    int i;
    for (i = 0; i < d->nout; i++) {
        const fd_out_t *o = &d->out[i];
        kv_u_t m;
        if (ends_with(o->topic, "/ev")) {
            decode_map(o->payload, o->len, &m);
            if (d->nev < FD_MAX_EVENTS) {
                fd_event_t *e = &d->ev[d->nev++];
                e->code = (unsigned)m.u[1];
                e->error = (unsigned)m.u[5];
                e->progress = (unsigned)m.u[4];
                snprintf(e->detail, sizeof(e->detail), "%.*s", (int)m.slen[6],
                         m.s[6] ? m.s[6] : "");
            }
        } else if (ends_with(o->topic, "/birth")) {
            decode_map(o->payload, o->len, &m);
            d->births++;
            d->last_birth_reason = (unsigned)m.u[5];
            d->last_birth_state = (unsigned)m.u[7];
            d->last_birth_slot = (unsigned)m.u[4];
            snprintf(d->last_birth_version, sizeof(d->last_birth_version), "%.*s",
                     (int)m.slen[1], m.s[1] ? m.s[1] : "");
        } else if (ends_with(o->topic, "/hb")) {
            d->heartbeats++;
        } else if (ends_with(o->topic, "/ota/get")) {
            serve(d, o);
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

void fd_offer_image(fake_dev_t *d, uint8_t *image, uint32_t size, const char *version,
                    const char *rollout, unsigned mode, uint64_t seq, uint32_t sv)
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
    plen = tk_manifest_payload(&m, payload, sizeof(payload));
    clen = tk_sign(&d->key, payload, plen, cose, sizeof(cose));
    d->image = image;
    d->image_size = size;
    d->offer_len = tk_offer(d->offer, sizeof(d->offer), rollout, cose, clen, mode, 0, 0);
    if (d->connected)
        fd_push(d, "ota/manifest", d->offer, d->offer_len);
}

void fd_dump_events(const fake_dev_t *d)
{
    int i;
    for (i = 0; i < d->nev; i++)
        fprintf(stderr, "  ev %u err %u pct %u %s\n", d->ev[i].code, d->ev[i].error,
                d->ev[i].progress, d->ev[i].detail);
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

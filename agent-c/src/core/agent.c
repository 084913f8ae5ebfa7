/* agent.c - the OTA state machine (see ota_agent.h and README.md). */
#include "otamq/ota_agent.h"

#include <stddef.h>
#include <string.h>

#include "persist.h"

#define P(a) ((a)->port)

/* Event detail texts (event key 6); OTA_CFG_TEXT 0 leaves them out. */
#if OTA_CFG_TEXT
#define TXT(s) (s)
#else
#define TXT(s) NULL
#endif
#define OTA_STR_(x) #x
#define OTA_STR(x) OTA_STR_(x)
#define NOW(a) ((uint32_t)P(a)->now_ms(P(a)->ctx))

/* ---- small helpers ----------------------------------------------------- */

static bool copy_str(char *dst, size_t cap, const char *s, size_t n)
{
    if (n >= cap || memchr(s, 0, n) != NULL)
        return false;
    memcpy(dst, s, n);
    dst[n] = '\0';
    return true;
}

static uint64_t unix_now(const ota_agent_t *a)
{
    return P(a)->unix_time != NULL ? P(a)->unix_time(P(a)->ctx) : 0u;
}

/* Builds "<prefix>/<id>/<suffix>" in a->topic. */
static const char *topic(ota_agent_t *a, const char *suffix)
{
    size_t n = sizeof(OTA_CFG_TOPIC_PREFIX) - 1u, id = strlen(a->cfg.device_id);
    size_t s = strlen(suffix);
    memcpy(a->topic, OTA_CFG_TOPIC_PREFIX, n);
    a->topic[n++] = '/';
    memcpy(a->topic + n, a->cfg.device_id, id);
    n += id;
    a->topic[n++] = '/';
    memcpy(a->topic + n, suffix, s + 1u);
    return a->topic;
}

static int persist(ota_agent_t *a)
{
    size_t len;
    int rc = ota_persist_encode(&a->ps, a->tx, sizeof(a->tx), &len);
    if (rc == OTA_OK)
        rc = P(a)->kv_set(P(a)->ctx, OTA_KV_STATE, a->tx, len);
    return rc;
}

/* t has come (wrap-safe for times less than 24 days apart) */
static bool due(uint32_t now, uint32_t t)
{
    return (uint32_t)(now - t) < 0x80000000u;
}

static uint32_t trial_clock(const ota_agent_t *a)
{
    return a->trial_base_ms + (NOW(a) - a->boot_ms);
}

static uint32_t device_secure_version(const ota_agent_t *a)
{
    return a->ps.secure_version > a->cfg.secure_version ? a->ps.secure_version
                                                         : a->cfg.secure_version;
}

/* ---- events ------------------------------------------------------------ */

static void flush_events(ota_agent_t *a)
{
    uint16_t off = 0;
    if (!a->connected)
        return;
    while (off < a->evq_len) {
        uint16_t n = (uint16_t)((a->evq[off] << 8) | a->evq[off + 1u]);
        if (P(a)->mqtt_publish(P(a)->ctx, topic(a, "ev"), &a->evq[off + 2u], n, 1) != OTA_OK)
            break;
        off = (uint16_t)(off + 2u + n);
    }
    memmove(a->evq, a->evq + off, (size_t)(a->evq_len - off));
    a->evq_len = (uint16_t)(a->evq_len - off);
}

/* Queues an event about the current update (rollout and target version
 * from the persisted state) and publishes it when connected. When the queue
 * is full the oldest events are dropped. */
static void event_for(ota_agent_t *a, uint8_t code, int pct, uint8_t err, const char *detail,
                      const char *rollout, const char *version)
{
    ota_event_t ev;
    size_t len;
    uint8_t buf[OTA_CFG_EVENT_BUF < 160 ? OTA_CFG_EVENT_BUF : 160];

    ev.code = code;
    ev.rollout = rollout;
    ev.target_version = version;
    ev.progress = (int16_t)pct;
    ev.error = err;
    ev.detail = detail;
    ev.device_time = unix_now(a);
    if (ota_msg_encode_event(&ev, buf, sizeof(buf), &len) != OTA_OK) {
        ev.detail = NULL; /* too long: drop the detail, keep the event */
        if (ota_msg_encode_event(&ev, buf, sizeof(buf), &len) != OTA_OK)
            return;
    }
    while (a->evq_len != 0u && (size_t)a->evq_len + len + 2u > sizeof(a->evq)) {
        uint16_t n = (uint16_t)(2u + ((unsigned)a->evq[0] << 8 | a->evq[1]));
        memmove(a->evq, a->evq + n, (size_t)(a->evq_len - n));
        a->evq_len = (uint16_t)(a->evq_len - n);
    }
    if (len + 2u > sizeof(a->evq))
        return;
    a->evq[a->evq_len] = (uint8_t)(len >> 8);
    a->evq[a->evq_len + 1u] = (uint8_t)len;
    memcpy(a->evq + a->evq_len + 2u, buf, len);
    a->evq_len = (uint16_t)(a->evq_len + 2u + len);
    flush_events(a);
}

static void event(ota_agent_t *a, uint8_t code, int pct, uint8_t err, const char *detail)
{
    event_for(a, code, pct, err, detail, a->ps.rollout[0] ? a->ps.rollout : NULL,
              a->ps.version[0] ? a->ps.version : NULL);
}

/* ---- outgoing messages ------------------------------------------------- */

static uint8_t health_bits(ota_agent_t *a)
{
    uint8_t h = P(a)->app_health != NULL ? (uint8_t)(P(a)->app_health(P(a)->ctx) & 3u)
                                         : (uint8_t)(OTA_HEALTH_APP | OTA_HEALTH_RESOURCES);
    if (a->connected)
        h |= OTA_HEALTH_MESSAGING;
    return h;
}

static void send_birth(ota_agent_t *a)
{
    ota_birth_t b;
    size_t len;
    b.fw_version = a->cfg.fw_version;
    b.hardware = a->cfg.hardware;
    b.bootloader = a->cfg.bootloader_version;
    b.running_slot = a->boot.running_slot;
    b.boot_reason = a->boot_reason;
    b.boots_since_commit = a->ps.boots_since_commit;
    b.ota_state = a->ps.state;
    b.agent_version = OTA_AGENT_VERSION;
    b.connectivity = a->cfg.connectivity;
    b.utc_offset_min = a->cfg.utc_offset_min;
    b.secure_version = device_secure_version(a);
    if (ota_msg_encode_birth(&b, a->tx, sizeof(a->tx), &len) == OTA_OK)
        (void)P(a)->mqtt_publish(P(a)->ctx, topic(a, "birth"), a->tx, len, 1);
}

static void send_heartbeat(ota_agent_t *a)
{
    ota_heartbeat_t hb;
    size_t len;
    uint32_t now = NOW(a);
    memset(&hb, 0, sizeof(hb));
    hb.uptime_s = (uint32_t)(P(a)->now_ms(P(a)->ctx) / 1000u);
    hb.health = health_bits(a);
    hb.wdt_resets = a->ps.wdt_since_commit;
    if (P(a)->free_heap != NULL) {
        hb.has_free_heap = true;
        hb.free_heap = P(a)->free_heap(P(a)->ctx);
    }
    if (P(a)->rssi != NULL)
        hb.has_rssi = P(a)->rssi(P(a)->ctx, &hb.rssi);
    hb.ota_state = a->ps.state;
    if (a->ps.state == OTA_STATE_DOWNLOADING) {
        hb.has_offset = true;
        hb.offset = a->next_off;
    }
    a->last_hb_ms = now;
    if (ota_msg_encode_heartbeat(&hb, a->tx, sizeof(a->tx), &len) == OTA_OK &&
        P(a)->mqtt_publish(P(a)->ctx, topic(a, "hb"), a->tx, len, 0) == OTA_OK)
        a->hb_sent = true;
}

static void send_request(ota_agent_t *a)
{
    ota_block_request_t rq;
    size_t len;
    uint32_t left = a->ps.size - a->next_off;
    uint32_t blocks = (left + a->ps.block_size - 1u) / a->ps.block_size;

    a->retry_wait = false;
    a->req_id++;
    rq.digest = a->ps.digest;
    rq.offset = a->next_off;
    rq.size = a->ps.block_size;
    rq.count = blocks < a->set.window ? blocks : a->set.window;
    rq.req_id = a->req_id;
    a->req_count = rq.count;
    a->req_active = true;
    a->req_deadline_ms = NOW(a) + a->set.request_timeout_ms;
    if (ota_msg_encode_block_request(&rq, a->tx, sizeof(a->tx), &len) == OTA_OK)
        (void)P(a)->mqtt_publish(P(a)->ctx, topic(a, "ota/get"), a->tx, len, 0);
    /* a failed publish is handled like a lost answer: the timeout retries */
}

/* ---- download ---------------------------------------------------------- */

static void set_state(ota_agent_t *a, uint8_t st)
{
    a->ps.state = st;
    (void)persist(a);
}

static void abandon(ota_agent_t *a)
{
    a->req_active = false;
    a->retry_wait = false;
    if (P(a)->slot_abort != NULL)
        P(a)->slot_abort(P(a)->ctx);
}

/* The current download or verified image is given up: state FAILED, and the
 * same rollout+digest will not be retried when offered again. */
static void fail_download(ota_agent_t *a, uint8_t err, const char *detail)
{
    abandon(a);
    a->ps.error = err;
    a->ps.flags |= OTA_PF_IGNORE_OFFER;
    set_state(a, OTA_STATE_FAILED);
    event(a, OTA_EV_DOWNLOAD_FAILED, -1, err, detail);
}

static void cancel(ota_agent_t *a, const char *detail)
{
    abandon(a);
    a->ps.error = OTA_E_CANCELLED;
    set_state(a, OTA_STATE_IDLE);
    event(a, OTA_EV_DOWNLOAD_FAILED, -1, OTA_E_CANCELLED, detail);
}

/* Completed tenths of the image, 0..9 (progress events every 10 %). */
static uint8_t decile(uint32_t off, uint32_t size)
{
    uint32_t d = size < 10u ? 0u : off / (size / 10u);
    return (uint8_t)(d > 9u ? 9u : d);
}

/* Hashes slot bytes [0, n) into a->img_hash, through a->tx. */
static int rehash(ota_agent_t *a, uint32_t n)
{
    uint32_t off = 0;
    int rc = P(a)->sha256_start(P(a)->ctx, &a->img_hash);
    while (rc == OTA_OK && off < n) {
        uint32_t chunk = n - off < (uint32_t)sizeof(a->tx) ? n - off : (uint32_t)sizeof(a->tx);
        rc = P(a)->slot_read(P(a)->ctx, off, a->tx, chunk);
        if (rc == OTA_OK)
            rc = P(a)->sha256_update(P(a)->ctx, &a->img_hash, a->tx, chunk);
        off += chunk;
    }
    return rc;
}

static void install(ota_agent_t *a)
{
    event(a, OTA_EV_INSTALL_STARTED, -1, 0, NULL);
    set_state(a, OTA_STATE_INSTALLING);
    if (P(a)->slot_activate(P(a)->ctx) != OTA_OK) {
        a->ps.error = OTA_E_FLASH;
        a->ps.flags |= OTA_PF_IGNORE_OFFER;
        set_state(a, OTA_STATE_FAILED);
        event(a, OTA_EV_INSTALL_COMPLETED, -1, OTA_E_FLASH, TXT("activate failed"));
        return;
    }
    event(a, OTA_EV_INSTALL_COMPLETED, -1, 0, NULL);
    a->ps.flags &= (uint8_t)~(OTA_PF_CONFIRMED | OTA_PF_ROLLBACK_REQ);
    a->ps.trial_ms = 0;
    a->ps.nboots = 0;
    a->ps.nwdt = 0;
    set_state(a, OTA_STATE_REBOOTING);
    event(a, OTA_EV_REBOOT_STARTED, -1, 0, NULL);
    P(a)->reboot(P(a)->ctx);
}

static void download_complete(ota_agent_t *a)
{
    uint8_t d[32];
    a->req_active = false;
    if (P(a)->sha256_finish(P(a)->ctx, &a->img_hash, d) != OTA_OK ||
        memcmp(d, a->ps.digest, sizeof(d)) != 0) {
        fail_download(a, OTA_E_DIGEST, TXT("digest mismatch"));
        return;
    }
    if (P(a)->slot_finish(P(a)->ctx) != OTA_OK) {
        fail_download(a, OTA_E_FLASH, TXT("image refused"));
        return;
    }
    a->ps.offset = a->ps.size;
    set_state(a, OTA_STATE_VERIFIED);
    event(a, OTA_EV_DOWNLOAD_COMPLETED, 100, 0, NULL);
    if (a->ps.install_mode == 0u)
        install(a);
}

/* A failed attempt (timeout or retryable block error): back off, or give
 * up after max_retries consecutive failures. */
static void retry_later(ota_agent_t *a, uint32_t at_least_ms)
{
    uint32_t backoff = a->set.backoff_min_ms;
    uint32_t i;
    a->req_active = false;
    if (++a->retries > a->set.max_retries) {
        fail_download(a, OTA_E_RETRIES, TXT("retries exhausted"));
        return;
    }
    for (i = 1; i < a->retries && backoff < a->set.backoff_max_ms; i++)
        backoff *= 2u;
    if (backoff > a->set.backoff_max_ms)
        backoff = a->set.backoff_max_ms;
    if (backoff < at_least_ms)
        backoff = at_least_ms;
    a->retry_wait = true;
    a->retry_at_ms = NOW(a) + backoff;
}

static int on_block(ota_agent_t *a, const uint8_t *payload, size_t len)
{
    ota_block_t b;
    int rc = ota_msg_decode_block(payload, len, &b);
    if (rc != OTA_OK)
        return rc;
    if (a->ps.state != OTA_STATE_DOWNLOADING || !a->req_active || b.req_id != a->req_id)
        return OTA_ERR_STATE; /* stale or unrequested: ignore */
    if (b.is_error) {
        if (b.error == OTA_BLKERR_RATE_LIMITED || b.error == OTA_BLKERR_INTERNAL) {
            retry_later(a, b.retry_ms);
        } else {
            fail_download(a, OTA_E_RETRIES,
                          b.error == OTA_BLKERR_NOT_ASSIGNED ? TXT("not assigned")
                          : b.error == OTA_BLKERR_UNKNOWN_IMAGE ? TXT("unknown image")
                          : b.error == OTA_BLKERR_OFFSET      ? TXT("offset out of range")
                                                               : TXT("refused by broker"));
        }
        return OTA_OK;
    }
    if (b.offset != a->next_off)
        return OTA_ERR_STATE; /* duplicate or out of order: wait / re-request */
    if (b.image_size != a->ps.size) {
        fail_download(a, OTA_E_DIGEST, TXT("image size mismatch"));
        return OTA_ERR_MSG;
    }
    if (b.data_len == 0u || b.data_len > a->ps.block_size || b.data_len > a->ps.size - b.offset)
        return OTA_ERR_MSG;
    if (P(a)->slot_write(P(a)->ctx, b.offset, b.data, b.data_len) != OTA_OK) {
        fail_download(a, OTA_E_FLASH, TXT("slot write failed"));
        return OTA_ERR_FLASH;
    }
    if (P(a)->sha256_update(P(a)->ctx, &a->img_hash, b.data, b.data_len) != OTA_OK) {
        fail_download(a, OTA_E_FLASH, TXT("hash failed"));
        return OTA_ERR_CRYPTO;
    }
    a->next_off += (uint32_t)b.data_len;
    a->retries = 0;
    a->req_deadline_ms = NOW(a) + a->set.request_timeout_ms;
    if (a->req_count > 0u)
        a->req_count--;
    if (a->next_off == a->ps.size) {
        download_complete(a);
        return OTA_OK;
    }
    {
        uint8_t dec = decile(a->next_off, a->ps.size);
        if (dec > a->pct_reported) {
            a->pct_reported = dec;
            event(a, OTA_EV_DOWNLOAD_PROGRESS, dec * 10, 0, NULL);
        }
    }
    if (a->req_count == 0u || a->next_off - a->ps.offset >= OTA_CFG_PERSIST_EVERY) {
        a->ps.offset = a->next_off;
        (void)persist(a);
    }
    if (a->req_count == 0u && a->connected)
        send_request(a);
    return OTA_OK;
}

/* Prepares the slot and the hash for ps (state DOWNLOADING) from
 * ps.offset, which is 0 for a new download. */
static int start_download(ota_agent_t *a)
{
    int rc;
    a->req_active = false;
    a->retry_wait = false;
    a->retries = 0;
    if (a->ps.offset != 0u) {
        rc = P(a)->slot_begin(P(a)->ctx, a->ps.size, a->ps.offset);
        if (rc == OTA_OK)
            rc = rehash(a, a->ps.offset);
        if (rc != OTA_OK) {
            if (P(a)->slot_abort != NULL)
                P(a)->slot_abort(P(a)->ctx);
            a->ps.offset = 0; /* cannot resume: start over */
        }
    }
    if (a->ps.offset == 0u) {
        rc = P(a)->slot_begin(P(a)->ctx, a->ps.size, 0);
        if (rc == OTA_OK)
            rc = P(a)->sha256_start(P(a)->ctx, &a->img_hash);
        if (rc != OTA_OK)
            return rc;
    }
    a->next_off = a->ps.offset;
    a->pct_reported = decile(a->next_off, a->ps.size);
    return OTA_OK;
}

/* ---- offers ------------------------------------------------------------ */

static void reject(ota_agent_t *a, const ota_offer_t *o, uint8_t err, const char *detail,
                   const ota_manifest_t *m)
{
    char rollout[OTA_CFG_ROLLOUT_MAX + 1];
    char version[OTA_CFG_VERSION_MAX + 1];
    bool have_r = copy_str(rollout, sizeof(rollout), o->rollout, o->rollout_len);
    bool have_v = m != NULL && m->version != NULL &&
                  copy_str(version, sizeof(version), m->version, m->version_len);
    event_for(a, OTA_EV_REJECTED, -1, err, detail, have_r ? rollout : NULL,
              have_v ? version : NULL);
}

static bool same_update(const ota_agent_t *a, const ota_offer_t *o, const uint8_t *digest)
{
    return strlen(a->ps.rollout) == o->rollout_len &&
           memcmp(a->ps.rollout, o->rollout, o->rollout_len) == 0 &&
           memcmp(a->ps.digest, digest, 32) == 0;
}

/* The checks of DESIGN §4, in order. Returns an event error code (0 = ok)
 * and sets *detail. */
static uint8_t check_manifest(ota_agent_t *a, const ota_offer_t *o, ota_cose_sign1_t *s,
                              ota_manifest_t *m, const char **detail)
{
    int rc, cmp;
    *detail = NULL;
    rc = ota_cose_parse(o->manifest, o->manifest_len, s);
    if (rc != OTA_OK) {
        *detail = "bad COSE_Sign1";
        return OTA_E_SIGNATURE;
    }
    rc = ota_cose_verify(s, P(a), a->keys, a->nkeys);
    if (rc != OTA_OK) {
        *detail = rc == OTA_ERR_UNKNOWN_KEY ? TXT("unknown key") : TXT("bad signature");
        return OTA_E_SIGNATURE;
    }
    if (ota_manifest_decode(s->payload, s->payload_len, m) != OTA_OK) {
        m->version = NULL;
        *detail = TXT("bad manifest");
        return OTA_E_VERSION;
    }
    if (!ota_manifest_has_target(m, a->cfg.hardware)) {
        *detail = TXT("hardware");
        return OTA_E_HARDWARE;
    }
    if (m->min_bootloader != NULL &&
        (ota_semver_cmp(a->cfg.bootloader_version, strlen(a->cfg.bootloader_version),
                        m->min_bootloader, m->min_bootloader_len, &cmp) != OTA_OK ||
         cmp < 0)) {
        *detail = TXT("bootloader too old");
        return OTA_E_HARDWARE;
    }
    if (m->kind != 0u) {
        *detail = TXT("unsupported kind");
        return OTA_E_VERSION;
    }
    if (m->version_len > OTA_CFG_VERSION_MAX) {
        *detail = TXT("version longer than " OTA_STR(OTA_CFG_VERSION_MAX) " bytes");
        return OTA_E_VERSION;
    }
    if (ota_semver_cmp(m->version, m->version_len, a->cfg.fw_version, strlen(a->cfg.fw_version),
                       &cmp) != OTA_OK) {
        *detail = TXT("bad version");
        return OTA_E_VERSION;
    }
    if (cmp <= 0 && !a->set.allow_downgrade) {
        *detail = cmp == 0 ? TXT("same version") : TXT("downgrade");
        return OTA_E_VERSION;
    }
    if (m->seq < a->ps.seq) {
        *detail = TXT("sequence");
        return OTA_E_VERSION;
    }
    if (m->secure_version < device_secure_version(a)) {
        *detail = TXT("secure version");
        return OTA_E_SECURE_VERSION;
    }
    return 0;
}

static int on_offer(ota_agent_t *a, const uint8_t *payload, size_t len)
{
    ota_offer_t o;
    ota_cose_sign1_t s;
    ota_manifest_t m;
    const char *detail;
    uint8_t err, st = a->ps.state;
    int rc;

    rc = ota_msg_decode_offer(payload, len, &o);
    if (rc != OTA_OK) {
        event_for(a, OTA_EV_REJECTED, -1, 0, TXT("bad offer"), NULL, NULL);
        return rc;
    }
    if (a->check_pending) {
        a->check_pending = false;
        event_for(a, OTA_EV_CHECK_COMPLETED, -1, 0, NULL, NULL, NULL);
    }
    /* no new update while one is being installed or tried */
    if (st == OTA_STATE_INSTALLING || st == OTA_STATE_REBOOTING || st == OTA_STATE_TRIAL)
        return OTA_ERR_STATE;
    if (o.rollout_len == 0u) {
        if (st == OTA_STATE_DOWNLOADING || st == OTA_STATE_VERIFIED)
            cancel(a, TXT("offer withdrawn"));
        return OTA_OK;
    }
    if (o.rollout_len > OTA_CFG_ROLLOUT_MAX) {
        reject(a, &o, 0, TXT("rollout ID longer than " OTA_STR(OTA_CFG_ROLLOUT_MAX) " bytes"), NULL);
        return OTA_ERR_MSG;
    }
    /* cheap re-offer check before any crypto: same rollout and digest */
    if (ota_cose_parse(o.manifest, o.manifest_len, &s) == OTA_OK &&
        ota_manifest_decode(s.payload, s.payload_len, &m) == OTA_OK &&
        same_update(a, &o, m.digest)) {
        if (st == OTA_STATE_DOWNLOADING) {
            a->ps.install_mode = o.install_mode;
            if (!a->req_active && !a->retry_wait && a->connected)
                send_request(a);
            return OTA_OK;
        }
        if (st == OTA_STATE_VERIFIED) {
            a->ps.install_mode = o.install_mode;
            if (o.install_mode == 0u)
                install(a);
            return OTA_OK;
        }
        if (st == OTA_STATE_COMMITTED || (a->ps.flags & OTA_PF_IGNORE_OFFER))
            return OTA_OK; /* done, or already failed: don't loop */
    }
    if (o.deadline != 0u && unix_now(a) != 0u && unix_now(a) > o.deadline) {
        reject(a, &o, 0, TXT("deadline passed"), NULL);
        return OTA_ERR_TIMEOUT;
    }
    err = check_manifest(a, &o, &s, &m, &detail);
    if (err != 0u) {
        reject(a, &o, err, detail, &m);
        return OTA_ERR_MSG;
    }
    if (st == OTA_STATE_DOWNLOADING || st == OTA_STATE_VERIFIED)
        cancel(a, TXT("superseded"));

    memset(a->ps.rollout, 0, sizeof(a->ps.rollout));
    memcpy(a->ps.rollout, o.rollout, o.rollout_len);
    memset(a->ps.version, 0, sizeof(a->ps.version));
    memcpy(a->ps.version, m.version, m.version_len);
    memcpy(a->ps.digest, m.digest, 32);
    a->ps.size = m.image_size;
    a->ps.offset = 0;
    a->ps.block_size = a->set.block_size;
    if (o.block_size != 0u && o.block_size < a->ps.block_size)
        a->ps.block_size = o.block_size;
    a->ps.install_mode = o.install_mode;
    a->ps.seq = m.seq;
    a->ps.target_secure_version = m.secure_version;
    a->ps.target_slot = (uint8_t)(a->boot.running_slot ^ 1u);
    a->ps.error = 0;
    a->ps.flags = 0;
    rc = start_download(a);
    if (rc != OTA_OK) {
        uint8_t e = rc == OTA_ERR_NOSPACE ? OTA_E_NO_SPACE : OTA_E_FLASH;
        a->ps.state = OTA_STATE_DOWNLOADING; /* so the failure is reported */
        fail_download(a, e, rc == OTA_ERR_NOSPACE ? TXT("image too large") : TXT("slot begin failed"));
        return rc;
    }
    set_state(a, OTA_STATE_DOWNLOADING);
    event(a, OTA_EV_DOWNLOAD_STARTED, 0, 0, NULL);
    if (a->connected)
        send_request(a);
    return OTA_OK;
}

/* ---- commands ---------------------------------------------------------- */

static void check_now(ota_agent_t *a)
{
    a->check_pending = true;
    event_for(a, OTA_EV_CHECK_STARTED, -1, 0, NULL, NULL, NULL);
    if (a->connected)
        (void)P(a)->mqtt_subscribe(P(a)->ctx, topic(a, "ota/manifest"), 1);
}

static int on_command(ota_agent_t *a, const uint8_t *payload, size_t len)
{
    ota_command_t c;
    uint64_t now;
    int rc = ota_msg_decode_command(payload, len, &c);
    if (rc != OTA_OK)
        return rc;
    now = unix_now(a);
    if (c.not_after != 0u && now != 0u && now > c.not_after)
        return OTA_ERR_TIMEOUT;
    if (c.rollout != NULL && c.rollout_len != 0u &&
        (strlen(a->ps.rollout) != c.rollout_len ||
         memcmp(a->ps.rollout, c.rollout, c.rollout_len) != 0) &&
        (c.verb == OTA_CMD_INSTALL || c.verb == OTA_CMD_CANCEL))
        return OTA_ERR_STATE; /* about another rollout */
    switch (c.verb) {
    case OTA_CMD_INSTALL:
        if (a->ps.state == OTA_STATE_VERIFIED) {
            install(a);
        } else if (a->ps.state == OTA_STATE_DOWNLOADING) {
            a->ps.install_mode = 0; /* install as soon as verified */
            (void)persist(a);
        } else {
            return OTA_ERR_STATE;
        }
        return OTA_OK;
    case OTA_CMD_CANCEL:
        if (a->ps.state != OTA_STATE_DOWNLOADING && a->ps.state != OTA_STATE_VERIFIED)
            return OTA_ERR_STATE;
        cancel(a, TXT("cancel command"));
        return OTA_OK;
    case OTA_CMD_CHECK:
        check_now(a);
        return OTA_OK;
    case OTA_CMD_REBOOT:
        P(a)->reboot(P(a)->ctx);
        return OTA_OK;
    default:
        return OTA_ERR_MSG;
    }
}

int ota_agent_on_message(ota_agent_t *a, const char *t, const uint8_t *payload, size_t len)
{
    size_t plen = sizeof(OTA_CFG_TOPIC_PREFIX) - 1u, idlen;
    const char *suffix;
    if (a == NULL || t == NULL || (payload == NULL && len != 0u) || !a->booted)
        return OTA_ERR_ARG;
    if (payload == NULL)
        payload = (const uint8_t *)"";
    idlen = strlen(a->cfg.device_id);
    if (strncmp(t, OTA_CFG_TOPIC_PREFIX, plen) != 0 || t[plen] != '/' ||
        strncmp(t + plen + 1u, a->cfg.device_id, idlen) != 0 || t[plen + 1u + idlen] != '/')
        return OTA_OK;
    suffix = t + plen + idlen + 2u;
    if (strcmp(suffix, "ota/blk") == 0)
        return on_block(a, payload, len);
    if (strcmp(suffix, "ota/manifest") == 0)
        return on_offer(a, payload, len);
    if (strcmp(suffix, "cmd") == 0)
        return on_command(a, payload, len);
    return OTA_OK;
}

/* ---- trial ------------------------------------------------------------- */

/* Asks the bootloader to go back to the other slot. Does not return when
 * the port can do it. */
static void roll_back(ota_agent_t *a, uint8_t err, const char *detail)
{
    a->ps.error = err;
    a->ps.flags |= OTA_PF_ROLLBACK_REQ;
    a->ps.trial_ms = trial_clock(a);
    (void)persist(a);
    event(a, OTA_EV_ROLLBACK_TRIGGERED, -1, err, detail);
    if (P(a)->rollback(P(a)->ctx) == OTA_OK)
        return; /* a port whose rollback returns restarts later by itself */
    if (!(a->ps.flags & OTA_PF_CONFIRMED)) {
        P(a)->reboot(P(a)->ctx); /* unconfirmed: the bootloader reverts */
        return;
    }
    /* confirmed and no way back: stay on this image, report it */
    a->ps.flags = (uint8_t)(a->ps.flags & ~OTA_PF_ROLLBACK_REQ) | OTA_PF_IGNORE_OFFER;
    set_state(a, OTA_STATE_FAILED);
    event(a, OTA_EV_HEALTH_FAILED, -1, err, TXT("no rollback target"));
}

static unsigned count_since(const uint32_t *log, uint8_t n, uint32_t now_ms, uint32_t window_ms)
{
    unsigned c = 0;
    uint8_t i;
    for (i = 0; i < n; i++)
        if (now_ms - log[i] * 1000u < window_ms)
            c++;
    return c;
}

static void log_push(uint32_t *log, uint8_t *n, uint32_t t)
{
    if (*n == OTA_CFG_BOOT_LOG) {
        memmove(log, log + 1, sizeof(log[0]) * (OTA_CFG_BOOT_LOG - 1u));
        (*n)--;
    }
    log[(*n)++] = t;
}

static void commit(ota_agent_t *a)
{
    a->ps.secure_version = a->ps.target_secure_version > a->ps.secure_version
                               ? a->ps.target_secure_version
                               : a->ps.secure_version;
    a->ps.boots_since_commit = 0;
    a->ps.wdt_since_commit = 0;
    a->ps.nboots = 0;
    a->ps.nwdt = 0;
    a->ps.flags |= OTA_PF_IGNORE_OFFER;
    set_state(a, OTA_STATE_COMMITTED);
    check_now(a); /* the next update may be waiting */
}

static void trial_tick(ota_agent_t *a, uint32_t now)
{
    uint8_t h = health_bits(a);
    bool healthy = (h & (OTA_HEALTH_APP | OTA_HEALTH_RESOURCES)) ==
                   (OTA_HEALTH_APP | OTA_HEALTH_RESOURCES);

    if (!(a->ps.flags & OTA_PF_CONFIRMED)) {
        if (a->broker_seen && a->hb_sent && healthy) {
            if (P(a)->confirm(P(a)->ctx) != OTA_OK) {
                roll_back(a, OTA_E_BOOT, TXT("confirm failed"));
                return;
            }
            a->ps.flags |= OTA_PF_CONFIRMED;
            a->ps.trial_ms = trial_clock(a);
            a->trial_saved_ms = now;
            (void)persist(a);
            event(a, OTA_EV_HEALTH_OK, -1, 0, NULL);
        } else if (now - a->boot_ms >= a->set.trial_timeout_ms) {
            const char *why = !a->broker_seen ? TXT("broker not reached")
                              : !a->hb_sent   ? TXT("heartbeat not sent")
                                              : TXT("application check failed");
            event(a, OTA_EV_HEALTH_FAILED, -1, OTA_E_HEALTH, why);
            roll_back(a, OTA_E_HEALTH, why);
        }
        return;
    }
    /* probation: triggers armed */
    if (healthy) {
        a->unhealthy = false;
    } else if (!a->unhealthy) {
        a->unhealthy = true;
        a->unhealthy_since_ms = now;
    } else if (now - a->unhealthy_since_ms >= a->set.health_fail_ms) {
        event(a, OTA_EV_HEALTH_FAILED, -1, OTA_E_HEALTH, TXT("health failing"));
        roll_back(a, OTA_E_HEALTH, TXT("health failing"));
        return;
    }
    if (!a->connected && now - a->offline_since_ms >= a->set.no_broker_ms) {
        event(a, OTA_EV_HEALTH_FAILED, -1, OTA_E_HEALTH, TXT("no broker"));
        roll_back(a, OTA_E_HEALTH, TXT("no broker"));
        return;
    }
    if (trial_clock(a) >= a->set.probation_ms) {
        a->ps.trial_ms = trial_clock(a);
        commit(a);
        return;
    }
    if (now - a->trial_saved_ms >= a->set.trial_persist_ms) {
        a->trial_saved_ms = now;
        a->ps.trial_ms = trial_clock(a);
        (void)persist(a);
    }
}

void ota_agent_tick(ota_agent_t *a)
{
    uint32_t now;
    if (a == NULL || !a->booted)
        return;
    now = NOW(a);
    if (a->connected && now - a->last_hb_ms >= a->set.heartbeat_ms)
        send_heartbeat(a);
    if (a->ps.state == OTA_STATE_DOWNLOADING && a->connected) {
        if (a->req_active && due(now, a->req_deadline_ms))
            retry_later(a, 0);
        if (a->ps.state == OTA_STATE_DOWNLOADING && a->retry_wait && due(now, a->retry_at_ms))
            send_request(a);
    }
    if (a->ps.state == OTA_STATE_TRIAL)
        trial_tick(a, now);
    flush_events(a);
}

/* ---- boot -------------------------------------------------------------- */

static void load_state(ota_agent_t *a)
{
    size_t len = sizeof(a->tx);
    int rc = P(a)->kv_get(P(a)->ctx, OTA_KV_STATE, a->tx, &len);
    if (rc != OTA_OK || ota_persist_decode(&a->ps, a->tx, len) != OTA_OK)
        memset(&a->ps, 0, sizeof(a->ps)); /* fresh device or unreadable */
}

/* The bootloader (or the agent, before a reset) went back to the previous
 * image. A revert after a power loss or brownout is not the image's fault:
 * the same update may then be tried again when offered. */
static void rolled_back(ota_agent_t *a)
{
    bool asked = (a->ps.flags & OTA_PF_ROLLBACK_REQ) != 0u;
    bool power = !asked && (a->boot.reason == OTA_BOOT_POWER_ON ||
                            a->boot.reason == OTA_BOOT_BROWNOUT);
    uint8_t err = asked ? a->ps.error : OTA_E_BOOT;
    if (!asked)
        event(a, OTA_EV_ROLLBACK_TRIGGERED, -1, err,
              power ? TXT("power lost before confirm") : TXT("new image did not confirm"));
    a->ps.error = err;
    a->ps.flags = power ? 0u : OTA_PF_IGNORE_OFFER;
    a->ps.nboots = 0;
    a->ps.nwdt = 0;
    a->boot_reason = OTA_BOOT_ROLLBACK;
    set_state(a, OTA_STATE_ROLLED_BACK);
    event(a, OTA_EV_ROLLBACK_COMPLETED, -1, err, NULL);
}

int ota_agent_on_boot(ota_agent_t *a)
{
    int rc;
    uint8_t st;
    if (a == NULL || a->port == NULL || a->booted)
        return OTA_ERR_ARG;
    rc = P(a)->boot_state(P(a)->ctx, &a->boot);
    if (rc != OTA_OK)
        return rc;
    a->boot_ms = NOW(a);
    a->offline_since_ms = a->boot_ms;
    a->trial_saved_ms = a->boot_ms;
    a->boot_reason = a->boot.reason;
    a->booted = true;
    load_state(a);
    a->ps.boots_since_commit++;
    if (a->boot.reason == OTA_BOOT_WATCHDOG)
        a->ps.wdt_since_commit++;
    st = a->ps.state;

    /* an image waiting for confirmation that we know nothing about */
    if (a->boot.img_state == OTA_IMG_PENDING_VERIFY &&
        !((st == OTA_STATE_TRIAL || st == OTA_STATE_REBOOTING || st == OTA_STATE_INSTALLING) &&
          a->ps.target_slot == a->boot.running_slot)) {
        a->ps.target_slot = a->boot.running_slot;
        a->ps.flags = 0;
        a->ps.trial_ms = 0;
        a->ps.nboots = 0;
        a->ps.nwdt = 0;
        a->ps.state = st = OTA_STATE_REBOOTING;
    }

    switch (st) {
    case OTA_STATE_INSTALLING:
    case OTA_STATE_REBOOTING:
        if (a->boot.running_slot == a->ps.target_slot) {
            a->boot_reason = OTA_BOOT_OTA;
            a->ps.state = OTA_STATE_TRIAL;
            log_push(a->ps.boot_log, &a->ps.nboots, 0);
            a->trial_base_ms = 0;
            (void)persist(a);
            event(a, OTA_EV_REBOOT_COMPLETED, -1, 0, NULL);
            return OTA_OK;
        }
        if (st == OTA_STATE_INSTALLING) {
            /* reset during activation: the image is verified, redo it */
            a->ps.state = OTA_STATE_VERIFIED;
            break;
        }
        rolled_back(a);
        return OTA_OK;
    case OTA_STATE_TRIAL:
        if (a->boot.running_slot != a->ps.target_slot) {
            rolled_back(a);
            return OTA_OK;
        }
        a->trial_base_ms = a->ps.trial_ms;
        if (a->ps.flags & OTA_PF_ROLLBACK_REQ) {
            /* the rollback did not happen (reset before it took effect) */
            (void)persist(a);
            roll_back(a, a->ps.error, TXT("rollback retried"));
            return OTA_OK;
        }
        {
            uint32_t t = a->ps.trial_ms / 1000u;
            log_push(a->ps.boot_log, &a->ps.nboots, t);
            if (a->boot.reason == OTA_BOOT_WATCHDOG)
                log_push(a->ps.wdt_log, &a->ps.nwdt, t);
            (void)persist(a);
            if (count_since(a->ps.boot_log, a->ps.nboots, a->ps.trial_ms,
                            a->set.reboot_window_ms) > a->set.max_reboots) {
                event(a, OTA_EV_HEALTH_FAILED, -1, OTA_E_BOOT, TXT("too many reboots"));
                roll_back(a, OTA_E_BOOT, TXT("too many reboots"));
                return OTA_OK;
            }
            if (count_since(a->ps.wdt_log, a->ps.nwdt, a->ps.trial_ms, a->set.wdt_window_ms) >
                a->set.max_wdt_resets) {
                event(a, OTA_EV_HEALTH_FAILED, -1, OTA_E_BOOT, TXT("too many watchdog resets"));
                roll_back(a, OTA_E_BOOT, TXT("too many watchdog resets"));
                return OTA_OK;
            }
        }
        return OTA_OK;
    default:
        break;
    }

    if (a->ps.state == OTA_STATE_DOWNLOADING) {
        if (start_download(a) != OTA_OK) {
            fail_download(a, OTA_E_FLASH, TXT("cannot resume"));
            return OTA_OK;
        }
    } else if (a->ps.state == OTA_STATE_VERIFIED) {
        uint8_t d[32];
        /* the slot may have been touched while we were off: check again */
        if (rehash(a, a->ps.size) != OTA_OK ||
            P(a)->sha256_finish(P(a)->ctx, &a->img_hash, d) != OTA_OK ||
            memcmp(d, a->ps.digest, sizeof(d)) != 0) {
            fail_download(a, OTA_E_DIGEST, TXT("slot changed"));
            return OTA_OK;
        }
    }
    return persist(a);
}

/* ---- connection -------------------------------------------------------- */

void ota_agent_on_connect(ota_agent_t *a)
{
    if (a == NULL || !a->booted)
        return;
    a->connected = true;
    a->broker_seen = true;
    send_birth(a);
    (void)P(a)->mqtt_subscribe(P(a)->ctx, topic(a, "cmd"), 1);
    (void)P(a)->mqtt_subscribe(P(a)->ctx, topic(a, "ota/blk"), 0);
    (void)P(a)->mqtt_subscribe(P(a)->ctx, topic(a, "ota/manifest"), 1);
    flush_events(a);
    send_heartbeat(a);
    if (a->ps.state == OTA_STATE_DOWNLOADING) {
        a->retries = 0;
        send_request(a);
    } else if (a->ps.state == OTA_STATE_VERIFIED && a->ps.install_mode == 0u) {
        install(a);
    }
}

void ota_agent_on_disconnect(ota_agent_t *a)
{
    if (a == NULL || !a->connected)
        return;
    a->connected = false;
    a->req_active = false;
    a->retry_wait = false;
    a->offline_since_ms = NOW(a);
}

/* ---- init -------------------------------------------------------------- */

#define SET(f) (uint8_t)offsetof(ota_settings_t, f)
static const uint8_t setting_offsets[] = {
    SET(heartbeat_ms),   SET(request_timeout_ms), SET(backoff_min_ms),   SET(backoff_max_ms),
    SET(max_retries),    SET(trial_timeout_ms),   SET(probation_ms),     SET(max_reboots),
    SET(reboot_window_ms), SET(max_wdt_resets),   SET(wdt_window_ms),    SET(health_fail_ms),
    SET(no_broker_ms),   SET(trial_persist_ms),   SET(block_size),       SET(window),
};
static const uint32_t setting_defaults[] = {
    OTA_CFG_HEARTBEAT_MS,     OTA_CFG_REQUEST_TIMEOUT_MS, OTA_CFG_BACKOFF_MIN_MS,
    OTA_CFG_BACKOFF_MAX_MS,   OTA_CFG_MAX_RETRIES,        OTA_CFG_TRIAL_TIMEOUT_MS,
    OTA_CFG_PROBATION_MS,     OTA_CFG_MAX_REBOOTS,        OTA_CFG_REBOOT_WINDOW_MS,
    OTA_CFG_MAX_WDT_RESETS,   OTA_CFG_WDT_WINDOW_MS,      OTA_CFG_HEALTH_FAIL_MS,
    OTA_CFG_NO_BROKER_MS,     OTA_CFG_TRIAL_PERSIST_MS,   OTA_CFG_BLOCK_SIZE,
    OTA_CFG_WINDOW,
};

static bool valid_id(const char *id)
{
    size_t n = 0;
    for (; id[n] != '\0'; n++) {
        char c = id[n];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return false;
    }
    return n >= 1u && n <= OTA_CFG_DEVICE_ID_MAX;
}

int ota_agent_init(ota_agent_t *a, const ota_agent_config_t *cfg)
{
    const ota_port_t *p;
    size_t i;
    if (a == NULL || cfg == NULL || cfg->port == NULL || cfg->device_id == NULL ||
        cfg->hardware == NULL || cfg->bootloader_version == NULL || cfg->fw_version == NULL ||
        cfg->keys == NULL || cfg->nkeys == 0u || cfg->nkeys > OTA_CFG_MAX_KEYS ||
        !valid_id(cfg->device_id) || strlen(cfg->fw_version) > OTA_CFG_VERSION_MAX ||
        strlen(cfg->hardware) > OTA_CFG_HARDWARE_MAX)
        return OTA_ERR_ARG;
    p = cfg->port;
    if (p->mqtt_publish == NULL || p->mqtt_subscribe == NULL || p->slot_begin == NULL ||
        p->slot_write == NULL || p->slot_read == NULL || p->slot_finish == NULL ||
        p->slot_activate == NULL || p->boot_state == NULL || p->confirm == NULL ||
        p->rollback == NULL || p->reboot == NULL || p->sha256_start == NULL ||
        p->sha256_update == NULL || p->sha256_finish == NULL || p->ecdsa_p256_verify == NULL ||
        p->kv_get == NULL || p->kv_set == NULL || p->now_ms == NULL)
        return OTA_ERR_ARG;
    memset(a, 0, sizeof(*a));
    a->port = p;
    a->cfg = *cfg;
    for (i = 0; i < sizeof(setting_defaults) / sizeof(setting_defaults[0]); i++) {
        uint32_t v;
        memcpy(&v, (const uint8_t *)&cfg->settings + setting_offsets[i], sizeof(v));
        if (v == 0u)
            v = setting_defaults[i];
        memcpy((uint8_t *)&a->set + setting_offsets[i], &v, sizeof(v));
    }
    a->set.allow_downgrade = cfg->settings.allow_downgrade;
    if (a->set.block_size > OTA_CFG_BLOCK_SIZE)
        a->set.block_size = OTA_CFG_BLOCK_SIZE;
    if (a->set.max_reboots > OTA_CFG_BOOT_LOG - 1u)
        a->set.max_reboots = OTA_CFG_BOOT_LOG - 1u;
    if (a->set.max_wdt_resets > OTA_CFG_BOOT_LOG - 1u)
        a->set.max_wdt_resets = OTA_CFG_BOOT_LOG - 1u;
    if (a->set.backoff_max_ms < a->set.backoff_min_ms)
        a->set.backoff_max_ms = a->set.backoff_min_ms;
    for (i = 0; i < cfg->nkeys; i++) {
        if (cfg->keys[i][0] != 0x04u)
            return OTA_ERR_ARG;
        memcpy(a->keys[i].pub, cfg->keys[i], 65);
        if (ota_key_id(p, a->keys[i].pub, a->keys[i].kid) != OTA_OK)
            return OTA_ERR_CRYPTO;
    }
    a->nkeys = (uint8_t)cfg->nkeys;
    return OTA_OK;
}

ota_state_t ota_agent_state(const ota_agent_t *a)
{
    return a != NULL ? (ota_state_t)a->ps.state : OTA_STATE_IDLE;
}

uint32_t ota_agent_offset(const ota_agent_t *a)
{
    return a != NULL ? a->next_off : 0u;
}

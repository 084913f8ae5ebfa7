/* agent.c - the OTA state machine (see ota_agent.h and README.md). */
#include "otamq/ota_agent.h"

#include <stddef.h>
#include <string.h>

#include "internal.h"
#include "persist.h"

#define P(a) ((a)->port)
#define NOW(a) ((uint32_t)P(a)->now_ms(P(a)->ctx))
#define KIND(a) ((uint8_t)(a)->ps.kind)

/* ---- what the agent reports ------------------------------------------- */

/* Every reason the agent gives in an event: the error code (event key 5;
 * ERR_PS: the error recorded in the persisted state) and the detail text
 * (key 6; empty: no detail, where the error code says all there is). An
 * event is a code plus one of these, so each place that reports something
 * names a row instead of spelling out its arguments. */
#define ERR_PS 0xffu
#define REASONS(X)                                                               \
    X(R_NONE, 0, "")                                                             \
    X(R_PS, ERR_PS, "")                                                          \
    X(R_REFETCH, 0, "refetching")                           \
    /* download failed (event 6); block errors 1..3 in order, then others */     \
    X(R_NOT_ASSIGNED, OTA_E_RETRIES, "not assigned")                             \
    X(R_UNKNOWN_IMAGE, OTA_E_RETRIES, "unknown image")                           \
    X(R_OFFSET, OTA_E_RETRIES, "bad offset")                            \
    X(R_BROKER_REFUSED, OTA_E_RETRIES, "refused")                      \
    X(R_RETRIES, OTA_E_RETRIES, "")                                              \
    X(R_DIGEST, OTA_E_DIGEST, "")                                                \
    X(R_SIZE, OTA_E_DIGEST, "size mismatch")                               \
    X(R_SLOT_CHANGED, OTA_E_DIGEST, "slot changed")                              \
    X(R_IMAGE_REFUSED, OTA_E_FLASH, "image refused")                             \
    X(R_WRITE, OTA_E_FLASH, "")                                                  \
    X(R_HASH, OTA_E_FLASH, "hash failed")                                        \
    X(R_BEGIN, OTA_E_FLASH, "begin failed")                                 \
    X(R_RESUME, OTA_E_FLASH, "cannot resume")                                    \
    X(R_TOO_LARGE, OTA_E_NO_SPACE, "")                                           \
    X(R_WITHDRAWN, OTA_E_CANCELLED, "withdrawn")                           \
    X(R_SUPERSEDED, OTA_E_CANCELLED, "superseded")                               \
    X(R_CANCEL_CMD, OTA_E_CANCELLED, "command")                           \
    /* install completed with an error (event 8) */                              \
    X(R_ACTIVATE, OTA_E_FLASH, "")                                               \
    /* offer refused (event 15), in the order of the checks; refusal_status */   \
    /* has their status codes */                                                 \
    X(R_BAD_OFFER, 0, "bad offer")                                               \
    X(R_ROLLOUT_LONG, 0, "rollout ID too long") \
    X(R_DEADLINE, 0, "deadline")                                          \
    X(R_BAD_COSE, OTA_E_SIGNATURE, "bad COSE")                             \
    X(R_UNKNOWN_KEY, OTA_E_SIGNATURE, "unknown key")                             \
    X(R_BAD_SIGNATURE, OTA_E_SIGNATURE, "")                                      \
    X(R_BAD_MANIFEST, OTA_E_VERSION, "bad manifest")                             \
    X(R_HARDWARE, OTA_E_HARDWARE, "")                                            \
    X(R_BOOTLOADER, OTA_E_HARDWARE, "bootloader too old")                        \
    X(R_KIND, OTA_E_VERSION, "unknown kind")                                 \
    X(R_VERSION_LONG, OTA_E_VERSION, "version too long") \
    X(R_BAD_VERSION, OTA_E_VERSION, "bad version")                               \
    X(R_SAME_VERSION, OTA_E_VERSION, "same version")                             \
    X(R_DOWNGRADE, OTA_E_VERSION, "downgrade")                                   \
    X(R_SEQUENCE, OTA_E_VERSION, "sequence")                                     \
    X(R_SECURE_VERSION, OTA_E_SECURE_VERSION, "")                                \
    /* trial failed (event 12) and rollback (13); the trial timeout's three */   \
    /* reasons in this order */                                                  \
    X(R_NOT_REACHED, OTA_E_HEALTH, "broker not reached")                         \
    X(R_NO_HEARTBEAT, OTA_E_HEALTH, "no heartbeat")                        \
    X(R_APP_CHECK, OTA_E_HEALTH, "app check failed")                     \
    X(R_HEALTH_FAILING, OTA_E_HEALTH, "health failing")                          \
    X(R_NO_BROKER, OTA_E_HEALTH, "no broker")                                    \
    X(R_CONFIRM, OTA_E_BOOT, "confirm failed")                                   \
    X(R_REBOOTS, OTA_E_BOOT, "reboot loop")                                 \
    X(R_WDT, OTA_E_BOOT, "watchdog resets")                             \
    /* a revert by the bootloader: these two in this order */                   \
    X(R_POWER_LOST, OTA_E_BOOT, "power lost")                     \
    X(R_NOT_CONFIRMED, OTA_E_BOOT, "not confirmed")                  \
    X(R_ABANDONED, OTA_E_BOOT, "abandoned image")                        \
    X(R_RETRIED, ERR_PS, "retried")                                     \
    X(R_NO_TARGET, ERR_PS, "no rollback target")

#define AS_ENUM(name, err, text) name,
#define AS_ERR(name, err, text) err,
enum reason { REASONS(AS_ENUM) R_COUNT };
static const uint8_t reason_err[R_COUNT] = {REASONS(AS_ERR)};

/* The status on_message returns for each refusal, R_BAD_OFFER on (its
 * negation, so that it fits a byte). */
static const uint8_t refusal_status[] = {
    -OTA_ERR_MSG,      -OTA_ERR_MSG,     -OTA_ERR_TIMEOUT,    -OTA_ERR_COSE,
    -OTA_ERR_UNKNOWN_KEY, -OTA_ERR_SIGNATURE, -OTA_ERR_MSG,   -OTA_ERR_HARDWARE,
    -OTA_ERR_BOOTLOADER, -OTA_ERR_VERSION, -OTA_ERR_VERSION,  -OTA_ERR_VERSION,
    -OTA_ERR_VERSION,  -OTA_ERR_VERSION, -OTA_ERR_SEQUENCE,   -OTA_ERR_SECURE_VERSION,
};
typedef char power_lost_then_not_confirmed[R_NOT_CONFIRMED == R_POWER_LOST + 1 ? 1 : -1];
typedef char refusal_rows[sizeof(refusal_status) == R_SECURE_VERSION - R_BAD_OFFER + 1 ? 1 : -1];

#if OTA_CFG_TEXT
#define AS_TEXT(name, err, text) text "\0"
static const char reason_texts[] = REASONS(AS_TEXT);

/* The detail text of why, NULL when it has none. */
static const char *reason_text(unsigned why)
{
    const char *t = reason_texts;
    for (; why > 0u; why--)
        t += strlen(t) + 1u;
    return *t != '\0' ? t : NULL;
}
#else
#define reason_text(why) ((void)(why), (const char *)NULL)
#endif

/* Event codes whose events are results: kept in the kv store until the
 * broker acknowledged them. */
#define RESULTS                                                                              \
    (1u << OTA_EV_INSTALL_COMPLETED | 1u << OTA_EV_REBOOT_COMPLETED | 1u << OTA_EV_HEALTH_OK | \
     1u << OTA_EV_HEALTH_FAILED | 1u << OTA_EV_ROLLBACK_TRIGGERED |                          \
     1u << OTA_EV_ROLLBACK_COMPLETED | 1u << OTA_EV_REJECTED)

/* ---- small helpers ----------------------------------------------------- */

enum { REQ_NONE, REQ_ACTIVE, REQ_WAIT }; /* a->req */

/* The topics the agent subscribes to at every connect, after
 * "<prefix>/<id>/": blocks at QoS 0, offers and commands at QoS 1. */
static const char inbox[] = "ota/blk\0ota/manifest\0cmd";
#define TOPIC_MANIFEST (inbox + sizeof("ota/blk"))
#define TOPIC_CMD (TOPIC_MANIFEST + sizeof("ota/manifest"))

static uint64_t unix_now(const ota_agent_t *a)
{
    return P(a)->unix_time != NULL ? P(a)->unix_time(P(a)->ctx) : 0u;
}

/* t has come (wrap-safe for times less than 24 days apart) */
static bool due(uint32_t now, uint32_t t)
{
    return (uint32_t)(now - t) < 0x80000000u;
}

/* "<prefix>/<id>/<suffix>" in a->topic, which holds "<prefix>/<id>/" from
 * init on. */
NOINLINE static const char *topic(ota_agent_t *a, const char *suffix)
{
    strcpy(a->topic + a->topic_len, suffix);
    return a->topic;
}

static int publish(ota_agent_t *a, const char *suffix, const uint8_t *p, size_t n, int qos)
{
    return P(a)->mqtt_publish(P(a)->ctx, topic(a, suffix), p, n, qos);
}

/* Writes the state record; a failure is reported in the heartbeats (health
 * bit 1, required resources) until a write succeeds again. */
static void persist(ota_agent_t *a)
{
    size_t len;
    int rc = ota_persist_encode(&a->ps, a->tx, sizeof(a->tx), &len);
    if (rc == OTA_OK)
        rc = P(a)->kv_set(P(a)->ctx, OTA_KV_STATE, a->tx, len);
    a->persist_failed = rc != OTA_OK;
}

static INLINE uint32_t trial_clock(const ota_agent_t *a)
{
    return NOW(a) - a->trial_zero_ms;
}

static uint32_t device_secure_version(const ota_agent_t *a)
{
    return a->ps.secure_version > a->cfg.secure_version ? a->ps.secure_version
                                                         : a->cfg.secure_version;
}

static uint32_t min_u32(uint32_t x, uint32_t y)
{
    return x < y ? x : y;
}

/* Ends the image hash if it is under way. */
static INLINE void hash_abort(ota_agent_t *a)
{
    if (a->hashing)
        P(a)->sha256_abort(P(a)->ctx, &a->img_hash);
    a->hashing = false;
}

/* ---- events ------------------------------------------------------------ */

/* The queue holds encoded events, each after a length byte; the event code
 * is the byte after the map head and key 1. The first event is published
 * once at a time and dropped when the broker acknowledges it. */
static void save_events(ota_agent_t *a)
{
    a->ev_saved = a->evq_len != 0u;
    (void)P(a)->kv_set(P(a)->ctx, OTA_KV_EVENTS, a->evq, a->evq_len);
}

/* Drops the first event of the queue; the next may go at once. */
static INLINE void evq_drop(ota_agent_t *a)
{
    a->ev_inflight = false; /* a late PUBACK for it is ignored */
    a->ev_at_ms = NOW(a);
    a->evq_len -= 1u + a->evq[0];
    memmove(a->evq, a->evq + 1u + a->evq[0], a->evq_len);
    if (a->ev_saved)
        save_events(a);
}

static void flush_events(ota_agent_t *a)
{
    int id;
    uint32_t now = NOW(a);
    if (!a->connected || a->evq_len == 0u || a->ev_inflight || !due(now, a->ev_at_ms))
        return;
    id = publish(a, "ev", a->evq + 1, a->evq[0], 1);
    if (id >= 0) {
        a->ev_inflight = true;
        a->ev_id = (uint32_t)id;
        a->ev_at_ms = now + OTA_CFG_EVENT_ACK_MS;
    }
}

/* Queues an event and publishes what is queued when connected. Progress
 * is not queued behind a waiting event. When the queue is full, an event
 * that is not a result is dropped, a result makes room by dropping the
 * oldest events. The rollout ID and version (NULL:
 * none) are rollout_len and version_len bytes long, or NUL-terminated when
 * that is 0. */
static void event_for(ota_agent_t *a, unsigned code, unsigned why, const char *rollout,
                      size_t rollout_len, const char *version, size_t version_len)
{
    ota_event_t ev;
    size_t len, room;
    bool result = RESULTS >> code & 1u;

    if (code == OTA_EV_DOWNLOAD_PROGRESS && a->evq_len > 1u + a->evq[0])
        return; /* others wait: progress now would be old when it goes */
    ev.code = (uint8_t)code;
    ev.rollout = rollout;
    ev.rollout_len = rollout_len;
    ev.target_version = version;
    ev.target_version_len = version_len;
    ev.progress = code >= OTA_EV_DOWNLOAD_STARTED && code <= OTA_EV_DOWNLOAD_COMPLETED
                      ? (int32_t)a->pct_reported
                      : -1;
    ev.error = reason_err[why] == ERR_PS ? a->ps.error : reason_err[why];
    ev.detail = reason_text(why);
    ev.device_time = unix_now(a);
    for (;;) {
        room = sizeof(a->evq) - a->evq_len; /* a length byte and the event */
        if (room > 1u && ota_msg_encode_event(&ev, a->evq + a->evq_len + 1,
                                              room > 256u ? 255u : room - 1u, &len) == OTA_OK)
            break;
        if (a->evq_len == 0u || !result)
            return;
        evq_drop(a);
    }
    a->evq[a->evq_len] = (uint8_t)len;
    a->evq_len = (uint32_t)(a->evq_len + 1u + len);
    if (result)
        save_events(a);
    flush_events(a);
}

/* An event about the current update: its rollout and target version. */
static void event(ota_agent_t *a, unsigned code, unsigned why)
{
    event_for(a, code, why, a->ps.rollout[0] ? a->ps.rollout : NULL, 0,
              a->ps.version[0] ? a->ps.version : NULL, 0);
}

/* An event about no update in particular. */
static void event_plain(ota_agent_t *a, unsigned code, unsigned why)
{
    event_for(a, code, why, NULL, 0, NULL, 0);
}

static void send_heartbeat(ota_agent_t *a);

/* Enters state st and persists; a new state is also reported at once in a
 * heartbeat, so the broker sees a commit when it happens. */
static void set_state(ota_agent_t *a, uint32_t st)
{
    uint32_t old = a->ps.state;
    a->ps.state = st;
    persist(a);
    if (old != st)
        send_heartbeat(a);
}

/* Enters state st and reports code with why (st may be the current state:
 * persist and report). The event is queued (a result: saved) before the
 * state is persisted, so a reset between reports it twice, never not. */
static void step(ota_agent_t *a, uint32_t st, unsigned code, unsigned why)
{
    event(a, code, why);
    set_state(a, st);
}

/* Before a restart: the events not yet acknowledged are kept, to be sent
 * after it (the port need not flush anything). */
static void keep_events(ota_agent_t *a)
{
    if (a->evq_len != 0u)
        save_events(a);
}

static INLINE void restart(ota_agent_t *a)
{
    keep_events(a);
    P(a)->reboot(P(a)->ctx);
}

/* ---- outgoing messages ------------------------------------------------- */

static INLINE unsigned health_bits(ota_agent_t *a)
{
    unsigned h = P(a)->app_health != NULL ? P(a)->app_health(P(a)->ctx) & 3u
                                          : OTA_HEALTH_APP | OTA_HEALTH_RESOURCES;
    if (a->persist_failed)
        h &= ~OTA_HEALTH_RESOURCES;
    return h | (a->connected ? OTA_HEALTH_MESSAGING : 0u);
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
    b.ota_state = (uint8_t)a->ps.state;
    b.agent_version = OTA_AGENT_VERSION;
    b.connectivity = a->cfg.connectivity;
    b.utc_offset_min = a->cfg.utc_offset_min;
    b.secure_version = device_secure_version(a);
    b.guard = a->ps.guard[OTA_KIND_FIRMWARE];
    if (ota_msg_encode_birth(&b, a->tx, sizeof(a->tx), &len) == OTA_OK)
        (void)publish(a, "birth", a->tx, len, 1);
}

static void send_heartbeat(ota_agent_t *a)
{
    ota_heartbeat_t hb;
    size_t len;
    uint64_t now = P(a)->now_ms(P(a)->ctx);
    hb.uptime_s = (uint32_t)(now / 1000u);
    hb.health = (uint8_t)health_bits(a);
    hb.wdt_resets = a->ps.wdt_since_commit;
    /* the optional members are set when they are there */
    hb.has_free_heap = P(a)->free_heap != NULL;
    if (hb.has_free_heap)
        hb.free_heap = P(a)->free_heap(P(a)->ctx);
    hb.has_rssi = P(a)->rssi != NULL && P(a)->rssi(P(a)->ctx, &hb.rssi);
    hb.ota_state = (uint8_t)a->ps.state;
    hb.has_offset = a->ps.state == OTA_STATE_DOWNLOADING;
    hb.offset = a->next_off;
    a->last_hb_ms = (uint32_t)now;
    if (ota_msg_encode_heartbeat(&hb, a->tx, sizeof(a->tx), &len) == OTA_OK &&
        publish(a, "hb", a->tx, len, 0) >= 0)
        a->hb_sent = true;
}

/* Asks for the next window from the first missing offset. A lost request
 * is handled like a lost answer: the timeout retries. */
static void send_request(ota_agent_t *a)
{
    ota_block_request_t rq;
    size_t len;
    uint32_t blocks = (a->ps.size - a->next_off + a->ps.block_size - 1u) / a->ps.block_size;

    rq.digest = a->ps.digest;
    rq.offset = a->next_off;
    rq.size = a->ps.block_size;
    rq.count = a->req_n = min_u32(blocks, a->window);
    a->req_got = 0;
    rq.req_id = ++a->req_id;
    a->req = REQ_ACTIVE;
    a->req_at_ms = NOW(a) + a->cfg.settings.request_timeout_ms;
    if (ota_msg_encode_block_request(&rq, a->tx, sizeof(a->tx), &len) == OTA_OK)
        (void)publish(a, "ota/get", a->tx, len, 0);
}

/* ---- download ---------------------------------------------------------- */

static void stop_requests(ota_agent_t *a)
{
    a->req = REQ_NONE;
}

static INLINE void abort_slot(ota_agent_t *a)
{
    if (P(a)->slot_abort != NULL)
        P(a)->slot_abort(P(a)->ctx, KIND(a));
}

/* The current download or verified image is given up and reported (event
 * 6, or 8 when activation failed). Cancelled: back to idle. Failed: state
 * FAILED, and the same rollout+digest is not retried when offered again. */
static void give_up(ota_agent_t *a, unsigned why)
{
    uint8_t err = reason_err[why];
    stop_requests(a);
    abort_slot(a);
    hash_abort(a);
    a->ps.error = err;
    if (err != OTA_E_CANCELLED)
        a->ps.flags |= OTA_PF_IGNORE_OFFER;
    step(a, err == OTA_E_CANCELLED ? OTA_STATE_IDLE : OTA_STATE_FAILED,
         why == R_ACTIVATE ? OTA_EV_INSTALL_COMPLETED : OTA_EV_DOWNLOAD_FAILED, why);
}

/* Completed tenths of the image in percent, 0..90 (progress events every
 * 10 %; 100 is for the completed download). */
NOINLINE static uint32_t decile(uint32_t off, uint32_t size)
{
    uint32_t d = size < 10u ? 0u : off / (size / 10u);
    return 10u * (d > 9u ? 9u : d);
}

/* Hashes slot bytes [0, n) into a->img_hash (started afresh), through
 * a->tx. */
static int rehash(ota_agent_t *a, uint32_t n)
{
    uint32_t off = 0, chunk;
    int rc;
    hash_abort(a);
    rc = P(a)->sha256_start(P(a)->ctx, &a->img_hash);
    a->hashing = rc == OTA_OK;
    for (; rc == OTA_OK && off < n; off += chunk) {
        chunk = min_u32(n - off, (uint32_t)sizeof(a->tx));
        rc = P(a)->slot_read(P(a)->ctx, KIND(a), off, a->tx, chunk);
        if (rc == OTA_OK)
            rc = P(a)->sha256_update(P(a)->ctx, &a->img_hash, a->tx, chunk);
    }
    return rc;
}

/* The hash of the image so far (which this ends) is the manifest's digest. */
static INLINE bool digest_ok(ota_agent_t *a)
{
    uint8_t d[32];
    a->hashing = false;
    return P(a)->sha256_finish(P(a)->ctx, &a->img_hash, d) == OTA_OK &&
           memcmp(d, a->ps.digest, sizeof(d)) == 0;
}

/* A new image is about to be tried: no trial history, no flags (the same
 * update from a fresh offer had none either). */
static void new_trial(ota_agent_t *a)
{
    a->ps.flags = 0;
    a->ps.trial_ms = 0;
    a->ps.nboots = 0;
    a->ps.nwdt = 0;
}

static void log_push(uint32_t *log, uint8_t *n, uint32_t t)
{
    unsigned i = *n;
    if (i == OTA_CFG_BOOT_LOG) /* full: the oldest goes */
        for (i = 0; i + 1u < OTA_CFG_BOOT_LOG; i++)
            log[i] = log[i + 1u];
    log[i] = t;
    *n = (uint8_t)(i + 1u);
}

/* The update's slot has just been started (the new image booted, or a
 * configuration put in use): its trial begins, with this as its first
 * boot. The health checks need the broker and a heartbeat from now on. */
static void trial_start(ota_agent_t *a)
{
    a->ps.boot_log[0] = 0; /* the trial clock of its first boot */
    a->ps.nboots = 1;
    a->trial_zero_ms = NOW(a);
    a->broker_seen = a->connected;
    a->hb_sent = false;
    step(a, OTA_STATE_TRIAL, OTA_EV_REBOOT_COMPLETED, R_NONE);
}

static void install(ota_agent_t *a)
{
    int rc;
    a->ps.install_mode = 0; /* a reset during activation installs again */
    step(a, OTA_STATE_INSTALLING, OTA_EV_INSTALL_STARTED, R_NONE);
    rc = P(a)->slot_activate(P(a)->ctx, KIND(a));
    if (rc < 0) {
        give_up(a, R_ACTIVATE);
        return;
    }
    event(a, OTA_EV_INSTALL_COMPLETED, R_NONE);
    new_trial(a);
    if (a->ps.kind != OTA_KIND_FIRMWARE && rc != OTA_ACTIVATE_RESTART) {
        trial_start(a); /* in use now, no reboot */
        return;
    }
    step(a, OTA_STATE_REBOOTING, OTA_EV_REBOOT_STARTED, R_NONE);
    restart(a);
}

/* A failed attempt (timeout, or a block error that may pass): back off,
 * or give up after max_retries consecutive failures that count. */
static void retry_later(ota_agent_t *a, uint32_t at_least_ms, bool counts)
{
    uint32_t max = a->cfg.settings.backoff_max_ms, backoff = a->cfg.settings.backoff_min_ms, i;
    if (counts && ++a->retries > a->cfg.settings.max_retries) {
        give_up(a, R_RETRIES);
        return;
    }
    for (i = 1; i < a->retries && backoff < max; i++)
        backoff *= 2u;
    if (backoff < at_least_ms)
        backoff = at_least_ms;
    a->req = REQ_WAIT;
    a->req_at_ms = NOW(a) + min_u32(backoff, max);
}

static int start_download(ota_agent_t *a);

static int on_block(ota_agent_t *a, const uint8_t *payload, size_t len)
{
    ota_block_t b;
    uint32_t dec;
    unsigned why;
    int rc = ota_msg_decode_block(payload, len, &b);
    if (rc != OTA_OK)
        return rc;
    if (a->ps.state != OTA_STATE_DOWNLOADING || a->req != REQ_ACTIVE || b.req_id != a->req_id)
        return OTA_ERR_STATE; /* stale or unrequested: ignore */
    if (b.is_error) {
        if (b.error == OTA_BLKERR_RATE_LIMITED || b.error == OTA_BLKERR_INTERNAL) {
            retry_later(a, b.retry_ms, false); /* the broker asked to wait */
            return OTA_OK;
        }
        why = b.error <= OTA_BLKERR_OFFSET ? R_NOT_ASSIGNED - 1u + b.error
                                           : R_BROKER_REFUSED;
    } else if (b.offset != a->next_off) {
        return OTA_ERR_STATE; /* duplicate or out of order: wait / re-request */
    } else if (b.image_size != a->ps.size) {
        why = R_SIZE;
    } else if (b.data_len == 0u || b.data_len > a->ps.block_size ||
               b.data_len > a->ps.size - b.offset) {
        return OTA_ERR_MSG;
    } else if (P(a)->slot_write(P(a)->ctx, KIND(a), b.offset, b.data, b.data_len) != OTA_OK) {
        why = R_WRITE;
    } else if (P(a)->sha256_update(P(a)->ctx, &a->img_hash, b.data, b.data_len) != OTA_OK) {
        why = R_HASH;
    } else {
        a->next_off += (uint32_t)b.data_len;
        a->retries = 0;
        a->req_at_ms = NOW(a) + a->cfg.settings.request_timeout_ms;
        a->req_got++;
        if (a->next_off != a->ps.size) {
            dec = decile(a->next_off, a->ps.size);
            if (dec > a->pct_reported) {
                a->pct_reported = dec;
                event(a, OTA_EV_DOWNLOAD_PROGRESS, R_NONE);
            }
            if (a->req_got == a->req_n || a->next_off - a->ps.offset >= OTA_CFG_PERSIST_EVERY) {
                a->ps.offset = a->next_off & ~15u; /* see OTA_CFG_PERSIST_EVERY */
                persist(a);
            }
            if (a->req_got == a->req_n) {
                /* the whole window came: grow back towards the most;
                 * connected, or there would be no request */
                if (a->window < a->window_max)
                    a->window++;
                send_request(a);
            }
            return OTA_OK;
        }
        /* complete: the digest decides before anything is installed (the
         * request is done; a->req counts only while downloading) */
        why = !digest_ok(a)                                  ? R_DIGEST
              : P(a)->slot_finish(P(a)->ctx, KIND(a)) != OTA_OK ? R_IMAGE_REFUSED
                                                             : R_NONE;
        if (why == R_NONE) {
            a->ps.offset = a->ps.size;
            a->pct_reported = 100;
            step(a, OTA_STATE_VERIFIED, OTA_EV_DOWNLOAD_COMPLETED, R_NONE);
            if (a->ps.install_mode == 0u)
                install(a);
            return OTA_OK;
        }
        if (why == R_DIGEST && a->ps.refetches < OTA_CFG_DIGEST_RETRIES) {
            /* a corrupted block got through: fetch it all again */
            a->ps.refetches++;
            a->ps.offset = 0;
            if (start_download(a) == OTA_OK) {
                step(a, OTA_STATE_DOWNLOADING, OTA_EV_DOWNLOAD_STARTED, R_REFETCH);
                send_request(a); /* connected, as above */
                return OTA_OK;
            }
            why = R_BEGIN;
        }
    }
    give_up(a, why); /* refused by the broker or failed: reported */
    return OTA_OK;
}

/* Prepares the slot and the hash for ps (state DOWNLOADING) from
 * ps.offset, which is 0 for a new download; when the written part cannot be
 * read back, from 0. */
static int start_download(ota_agent_t *a)
{
    int rc;
    stop_requests(a);
    a->retries = 0;
    for (;;) {
        rc = P(a)->slot_begin(P(a)->ctx, KIND(a), a->ps.size, a->ps.offset);
        if (rc == OTA_OK)
            rc = rehash(a, a->ps.offset);
        if (rc == OTA_OK || a->ps.offset == 0u)
            break;
        abort_slot(a);
        a->ps.offset = 0; /* cannot resume: start over */
    }
    a->next_off = a->ps.offset;
    a->pct_reported = decile(a->next_off, a->ps.size);
    return rc;
}

/* ---- offers ------------------------------------------------------------ */

/* s[0..n) is the current update's rollout ID. */
static bool current_rollout(const ota_agent_t *a, const char *s, size_t n)
{
    return strlen(a->ps.rollout) == n && memcmp(a->ps.rollout, s, n) == 0;
}

/* Reports a refused offer (event 15) with its own rollout ID and, when it
 * was readable, its manifest's version, as far as they are within the
 * limits the broker takes. */
static INLINE void reject(ota_agent_t *a, const ota_offer_t *o, unsigned why,
                          const ota_manifest_t *m)
{
    event_for(a, OTA_EV_REJECTED, why, o->rollout_len <= OTA_CFG_ROLLOUT_MAX ? o->rollout : NULL,
              o->rollout_len, m->version_len <= OTA_CFG_VERSION_MAX ? m->version : NULL,
              m->version_len);
}

/* The checks of DESIGN §4 after the signature, in order, on a manifest
 * whose signature is verified. Returns the reason of the first that fails,
 * R_NONE when all pass. Each kind has its own version and replay guard;
 * the secure version is the firmware's. */
static unsigned check_manifest(ota_agent_t *a, const ota_manifest_t *m)
{
    const char *cur;
    int cmp;
    if (!ota_manifest_has_target(m, a->cfg.hardware))
        return R_HARDWARE;
    if (m->min_bootloader != NULL &&
        (ota_semver_cmp(a->cfg.bootloader_version, strlen(a->cfg.bootloader_version),
                        m->min_bootloader, m->min_bootloader_len, &cmp) != OTA_OK ||
         cmp < 0))
        return R_BOOTLOADER;
    if (m->kind >= OTA_KINDS || !((P(a)->kinds | 1u << OTA_KIND_FIRMWARE) >> m->kind & 1u))
        return R_KIND;
    if (m->version_len > OTA_CFG_VERSION_MAX)
        return R_VERSION_LONG;
    cur = m->kind == 0u ? a->cfg.fw_version : a->ps.kind_version[m->kind - 1u];
    if (*cur == '\0')
        cur = "0.0.0"; /* no configuration yet */
    if (ota_semver_cmp(m->version, m->version_len, cur, strlen(cur), &cmp) != OTA_OK)
        return R_BAD_VERSION;
    if (cmp <= 0 && !a->cfg.settings.allow_downgrade)
        return cmp == 0 ? R_SAME_VERSION : R_DOWNGRADE;
    if (m->seq < a->ps.guard[m->kind])
        return R_SEQUENCE;
    if (m->kind == 0u && m->secure_version < device_secure_version(a))
        return R_SECURE_VERSION;
    return R_NONE;
}

typedef char version_then_rollout[offsetof(ota_persist_t, rollout) ==
                                          offsetof(ota_persist_t, version) +
                                              sizeof(((ota_persist_t *)0)->version)
                                      ? 1
                                      : -1];

/* The running slot of kind (for the target of a new update). */
static uint8_t running_slot(ota_agent_t *a, uint8_t kind)
{
    ota_boot_info_t bi;
    bi.running_slot = 1;
    (void)P(a)->boot_state(P(a)->ctx, kind, &bi);
    return bi.running_slot;
}

/* The broker's window (offer key 6, kept with the download) caps the
 * agent's. */
NOINLINE static void cap_window(ota_agent_t *a)
{
    a->window_max = a->ps.window != 0u ? min_u32(a->ps.window, a->cfg.settings.window)
                                       : a->cfg.settings.window;
    a->window = min_u32(a->window, a->window_max);
}

static int on_offer(ota_agent_t *a, const uint8_t *payload, size_t len)
{
    ota_offer_t o;
    ota_cose_sign1_t s;
    ota_manifest_t m;
    unsigned why;
    uint32_t st = a->ps.state;
    int cose, decoded = OTA_ERR_MSG, rc = ota_msg_decode_offer(payload, len, &o);

    if (rc != OTA_OK) {
        event_plain(a, OTA_EV_REJECTED, R_BAD_OFFER);
        return rc;
    }
    if (a->check_pending) {
        a->check_pending = false;
        event_plain(a, OTA_EV_CHECK_COMPLETED, R_NONE);
    }
    a->ps.window = (uint8_t)min_u32(o.max_window, 255u);
    cap_window(a);
    /* no new update while one is being installed or tried */
    if (st == OTA_STATE_INSTALLING || st == OTA_STATE_REBOOTING || st == OTA_STATE_TRIAL)
        return OTA_ERR_STATE;
    if (o.rollout_len == 0u) {
        if (st == OTA_STATE_DOWNLOADING || st == OTA_STATE_VERIFIED)
            give_up(a, R_WITHDRAWN);
        return OTA_OK;
    }
    m.version = NULL;
    m.version_len = 0;
    if (o.rollout_len > OTA_CFG_ROLLOUT_MAX) {
        why = R_ROLLOUT_LONG;
    } else {
        /* Parsed and decoded once, not yet trusted, for the cheap re-offer
         * check before any crypto: the same rollout and digest again
         * continues or ignores what is under way. */
        cose = ota_cose_parse(o.manifest, o.manifest_len, &s);
        if (cose == OTA_OK)
            decoded = ota_manifest_decode(s.payload, s.payload_len, &m);
        if (decoded != OTA_OK) {
            m.version = NULL;
        } else if (current_rollout(a, o.rollout, o.rollout_len) &&
                   memcmp(a->ps.digest, m.digest, 32) == 0) {
            if (st == OTA_STATE_DOWNLOADING || st == OTA_STATE_VERIFIED) {
                a->ps.install_mode = o.install_mode;
                if (st == OTA_STATE_VERIFIED) {
                    if (o.install_mode == 0u)
                        install(a);
                } else if (a->req == REQ_NONE && a->connected) {
                    send_request(a);
                }
                return OTA_OK;
            }
            if (st == OTA_STATE_COMMITTED || (a->ps.flags & OTA_PF_IGNORE_OFFER))
                return OTA_OK; /* done, or already failed: don't loop */
        }
        /* then DESIGN §4 in order: signature, the manifest's checks */
        if (o.deadline != 0u && unix_now(a) > o.deadline) {
            why = R_DEADLINE;
        } else if (cose != OTA_OK) {
            why = R_BAD_COSE;
        } else {
            rc = ota_cose_verify(&s, P(a), a->keys, a->cfg.nkeys);
            why = rc == OTA_ERR_UNKNOWN_KEY ? R_UNKNOWN_KEY
                  : rc != OTA_OK            ? R_BAD_SIGNATURE
                  : decoded != OTA_OK       ? R_BAD_MANIFEST
                                            : check_manifest(a, &m);
        }
    }
    if (why != R_NONE) {
        reject(a, &o, why, &m);
        return -(int)refusal_status[why - R_BAD_OFFER];
    }
    if (st == OTA_STATE_DOWNLOADING || st == OTA_STATE_VERIFIED)
        give_up(a, R_SUPERSEDED);

    memset(a->ps.version, 0, sizeof(a->ps.version) + sizeof(a->ps.rollout));
    memcpy(a->ps.rollout, o.rollout, o.rollout_len);
    memcpy(a->ps.version, m.version, m.version_len);
    memcpy(a->ps.digest, m.digest, 32);
    a->ps.size = m.image_size;
    a->ps.offset = 0;
    a->ps.block_size = a->cfg.settings.block_size; /* or the offer's, when smaller */
    if (o.block_size != 0u && o.block_size < a->ps.block_size)
        a->ps.block_size = o.block_size;
    a->ps.install_mode = o.install_mode;
    a->ps.seq = m.seq;
    a->ps.target_secure_version = m.secure_version;
    a->ps.kind = m.kind;
    a->ps.target_slot = (uint8_t)(running_slot(a, m.kind) ^ 1u);
    a->ps.error = 0;
    a->ps.flags = 0;
    a->ps.refetches = 0;
    a->window = a->window_max;
    rc = start_download(a);
    if (rc != OTA_OK) {
        give_up(a, rc == OTA_ERR_NOSPACE ? R_TOO_LARGE : R_BEGIN);
        return rc;
    }
    step(a, OTA_STATE_DOWNLOADING, OTA_EV_DOWNLOAD_STARTED, R_NONE);
    if (a->connected)
        send_request(a);
    return OTA_OK;
}

/* ---- commands ---------------------------------------------------------- */

static void check_now(ota_agent_t *a)
{
    a->check_pending = true;
    event_plain(a, OTA_EV_CHECK_STARTED, R_NONE);
    if (a->connected)
        (void)P(a)->mqtt_subscribe(P(a)->ctx, topic(a, TOPIC_MANIFEST), 1);
}

static int on_command(ota_agent_t *a, const uint8_t *payload, size_t len)
{
    ota_command_t c;
    uint64_t now;
    uint32_t st = a->ps.state;
    int rc = ota_msg_decode_command(payload, len, &c);
    if (rc != OTA_OK)
        return rc;
    now = unix_now(a);
    if (c.not_after != 0u && now > c.not_after)
        return OTA_ERR_TIMEOUT;
    if (c.verb == OTA_CMD_INSTALL || c.verb == OTA_CMD_CANCEL) {
        if (c.rollout_len != 0u && !current_rollout(a, c.rollout, c.rollout_len))
            return OTA_ERR_STATE; /* about another rollout */
        if (st != OTA_STATE_DOWNLOADING && st != OTA_STATE_VERIFIED)
            return OTA_ERR_STATE;
        if (c.verb == OTA_CMD_CANCEL) {
            give_up(a, R_CANCEL_CMD);
        } else if (st == OTA_STATE_VERIFIED) {
            install(a);
        } else {
            a->ps.install_mode = 0; /* install as soon as verified */
            persist(a);
        }
        return OTA_OK;
    }
    if (c.verb == OTA_CMD_CHECK)
        check_now(a);
    else if (c.verb == OTA_CMD_REBOOT)
        restart(a);
    else
        return OTA_ERR_MSG;
    return OTA_OK;
}

int ota_agent_on_message(ota_agent_t *a, const char *t, const uint8_t *payload, size_t len)
{
    if (a == NULL || t == NULL || (payload == NULL && len != 0u) || !a->booted)
        return OTA_ERR_ARG;
    /* an empty payload (NULL, 0) is a malformed message like any other */
    if (strncmp(t, a->topic, a->topic_len) != 0)
        return OTA_OK;
    t += a->topic_len;
    if (strcmp(t, inbox) == 0)
        return on_block(a, payload, len);
    if (strcmp(t, TOPIC_MANIFEST) == 0)
        return on_offer(a, payload, len);
    if (strcmp(t, TOPIC_CMD) == 0)
        return on_command(a, payload, len);
    return OTA_OK;
}

int ota_agent_on_puback(ota_agent_t *a, int msg_id, uint8_t reason)
{
    uint32_t b;
    if (a == NULL || !a->ev_inflight || (uint32_t)msg_id != a->ev_id)
        return OTA_OK;
    a->ev_inflight = false;
    b = a->ev_backoff_ms;
    if (reason == 0x80u || reason == 0x83u || reason == 0x97u) {
        /* the broker could not record it now: again later */
        b = b != 0u ? 2u * b : OTA_CFG_EVENT_RETRY_MS;
        a->ev_backoff_ms = b = min_u32(b, OTA_CFG_EVENT_RETRY_MAX_MS);
        a->ev_at_ms = NOW(a) + b;
        return OTA_ERR_IO;
    }
    a->ev_backoff_ms = 0;
    evq_drop(a); /* delivered, or refused for good: resending cannot help */
    flush_events(a);
    return reason < 0x80u ? OTA_OK : OTA_ERR_MSG;
}

/* ---- trial ------------------------------------------------------------- */

static void rolled_back(ota_agent_t *a);

/* Goes back to the update's previous slot. Firmware: the port restarts
 * into it (does not return when it can). */
static void roll_back(ota_agent_t *a, unsigned why)
{
    if (reason_err[why] != ERR_PS)
        a->ps.error = reason_err[why];
    a->ps.flags |= OTA_PF_ROLLBACK_REQ;
    a->ps.trial_ms = trial_clock(a);
    step(a, a->ps.state, OTA_EV_ROLLBACK_TRIGGERED, why);
    keep_events(a);
    if (P(a)->rollback(P(a)->ctx, KIND(a)) == OTA_OK) {
        if (a->ps.kind != OTA_KIND_FIRMWARE)
            rolled_back(a); /* the previous one is in use already */
        return;             /* a port whose rollback returns restarts later by itself */
    }
    if (a->ps.kind == OTA_KIND_FIRMWARE && a->boot.img_state == OTA_IMG_PENDING_VERIFY) {
        P(a)->reboot(P(a)->ctx); /* unconfirmed: the bootloader reverts (events kept above) */
        return;
    }
    /* confirmed and no way back: stay on this image, report it */
    a->ps.flags = (a->ps.flags & ~(uint32_t)OTA_PF_ROLLBACK_REQ) | OTA_PF_IGNORE_OFFER;
    step(a, OTA_STATE_FAILED, OTA_EV_HEALTH_FAILED, R_NO_TARGET);
}

/* A health check or rollback trigger failed: report it and roll back. */
static void fail_trial(ota_agent_t *a, unsigned why)
{
    event(a, OTA_EV_HEALTH_FAILED, why);
    roll_back(a, why);
}

NOINLINE static unsigned count_since(const uint32_t *log, unsigned n, uint32_t now_ms,
                                     uint32_t window_ms)
{
    unsigned c = 0;
    while (n-- > 0u)
        c += now_ms - log[n] * 1000u < window_ms;
    return c;
}

static void trial_tick(ota_agent_t *a, uint32_t now)
{
    bool healthy = (health_bits(a) & 3u) == 3u; /* app and resources ok */
    uint32_t clock = trial_clock(a);
    uint32_t k = a->ps.kind;

    if (!(a->ps.flags & OTA_PF_CONFIRMED)) {
        if (a->broker_seen && a->hb_sent && healthy) {
            if (P(a)->confirm(P(a)->ctx, KIND(a)) != OTA_OK) {
                roll_back(a, R_CONFIRM);
                return;
            }
            if (k == OTA_KIND_FIRMWARE)
                a->boot.img_state = OTA_IMG_VALID;
            a->ps.flags |= OTA_PF_CONFIRMED;
            a->ps.trial_ms = clock;
            a->trial_saved_ms = a->healthy_ms = now;
            step(a, OTA_STATE_TRIAL, OTA_EV_HEALTH_OK, R_NONE);
        } else if (clock >= a->cfg.settings.trial_timeout_ms) {
            /* R_NOT_REACHED, R_NO_HEARTBEAT or R_APP_CHECK: the first
             * check that did not pass (the flags are 0 or 1) */
            fail_trial(a, R_NOT_REACHED + a->broker_seen + (a->broker_seen & a->hb_sent));
        }
        return;
    }
    /* probation: triggers armed */
    if (healthy) {
        a->healthy_ms = now;
    } else if (now - a->healthy_ms >= a->cfg.settings.health_fail_ms) {
        fail_trial(a, R_HEALTH_FAILING); /* failing all that time */
        return;
    }
    if (!a->connected && now - a->offline_since_ms >= a->cfg.settings.no_broker_ms) {
        fail_trial(a, R_NO_BROKER);
        return;
    }
    if (clock >= a->cfg.settings.probation_ms ||
        now - a->trial_saved_ms >= a->cfg.settings.trial_persist_ms) {
        a->trial_saved_ms = now;
        a->ps.trial_ms = clock;
        if (clock < a->cfg.settings.probation_ms) {
            persist(a);
            return;
        }
        /* committed: the guard and the secure version (or the kind's
         * version) move up, the counters restart */
        if (k == OTA_KIND_FIRMWARE) {
            if (a->ps.target_secure_version > a->ps.secure_version)
                a->ps.secure_version = a->ps.target_secure_version;
        } else {
            memcpy(a->ps.kind_version[k - 1u], a->ps.version, sizeof(a->ps.version));
        }
        a->ps.guard[k] = a->ps.seq;
        a->ps.boots_since_commit = 0;
        a->ps.wdt_since_commit = 0;
        a->ps.nboots = 0;
        a->ps.nwdt = 0;
        a->ps.flags |= OTA_PF_IGNORE_OFFER;
        set_state(a, OTA_STATE_COMMITTED);
        send_birth(a); /* its secure version and replay guard changed */
        check_now(a);  /* the next update may be waiting */
    }
}

void ota_agent_tick(ota_agent_t *a)
{
    uint32_t now;
    if (a == NULL || !a->booted)
        return;
    now = NOW(a);
    if (a->connected && now - a->last_hb_ms >= a->cfg.settings.heartbeat_ms)
        send_heartbeat(a);
    if (a->ps.state == OTA_STATE_DOWNLOADING && a->connected && a->req != REQ_NONE &&
        due(now, a->req_at_ms)) {
        if (a->req == REQ_ACTIVE && a->req_got == 0u) {
            retry_later(a, 0, true); /* no answer */
        } else {
            if (a->req == REQ_ACTIVE) {
                /* Part of the window came, then nothing: the rest was
                 * lost, or the broker serves fewer blocks per request than
                 * asked (DESIGN §3 allows it: "up to count"). Ask for as
                 * many as came, at once. Full answers grow the window
                 * back, unless the broker did not say its window (offer
                 * key 6): then this may be it. */
                a->window = a->req_got;
                if (a->ps.window == 0u)
                    a->window_max = a->req_got;
            }
            send_request(a); /* or the wait is over */
        }
    }
    if (a->ps.state == OTA_STATE_TRIAL)
        trial_tick(a, now);
    if (a->ev_inflight && due(now, a->ev_at_ms))
        a->ev_inflight = false; /* no PUBACK: the client lost it, send it again */
    flush_events(a);
}

/* ---- boot -------------------------------------------------------------- */

/* The update's previous slot is in use again: the bootloader (or the port,
 * or the agent before a reset) went back to it. A revert after a power loss
 * or brownout is not the image's fault: the same update may then be tried
 * again when offered. */
static void rolled_back(ota_agent_t *a)
{
    bool asked = (a->ps.flags & OTA_PF_ROLLBACK_REQ) != 0u;
    bool power = !asked && (a->boot.reason == OTA_BOOT_POWER_ON ||
                            a->boot.reason == OTA_BOOT_BROWNOUT);
    if (!asked) {
        a->ps.error = OTA_E_BOOT;
        /* R_POWER_LOST or R_NOT_CONFIRMED, the row after it */
        event(a, OTA_EV_ROLLBACK_TRIGGERED, R_NOT_CONFIRMED - power);
    }
    if (a->ps.kind == OTA_KIND_FIRMWARE) {
        /* After a rollback from a confirmed image, esp_ota_set_boot_partition
         * made the old image NEW, so it runs PENDING_VERIFY like an update:
         * confirm it at once, or its next reset would revert to the
         * abandoned image; then make that one unbootable. */
        a->boot_reason = OTA_BOOT_ROLLBACK;
        if ((a->boot.img_state != OTA_IMG_PENDING_VERIFY ||
             P(a)->confirm(P(a)->ctx, OTA_KIND_FIRMWARE) == OTA_OK) &&
            P(a)->invalidate_other != NULL)
            (void)P(a)->invalidate_other(P(a)->ctx);
    }
    a->ps.flags = power ? 0u : OTA_PF_IGNORE_OFFER;
    a->ps.nboots = 0;
    a->ps.nwdt = 0;
    step(a, OTA_STATE_ROLLED_BACK, OTA_EV_ROLLBACK_COMPLETED, R_PS);
}

/* Another boot of the slot on trial: the reboot and watchdog triggers. */
static void trial_boot(ota_agent_t *a)
{
    uint32_t t = a->ps.trial_ms / 1000u;
    a->trial_zero_ms -= a->ps.trial_ms; /* the clock goes on from there */
    if (a->ps.flags & OTA_PF_ROLLBACK_REQ) {
        /* the rollback did not happen (reset before it took effect) */
        roll_back(a, R_RETRIED);
        return;
    }
    log_push(a->ps.boot_log, &a->ps.nboots, t);
    if (a->boot.reason == OTA_BOOT_WATCHDOG)
        log_push(a->ps.wdt_log, &a->ps.nwdt, t);
    persist(a);
    if (count_since(a->ps.boot_log, a->ps.nboots, a->ps.trial_ms,
                    a->cfg.settings.reboot_window_ms) > a->cfg.settings.max_reboots)
        fail_trial(a, R_REBOOTS);
    else if (count_since(a->ps.wdt_log, a->ps.nwdt, a->ps.trial_ms,
                         a->cfg.settings.wdt_window_ms) > a->cfg.settings.max_wdt_resets)
        fail_trial(a, R_WDT);
}

/* Loads the events not yet acknowledged before the reset; a record whose
 * framing is off is dropped. */
static void load_events(ota_agent_t *a)
{
    size_t len = sizeof(a->evq), p = 0;
    if (P(a)->kv_get(P(a)->ctx, OTA_KV_EVENTS, a->evq, &len) != OTA_OK)
        len = 0;
    while (p < len && a->evq[p] >= 3u)
        p += 1u + a->evq[p];
    a->evq_len = (uint32_t)(p == len ? len : 0u);
    a->ev_saved = a->evq_len != 0u;
}

int ota_agent_on_boot(ota_agent_t *a)
{
    ota_boot_info_t kb, *bi = &a->boot;
    size_t len = sizeof(a->tx);
    int rc;
    uint32_t st, flags;
    bool moved, busy;
    if (a == NULL || a->port == NULL || a->booted)
        return OTA_ERR_ARG;
    rc = P(a)->boot_state(P(a)->ctx, OTA_KIND_FIRMWARE, &a->boot);
    if (rc != OTA_OK)
        return rc;
    a->offline_since_ms = a->trial_saved_ms = a->trial_zero_ms = a->healthy_ms = a->ev_at_ms =
        NOW(a);
    a->boot_reason = a->boot.reason;
    a->booted = true;
    if (P(a)->kv_get(P(a)->ctx, OTA_KV_STATE, a->tx, &len) != OTA_OK ||
        ota_persist_decode(&a->ps, a->tx, len) != OTA_OK)
        memset(&a->ps, 0, sizeof(a->ps)); /* fresh device or unreadable */
    load_events(a);
    cap_window(a);
    a->ps.boots_since_commit++;
    if (a->boot.reason == OTA_BOOT_WATCHDOG)
        a->ps.wdt_since_commit++;
    st = a->ps.state;
    flags = a->ps.flags;
    if (a->ps.kind != OTA_KIND_FIRMWARE) {
        bi = &kb;
        rc = P(a)->boot_state(P(a)->ctx, KIND(a), bi);
        if (rc != OTA_OK)
            return rc;
    }
    moved = bi->running_slot != a->ps.target_slot; /* not the update's slot */
    busy = st == OTA_STATE_INSTALLING || st == OTA_STATE_REBOOTING || st == OTA_STATE_TRIAL;

    if (a->ps.kind == OTA_KIND_FIRMWARE && moved &&
        ((flags & OTA_PF_ROLLBACK_REQ) || (st == OTA_STATE_TRIAL && (flags & OTA_PF_CONFIRMED)))) {
        /* back on the old image after a rollback asked for or after the
         * new image was confirmed (also when the bootloader starts it
         * PENDING_VERIFY, like a new one) */
        rolled_back(a);
        return OTA_OK;
    }
    if (a->boot.img_state == OTA_IMG_PENDING_VERIFY &&
        !(a->ps.kind == OTA_KIND_FIRMWARE && busy && !moved)) {
        /* firmware waiting for confirmation that we know nothing about */
        a->ps.kind = OTA_KIND_FIRMWARE;
        a->ps.target_slot = a->boot.running_slot;
        new_trial(a);
        a->ps.state = st = OTA_STATE_REBOOTING;
        moved = false;
        busy = true;
    }
    if (busy) {
        if (moved) {
            if (st != OTA_STATE_INSTALLING) {
                rolled_back(a);
                return OTA_OK;
            }
            /* reset during activation: the image is verified, redo it */
            a->ps.state = OTA_STATE_VERIFIED;
        } else if (st == OTA_STATE_TRIAL) {
            trial_boot(a);
            return OTA_OK;
        } else {
            /* the slot's first start */
            if (a->ps.kind == OTA_KIND_FIRMWARE)
                a->boot_reason = OTA_BOOT_OTA;
            trial_start(a);
            return OTA_OK;
        }
    } else if (st == OTA_STATE_ROLLED_BACK && a->ps.kind == OTA_KIND_FIRMWARE && !moved) {
        /* the bootloader started the image rolled back from again (it fell
         * back to it: the image rolled back to was never confirmed, or no
         * longer loads) */
        roll_back(a, R_ABANDONED);
        return OTA_OK;
    }

    if (a->ps.state == OTA_STATE_DOWNLOADING) {
        if (start_download(a) != OTA_OK) {
            give_up(a, R_RESUME);
            return OTA_OK;
        }
    } else if (a->ps.state == OTA_STATE_VERIFIED) {
        /* the slot may have been touched while we were off: check again */
        if (rehash(a, a->ps.size) != OTA_OK || !digest_ok(a)) {
            give_up(a, R_SLOT_CHANGED);
            return OTA_OK;
        }
    }
    persist(a);
    return a->persist_failed ? OTA_ERR_IO : OTA_OK;
}

/* ---- connection -------------------------------------------------------- */

void ota_agent_on_connect(ota_agent_t *a)
{
    const char *s;
    unsigned i;
    if (a == NULL || !a->booted)
        return;
    a->connected = true;
    a->broker_seen = true;
    send_birth(a);
    for (s = inbox, i = 0; i < 3u; i++, s += strlen(s) + 1u)
        (void)P(a)->mqtt_subscribe(P(a)->ctx, topic(a, s), i != 0u);
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
    stop_requests(a);
    a->offline_since_ms = NOW(a);
    /* An event in flight stays so: the client sends it again after the
     * reconnect with the same message ID, and its PUBACK drops it; if the
     * client dropped it instead, OTA_CFG_EVENT_ACK_MS after it was
     * published the agent publishes it again. */
}

/* ---- init -------------------------------------------------------------- */

/* ota_settings_t is all uint32_t up to allow_downgrade: the defaults of its
 * zero fields, in member order. */
static const uint32_t setting_defaults[] = {
    OTA_CFG_HEARTBEAT_MS,     OTA_CFG_REQUEST_TIMEOUT_MS, OTA_CFG_BACKOFF_MIN_MS,
    OTA_CFG_BACKOFF_MAX_MS,   OTA_CFG_MAX_RETRIES,        OTA_CFG_TRIAL_TIMEOUT_MS,
    OTA_CFG_PROBATION_MS,     OTA_CFG_MAX_REBOOTS,        OTA_CFG_REBOOT_WINDOW_MS,
    OTA_CFG_MAX_WDT_RESETS,   OTA_CFG_WDT_WINDOW_MS,      OTA_CFG_HEALTH_FAIL_MS,
    OTA_CFG_NO_BROKER_MS,     OTA_CFG_TRIAL_PERSIST_MS,   OTA_CFG_BLOCK_SIZE,
    OTA_CFG_WINDOW,
};
typedef char settings_are_words[offsetof(ota_settings_t, allow_downgrade) ==
                                        sizeof(setting_defaults)
                                    ? 1
                                    : -1];

/* The port's members that must be set, by offset. */
#define REQ(m) (uint8_t) offsetof(ota_port_t, m)
static const uint8_t required[] = {
    REQ(mqtt_publish),  REQ(mqtt_subscribe), REQ(slot_begin),    REQ(slot_write),
    REQ(slot_read),     REQ(slot_finish),    REQ(slot_activate), REQ(boot_state),
    REQ(confirm),       REQ(rollback),       REQ(reboot),        REQ(sha256_start),
    REQ(sha256_update), REQ(sha256_finish),  REQ(sha256_abort),  REQ(ecdsa_p256_verify),
    REQ(kv_get),        REQ(kv_set),         REQ(now_ms),
};
typedef char port_offsets_fit[offsetof(ota_port_t, now_ms) < 256u ? 1 : -1];

/* The length of id when it matches ^[A-Za-z0-9._-]{1,64}$ (DESIGN §2),
 * else 0. */
static size_t id_len(const char *id)
{
    size_t n = 0;
    for (; id[n] != '\0'; n++) {
        unsigned c = (unsigned char)id[n];
        if ((c | 0x20u) - 'a' > 'z' - 'a' && c - '0' > 9u && c != '.' && c != '_' && c != '-')
            return 0;
    }
    return n <= OTA_CFG_DEVICE_ID_MAX ? n : 0u;
}

int ota_agent_init(ota_agent_t *a, const ota_agent_config_t *cfg)
{
    const ota_port_t *p;
    size_t i, n;
    if (a == NULL || cfg == NULL || (p = cfg->port) == NULL || cfg->device_id == NULL ||
        cfg->hardware == NULL || cfg->bootloader_version == NULL || cfg->fw_version == NULL ||
        cfg->keys == NULL || cfg->nkeys == 0u || cfg->nkeys > OTA_CFG_MAX_KEYS ||
        (n = id_len(cfg->device_id)) == 0u || strlen(cfg->fw_version) > OTA_CFG_VERSION_MAX ||
        strlen(cfg->hardware) > OTA_CFG_HARDWARE_MAX)
        return OTA_ERR_ARG;
    for (i = 0; i < sizeof(required); i++) {
        void (*f)(void);
        memcpy(&f, OTA_PTR_MEMBER((const uint8_t *)p + required[i]), sizeof(f));
        if (f == NULL)
            return OTA_ERR_ARG;
    }
    memset(a, 0, sizeof(*a));
    a->port = p;
    a->cfg = *cfg;
    for (i = 0; i < sizeof(setting_defaults) / sizeof(setting_defaults[0]); i++) {
        uint32_t *f =
            (uint32_t *)(void *)((uint8_t *)&a->cfg.settings + i * sizeof(uint32_t));
        if (*f == 0u)
            *f = setting_defaults[i];
    }
    if (a->cfg.settings.block_size > OTA_CFG_BLOCK_SIZE)
        a->cfg.settings.block_size = OTA_CFG_BLOCK_SIZE;
    if (a->cfg.settings.max_reboots > OTA_CFG_BOOT_LOG - 1u)
        a->cfg.settings.max_reboots = OTA_CFG_BOOT_LOG - 1u;
    if (a->cfg.settings.max_wdt_resets > OTA_CFG_BOOT_LOG - 1u)
        a->cfg.settings.max_wdt_resets = OTA_CFG_BOOT_LOG - 1u;
    if (a->cfg.settings.backoff_max_ms < a->cfg.settings.backoff_min_ms)
        a->cfg.settings.backoff_max_ms = a->cfg.settings.backoff_min_ms;
    a->window = a->window_max = a->cfg.settings.window;
    for (i = 0; i < cfg->nkeys; i++) {
        if (cfg->keys[i][0] != 0x04u)
            return OTA_ERR_ARG;
        memcpy(a->keys[i].pub, cfg->keys[i], 65);
        if (ota_key_id(p, a->keys[i].pub, a->keys[i].kid) != OTA_OK)
            return OTA_ERR_CRYPTO;
    }
    memcpy(a->topic, OTA_CFG_TOPIC_PREFIX "/", sizeof(OTA_CFG_TOPIC_PREFIX));
    memcpy(a->topic + sizeof(OTA_CFG_TOPIC_PREFIX), cfg->device_id, n);
    n += sizeof(OTA_CFG_TOPIC_PREFIX);
    a->topic[n] = '/';
    a->topic_len = (uint8_t)(n + 1u);
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

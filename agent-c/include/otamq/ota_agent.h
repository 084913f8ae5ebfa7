/*
 * ota_agent.h - the otamq device agent core.
 *
 * The agent is a state machine driven from ONE task:
 *
 *   ota_agent_init()        once, with a port and the device's identity;
 *   ota_agent_on_boot()     once per boot, before anything else, reads the
 *                           persisted state and the bootloader's view and
 *                           decides: continue a trial, report a rollback,
 *                           resume a download;
 *   ota_agent_on_connect()  after every successful MQTT connect;
 *   ota_agent_on_disconnect() when the connection is lost;
 *   ota_agent_on_message()  for every PUBLISH received (complete payload);
 *   ota_agent_tick()        periodically (every 100..1000 ms; the period is
 *                           the resolution of every timeout).
 *
 * None of these may be called concurrently or from inside a port callback.
 * The agent never allocates: ota_agent_t holds all its state (see
 * FOOTPRINT.md for its size) and the caller owns its storage.
 */
#ifndef OTAMQ_OTA_AGENT_H
#define OTAMQ_OTA_AGENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ota_config.h"
#include "ota_msg.h"
#include "ota_port.h"
#include "ota_status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define OTA_AGENT_VERSION "0.1.0"

/* Key under which the agent persists its state in the port's kv store. */
#define OTA_KV_STATE "otamq.state"

/* Run-time timing and policy. A zero field means the OTA_CFG_* default of
 * ota_config.h (so a zeroed struct is "all defaults"). */
typedef struct ota_settings {
    uint32_t heartbeat_ms;
    uint32_t request_timeout_ms;
    uint32_t backoff_min_ms;
    uint32_t backoff_max_ms;
    uint32_t max_retries;
    uint32_t trial_timeout_ms;
    uint32_t probation_ms;
    uint32_t max_reboots;      /* capped at OTA_CFG_BOOT_LOG - 1 */
    uint32_t reboot_window_ms;
    uint32_t max_wdt_resets;   /* capped at OTA_CFG_BOOT_LOG - 1 */
    uint32_t wdt_window_ms;
    uint32_t health_fail_ms;
    uint32_t no_broker_ms;
    uint32_t trial_persist_ms;
    uint32_t block_size;       /* capped at OTA_CFG_BLOCK_SIZE */
    uint32_t window;           /* blocks per request */
    bool allow_downgrade;      /* accept a lower (or equal) version */
} ota_settings_t;

typedef struct ota_agent_config {
    const ota_port_t *port;
    /* Identity; the strings must stay valid as long as the agent. */
    const char *device_id;       /* MQTT client ID, ^[A-Za-z0-9._-]{1,64}$ */
    const char *hardware;        /* birth key 2, matched against targets */
    const char *bootloader_version; /* birth key 3, semver */
    const char *fw_version;      /* version of the RUNNING image, semver */
    uint32_t secure_version;     /* secure version of the running image */
    uint8_t connectivity;        /* birth key 9 */
    int32_t utc_offset_min;      /* birth key 10 */
    /* Trusted manifest keys: uncompressed P-256 points (0x04||X||Y). The
     * agent copies them and computes their key IDs. */
    const uint8_t (*keys)[65];
    size_t nkeys;                /* 1..OTA_CFG_MAX_KEYS */
    ota_settings_t settings;
} ota_agent_config_t;

/* A text member of at most n characters and its NUL, in an even number of
 * bytes. */
#define OTA_TEXT_SIZE(n) (((n) + 2u) & ~1u)

/* Persisted state (private: encoded as CBOR under OTA_KV_STATE). The words
 * come first: see ota_agent_t. */
typedef struct ota_persist {
    uint32_t state;          /* ota_state_t */
    uint32_t flags;          /* OTA_PF_* */
    uint32_t kind;           /* ota_kind_t of the current update */
    uint32_t offset;         /* bytes known written and persisted */
    uint32_t size;
    uint32_t trial_ms;       /* time run on the new image, summed over boots */
    uint32_t block_size;
    uint32_t secure_version; /* device secure version (committed) */
    uint32_t boots_since_commit;
    uint32_t wdt_since_commit;
    uint32_t target_secure_version;
    /* bytes cleared together in pairs */
    uint8_t error;           /* last ota_error_code_t */
    uint8_t refetches;       /* full downloads again after a digest mismatch */
    uint8_t nboots, nwdt;    /* entries in boot_log, wdt_log */
    uint8_t install_mode;
    uint8_t target_slot;
    uint8_t window;          /* the broker's window (offer key 6), 0: not told */
    uint64_t seq;            /* sequence number of the current update */
    /* The replay guard of each kind: the sequence number of the manifest
     * of what runs (committed); a manifest with a lower one is refused. */
    uint64_t guard[OTA_KINDS];
    uint32_t boot_log[OTA_CFG_BOOT_LOG]; /* trial clock (s) of trial boots */
    uint32_t wdt_log[OTA_CFG_BOOT_LOG];  /* trial clock (s) of watchdog boots */
    uint8_t digest[32];
    /* texts NUL-terminated, in even sizes (persist.c's rows need it) */
    /* version of the configuration and the feature flags in use ("": none) */
    char kind_version[OTA_KINDS - 1][OTA_TEXT_SIZE(OTA_CFG_VERSION_MAX)];
    char version[OTA_TEXT_SIZE(OTA_CFG_VERSION_MAX)]; /* then rollout: cleared as one */
    char rollout[OTA_TEXT_SIZE(OTA_CFG_ROLLOUT_MAX)];
} ota_persist_t;

#define OTA_PF_CONFIRMED 0x01u     /* trial image confirmed to the bootloader */
#define OTA_PF_ROLLBACK_REQ 0x02u  /* agent asked for a rollback */
#define OTA_PF_IGNORE_OFFER 0x04u  /* rollout+digest already handled */

/* Key under which the events waiting for their PUBACK are kept while one
 * of them is a result (see OTA_CFG_EVENT_QUEUE). */
#define OTA_KV_EVENTS "otamq.events"

#ifndef OTA_CFG_EVENT_BUF
#define OTA_CFG_EVENT_BUF (OTA_CFG_EVENT_QUEUE * 96)
#endif

/* The agent. All fields are private.
 *
 * The run-time state comes first and in words, then the persisted state,
 * whose words come first too: on RV32C a word within the first 128 bytes of
 * a struct is read or written by a 2-byte instruction (FOOTPRINT.md).
 * Times are the low 32 bits of now_ms, compared by difference so that they
 * may wrap. */
typedef struct ota_agent {
    const ota_port_t *port;
    /* the words used most, within the first 128 bytes with the persisted
     * state's first words; the flags are 0 or 1 */
    uint32_t evq_len;
    uint32_t connected;
    uint32_t next_off;         /* download: bytes written so far */
    uint32_t ev_inflight;      /* the first queued event is published */
    uint32_t window;           /* blocks per request now */
    uint32_t req;              /* block requests while downloading: none, one
                                  outstanding (until req_at_ms), or waiting
                                  until req_at_ms to ask again */
    uint32_t ev_at_ms;         /* when it was published / may be again */
    uint32_t window_max;       /* the settings' window, or the broker's */
    uint32_t booted;
    uint32_t retries;
    uint32_t req_got;          /* blocks received for the request */
    uint32_t req_n;            /* blocks asked for by the request */
    uint32_t pct_reported;     /* download progress last reported, percent */
    uint32_t ev_backoff_ms;    /* after a "retry" PUBACK, 0 = none */
    uint32_t broker_seen;      /* connected since the trial began */
    uint32_t trial_saved_ms;   /* now_ms of the last trial clock persist */
    uint32_t offline_since_ms;
    uint32_t hb_sent;          /* a heartbeat went out since the trial began */
    uint32_t hashing;          /* img_hash is started */
    ota_persist_t ps;
    uint32_t healthy_ms;       /* probation: when the health checks last passed */
    uint32_t req_id;
    uint32_t req_at_ms;
    uint32_t last_hb_ms;
    uint32_t ev_id;            /* the published event's message ID */
    uint32_t ev_saved;         /* the queue is in the kv store */
    uint32_t persist_failed;   /* the last persist failed (health bit 1) */
    uint32_t trial_zero_ms;    /* now_ms when the trial clock was 0 (wraps) */
    bool check_pending;        /* a check is under way: report the next offer */
    uint8_t boot_reason;       /* reported in the birth */
    uint8_t topic_len;         /* of "<prefix>/<id>/" at the start of topic */
    ota_boot_info_t boot;      /* of the running firmware */
    ota_agent_config_t cfg;    /* settings resolved: no zero field */
    ota_key_t keys[OTA_CFG_MAX_KEYS];
    ota_sha256_t img_hash;
    /* events waiting to be published: [length][bytes]... */
    uint8_t evq[OTA_CFG_EVENT_BUF];
    uint8_t tx[OTA_CFG_TX_BUF + 64];
    char topic[sizeof(OTA_CFG_TOPIC_PREFIX) + OTA_CFG_DEVICE_ID_MAX + 16];
} ota_agent_t;

/* Checks the configuration and prepares the agent; no I/O except the port's
 * SHA-256 (key IDs). OTA_OK, OTA_ERR_ARG or OTA_ERR_CRYPTO. */
int ota_agent_init(ota_agent_t *a, const ota_agent_config_t *cfg);

/* Once per boot, before the first connect. Loads the persisted state and
 * the events not yet acknowledged, compares the state with the
 * bootloader's view, and: starts or continues a trial, counts reboots and
 * watchdog resets (and rolls back when a trigger fires: this may not
 * return), recognises and reports a completed rollback (confirming the
 * image rolled back to, which the bootloader starts like a new one, and
 * making the abandoned one unbootable), re-verifies a downloaded image, or
 * prepares to resume an interrupted download (the already written part is
 * read back and hashed). OTA_OK, or a port status when the boot state could
 * not be read or the state not written. */
int ota_agent_on_boot(ota_agent_t *a);

/* The MQTT session is up: publishes the birth, subscribes to the device's
 * ota/manifest, ota/blk and cmd topics, sends queued events and a heartbeat,
 * and resumes a download. */
void ota_agent_on_connect(ota_agent_t *a);

/* The MQTT session is down (the port reconnects on its own). An event in
 * flight stays in flight: the client sends it again after the reconnect. */
void ota_agent_on_disconnect(ota_agent_t *a);

/* A PUBLISH arrived. topic is NUL-terminated; payload is complete (ports
 * reassemble fragments). Messages on other topics are ignored (OTA_OK).
 * Returns the decode/verification status, for logging only: the agent has
 * already reacted (events) on its own. A refused offer returns why:
 * OTA_ERR_SIGNATURE, OTA_ERR_UNKNOWN_KEY, OTA_ERR_HARDWARE,
 * OTA_ERR_BOOTLOADER, OTA_ERR_VERSION (downgrade, same version, kind),
 * OTA_ERR_SEQUENCE, OTA_ERR_SECURE_VERSION, OTA_ERR_TIMEOUT (deadline),
 * OTA_ERR_MSG / OTA_ERR_COSE (malformed); an offer while an update is
 * being installed or tried OTA_ERR_STATE. Policy decisions like these are
 * worth an info log line; ota_strerror names them. */
int ota_agent_on_message(ota_agent_t *a, const char *topic, const uint8_t *payload, size_t len);

/* The broker acknowledged the QoS 1 publish whose message ID mqtt_publish
 * returned, with an MQTT v5 PUBACK reason code (0 with MQTT 3.1.1, which
 * has none). For the agent's events (docs/PROTOCOL.md): 0x00 and 0x10 mean
 * delivered; 0x80, 0x83 and 0x97 mean the broker could not record it now,
 * so it is kept and sent again later (OTA_ERR_IO is returned); any other
 * code >= 0x80 means the event itself was refused, so it is dropped
 * (OTA_ERR_MSG is returned: worth a warning in the log). OTA_OK otherwise,
 * also for IDs the agent does not wait for. */
int ota_agent_on_puback(ota_agent_t *a, int msg_id, uint8_t reason);

/* Drives timeouts: heartbeats, block re-requests and backoff, the trial
 * deadline, rollback triggers, probation. */
void ota_agent_tick(ota_agent_t *a);

/* Current OTA state (ota_state_t). */
ota_state_t ota_agent_state(const ota_agent_t *a);

/* Bytes of the current download written so far. */
uint32_t ota_agent_offset(const ota_agent_t *a);

#ifdef __cplusplus
}
#endif
#endif /* OTAMQ_OTA_AGENT_H */

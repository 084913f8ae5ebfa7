/*
 * ota_config.h - compile-time configuration of the otamq agent core.
 *
 * Every option has a default here, guarded by #ifndef, so a build may
 * override any of them with -D or by defining them before this header is
 * included (the ESP-IDF component maps its Kconfig options onto them).
 *
 * Options ending in _MS are the DEFAULTS of the run-time timing settings in
 * struct ota_settings (see ota_agent.h): a zero field there means "use the
 * value below", so tests and the POSIX simulator can shorten them without
 * recompiling.
 */
#ifndef OTAMQ_OTA_CONFIG_H
#define OTAMQ_OTA_CONFIG_H

/* ---- sizes (bytes / counts); they decide the agent's static RAM ---------- */

/* Longest device ID (DESIGN §2: 1..64 characters). */
#ifndef OTA_CFG_DEVICE_ID_MAX
#define OTA_CFG_DEVICE_ID_MAX 64
#endif

/* Topic prefix (DESIGN §3, "dm" by default). */
#ifndef OTA_CFG_TOPIC_PREFIX
#define OTA_CFG_TOPIC_PREFIX "dm"
#endif

/* Longest firmware version (semver) the agent takes: the running image's
 * and the manifest's (key 3), which the agent keeps in its persisted state
 * (RAM: one byte each). A manifest with a longer version is refused (event
 * 15, error 4, detail "version longer than 32 bytes"). The broker accepts
 * up to 64 (ota/wire MaxVersionLen), but an ESP-IDF image cannot report a
 * longer version than 31 characters (esp_app_desc_t.version is char[32])
 * nor can a simulated image (32), so 32 costs nothing that works. */
#ifndef OTA_CFG_VERSION_MAX
#define OTA_CFG_VERSION_MAX 32
#endif

/* Longest hardware string (e.g. "esp32-v2"); as the broker (ota/wire
 * MaxHardwareLen). Only compared where it lies, never copied: no RAM. */
#ifndef OTA_CFG_HARDWARE_MAX
#define OTA_CFG_HARDWARE_MAX 64
#endif

/* Longest rollout ID kept (persisted state: one byte each); as the broker
 * (ota/wire MaxRolloutIDLen). Longer ones are refused (event 15, detail
 * "rollout ID longer than 64 bytes"). */
#ifndef OTA_CFG_ROLLOUT_MAX
#define OTA_CFG_ROLLOUT_MAX 64
#endif

/* Number of trusted manifest signing keys (selected by key ID). */
#ifndef OTA_CFG_MAX_KEYS
#define OTA_CFG_MAX_KEYS 4
#endif

/* Largest block the agent asks for. The port's MQTT receive buffer (the
 * "block buffer") must hold one block message: OTA_CFG_BLOCK_SIZE plus
 * OTA_CFG_BLOCK_OVERHEAD; the POSIX and ESP-IDF ports announce that sum as
 * MQTT v5 Maximum Packet Size. The offer's suggested size is used when it is
 * smaller. */
#ifndef OTA_CFG_BLOCK_SIZE
#define OTA_CFG_BLOCK_SIZE 4096
#endif

/* Bytes a block message needs beyond its data: MQTT fixed header, topic,
 * properties and the CBOR keys around the data. */
#ifndef OTA_CFG_BLOCK_OVERHEAD
#define OTA_CFG_BLOCK_OVERHEAD 192
#endif

/* Blocks asked for per request (the window, block request key 4), at most:
 * the agent asks for fewer when the offer says the broker serves fewer
 * (offer key 6), or after a request timed out with part of its window
 * received, and grows back by one block after each request answered in
 * full. */
#ifndef OTA_CFG_WINDOW
#define OTA_CFG_WINDOW 4
#endif

/* Buffer in which outgoing messages (birth, heartbeat, event, block
 * request) and the persisted state record are encoded. Also used as the
 * scratch buffer when the image hash is recomputed after a reset. The
 * largest state record (64-byte rollout ID, three 32-byte versions, full
 * boot logs) takes 400 bytes (tests/test_agent.c checks it fits). */
#ifndef OTA_CFG_TX_BUF
#define OTA_CFG_TX_BUF 384
#endif

/* Events waiting for the broker's PUBACK, about 96 bytes each (the queue
 * holds OTA_CFG_EVENT_QUEUE * 96 bytes of encoded events). When it is
 * full, the oldest event that is not a result is dropped first, then the
 * oldest result. Results (install completed, reboot completed, health
 * ok/failed, rollback triggered/completed, rejected) are also kept in the
 * kv store until acknowledged, so they survive a reset. */
#ifndef OTA_CFG_EVENT_QUEUE
#define OTA_CFG_EVENT_QUEUE 6
#endif

/* An event the broker answered with PUBACK "unspecified error" (0x80),
 * "implementation specific error" (0x83) or "quota exceeded" (0x97) - it
 * could not record it now - is sent again after EVENT_RETRY_MS, doubling
 * with every further such answer up to EVENT_RETRY_MAX_MS. An event with
 * no PUBACK EVENT_ACK_MS after it was published (an MQTT 3.1.1 broker that
 * could not record it, or a client that lost it) is sent again as a new
 * PUBLISH; across a reconnect the client's own resend comes first. */
#ifndef OTA_CFG_EVENT_RETRY_MS
#define OTA_CFG_EVENT_RETRY_MS 5000u
#endif
#ifndef OTA_CFG_EVENT_RETRY_MAX_MS
#define OTA_CFG_EVENT_RETRY_MAX_MS 60000u
#endif
#ifndef OTA_CFG_EVENT_ACK_MS
#define OTA_CFG_EVENT_ACK_MS 60000u
#endif

/* A downloaded image whose digest does not match is fetched again from
 * offset 0 this many times before the download is given up (event 6,
 * error 2). */
#ifndef OTA_CFG_DIGEST_RETRIES
#define OTA_CFG_DIGEST_RETRIES 3u
#endif

/* Boot times remembered for the reboot / watchdog rollback triggers.
 * Must exceed both OTA_CFG_MAX_REBOOTS and OTA_CFG_MAX_WDT_RESETS. */
#ifndef OTA_CFG_BOOT_LOG
#define OTA_CFG_BOOT_LOG 8
#endif

/* CBOR nesting limit of the reader (maps/arrays/tags inside each other). */
#ifndef OTA_CFG_CBOR_MAX_DEPTH
#define OTA_CFG_CBOR_MAX_DEPTH 8
#endif

/* Most pairs in one CBOR map the decoders accept (duplicate detection keeps
 * every key of the map being decoded on the stack: 8 bytes each). As the
 * broker's decoders (ota/wire: 32); the agent's own state record has 26. */
#ifndef OTA_CFG_CBOR_MAX_PAIRS
#define OTA_CFG_CBOR_MAX_PAIRS 32
#endif

/* Most entries in the manifest's target hardware array. */
#ifndef OTA_CFG_MAX_TARGETS
#define OTA_CFG_MAX_TARGETS 16
#endif

/* Human-readable texts: event details (event key 6, e.g. "downgrade",
 * "reboot loop") and ota_strerror()'s descriptions. 0 leaves them out
 * of the image (about 950 B on rv32): events then carry only their codes
 * and ota_strerror() returns "". */
#ifndef OTA_CFG_TEXT
#define OTA_CFG_TEXT 1
#endif

/* ---- timing defaults (ms) and rollback triggers ------------------------- */

/* Heartbeat period while connected. */
#ifndef OTA_CFG_HEARTBEAT_MS
#define OTA_CFG_HEARTBEAT_MS 60000u
#endif

/* No block for this long after a request: re-request from the first
 * missing offset. */
#ifndef OTA_CFG_REQUEST_TIMEOUT_MS
#define OTA_CFG_REQUEST_TIMEOUT_MS 5000u
#endif

/* Exponential backoff after a timeout or retryable block error: the first
 * retry waits BACKOFF_MIN, each further consecutive failure doubles it, up to
 * BACKOFF_MAX. */
#ifndef OTA_CFG_BACKOFF_MIN_MS
#define OTA_CFG_BACKOFF_MIN_MS 1000u
#endif
#ifndef OTA_CFG_BACKOFF_MAX_MS
#define OTA_CFG_BACKOFF_MAX_MS 60000u
#endif

/* Consecutive failed requests (no progress) before the download is given up
 * (event update.download.failed, error 6). Block errors "rate limited" and
 * "internal" do not count: the broker asked the device to wait (its
 * retry-after, capped at BACKOFF_MAX, is honoured). */
#ifndef OTA_CFG_MAX_RETRIES
#define OTA_CFG_MAX_RETRIES 10u
#endif

/* The new image's first boot must pass every health check (broker reached,
 * heartbeat sent, application check) within this time, or it rolls back. */
#ifndef OTA_CFG_TRIAL_TIMEOUT_MS
#define OTA_CFG_TRIAL_TIMEOUT_MS 120000u
#endif

/* After the first boot confirmed the image, the rollback triggers stay armed
 * for this long (summed over boots) before the update counts as committed. */
#ifndef OTA_CFG_PROBATION_MS
#define OTA_CFG_PROBATION_MS 600000u
#endif

/* Rollback trigger: more than MAX_REBOOTS boots within REBOOT_WINDOW. */
#ifndef OTA_CFG_MAX_REBOOTS
#define OTA_CFG_MAX_REBOOTS 3u
#endif
#ifndef OTA_CFG_REBOOT_WINDOW_MS
#define OTA_CFG_REBOOT_WINDOW_MS 300000u
#endif

/* Rollback trigger: more than MAX_WDT_RESETS watchdog resets within
 * WDT_WINDOW. */
#ifndef OTA_CFG_MAX_WDT_RESETS
#define OTA_CFG_MAX_WDT_RESETS 5u
#endif
#ifndef OTA_CFG_WDT_WINDOW_MS
#define OTA_CFG_WDT_WINDOW_MS 600000u
#endif

/* Rollback trigger: health checks failing continuously for this long. */
#ifndef OTA_CFG_HEALTH_FAIL_MS
#define OTA_CFG_HEALTH_FAIL_MS 120000u
#endif

/* Rollback trigger: no broker connection for this long. */
#ifndef OTA_CFG_NO_BROKER_MS
#define OTA_CFG_NO_BROKER_MS 300000u
#endif

/* How often the trial clock (time spent running the new image, summed over
 * its boots) is persisted. A crash loses at most this much of it, which
 * makes the reboot triggers count boots as closer together (safe side). */
#ifndef OTA_CFG_TRIAL_PERSIST_MS
#define OTA_CFG_TRIAL_PERSIST_MS 30000u
#endif

/* The download offset is persisted each time this many bytes more have been
 * written (and always at the end of a window). 0 = after every block. The
 * offset persisted is rounded down to a multiple of 16: with flash
 * encryption, esp_ota_write keeps a partial 16-byte block in RAM, lost by a
 * reset. */
#ifndef OTA_CFG_PERSIST_EVERY
#define OTA_CFG_PERSIST_EVERY 16384u
#endif

/* ---- derived limits, checked at compile time --------------------------- */

#if OTA_CFG_BOOT_LOG <= OTA_CFG_MAX_REBOOTS || OTA_CFG_BOOT_LOG <= OTA_CFG_MAX_WDT_RESETS
#error "OTA_CFG_BOOT_LOG must exceed OTA_CFG_MAX_REBOOTS and OTA_CFG_MAX_WDT_RESETS"
#endif
#if OTA_CFG_TX_BUF < 384
#error "OTA_CFG_TX_BUF must be at least 384"
#endif
#if OTA_CFG_WINDOW < 1
#error "OTA_CFG_WINDOW must be at least 1"
#endif

#endif /* OTAMQ_OTA_CONFIG_H */

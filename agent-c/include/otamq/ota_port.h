/*
 * ota_port.h - what a platform provides to the otamq agent core.
 *
 * A port is a struct of function pointers plus one context pointer that is
 * passed back as the first argument of every call. The core calls these
 * functions only from the task that drives it (ota_agent_on_boot /
 * on_connect / on_message / tick), never concurrently, and never from inside
 * another port call. "May block" below means the function may wait for I/O
 * (flash, network, disk); the core tolerates that, but the caller's task is
 * held for the duration. Members marked optional may be NULL.
 *
 * Buffers passed to the port are owned by the caller and valid only for the
 * duration of the call unless stated otherwise.
 */
#ifndef OTAMQ_OTA_PORT_H
#define OTAMQ_OTA_PORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ota_status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* What an update changes (manifest key 10). Firmware lives in the two A/B
 * application slots the bootloader starts; a configuration and a set of
 * feature flags each live in two slots of their own that the port keeps
 * (a small blob store, a dedicated partition), so that one can be swapped
 * for the other and back without touching the firmware. */
typedef enum ota_kind {
    OTA_KIND_FIRMWARE = 0,
    OTA_KIND_CONFIG = 1,
    OTA_KIND_FLAGS = 2
} ota_kind_t;
#define OTA_KINDS 3

/* Why the running image was started (birth key 5). The port reports what the
 * hardware saw, mapped onto these (ESP-IDF's many reset reasons: see the
 * ESP-IDF port); the core itself turns a software reset into OTA_BOOT_OTA or
 * OTA_BOOT_ROLLBACK when its persisted state says so. Every boot counts
 * toward the reboot trigger, OTA_BOOT_WATCHDOG boots also toward the
 * watchdog trigger, and a revert of an unconfirmed image after
 * OTA_BOOT_POWER_ON or OTA_BOOT_BROWNOUT is not blamed on the image. */
typedef enum ota_boot_reason {
    OTA_BOOT_POWER_ON = 0,
    OTA_BOOT_SOFTWARE = 1,
    OTA_BOOT_WATCHDOG = 2,
    OTA_BOOT_PANIC = 3,
    OTA_BOOT_BROWNOUT = 4,
    OTA_BOOT_OTA = 5,
    OTA_BOOT_ROLLBACK = 6
} ota_boot_reason_t;

/* State of a running slot as the bootloader (or the port's configuration
 * store) sees it: ESP-IDF's esp_ota_img_states_t, reduced to what the core
 * needs. */
typedef enum ota_img_state {
    OTA_IMG_VALID = 0,          /* confirmed (or rollback not in use) */
    OTA_IMG_PENDING_VERIFY = 1, /* started once and not confirmed: unless
                                   confirm() is called, the next reset
                                   reverts it */
    OTA_IMG_UNDEFINED = 2       /* no state recorded (e.g. factory image) */
} ota_img_state_t;

typedef struct ota_boot_info {
    uint8_t running_slot; /* 0 or 1: the slot in use (for a configuration
                             kind with none in use: 1, so that the first
                             one goes to slot 0) */
    uint8_t img_state;    /* ota_img_state_t of the running slot */
    uint8_t reason;       /* ota_boot_reason_t as seen by the hardware */
} ota_boot_info_t;

/* slot_activate's "in use at the next start" answer. */
#define OTA_ACTIVATE_RESTART 1

/* Opaque storage for one running SHA-256 computation. A port stores its own
 * context (e.g. mbedtls_sha256_context) inside and must check at compile
 * time that it fits. */
#ifndef OTA_SHA256_CTX_WORDS
#define OTA_SHA256_CTX_WORDS 32 /* 256 bytes */
#endif
typedef struct ota_sha256 {
    uint64_t opaque[OTA_SHA256_CTX_WORDS];
} ota_sha256_t;

typedef struct ota_port {
    void *ctx; /* passed as the first argument of every member */

    /* Bit k set: the port keeps slots for kind k besides firmware
     * (1 << OTA_KIND_CONFIG, 1 << OTA_KIND_FLAGS). Offers of a kind the port
     * does not keep are refused ("unsupported kind"). */
    uint8_t kinds;

    /* ---- MQTT (the port owns the connection and reconnects by itself;
     * it tells the core with ota_agent_on_connect/on_disconnect, and passes
     * every PUBACK of a QoS 1 publish to ota_agent_on_puback) ---- */

    /* Queues a PUBLISH of payload[0..len) on topic with QoS 0 or 1 and
     * returns its message ID (>= 0; for QoS 1 the MQTT packet identifier,
     * never 0, that the PUBACK will carry). Returns OTA_ERR_IO when not
     * connected or the client refused: the port must not keep a message
     * published while disconnected for a later connection (the core
     * resends what matters itself). A QoS 1 message the client sent and
     * that was not acknowledged when the connection ended may be sent
     * again by the client after the reconnect, with the same message ID
     * (libmosquitto and esp-mqtt do): the core waits for its PUBACK, up to
     * OTA_CFG_EVENT_ACK_MS after it published it. Must not block on the
     * network for long (queue and return). The payload may be reused by
     * the core after return. */
    int (*mqtt_publish)(void *ctx, const char *topic, const uint8_t *payload,
                        size_t len, int qos);

    /* Queues a SUBSCRIBE to topic (no wildcards are used by the core) at
     * QoS 0 or 1. OTA_OK or OTA_ERR_IO. Must not block for long. */
    int (*mqtt_subscribe)(void *ctx, const char *topic, int qos);

    /* ---- slots of each kind (kind is an ota_kind_t the port keeps) ---- */

    /* Prepares the inactive slot of kind for image_size bytes.
     * resume_offset 0 starts afresh (the slot may be erased); a non-zero
     * resume_offset (a multiple of 16) keeps bytes [0, resume_offset)
     * already written by an earlier, interrupted download and continues
     * after them. OTA_OK, OTA_ERR_NOSPACE (image larger than the slot),
     * OTA_ERR_STATE (e.g. running image not yet confirmed), OTA_ERR_FLASH.
     * May block (erasing). */
    int (*slot_begin)(void *ctx, uint8_t kind, uint32_t image_size, uint32_t resume_offset);

    /* Writes data at offset of the slot begun. The core writes strictly in
     * order: offset is always the end of the previous write. OTA_OK or
     * OTA_ERR_FLASH. May block. */
    int (*slot_write)(void *ctx, uint8_t kind, uint32_t offset, const uint8_t *data, size_t len);

    /* Reads back len bytes at offset of the inactive slot of kind (used to
     * recompute the image hash after a reset). OTA_OK or OTA_ERR_FLASH. May
     * block. */
    int (*slot_read)(void *ctx, uint8_t kind, uint32_t offset, uint8_t *buf, size_t len);

    /* All image_size bytes are written and their digest checked: close the
     * slot (ESP-IDF: esp_ota_end, which also validates the image format).
     * OTA_OK or OTA_ERR_FLASH (image refused). May block. */
    int (*slot_finish)(void *ctx, uint8_t kind);

    /* Abandons a slot begun with slot_begin (cancel, failure). Optional. */
    void (*slot_abort)(void *ctx, uint8_t kind);

    /* Makes the finished slot the one used next. Firmware: booted next, in
     * the bootloader's "new, not yet verified" state; OTA_OK (the core then
     * reboots). Configuration and feature flags: in use at once, not yet
     * confirmed (the application is told), OTA_OK; or, when the application
     * asks to restart for it, in use from the next start:
     * OTA_ACTIVATE_RESTART (the core then reboots). A swap is atomic: after
     * a power loss the old or the new slot is in use, never a mix.
     * OTA_ERR_FLASH on failure. May block. */
    int (*slot_activate)(void *ctx, uint8_t kind);

    /* ---- boot ---- */

    /* Fills *info about the running slot of kind. OTA_OK or OTA_ERR_IO. */
    int (*boot_state)(void *ctx, uint8_t kind, ota_boot_info_t *info);

    /* Marks the running slot of kind valid: it is no longer reverted
     * (firmware: esp_ota_mark_app_valid_cancel_rollback). OTA_OK or
     * OTA_ERR_IO. */
    int (*confirm)(void *ctx, uint8_t kind);

    /* Goes back to the other slot of kind. Used both before confirm (the
     * pending slot is marked invalid) and after (the confirmed slot is
     * abandoned for the previous one, which must still be usable).
     * Firmware: makes the other slot the boot slot and restarts; does not
     * return on success (ESP-IDF: after confirm, esp_ota_set_boot_partition,
     * so the old image starts PENDING_VERIFY like a new one). Configuration
     * and feature flags: the previous slot (or none, if there was none) is
     * in use when it returns OTA_OK, and the abandoned one is never used
     * again. OTA_ERR_STATE when there is nothing to roll back to, OTA_ERR_IO
     * on failure. */
    int (*rollback)(void *ctx, uint8_t kind);

    /* After a completed firmware rollback: makes sure the bootloader can no
     * longer start the abandoned image, even if the running one fails later
     * (ESP-IDF >= 5.5: esp_ota_invalidate_inactive_ota_data_slot). OTA_OK
     * or OTA_ERR_IO. Optional: without it, an image that was rolled back to
     * and then fails its own trial lets the bootloader fall back to the
     * abandoned one. */
    int (*invalidate_other)(void *ctx);

    /* Restarts the device. Does not return. It need not flush queued MQTT
     * messages: the core keeps the events not yet acknowledged in the kv
     * store before it calls reboot (or rollback) and sends them after the
     * restart (flushing would only deliver some of them twice). */
    void (*reboot)(void *ctx);

    /* ---- crypto ---- */

    /* Incremental SHA-256. start/update/finish return OTA_OK or
     * OTA_ERR_CRYPTO. A started hash ends with finish (which releases it,
     * also when it fails) or with abort, which the core calls for every
     * hash it abandons (a cancelled, failed or superseded download, an
     * update error); a port whose context holds resources (ESP-IDF 6:
     * psa_hash_setup allocates with hardware SHA) releases them there.
     * Do not block (beyond computing). */
    int (*sha256_start)(void *ctx, ota_sha256_t *h);
    int (*sha256_update)(void *ctx, ota_sha256_t *h, const uint8_t *data, size_t len);
    int (*sha256_finish)(void *ctx, ota_sha256_t *h, uint8_t digest[32]);
    void (*sha256_abort)(void *ctx, ota_sha256_t *h);

    /* Verifies an ECDSA P-256 signature (raw r||s, 32 bytes each, big
     * endian) of the SHA-256 digest hash with the public key pub
     * (uncompressed point 0x04||X||Y). OTA_OK if valid, OTA_ERR_SIGNATURE
     * if not, OTA_ERR_CRYPTO if the key is unusable. Does not block. */
    int (*ecdsa_p256_verify)(void *ctx, const uint8_t pub[65], const uint8_t hash[32],
                             const uint8_t sig[64]);

    /* ---- small key-value store (a few hundred bytes, rarely written) ---- */

    /* Reads the value of key into buf (capacity *len); sets *len to its
     * size. OTA_OK, OTA_ERR_NOT_FOUND, OTA_ERR_NOSPACE (value larger than
     * *len), OTA_ERR_IO. May block. */
    int (*kv_get)(void *ctx, const char *key, uint8_t *buf, size_t *len);

    /* Replaces the value of key ATOMICALLY: after a power loss at any point
     * a later kv_get returns either the old or the new value, never a mix.
     * OTA_OK or OTA_ERR_IO. May block (flash/fsync). */
    int (*kv_set)(void *ctx, const char *key, const uint8_t *buf, size_t len);

    /* ---- clock ---- */

    /* Milliseconds since this boot, monotonic. Does not block. */
    uint64_t (*now_ms)(void *ctx);

    /* Wall clock in unix seconds, or 0 when not known (no SNTP yet).
     * Optional. Does not block. */
    uint64_t (*unix_time)(void *ctx);

    /* ---- application hooks and device statistics (all optional) ---- */

    /* The application's own health check, called from tick during a trial
     * and for every heartbeat. Returns heartbeat health bits: bit0 app ok,
     * bit1 required resources ok (bit2, messaging, is set by the core).
     * NULL counts as "all ok". Should not block. */
    uint8_t (*app_health)(void *ctx);

    /* Free heap bytes (heartbeat key 4); NULL omits the key. */
    uint32_t (*free_heap)(void *ctx);

    /* Signal strength in dBm (heartbeat key 5); return false when unknown.
     * NULL omits the key. */
    bool (*rssi)(void *ctx, int32_t *dbm);
} ota_port_t;

#ifdef __cplusplus
}
#endif
#endif /* OTAMQ_OTA_PORT_H */

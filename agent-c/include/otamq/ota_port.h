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

/* Why the running image was started (birth key 5). The port reports what the
 * hardware saw; the core itself turns a software reset into OTA_BOOT_OTA or
 * OTA_BOOT_ROLLBACK when its persisted state says so. */
typedef enum ota_boot_reason {
    OTA_BOOT_POWER_ON = 0,
    OTA_BOOT_SOFTWARE = 1,
    OTA_BOOT_WATCHDOG = 2,
    OTA_BOOT_PANIC = 3,
    OTA_BOOT_BROWNOUT = 4,
    OTA_BOOT_OTA = 5,
    OTA_BOOT_ROLLBACK = 6
} ota_boot_reason_t;

/* State of the running image as the bootloader sees it (ESP-IDF's
 * esp_ota_img_states_t, reduced to what the core needs). */
typedef enum ota_img_state {
    OTA_IMG_VALID = 0,          /* confirmed (or rollback not in use) */
    OTA_IMG_PENDING_VERIFY = 1, /* first boot of a new image: unless confirm()
                                   is called, the next reset reverts */
    OTA_IMG_UNDEFINED = 2       /* no state recorded (e.g. factory image) */
} ota_img_state_t;

typedef struct ota_boot_info {
    uint8_t running_slot;     /* 0 or 1 */
    uint8_t img_state;        /* ota_img_state_t of the running slot */
    uint8_t reason;           /* ota_boot_reason_t as seen by the hardware */
    bool other_slot_bootable; /* the inactive slot holds a valid image that
                                 rollback() may switch to */
} ota_boot_info_t;

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

    /* ---- MQTT (the port owns the connection and reconnects by itself;
     * it tells the core with ota_agent_on_connect/on_disconnect) ---- */

    /* Queues a PUBLISH of payload[0..len) on topic with QoS 0 or 1.
     * Returns OTA_OK when queued, OTA_ERR_IO when not connected or the
     * client refused. Must not block on the network for long (queue and
     * return). The payload may be reused by the core after return. */
    int (*mqtt_publish)(void *ctx, const char *topic, const uint8_t *payload,
                        size_t len, int qos);

    /* Queues a SUBSCRIBE to topic (no wildcards are used by the core) at
     * QoS 0 or 1. OTA_OK or OTA_ERR_IO. Must not block for long. */
    int (*mqtt_subscribe)(void *ctx, const char *topic, int qos);

    /* ---- inactive slot ---- */

    /* Prepares the inactive slot for an image of image_size bytes.
     * resume_offset 0 starts afresh (the slot may be erased); a non-zero
     * resume_offset keeps bytes [0, resume_offset) already written by an
     * earlier, interrupted download and continues after them.
     * OTA_OK, OTA_ERR_NOSPACE (image larger than the slot), OTA_ERR_STATE
     * (e.g. running image not yet confirmed), OTA_ERR_FLASH. May block
     * (erasing). */
    int (*slot_begin)(void *ctx, uint32_t image_size, uint32_t resume_offset);

    /* Writes data at offset of the inactive slot. The core writes strictly
     * in order: offset is always the end of the previous write.
     * OTA_OK or OTA_ERR_FLASH. May block. */
    int (*slot_write)(void *ctx, uint32_t offset, const uint8_t *data, size_t len);

    /* Reads back len bytes at offset of the inactive slot (used to recompute
     * the image hash after a reset). OTA_OK or OTA_ERR_FLASH. May block. */
    int (*slot_read)(void *ctx, uint32_t offset, uint8_t *buf, size_t len);

    /* All image_size bytes are written and their digest checked: close the
     * slot (ESP-IDF: esp_ota_end, which also validates the image format).
     * OTA_OK or OTA_ERR_FLASH (image refused). May block. */
    int (*slot_finish)(void *ctx);

    /* Abandons a slot begun with slot_begin (cancel, failure). Optional. */
    void (*slot_abort)(void *ctx);

    /* Makes the finished slot the one booted next, in the bootloader's
     * "new, not yet verified" state. OTA_OK or OTA_ERR_FLASH. May block. */
    int (*slot_activate)(void *ctx);

    /* ---- boot ---- */

    /* Fills *info about the running image. OTA_OK or OTA_ERR_IO. */
    int (*boot_state)(void *ctx, ota_boot_info_t *info);

    /* Marks the running image valid: the bootloader will no longer revert
     * it (esp_ota_mark_app_valid_cancel_rollback). OTA_OK or OTA_ERR_IO. */
    int (*confirm)(void *ctx);

    /* Makes the other slot the boot slot and restarts. Used both before
     * confirm (the pending image is marked invalid) and after (the
     * confirmed image is abandoned for the previous one, which must still
     * be bootable). Does not return on success; returns OTA_ERR_STATE when
     * there is nothing to roll back to, OTA_ERR_IO on failure. */
    int (*rollback)(void *ctx);

    /* Restarts the device. May first flush queued MQTT messages for a short,
     * bounded time. Does not return. */
    void (*reboot)(void *ctx);

    /* ---- crypto ---- */

    /* Incremental SHA-256. start/update/finish return OTA_OK or
     * OTA_ERR_CRYPTO. Do not block (beyond computing). */
    int (*sha256_start)(void *ctx, ota_sha256_t *h);
    int (*sha256_update)(void *ctx, ota_sha256_t *h, const uint8_t *data, size_t len);
    int (*sha256_finish)(void *ctx, ota_sha256_t *h, uint8_t digest[32]);

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

/*
 * ota_msg.h - the device wire contract (DESIGN §3 and §4): encoders for the
 * messages a device sends, zero-copy decoders for those it receives, and the
 * COSE_Sign1 ES256 manifest.
 *
 * Decoders accept map keys in any order, ignore unknown keys numbered above
 * the highest key the contract defines for that message, and refuse
 * duplicate keys, indefinite lengths, unknown lower keys, trailing bytes and
 * a wrong type for a known key. Strings and byte strings in decoded structs
 * point into the input buffer: they live as long as it does, and text
 * strings are NOT NUL-terminated (use the _len fields).
 */
#ifndef OTAMQ_OTA_MSG_H
#define OTAMQ_OTA_MSG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ota_cbor.h"
#include "ota_port.h"

#ifdef __cplusplus
extern "C" {
#endif

/* OTA states (birth key 7, heartbeat key 6). */
typedef enum ota_state {
    OTA_STATE_IDLE = 0,
    OTA_STATE_DOWNLOADING = 1,
    OTA_STATE_VERIFIED = 2,
    OTA_STATE_INSTALLING = 3,
    OTA_STATE_REBOOTING = 4,
    OTA_STATE_TRIAL = 5,
    OTA_STATE_COMMITTED = 6,
    OTA_STATE_ROLLED_BACK = 7,
    OTA_STATE_FAILED = 8
} ota_state_t;

/* Event codes (event key 1). */
typedef enum ota_event_code {
    OTA_EV_CHECK_STARTED = 1,
    OTA_EV_CHECK_COMPLETED = 2,
    OTA_EV_DOWNLOAD_STARTED = 3,
    OTA_EV_DOWNLOAD_PROGRESS = 4,
    OTA_EV_DOWNLOAD_COMPLETED = 5,
    OTA_EV_DOWNLOAD_FAILED = 6,
    OTA_EV_INSTALL_STARTED = 7,
    OTA_EV_INSTALL_COMPLETED = 8,
    OTA_EV_REBOOT_STARTED = 9,
    OTA_EV_REBOOT_COMPLETED = 10,
    OTA_EV_HEALTH_OK = 11,
    OTA_EV_HEALTH_FAILED = 12,
    OTA_EV_ROLLBACK_TRIGGERED = 13,
    OTA_EV_ROLLBACK_COMPLETED = 14,
    OTA_EV_REJECTED = 15
} ota_event_code_t;

/* Event error codes (event key 5). */
typedef enum ota_error_code {
    OTA_E_NONE = 0,
    OTA_E_SIGNATURE = 1,
    OTA_E_DIGEST = 2,
    OTA_E_HARDWARE = 3,
    OTA_E_VERSION = 4,
    OTA_E_SECURE_VERSION = 5,
    OTA_E_RETRIES = 6,
    OTA_E_FLASH = 7,
    OTA_E_BOOT = 8,
    OTA_E_HEALTH = 9,
    OTA_E_CANCELLED = 10,
    OTA_E_NO_SPACE = 11
} ota_error_code_t;

/* Heartbeat health bits (heartbeat key 2). */
#define OTA_HEALTH_APP 0x01u
#define OTA_HEALTH_RESOURCES 0x02u
#define OTA_HEALTH_MESSAGING 0x04u

/* Command verbs (command key 1). */
#define OTA_CMD_INSTALL 1u
#define OTA_CMD_CANCEL 2u
#define OTA_CMD_CHECK 3u
#define OTA_CMD_REBOOT 4u

/* Block error codes (block key 5). */
#define OTA_BLKERR_NOT_ASSIGNED 1u
#define OTA_BLKERR_UNKNOWN_IMAGE 2u
#define OTA_BLKERR_OFFSET 3u
#define OTA_BLKERR_BAD_REQUEST 4u
#define OTA_BLKERR_RATE_LIMITED 5u
#define OTA_BLKERR_INTERNAL 6u

/* ---- device -> broker ------------------------------------------------- */

typedef struct ota_birth {
    const char *fw_version;    /* 1 */
    const char *hardware;      /* 2 */
    const char *bootloader;    /* 3 */
    uint8_t running_slot;      /* 4 */
    uint8_t boot_reason;       /* 5 */
    uint32_t boots_since_commit; /* 6 */
    uint8_t ota_state;         /* 7 */
    const char *agent_version; /* 8 */
    uint8_t connectivity;      /* 9 */
    int32_t utc_offset_min;    /* 10 */
    uint32_t secure_version;   /* 11 */
    uint64_t guard;            /* 12 (otamq extension): the replay guard, the
                                  lowest firmware manifest sequence number the
                                  device takes */
} ota_birth_t;

typedef struct ota_heartbeat {
    uint32_t uptime_s;   /* 1 */
    uint8_t health;      /* 2 */
    uint32_t wdt_resets; /* 3 */
    bool has_free_heap;
    uint32_t free_heap;  /* 4 */
    bool has_rssi;
    int32_t rssi;        /* 5 */
    uint8_t ota_state;   /* 6 */
    bool has_offset;
    uint32_t offset;     /* 7 */
} ota_heartbeat_t;

typedef struct ota_event {
    uint8_t code;               /* 1 */
    const char *rollout;        /* 2, omitted when NULL */
    const char *target_version; /* 3, omitted when NULL */
    int32_t progress;           /* 4, omitted when < 0 */
    uint8_t error;              /* 5, omitted when 0 */
    const char *detail;         /* 6, omitted when NULL; cut to 128 bytes */
    uint64_t device_time;       /* 7 */
    /* 0: rollout and target_version are NUL-terminated. Otherwise their
     * lengths, and they need not be (e.g. straight from a received offer). */
    size_t rollout_len;
    size_t target_version_len;
} ota_event_t;

typedef struct ota_block_request {
    const uint8_t *digest; /* 1, 32 bytes */
    uint32_t offset;       /* 2 */
    uint32_t size;         /* 3 */
    uint32_t count;        /* 4 */
    uint32_t req_id;       /* 5 */
} ota_block_request_t;

/* Each encoder writes into buf (capacity cap) and sets *len.
 * OTA_OK, OTA_ERR_ARG, OTA_ERR_NOSPACE. */
int ota_msg_encode_birth(const ota_birth_t *m, uint8_t *buf, size_t cap, size_t *len);
int ota_msg_encode_heartbeat(const ota_heartbeat_t *m, uint8_t *buf, size_t cap, size_t *len);
int ota_msg_encode_event(const ota_event_t *m, uint8_t *buf, size_t cap, size_t *len);
int ota_msg_encode_block_request(const ota_block_request_t *m, uint8_t *buf, size_t cap,
                                 size_t *len);

/* ---- broker -> device ------------------------------------------------- */

typedef struct ota_offer {
    const char *rollout;       /* 1 (required; empty = cancel) */
    size_t rollout_len;
    const uint8_t *manifest;   /* 2 (required unless rollout is empty) */
    size_t manifest_len;
    uint8_t install_mode;      /* 3: 0 immediate, 1 on command */
    uint32_t block_size;       /* 4: 0 = not given */
    uint64_t deadline;         /* 5: 0 = none */
    uint32_t max_window;       /* 6 (otamq extension): most blocks the broker
                                  serves per request, 0 = not given */
} ota_offer_t;

typedef struct ota_block {
    bool is_error;         /* true: block error (key 5 present) */
    uint32_t req_id;       /* 1 */
    uint32_t offset;       /* 2 */
    uint32_t image_size;   /* 3 (block) */
    const uint8_t *data;   /* 4 (block) */
    size_t data_len;
    uint8_t error;         /* 5 (block error) */
    uint32_t retry_ms;     /* 6 (block error, 0 = not given) */
    const char *message;   /* 7 (block error, NULL = not given) */
    size_t message_len;
} ota_block_t;

typedef struct ota_command {
    uint8_t verb;          /* 1 */
    const char *rollout;   /* 2, NULL = not given */
    size_t rollout_len;
    uint64_t not_after;    /* 3, 0 = none */
} ota_command_t;

int ota_msg_decode_offer(const uint8_t *buf, size_t len, ota_offer_t *out);
int ota_msg_decode_block(const uint8_t *buf, size_t len, ota_block_t *out);
int ota_msg_decode_command(const uint8_t *buf, size_t len, ota_command_t *out);

/* ---- manifest (COSE_Sign1 payload, DESIGN §4) ------------------------- */

typedef struct ota_manifest {
    uint32_t format;             /* 1, must be 1 */
    uint64_t seq;                /* 2 */
    const char *version;         /* 3 */
    size_t version_len;
    const char *build;           /* 4, NULL = not given */
    size_t build_len;
    const uint8_t *targets;      /* 5: the raw CBOR array of tstr */
    size_t targets_len;
    uint32_t ntargets;
    const char *min_bootloader;  /* 6, NULL = not given */
    size_t min_bootloader_len;
    uint32_t image_size;         /* 7 */
    const uint8_t *digest;       /* 8, 32 bytes */
    uint32_t secure_version;     /* 9, 0 when not given */
    uint8_t kind;                /* 10, 0 when not given */
    uint32_t ncomponents;        /* 11, 0 when not given (checked, not kept) */
} ota_manifest_t;

int ota_manifest_decode(const uint8_t *buf, size_t len, ota_manifest_t *out);

/* True when hw (NUL-terminated) is one of the manifest's target hardware
 * strings. */
bool ota_manifest_has_target(const ota_manifest_t *m, const char *hw);

/* ---- COSE_Sign1 ------------------------------------------------------- */

/* A trusted manifest signing key. */
typedef struct ota_key {
    uint8_t kid[8];  /* first 8 bytes of SHA-256(pub) */
    uint8_t pub[65]; /* uncompressed P-256 point 0x04||X||Y */
} ota_key_t;

typedef struct ota_cose_sign1 {
    const uint8_t *protected_hdr; /* contents of the protected bstr */
    size_t protected_len;
    const uint8_t *kid;           /* header label 4 */
    size_t kid_len;
    const uint8_t *payload;
    size_t payload_len;
    const uint8_t *sig;           /* 64 bytes r||s */
} ota_cose_sign1_t;

/* Parses a tagged (18) COSE_Sign1 in the one shape the contract allows
 * (DESIGN §4, as the broker's parser): protected header exactly {1: -7}
 * (bytes a10126), unprotected header exactly {4: 8-byte key ID}, a
 * non-empty payload byte string and a 64-byte signature, all in shortest
 * form, nothing after it. Structure only: OTA_OK or OTA_ERR_COSE (*out is
 * then unspecified). */
int ota_cose_parse(const uint8_t *buf, size_t len, ota_cose_sign1_t *out);

/* Verifies s with the key among keys[0..nkeys) whose kid matches, through
 * the port's SHA-256 and ECDSA functions. The Sig_structure
 * ["Signature1", protected, h'', payload] is fed into the hash piece by
 * piece around the received bytes (nothing is re-encoded or copied).
 * OTA_OK, OTA_ERR_UNKNOWN_KEY, OTA_ERR_SIGNATURE, OTA_ERR_CRYPTO. */
int ota_cose_verify(const ota_cose_sign1_t *s, const ota_port_t *port, const ota_key_t *keys,
                    size_t nkeys);

/* Computes a key ID (first 8 bytes of SHA-256 of the 65-byte point) with
 * the port's SHA-256. OTA_OK or OTA_ERR_CRYPTO. */
int ota_key_id(const ota_port_t *port, const uint8_t pub[65], uint8_t kid[8]);

/* ---- semver ----------------------------------------------------------- */

/* Compares two semantic versions (SemVer 2.0.0 precedence; build metadata
 * ignored; a leading 'v' is allowed). Sets *cmp to <0, 0, >0.
 * OTA_OK or OTA_ERR_VERSION when either is not a valid version. */
int ota_semver_cmp(const char *a, size_t alen, const char *b, size_t blen, int *cmp);

#ifdef __cplusplus
}
#endif
#endif /* OTAMQ_OTA_MSG_H */

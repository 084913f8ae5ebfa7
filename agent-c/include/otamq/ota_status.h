/*
 * ota_status.h - the one status type of the otamq agent.
 *
 * Every function of the core and every port function that can fail returns
 * an ota_status_t: OTA_OK (0) on success, a negative value otherwise.
 */
#ifndef OTAMQ_OTA_STATUS_H
#define OTAMQ_OTA_STATUS_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum ota_status {
    OTA_OK = 0,               /* success */
    OTA_ERR_ARG = -1,         /* invalid argument at a public entry point */
    OTA_ERR_CBOR = -2,        /* malformed CBOR: truncated, reserved or
                                 non-shortest head, bad UTF-8, trailing bytes */
    OTA_ERR_CBOR_INDEF = -3,  /* indefinite length (never accepted) */
    OTA_ERR_CBOR_DEPTH = -4,  /* nesting deeper than OTA_CFG_CBOR_MAX_DEPTH */
    OTA_ERR_CBOR_TYPE = -5,   /* a value of the wrong CBOR type */
    OTA_ERR_CBOR_DUP = -6,    /* a map key that appears twice */
    OTA_ERR_NOSPACE = -7,     /* output buffer, field or slot too small */
    OTA_ERR_MSG = -8,         /* well-formed CBOR but not a valid message:
                                 missing key, unknown low key, bad value */
    OTA_ERR_COSE = -9,        /* not a tagged COSE_Sign1 ES256 structure */
    OTA_ERR_UNKNOWN_KEY = -10,/* no trusted key has the manifest's key ID */
    OTA_ERR_SIGNATURE = -11,  /* signature does not verify */
    OTA_ERR_HARDWARE = -12,   /* device hardware not in the target list */
    OTA_ERR_BOOTLOADER = -13, /* bootloader older than the manifest minimum */
    OTA_ERR_VERSION = -14,    /* version policy refused (downgrade/same) */
    OTA_ERR_SEQUENCE = -15,   /* sequence number lower than last accepted */
    OTA_ERR_SECURE_VERSION = -16, /* secure version lower than the device's */
    OTA_ERR_DIGEST = -17,     /* image digest mismatch after download */
    OTA_ERR_FLASH = -18,      /* slot write/read/finish failed */
    OTA_ERR_STATE = -19,      /* operation not allowed in the current state */
    OTA_ERR_IO = -20,         /* port I/O failure (MQTT, storage, ...) */
    OTA_ERR_NOT_FOUND = -21,  /* key-value store: no such key */
    OTA_ERR_CRYPTO = -22,     /* crypto backend failure (not a bad signature) */
    OTA_ERR_TIMEOUT = -23     /* a deadline passed */
} ota_status_t;

/* Short constant English description of a status ("ok", "bad signature",
 * ...). Never NULL; unknown values give "unknown status". */
const char *ota_strerror(int status);

#ifdef __cplusplus
}
#endif
#endif /* OTAMQ_OTA_STATUS_H */

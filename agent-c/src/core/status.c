/* status.c - ota_strerror. */
#include "otamq/ota_config.h"
#include "otamq/ota_status.h"

#if OTA_CFG_TEXT
const char *ota_strerror(int status)
{
    switch (status) {
    case OTA_OK: return "ok";
    case OTA_ERR_ARG: return "invalid argument";
    case OTA_ERR_CBOR: return "malformed CBOR";
    case OTA_ERR_CBOR_INDEF: return "indefinite-length CBOR";
    case OTA_ERR_CBOR_DEPTH: return "CBOR nested too deeply";
    case OTA_ERR_CBOR_TYPE: return "wrong CBOR type";
    case OTA_ERR_CBOR_DUP: return "duplicate map key";
    case OTA_ERR_NOSPACE: return "no space";
    case OTA_ERR_MSG: return "invalid message";
    case OTA_ERR_COSE: return "invalid COSE_Sign1";
    case OTA_ERR_UNKNOWN_KEY: return "unknown signing key";
    case OTA_ERR_SIGNATURE: return "bad signature";
    case OTA_ERR_HARDWARE: return "hardware mismatch";
    case OTA_ERR_BOOTLOADER: return "bootloader too old";
    case OTA_ERR_VERSION: return "version policy";
    case OTA_ERR_SEQUENCE: return "sequence number too low";
    case OTA_ERR_SECURE_VERSION: return "secure version too low";
    case OTA_ERR_DIGEST: return "digest mismatch";
    case OTA_ERR_FLASH: return "flash error";
    case OTA_ERR_STATE: return "wrong state";
    case OTA_ERR_IO: return "I/O error";
    case OTA_ERR_NOT_FOUND: return "not found";
    case OTA_ERR_CRYPTO: return "crypto failure";
    case OTA_ERR_TIMEOUT: return "timeout";
    default: return "unknown status";
    }
}
#else
/* OTA_CFG_TEXT 0: no texts on the device; the status number says it all. */
const char *ota_strerror(int status)
{
    (void)status;
    return "";
}
#endif

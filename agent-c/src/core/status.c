/* status.c - ota_strerror. */
#include <string.h>

#include "otamq/ota_config.h"
#include "otamq/ota_status.h"

#if OTA_CFG_TEXT
/* The descriptions of OTA_OK, OTA_ERR_ARG (-1), ... OTA_ERR_TIMEOUT (-23)
 * in that order, then the one for anything else. */
static const char texts[] = "ok\0"
                            "bad argument\0"
                            "malformed CBOR\0"
                            "indefinite CBOR\0"
                            "CBOR too deep\0"
                            "wrong CBOR type\0"
                            "duplicate key\0"
                            "no space\0"
                            "bad message\0"
                            "bad COSE_Sign1\0"
                            "unknown key\0"
                            "bad signature\0"
                            "hardware mismatch\0"
                            "bootloader too old\0"
                            "version policy\0"
                            "sequence too low\0"
                            "secure version too low\0"
                            "digest mismatch\0"
                            "flash error\0"
                            "wrong state\0"
                            "I/O error\0"
                            "not found\0"
                            "crypto error\0"
                            "timeout\0"
                            "unknown status";

const char *ota_strerror(int status)
{
    const char *t = texts;
    unsigned i = 0u - (unsigned)status; /* a positive status comes out above the last */
    if (i > 0u - (unsigned)OTA_ERR_TIMEOUT)
        i = 1u - (unsigned)OTA_ERR_TIMEOUT;
    for (; i > 0u; i--)
        t += strlen(t) + 1u;
    return t;
}
#else
/* OTA_CFG_TEXT 0: no texts on the device; the status number says it all. */
const char *ota_strerror(int status)
{
    (void)status;
    return "";
}
#endif

/* persist.h - the agent's persisted state record (private): its keys, its
 * rows (persist.c), and its encoding and decoding, inline because each has
 * one caller (FOOTPRINT.md). */
#ifndef OTAMQ_CORE_PERSIST_H
#define OTAMQ_CORE_PERSIST_H

#include "internal.h"
#include "otamq/ota_agent.h"

enum {
    PK_STATE = 1, PK_ROLLOUT, PK_VERSION, PK_DIGEST, PK_SIZE, PK_OFFSET, PK_BLOCK,
    PK_MODE, PK_SEQ, PK_SV, PK_TSV, PK_SLOT, PK_ERROR, PK_FLAGS, PK_BOOTS, PK_WDT,
    PK_TRIAL, PK_BOOTLOG, PK_WDTLOG, PK_KIND, PK_REFETCH, PK_GUARD0, PK_GUARD1, PK_GUARD2,
    PK_KVER1, PK_KVER2, PK_WINDOW, PK_MAX = PK_WINDOW
};

extern const ota_field_t ota_persist_rows[PK_MAX];

/* OTA_OK or OTA_ERR_NOSPACE. */
static inline int ota_persist_encode(const ota_persist_t *ps, uint8_t *buf, size_t cap,
                                     size_t *len)
{
    return ota_encode_map(ps, ota_persist_rows, PK_MAX, 0, buf, cap, len);
}

/* OTA_OK or a CBOR/OTA_ERR_MSG status (ps is then zeroed or partial). */
static inline int ota_persist_decode(ota_persist_t *ps, const uint8_t *buf, size_t len)
{
    uint32_t have;
    int rc = ota_decode_map(buf, len, ota_persist_rows, PK_MAX, PK_MAX, ps, sizeof(*ps), NULL,
                            &have);
    /* a download needs a block size (send_request divides by it) */
    if (rc == OTA_OK && (ps->offset > ps->size || ps->block_size > OTA_CFG_BLOCK_SIZE ||
                         (ps->block_size == 0u && ps->state == OTA_STATE_DOWNLOADING)))
        rc = OTA_ERR_MSG;
    return rc;
}

#endif

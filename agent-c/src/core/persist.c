/* persist.c - the agent's persisted state record, encoded as a CBOR map so
 * that later agent versions can add keys and still read old records. */
#include <string.h>

#include "internal.h"
#include "persist.h"

enum {
    PK_STATE = 1, PK_ROLLOUT, PK_VERSION, PK_DIGEST, PK_SIZE, PK_OFFSET, PK_BLOCK,
    PK_MODE, PK_SEQ, PK_SV, PK_TSV, PK_SLOT, PK_ERROR, PK_FLAGS, PK_BOOTS, PK_WDT,
    PK_TRIAL, PK_BOOTLOG, PK_WDTLOG, PK_MAX = PK_WDTLOG
};

static void put_log(ota_cbor_writer_t *w, uint8_t k, const uint32_t *log, uint8_t n)
{
    uint8_t i;
    ota_cbor_put_uint(w, k);
    ota_cbor_put_head(w, OTA_CBOR_ARRAY, n);
    for (i = 0; i < n; i++)
        ota_cbor_put_uint(w, log[i]);
}

int ota_persist_encode(const ota_persist_t *ps, uint8_t *buf, size_t cap, size_t *len)
{
    ota_cbor_writer_t w;
    ota_cbor_writer_init(&w, buf, cap);
    ota_cbor_put_head(&w, OTA_CBOR_MAP, PK_MAX);
    ota_put_ku(&w, PK_STATE, ps->state);
    ota_put_ks(&w, PK_ROLLOUT, ps->rollout);
    ota_put_ks(&w, PK_VERSION, ps->version);
    ota_cbor_put_uint(&w, PK_DIGEST);
    ota_cbor_put_bstr(&w, ps->digest, sizeof(ps->digest));
    ota_put_ku(&w, PK_SIZE, ps->size);
    ota_put_ku(&w, PK_OFFSET, ps->offset);
    ota_put_ku(&w, PK_BLOCK, ps->block_size);
    ota_put_ku(&w, PK_MODE, ps->install_mode);
    ota_put_ku(&w, PK_SEQ, ps->seq);
    ota_put_ku(&w, PK_SV, ps->secure_version);
    ota_put_ku(&w, PK_TSV, ps->target_secure_version);
    ota_put_ku(&w, PK_SLOT, ps->target_slot);
    ota_put_ku(&w, PK_ERROR, ps->error);
    ota_put_ku(&w, PK_FLAGS, ps->flags);
    ota_put_ku(&w, PK_BOOTS, ps->boots_since_commit);
    ota_put_ku(&w, PK_WDT, ps->wdt_since_commit);
    ota_put_ku(&w, PK_TRIAL, ps->trial_ms);
    put_log(&w, PK_BOOTLOG, ps->boot_log, ps->nboots);
    put_log(&w, PK_WDTLOG, ps->wdt_log, ps->nwdt);
    if (ota_cbor_writer_status(&w) != OTA_OK)
        return OTA_ERR_NOSPACE;
    *len = w.len;
    return OTA_OK;
}

static int rd_str(ota_cbor_reader_t *r, char *dst, size_t cap)
{
    const char *s;
    size_t n;
    int rc = ota_cbor_read_tstr(r, &s, &n);
    if (rc != OTA_OK)
        return rc;
    if (n >= cap || memchr(s, 0, n) != NULL)
        return OTA_ERR_MSG;
    memcpy(dst, s, n);
    dst[n] = '\0';
    return OTA_OK;
}

static int rd_log(ota_cbor_reader_t *r, uint32_t *log, uint8_t *n)
{
    uint64_t cnt, i;
    int rc = ota_cbor_read_array(r, &cnt);
    if (rc != OTA_OK)
        return rc;
    if (cnt > OTA_CFG_BOOT_LOG)
        return OTA_ERR_MSG;
    for (i = 0; i < cnt && rc == OTA_OK; i++)
        rc = ota_rd_u32(r, &log[i]);
    *n = (uint8_t)cnt;
    return rc;
}

static int persist_custom(ota_cbor_reader_t *r, uint8_t key, void *out)
{
    ota_persist_t *ps = (ota_persist_t *)out;
    const uint8_t *d;
    size_t n;
    int rc;
    switch (key) {
    case PK_ROLLOUT: return rd_str(r, ps->rollout, sizeof(ps->rollout));
    case PK_VERSION: return rd_str(r, ps->version, sizeof(ps->version));
    case PK_BOOTLOG: return rd_log(r, ps->boot_log, &ps->nboots);
    case PK_WDTLOG: return rd_log(r, ps->wdt_log, &ps->nwdt);
    default: /* PK_DIGEST */
        rc = ota_cbor_read_bstr(r, &d, &n);
        if (rc == OTA_OK && n != sizeof(ps->digest))
            rc = OTA_ERR_MSG;
        if (rc == OTA_OK)
            memcpy(ps->digest, d, n);
        return rc;
    }
}

#define F(k, t, m) {k, t, (uint16_t)offsetof(ota_persist_t, m), 0}

static const ota_field_t persist_rows[] = {
    F(PK_STATE, OTA_F_U8, state),       F(PK_ROLLOUT, OTA_F_CUSTOM, rollout),
    F(PK_VERSION, OTA_F_CUSTOM, version), F(PK_DIGEST, OTA_F_CUSTOM, digest),
    F(PK_SIZE, OTA_F_U32, size),        F(PK_OFFSET, OTA_F_U32, offset),
    F(PK_BLOCK, OTA_F_U32, block_size), F(PK_MODE, OTA_F_U8, install_mode),
    F(PK_SEQ, OTA_F_U64, seq),          F(PK_SV, OTA_F_U32, secure_version),
    F(PK_TSV, OTA_F_U32, target_secure_version), F(PK_SLOT, OTA_F_U8, target_slot),
    F(PK_ERROR, OTA_F_U8, error),       F(PK_FLAGS, OTA_F_U8, flags),
    F(PK_BOOTS, OTA_F_U32, boots_since_commit), F(PK_WDT, OTA_F_U32, wdt_since_commit),
    F(PK_TRIAL, OTA_F_U32, trial_ms),   F(PK_BOOTLOG, OTA_F_CUSTOM, boot_log),
    F(PK_WDTLOG, OTA_F_CUSTOM, wdt_log),
};

int ota_persist_decode(ota_persist_t *ps, const uint8_t *buf, size_t len)
{
    uint32_t have;
    int rc;
    memset(ps, 0, sizeof(*ps));
    rc = ota_decode_map(buf, len, persist_rows, sizeof(persist_rows) / sizeof(persist_rows[0]),
                        PK_MAX, ps, persist_custom, &have);
    if (rc == OTA_OK && (ps->state > OTA_STATE_FAILED || ps->install_mode > 1u ||
                         ps->target_slot > 1u || ps->offset > ps->size ||
                         ps->block_size > OTA_CFG_BLOCK_SIZE))
        rc = OTA_ERR_MSG;
    return rc;
}

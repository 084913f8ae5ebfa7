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

static void put_kv(ota_cbor_writer_t *w, unsigned k, uint64_t v)
{
    ota_cbor_put_uint(w, k);
    ota_cbor_put_uint(w, v);
}

static void put_log(ota_cbor_writer_t *w, unsigned k, const uint32_t *log, uint8_t n)
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
    put_kv(&w, PK_STATE, ps->state);
    ota_cbor_put_uint(&w, PK_ROLLOUT);
    ota_cbor_put_cstr(&w, ps->rollout);
    ota_cbor_put_uint(&w, PK_VERSION);
    ota_cbor_put_cstr(&w, ps->version);
    ota_cbor_put_uint(&w, PK_DIGEST);
    ota_cbor_put_bstr(&w, ps->digest, sizeof(ps->digest));
    put_kv(&w, PK_SIZE, ps->size);
    put_kv(&w, PK_OFFSET, ps->offset);
    put_kv(&w, PK_BLOCK, ps->block_size);
    put_kv(&w, PK_MODE, ps->install_mode);
    put_kv(&w, PK_SEQ, ps->seq);
    put_kv(&w, PK_SV, ps->secure_version);
    put_kv(&w, PK_TSV, ps->target_secure_version);
    put_kv(&w, PK_SLOT, ps->target_slot);
    put_kv(&w, PK_ERROR, ps->error);
    put_kv(&w, PK_FLAGS, ps->flags);
    put_kv(&w, PK_BOOTS, ps->boots_since_commit);
    put_kv(&w, PK_WDT, ps->wdt_since_commit);
    put_kv(&w, PK_TRIAL, ps->trial_ms);
    put_log(&w, PK_BOOTLOG, ps->boot_log, ps->nboots);
    put_log(&w, PK_WDTLOG, ps->wdt_log, ps->nwdt);
    if (ota_cbor_writer_status(&w) != OTA_OK)
        return OTA_ERR_NOSPACE;
    *len = w.len;
    return OTA_OK;
}

static int rd_small(ota_cbor_reader_t *r, uint8_t *v, uint32_t max)
{
    uint32_t u;
    int rc = ota_rd_u32(r, &u);
    if (rc == OTA_OK && u > max)
        rc = OTA_ERR_MSG;
    if (rc == OTA_OK)
        *v = (uint8_t)u;
    return rc;
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

int ota_persist_decode(ota_persist_t *ps, const uint8_t *buf, size_t len)
{
    ota_cbor_reader_t r;
    ota_cbor_map_t m;
    uint64_t key;
    int rc;

    memset(ps, 0, sizeof(*ps));
    ota_cbor_reader_init(&r, buf, len);
    rc = ota_cbor_map_begin(&m, &r);
    while (rc == OTA_OK && (rc = ota_cbor_map_next(&m, &key)) == 1) {
        switch (key) {
        case PK_STATE: rc = rd_small(&r, &ps->state, OTA_STATE_FAILED); break;
        case PK_ROLLOUT: rc = rd_str(&r, ps->rollout, sizeof(ps->rollout)); break;
        case PK_VERSION: rc = rd_str(&r, ps->version, sizeof(ps->version)); break;
        case PK_DIGEST: {
            const uint8_t *d;
            size_t n;
            rc = ota_cbor_read_bstr(&r, &d, &n);
            if (rc == OTA_OK && n != sizeof(ps->digest))
                rc = OTA_ERR_MSG;
            if (rc == OTA_OK)
                memcpy(ps->digest, d, n);
            break;
        }
        case PK_SIZE: rc = ota_rd_u32(&r, &ps->size); break;
        case PK_OFFSET: rc = ota_rd_u32(&r, &ps->offset); break;
        case PK_BLOCK: rc = ota_rd_u32(&r, &ps->block_size); break;
        case PK_MODE: rc = rd_small(&r, &ps->install_mode, 1); break;
        case PK_SEQ: rc = ota_cbor_read_uint(&r, &ps->seq); break;
        case PK_SV: rc = ota_rd_u32(&r, &ps->secure_version); break;
        case PK_TSV: rc = ota_rd_u32(&r, &ps->target_secure_version); break;
        case PK_SLOT: rc = rd_small(&r, &ps->target_slot, 1); break;
        case PK_ERROR: rc = rd_small(&r, &ps->error, 255); break;
        case PK_FLAGS: rc = rd_small(&r, &ps->flags, 255); break;
        case PK_BOOTS: rc = ota_rd_u32(&r, &ps->boots_since_commit); break;
        case PK_WDT: rc = ota_rd_u32(&r, &ps->wdt_since_commit); break;
        case PK_TRIAL: rc = ota_cbor_read_uint(&r, &ps->trial_ms); break;
        case PK_BOOTLOG: rc = rd_log(&r, ps->boot_log, &ps->nboots); break;
        case PK_WDTLOG: rc = rd_log(&r, ps->wdt_log, &ps->nwdt); break;
        default: rc = ota_rd_unknown(&r, key, PK_MAX); break;
        }
    }
    rc = ota_rd_end(&r, rc);
    if (rc == OTA_OK && (ps->offset > ps->size || ps->block_size > OTA_CFG_BLOCK_SIZE))
        rc = OTA_ERR_MSG;
    return rc;
}

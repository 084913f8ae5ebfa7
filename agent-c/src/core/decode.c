/* decode.c - table-driven map decoder and key/value writers (internal.h). */
#include <string.h>

#include "internal.h"

int ota_rd_u32(ota_cbor_reader_t *r, uint32_t *v)
{
    uint64_t u;
    int rc = ota_cbor_read_uint(r, &u);
    if (rc == OTA_OK && u > 0xffffffffu)
        rc = OTA_ERR_MSG;
    *v = (uint32_t)u;
    return rc;
}

static int read_field(ota_cbor_reader_t *r, const ota_field_t *f, uint8_t *out)
{
    uint64_t u;
    int rc;
    if (f->type <= OTA_F_U64) {
        rc = ota_cbor_read_uint(r, &u);
        if (rc != OTA_OK)
            return rc;
        if (f->type == OTA_F_U8) {
            uint8_t v = (uint8_t)u;
            if (u > 0xffu)
                return OTA_ERR_MSG;
            memcpy(out + f->off, &v, sizeof(v));
        } else if (f->type == OTA_F_U32) {
            uint32_t v = (uint32_t)u;
            if (u > 0xffffffffu)
                return OTA_ERR_MSG;
            memcpy(out + f->off, &v, sizeof(v));
        } else {
            memcpy(out + f->off, &u, sizeof(u));
        }
        return OTA_OK;
    }
    {
        const void *p;
        size_t n;
        rc = f->type == OTA_F_TSTR ? ota_cbor_read_tstr(r, (const char **)&p, &n)
                                   : ota_cbor_read_bstr(r, (const uint8_t **)&p, &n);
        if (rc == OTA_OK) {
            memcpy(out + f->off, &p, sizeof(p));
            memcpy(out + f->len_off, &n, sizeof(n));
        }
        return rc;
    }
}

int ota_decode_map(const uint8_t *buf, size_t len, const ota_field_t *rows, size_t nrows,
                   uint8_t max_key, void *out, ota_field_fn custom, uint32_t *have)
{
    ota_cbor_reader_t r;
    ota_cbor_map_t m;
    uint64_t key;
    size_t i;
    int rc;

    *have = 0;
    if (buf == NULL || out == NULL)
        return OTA_ERR_ARG;
    ota_cbor_reader_init(&r, buf, len);
    rc = ota_cbor_map_begin(&m, &r);
    while (rc == OTA_OK && (rc = ota_cbor_map_next(&m, &key)) == 1) {
        const ota_field_t *f = NULL;
        for (i = 0; i < nrows && f == NULL; i++)
            if (rows[i].key == key)
                f = &rows[i];
        if (f == NULL)
            rc = key > max_key ? ota_cbor_skip(&r) : OTA_ERR_MSG;
        else if (f->type == OTA_F_CUSTOM)
            rc = custom(&r, f->key, out);
        else
            rc = read_field(&r, f, (uint8_t *)out);
        if (key < 32u)
            *have |= 1u << key;
    }
    if (rc < 0)
        return rc;
    return r.p == r.end ? OTA_OK : OTA_ERR_CBOR;
}

void ota_put_ku(ota_cbor_writer_t *w, uint8_t key, uint64_t v)
{
    ota_cbor_put_uint(w, key);
    ota_cbor_put_uint(w, v);
}

void ota_put_ks(ota_cbor_writer_t *w, uint8_t key, const char *s)
{
    ota_cbor_put_uint(w, key);
    ota_cbor_put_cstr(w, s);
}

/* codec.c - table-driven map decoder and encoder (internal.h).
 *
 * A row's offset is that of a struct member of the row's type, so an
 * integer member is reached through a pointer of its own type (aligned, and
 * the effective type of the object), without memcpy. Pointer members are
 * copied with memcpy: a row does not say whether they are char or uint8_t
 * pointers, and one may not stand for the other. */
#include <string.h>

#include "internal.h"

/* An unsigned integer into the member of type t (OTA_F_U8, OTA_F_U32 or
 * OTA_F_U64) at dst, which it must fit, and be at most max when that is
 * not 0. */
static int read_num(ota_cbor_reader_t *r, unsigned t, uint8_t *dst, unsigned max)
{
    uint64_t u;
    int rc = ota_cbor_read_uint(r, &u);
    if (rc != OTA_OK)
        return rc;
    if (t == OTA_F_U64)
        *(uint64_t *)(void *)dst = u;
    else if (u > (max != 0u ? max : t == OTA_F_U8 ? 0xffu : 0xffffffffu))
        return OTA_ERR_MSG;
    else if (t == OTA_F_U8)
        *dst = (uint8_t)u;
    else
        *(uint32_t *)(void *)dst = (uint32_t)u;
    return OTA_OK;
}

static INLINE int read_field(ota_cbor_reader_t *r, const ota_field_t *f, uint8_t *out)
{
    uint8_t *dst = out + OTA_F_OFF(f);
    unsigned t = OTA_F_TYPE(f);
    const uint8_t *p;
    size_t n;
    uint64_t u;
    uint32_t i;
    int rc;

    if (t <= OTA_F_U64)
        return read_num(r, t, dst, f->len_off);
    if (t == OTA_F_LOG) {
        rc = ota_cbor_read_array(r, &u);
        if (rc == OTA_OK && u > OTA_CFG_BOOT_LOG)
            rc = OTA_ERR_MSG;
        out[f->len_off] = (uint8_t)u;
        for (i = 0; rc == OTA_OK && i < (uint32_t)u; i++)
            rc = read_num(r, OTA_F_U32, dst + i * sizeof(uint32_t), 0);
        return rc;
    }
    /* strings: TSTR, TEXT as text; BSTR, DIGEST, PDIGEST as bytes */
    rc = ota_cbor_read_str(r, t == OTA_F_TSTR || t == OTA_F_TEXT ? OTA_CBOR_TSTR : OTA_CBOR_BSTR,
                           &p, &n);
    if (rc != OTA_OK)
        return rc;
    if (t == OTA_F_TEXT ? n >= f->len_off : t >= OTA_F_DIGEST && n != 32u)
        return OTA_ERR_MSG;
    if (t == OTA_F_TEXT || t == OTA_F_DIGEST) {
        memcpy(dst, p, n);
        if (t == OTA_F_TEXT)
            dst[n] = '\0';
    } else {
        memcpy(OTA_PTR_MEMBER(dst), &p, sizeof(p));
        if (t != OTA_F_PDIGEST)
            *(size_t *)(void *)(out + f->len_off) = n;
    }
    return OTA_OK;
}

int ota_decode_map(const uint8_t *buf, size_t len, const ota_field_t *rows, size_t nrows,
                   uint8_t max_key, void *out, size_t out_size, ota_field_fn custom,
                   uint32_t *have)
{
    ota_cbor_reader_t r;
    ota_cbor_map_t m;
    uint64_t key;
    int rc;

    *have = 0;
    if (out == NULL)
        return OTA_ERR_ARG;
    memset(out, 0, out_size);
    if (buf == NULL)
        return OTA_ERR_ARG;
    ota_cbor_reader_init(&r, buf, len);
    rc = ota_cbor_map_begin(&m, &r);
    while (rc == OTA_OK && (rc = ota_cbor_map_next(&m, &key)) == 1) {
        const ota_field_t *f = rows, *end = rows + nrows;
        while (f < end && f->key != key)
            f++;
        if (key < 32u)
            *have |= 1u << key;
        if (f == end)
            rc = key > max_key ? ota_cbor_skip(&r) : OTA_ERR_MSG;
        else if (OTA_F_TYPE(f) == OTA_F_CUSTOM)
            rc = custom(&r, f->key, out);
        else
            rc = read_field(&r, f, (uint8_t *)out);
    }
    if (rc == 0 && r.p != r.end)
        rc = OTA_ERR_CBOR;
    return rc;
}

/* Text of n bytes (0: up to the NUL), cut to 128 bytes without splitting a
 * UTF-8 sequence. */
static void put_text(ota_cbor_writer_t *w, const char *s, size_t n)
{
    if (n == 0u)
        n = strlen(s);
    if (n > 128u)
        for (n = 128u; n > 0u && ((uint8_t)s[n] & 0xc0u) == 0x80u; n--)
            ;
    ota_cbor_put_tstr(w, s, n);
}

int ota_encode_map(const void *src, const ota_field_t *rows, size_t nrows, uint32_t omit,
                   uint8_t *buf, size_t cap, size_t *len)
{
    const uint8_t *s = (const uint8_t *)src;
    ota_cbor_writer_t w;
    unsigned pairs = 0;
    bool wide = nrows > 23u;

    if (buf == NULL || len == NULL)
        return OTA_ERR_ARG;
    ota_cbor_writer_init(&w, buf, cap);
    /* the map head, its count set below: 2 bytes (0xb8, count) for the
     * state record's 24 or more rows, which are always all there */
    ota_cbor_put_raw(&w, (const uint8_t *)"\xb8", wide ? 2u : 1u);
    for (; nrows > 0u; nrows--, rows++) {
        const void *p = s + OTA_F_OFF(rows);
        uint8_t major = OTA_CBOR_UINT;
        unsigned i, t = OTA_F_TYPE(rows);
        uint64_t v;

        if (t == OTA_F_CSTR || t == OTA_F_PDIGEST)
            memcpy(&p, OTA_PTR_MEMBER(p), sizeof(p)); /* the member is a pointer */
        if ((omit >> rows->key & 1u) || p == NULL)
            continue;
        pairs++;
        ota_cbor_put_uint(&w, rows->key);
        if (t == OTA_F_CSTR || t == OTA_F_TEXT) {
            put_text(&w, (const char *)p,
                     t == OTA_F_CSTR && rows->len_off != 0u
                         ? *(const size_t *)(const void *)(s + rows->len_off)
                         : 0u);
            continue;
        }
        if (t == OTA_F_DIGEST || t == OTA_F_PDIGEST) {
            ota_cbor_put_bstr(&w, (const uint8_t *)p, 32);
            continue;
        }
        if (t == OTA_F_LOG) {
            ota_cbor_put_head(&w, OTA_CBOR_ARRAY, s[rows->len_off]);
            for (i = 0; i < s[rows->len_off]; i++)
                ota_cbor_put_uint(&w, ((const uint32_t *)p)[i]);
            continue;
        }
        /* numbers: OTA_F_U8, OTA_F_U32, OTA_F_U64, OTA_F_I32 */
        v = t == OTA_F_U8    ? *(const uint8_t *)p
            : t == OTA_F_U64 ? *(const uint64_t *)p
                             : *(const uint32_t *)p;
        if (t == OTA_F_I32 && *(const int32_t *)p < 0) {
            major = OTA_CBOR_NINT;
            v = (uint32_t)~v;
        }
        ota_cbor_put_head(&w, major, v);
    }
    if (w.overflow)
        return OTA_ERR_NOSPACE;
    if (wide)
        buf[1] = (uint8_t)pairs;
    else
        buf[0] = (uint8_t)(0xa0u | pairs);
    *len = w.len;
    return OTA_OK;
}

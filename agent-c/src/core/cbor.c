/* cbor.c - zero-copy CBOR reader and shortest-form writer (see ota_cbor.h). */
#include "otamq/ota_cbor.h"

#include <string.h>

void ota_cbor_reader_init(ota_cbor_reader_t *r, const uint8_t *buf, size_t len)
{
    r->p = buf;
    r->end = buf + len;
}

static size_t left(const ota_cbor_reader_t *r)
{
    return (size_t)(r->end - r->p);
}

int ota_cbor_read_head(ota_cbor_reader_t *r, uint8_t *major, uint64_t *arg)
{
    uint8_t ib, ai;
    uint64_t v = 0;
    size_t n, i;

    if (left(r) < 1u)
        return OTA_ERR_CBOR;
    ib = *r->p++;
    *major = (uint8_t)(ib >> 5);
    ai = (uint8_t)(ib & 0x1fu);
    if (ai < 24u) {
        if (*major == OTA_CBOR_SIMPLE && ai < 20u)
            return OTA_ERR_CBOR; /* unassigned simple values */
        v = ai;
    } else if (ai <= 27u) {
        n = (size_t)1u << (ai - 24u);
        if (left(r) < n)
            return OTA_ERR_CBOR;
        for (i = 0; i < n; i++)
            v = (v << 8) | r->p[i];
        r->p += n;
        /* Shortest form only; floats (major 7, ai 25..27) carry bits, not
         * a length, and are left alone. Simple values 0..31 in one extra
         * byte are not well-formed (RFC 8949 §3.3). */
        if (*major != OTA_CBOR_SIMPLE) {
            if ((ai == 24u && v < 24u) || (ai == 25u && v <= 0xffu) ||
                (ai == 26u && v <= 0xffffu) || (ai == 27u && v <= 0xffffffffu))
                return OTA_ERR_CBOR;
        } else if (ai == 24u) {
            return OTA_ERR_CBOR; /* unassigned one-byte simple values */
        }
    } else if (ai == 31u) {
        return OTA_ERR_CBOR_INDEF;
    } else {
        return OTA_ERR_CBOR; /* 28..30 reserved */
    }
    switch (*major) {
    case OTA_CBOR_BSTR:
    case OTA_CBOR_TSTR:
        if (v > left(r))
            return OTA_ERR_CBOR;
        break;
    case OTA_CBOR_ARRAY:
        if (v > left(r))
            return OTA_ERR_CBOR;
        break;
    case OTA_CBOR_MAP:
        if (v > left(r) / 2u)
            return OTA_ERR_CBOR;
        break;
    default:
        break;
    }
    *arg = v;
    return OTA_OK;
}

static int expect(ota_cbor_reader_t *r, uint8_t want, uint64_t *arg)
{
    uint8_t major;
    int rc = ota_cbor_read_head(r, &major, arg);
    if (rc != OTA_OK)
        return rc;
    return major == want ? OTA_OK : OTA_ERR_CBOR_TYPE;
}

int ota_cbor_read_uint(ota_cbor_reader_t *r, uint64_t *v)
{
    return expect(r, OTA_CBOR_UINT, v);
}

int ota_cbor_read_int(ota_cbor_reader_t *r, int64_t *v)
{
    uint8_t major;
    uint64_t arg;
    int rc = ota_cbor_read_head(r, &major, &arg);
    if (rc != OTA_OK)
        return rc;
    if ((major != OTA_CBOR_UINT && major != OTA_CBOR_NINT) || arg > (uint64_t)INT64_MAX)
        return OTA_ERR_CBOR_TYPE;
    *v = major == OTA_CBOR_UINT ? (int64_t)arg : -1 - (int64_t)arg;
    return OTA_OK;
}

int ota_cbor_read_bstr(ota_cbor_reader_t *r, const uint8_t **p, size_t *n)
{
    uint64_t len;
    int rc = expect(r, OTA_CBOR_BSTR, &len);
    if (rc != OTA_OK)
        return rc;
    *p = r->p;
    *n = (size_t)len;
    r->p += len;
    return OTA_OK;
}

/* Well-formed UTF-8 (RFC 3629): no overlongs, surrogates or > U+10FFFF. */
static bool utf8_ok(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        size_t k;
        uint8_t lo = 0x80u, hi = 0xbfu;
        if (c < 0x80u) {
            i++;
            continue;
        }
        if (c >= 0xc2u && c <= 0xdfu)
            k = 1;
        else if (c >= 0xe0u && c <= 0xefu) {
            k = 2;
            if (c == 0xe0u)
                lo = 0xa0u;
            else if (c == 0xedu)
                hi = 0x9fu;
        } else if (c >= 0xf0u && c <= 0xf4u) {
            k = 3;
            if (c == 0xf0u)
                lo = 0x90u;
            else if (c == 0xf4u)
                hi = 0x8fu;
        } else
            return false;
        if (n - i <= k)
            return false;
        if (s[i + 1] < lo || s[i + 1] > hi)
            return false;
        for (size_t j = 2; j <= k; j++)
            if ((s[i + j] & 0xc0u) != 0x80u)
                return false;
        i += k + 1;
    }
    return true;
}

int ota_cbor_read_tstr(ota_cbor_reader_t *r, const char **p, size_t *n)
{
    uint64_t len;
    int rc = expect(r, OTA_CBOR_TSTR, &len);
    if (rc != OTA_OK)
        return rc;
    if (!utf8_ok(r->p, (size_t)len))
        return OTA_ERR_CBOR;
    *p = (const char *)r->p;
    *n = (size_t)len;
    r->p += len;
    return OTA_OK;
}

int ota_cbor_read_array(ota_cbor_reader_t *r, uint64_t *count)
{
    return expect(r, OTA_CBOR_ARRAY, count);
}

int ota_cbor_read_map(ota_cbor_reader_t *r, uint64_t *pairs)
{
    return expect(r, OTA_CBOR_MAP, pairs);
}

int ota_cbor_read_tag(ota_cbor_reader_t *r, uint64_t *tag)
{
    return expect(r, OTA_CBOR_TAG, tag);
}

static int skip_depth(ota_cbor_reader_t *r, unsigned depth)
{
    uint8_t major;
    uint64_t arg, i;
    int rc;

    if (depth > OTA_CFG_CBOR_MAX_DEPTH)
        return OTA_ERR_CBOR_DEPTH;
    rc = ota_cbor_read_head(r, &major, &arg);
    if (rc != OTA_OK)
        return rc;
    switch (major) {
    case OTA_CBOR_BSTR:
        r->p += arg;
        return OTA_OK;
    case OTA_CBOR_TSTR:
        if (!utf8_ok(r->p, (size_t)arg))
            return OTA_ERR_CBOR;
        r->p += arg;
        return OTA_OK;
    case OTA_CBOR_MAP:
        arg *= 2u;
        /* fall through */
    case OTA_CBOR_ARRAY:
        for (i = 0; i < arg; i++) {
            rc = skip_depth(r, depth + 1u);
            if (rc != OTA_OK)
                return rc;
        }
        return OTA_OK;
    case OTA_CBOR_TAG:
        return skip_depth(r, depth + 1u);
    default:
        return OTA_OK; /* ints, simple values, floats */
    }
}

int ota_cbor_skip(ota_cbor_reader_t *r)
{
    return skip_depth(r, 1u);
}

int ota_cbor_validate(const uint8_t *buf, size_t len)
{
    ota_cbor_reader_t r;
    int rc;
    if (buf == NULL && len != 0u)
        return OTA_ERR_ARG;
    ota_cbor_reader_init(&r, buf, len);
    rc = ota_cbor_skip(&r);
    if (rc != OTA_OK)
        return rc;
    return r.p == r.end ? OTA_OK : OTA_ERR_CBOR;
}

int ota_cbor_map_begin(ota_cbor_map_t *m, ota_cbor_reader_t *r)
{
    uint64_t pairs;
    int rc = ota_cbor_read_map(r, &pairs);
    if (rc != OTA_OK)
        return rc;
    if (pairs > OTA_CFG_CBOR_MAX_PAIRS)
        return OTA_ERR_MSG;
    m->r = r;
    m->left = (uint32_t)pairs;
    m->seen = 0;
    return OTA_OK;
}

int ota_cbor_map_next(ota_cbor_map_t *m, uint64_t *key)
{
    uint32_t i;
    int rc;
    if (m->left == 0u)
        return 0;
    rc = ota_cbor_read_uint(m->r, key);
    if (rc != OTA_OK)
        return rc;
    for (i = 0; i < m->seen; i++)
        if (m->keys[i] == *key)
            return OTA_ERR_CBOR_DUP;
    m->keys[m->seen++] = *key;
    m->left--;
    return 1;
}

/* ---- writer ------------------------------------------------------------ */

void ota_cbor_writer_init(ota_cbor_writer_t *w, uint8_t *buf, size_t cap)
{
    w->buf = buf;
    w->cap = cap;
    w->len = 0;
    w->overflow = false;
}

void ota_cbor_put_raw(ota_cbor_writer_t *w, const uint8_t *p, size_t n)
{
    if (w->overflow || n > w->cap - w->len) {
        w->overflow = true;
        return;
    }
    if (n != 0u)
        memcpy(w->buf + w->len, p, n);
    w->len += n;
}

size_t ota_cbor_encode_head(uint8_t out[9], uint8_t major, uint64_t arg)
{
    uint8_t mt = (uint8_t)(major << 5);
    size_t n, i;
    if (arg < 24u) {
        out[0] = (uint8_t)(mt | (uint8_t)arg);
        return 1;
    }
    if (arg <= 0xffu) {
        out[0] = (uint8_t)(mt | 24u);
        n = 1;
    } else if (arg <= 0xffffu) {
        out[0] = (uint8_t)(mt | 25u);
        n = 2;
    } else if (arg <= 0xffffffffu) {
        out[0] = (uint8_t)(mt | 26u);
        n = 4;
    } else {
        out[0] = (uint8_t)(mt | 27u);
        n = 8;
    }
    for (i = 0; i < n; i++)
        out[n - i] = (uint8_t)(arg >> (8u * i));
    return n + 1u;
}

void ota_cbor_put_head(ota_cbor_writer_t *w, uint8_t major, uint64_t arg)
{
    uint8_t h[9];
    ota_cbor_put_raw(w, h, ota_cbor_encode_head(h, major, arg));
}

void ota_cbor_put_uint(ota_cbor_writer_t *w, uint64_t v)
{
    ota_cbor_put_head(w, OTA_CBOR_UINT, v);
}

void ota_cbor_put_int(ota_cbor_writer_t *w, int64_t v)
{
    if (v >= 0)
        ota_cbor_put_head(w, OTA_CBOR_UINT, (uint64_t)v);
    else
        ota_cbor_put_head(w, OTA_CBOR_NINT, (uint64_t)(-1 - v));
}

void ota_cbor_put_bstr(ota_cbor_writer_t *w, const uint8_t *p, size_t n)
{
    ota_cbor_put_head(w, OTA_CBOR_BSTR, n);
    ota_cbor_put_raw(w, p, n);
}

void ota_cbor_put_tstr(ota_cbor_writer_t *w, const char *p, size_t n)
{
    ota_cbor_put_head(w, OTA_CBOR_TSTR, n);
    ota_cbor_put_raw(w, (const uint8_t *)p, n);
}

void ota_cbor_put_cstr(ota_cbor_writer_t *w, const char *s)
{
    ota_cbor_put_tstr(w, s, strlen(s));
}

int ota_cbor_writer_status(const ota_cbor_writer_t *w)
{
    return w->overflow ? OTA_ERR_NOSPACE : OTA_OK;
}

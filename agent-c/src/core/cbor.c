/* cbor.c - zero-copy CBOR reader and shortest-form writer (see ota_cbor.h).
 *
 * Heads are assembled in two 32-bit halves: the device is 32-bit and every
 * contract value but the manifest sequence number fits 32 bits, so 64-bit
 * arithmetic appears only where the value is handed out (FOOTPRINT.md). */
#include "otamq/ota_cbor.h"

#include <string.h>

#include "internal.h"

int ota_cbor_read_head(ota_cbor_reader_t *r, uint8_t *major, uint64_t *arg)
{
    const uint8_t *p = r->p;
    size_t left = (size_t)(r->end - p);
    uint32_t hi = 0, lo;
    unsigned mt, ai, n, i;

    if (left == 0u)
        return OTA_ERR_CBOR;
    mt = *p >> 5;
    *major = (uint8_t)mt;
    ai = *p++ & 0x1fu;
    left--;
    lo = ai;
    if (ai >= 24u) {
        if (ai > 27u)
            return ai == 31u ? OTA_ERR_CBOR_INDEF : OTA_ERR_CBOR; /* 28..30 reserved */
        n = 1u << (ai - 24u);
        if (left < n)
            return OTA_ERR_CBOR;
        for (lo = 0, i = 0; i < n; i++) {
            hi = hi << 8 | lo >> 24;
            lo = lo << 8 | p[i];
        }
        p += n;
        left -= n;
        /* Shortest form only: the value must need its n bytes. Floats
         * (major 7, ai 25..27) carry bits, not a value, and are left alone;
         * a one-byte simple value is unassigned or not well-formed. */
        if (mt != OTA_CBOR_SIMPLE) {
            if (n == 8u ? hi == 0u : n == 1u ? lo < 24u : (lo >> (4u * n)) == 0u)
                return OTA_ERR_CBOR;
        } else if (n == 1u) {
            return OTA_ERR_CBOR;
        }
    } else if (mt == OTA_CBOR_SIMPLE && ai < 20u) {
        return OTA_ERR_CBOR; /* unassigned simple values */
    }
    /* Lengths against the bytes left; each array item needs at least one
     * byte, each map pair two. hi != 0 is more than any buffer here. */
    if (mt >= OTA_CBOR_BSTR && mt <= OTA_CBOR_MAP &&
        (hi != 0u || lo > (mt == OTA_CBOR_MAP ? left / 2u : left)))
        return OTA_ERR_CBOR;
    r->p = p;
    *arg = (uint64_t)hi << 32 | lo;
    return OTA_OK;
}

int ota_cbor_expect(ota_cbor_reader_t *r, uint8_t want, uint64_t *arg)
{
    uint8_t major;
    int rc = ota_cbor_read_head(r, &major, arg);
    if (rc == OTA_OK && major != want)
        rc = OTA_ERR_CBOR_TYPE;
    return rc;
}

/* Moves past the string of len bytes after its head; a text string
 * (major OTA_CBOR_TSTR) must be well-formed UTF-8 (RFC 3629): no overlongs,
 * surrogates or > U+10FFFF. */
static int take_str(ota_cbor_reader_t *r, unsigned major, uint64_t len)
{
    const uint8_t *s = r->p, *end = s + len;
    r->p = end;
    while (major == OTA_CBOR_TSTR && s < end) {
        uint32_t c = *s++;
        unsigned k, i;
        if (c < 0x80u)
            continue;
        if (c < 0xc2u || c > 0xf4u)
            return OTA_ERR_CBOR; /* continuation byte, overlong lead, beyond U+10FFFF */
        k = c >= 0xf0u ? 3u : c >= 0xe0u ? 2u : 1u; /* continuation bytes */
        if ((size_t)(end - s) < k)
            return OTA_ERR_CBOR;
        c &= 0x3fu >> k;
        for (i = 0; i < k; i++, s++) {
            if ((*s & 0xc0u) != 0x80u)
                return OTA_ERR_CBOR;
            c = c << 6 | (*s & 0x3fu);
        }
        /* shortest form (0x800, 0x10000), no surrogates, at most U+10FFFF */
        if (c < 1u << (5u * k + 1u) || c >> 11 == 0x1bu || c > 0x10ffffu)
            return OTA_ERR_CBOR;
    }
    return OTA_OK;
}

int ota_cbor_read_str(ota_cbor_reader_t *r, uint8_t major, const uint8_t **p, size_t *n)
{
    uint64_t len;
    int rc = ota_cbor_expect(r, major, &len);
    if (rc != OTA_OK)
        return rc;
    *p = r->p;
    *n = (size_t)len;
    return take_str(r, major, len);
}

static int skip_depth(ota_cbor_reader_t *r, unsigned depth)
{
    uint8_t major;
    uint64_t arg;
    uint32_t items;
    int rc;

    if (depth > OTA_CFG_CBOR_MAX_DEPTH)
        return OTA_ERR_CBOR_DEPTH;
    rc = ota_cbor_read_head(r, &major, &arg);
    if (rc != OTA_OK)
        return rc;
    if (major == OTA_CBOR_BSTR || major == OTA_CBOR_TSTR)
        return take_str(r, major, arg);
    /* arrays and maps are bounded by the bytes left (read_head), so their
     * item counts fit 32 bits; a tag has one item; numbers and simple
     * values none */
    items = major == OTA_CBOR_MAP ? 2u * (uint32_t)arg
            : major == OTA_CBOR_ARRAY ? (uint32_t)arg
            : major == OTA_CBOR_TAG   ? 1u
                                      : 0u;
    for (; items > 0u && rc == OTA_OK; items--)
        rc = skip_depth(r, depth + 1u);
    return rc;
}

int ota_cbor_skip(ota_cbor_reader_t *r)
{
    return skip_depth(r, 1u);
}

/* ---- writer ------------------------------------------------------------ */

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
    uint32_t hi = (uint32_t)(arg >> 32), lo = (uint32_t)arg;
    /* additional info: the value itself, or 24..27 for 1, 2, 4, 8 bytes */
    unsigned ai = hi != 0u ? 27u : lo > 0xffffu ? 26u : lo > 0xffu ? 25u : lo >= 24u ? 24u : lo;
    unsigned n = ai < 24u ? 0u : 1u << (ai - 24u), i;
    out[0] = (uint8_t)((unsigned)major << 5 | ai);
    for (i = n; i > 0u; i--) {
        out[i] = (uint8_t)lo;
        lo = lo >> 8 | hi << 24;
        hi >>= 8;
    }
    return n + 1u;
}

void ota_cbor_put_head(ota_cbor_writer_t *w, uint8_t major, uint64_t arg)
{
    uint8_t h[9];
    ota_cbor_put_raw(w, h, ota_cbor_encode_head(h, major, arg));
}


/*
 * ota_cbor.h - minimal zero-copy CBOR (RFC 8949) reader and writer.
 *
 * Reader: pulls one data item head at a time from a byte range it does not
 * own; byte and text strings are returned as pointers into that range (no
 * copy). It accepts definite lengths only, refuses non-shortest ("non
 * canonical") heads, reserved additional-info values and invalid UTF-8 in
 * text strings, bounds nesting by OTA_CFG_CBOR_MAX_DEPTH and every length by
 * the bytes actually left. Of major type 7 it knows only false, true, null,
 * undefined and floats (unassigned simple values are refused); they are
 * accepted only when skipped (ota_cbor_skip), never as message fields.
 *
 * Writer: appends shortest-form heads into a caller buffer; an overflow is
 * sticky (w.overflow says it once at the end).
 *
 * Only what the agent uses is here; tests and tools have more helpers
 * (tests/cbor_util.h).
 */
#ifndef OTAMQ_OTA_CBOR_H
#define OTAMQ_OTA_CBOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ota_config.h"
#include "ota_status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Major types. */
#define OTA_CBOR_UINT 0u
#define OTA_CBOR_NINT 1u
#define OTA_CBOR_BSTR 2u
#define OTA_CBOR_TSTR 3u
#define OTA_CBOR_ARRAY 4u
#define OTA_CBOR_MAP 5u
#define OTA_CBOR_TAG 6u
#define OTA_CBOR_SIMPLE 7u

typedef struct ota_cbor_reader {
    const uint8_t *p;   /* next byte */
    const uint8_t *end; /* one past the last byte */
} ota_cbor_reader_t;

static inline void ota_cbor_reader_init(ota_cbor_reader_t *r, const uint8_t *buf, size_t len)
{
    r->p = buf;
    r->end = buf + len;
}

/* Reads one head. For major types 0..6 *arg is the value, length, count or
 * tag number; for major type 7 it is the simple value or the raw float bits.
 * Length arguments of strings are checked against the bytes left, counts of
 * arrays/maps against the bytes left (each item needs at least one byte). */
int ota_cbor_read_head(ota_cbor_reader_t *r, uint8_t *major, uint64_t *arg);

/* Reads a head of major type major (its argument into *arg), or returns
 * OTA_ERR_CBOR_TYPE when the next item has another type (the reader is then
 * left at an unspecified position). */
int ota_cbor_expect(ota_cbor_reader_t *r, uint8_t major, uint64_t *arg);

/* Reads a byte string (major OTA_CBOR_BSTR) or a text string
 * (OTA_CBOR_TSTR, checked to be UTF-8): *p points at its bytes in the
 * reader's buffer, *n is its length. OTA_ERR_CBOR_TYPE for another type. */
int ota_cbor_read_str(ota_cbor_reader_t *r, uint8_t major, const uint8_t **p, size_t *n);

/* Typed helpers (macros over the two above). */
#define ota_cbor_read_uint(r, v) ota_cbor_expect((r), OTA_CBOR_UINT, (v))
#define ota_cbor_read_array(r, count) ota_cbor_expect((r), OTA_CBOR_ARRAY, (count))
#define ota_cbor_read_map(r, pairs) ota_cbor_expect((r), OTA_CBOR_MAP, (pairs))
#define ota_cbor_read_bstr(r, p, n) ota_cbor_read_str((r), OTA_CBOR_BSTR, (p), (n))

/* Skips one complete data item (with everything nested in it). */
int ota_cbor_skip(ota_cbor_reader_t *r);

/*
 * Map walk with duplicate detection, for the int-keyed maps of the wire
 * contract: call ota_cbor_map_begin, then ota_cbor_map_next until it returns
 * 0 (end of map) or a negative status. After a key is returned the caller
 * must consume its value (read or skip) before asking for the next key.
 * Keys must be unsigned integers; a repeated key gives OTA_ERR_CBOR_DUP.
 */
typedef struct ota_cbor_map {
    ota_cbor_reader_t *r;
    uint32_t left;
    uint32_t seen;
    uint64_t keys[OTA_CFG_CBOR_MAX_PAIRS];
} ota_cbor_map_t;

/* Inline: the core has one map walk (its table-driven decoder), and a call
 * costs more than the code (FOOTPRINT.md). */
static inline int ota_cbor_map_begin(ota_cbor_map_t *m, ota_cbor_reader_t *r)
{
    uint64_t pairs;
    int rc = ota_cbor_expect(r, OTA_CBOR_MAP, &pairs);
    if (rc == OTA_OK && pairs > OTA_CFG_CBOR_MAX_PAIRS)
        rc = OTA_ERR_MSG;
    m->r = r;
    m->left = (uint32_t)pairs;
    m->seen = 0;
    return rc;
}

/* 1 and *key the next key, 0 at the end of the map, or a negative status. */
static inline int ota_cbor_map_next(ota_cbor_map_t *m, uint64_t *key)
{
    uint32_t i;
    int rc;
    if (m->left == 0u)
        return 0;
    rc = ota_cbor_expect(m->r, OTA_CBOR_UINT, key);
    if (rc != OTA_OK)
        return rc;
    for (i = 0; i < m->seen; i++)
        if (m->keys[i] == *key)
            return OTA_ERR_CBOR_DUP;
    m->keys[m->seen++] = *key;
    m->left--;
    return 1;
}

typedef struct ota_cbor_writer {
    uint8_t *buf;
    size_t cap;
    size_t len;
    bool overflow;
} ota_cbor_writer_t;

static inline void ota_cbor_writer_init(ota_cbor_writer_t *w, uint8_t *buf, size_t cap)
{
    w->buf = buf;
    w->cap = cap;
    w->len = 0;
    w->overflow = false;
}
void ota_cbor_put_head(ota_cbor_writer_t *w, uint8_t major, uint64_t arg);
void ota_cbor_put_raw(ota_cbor_writer_t *w, const uint8_t *p, size_t n);
/* A byte or text string (major OTA_CBOR_BSTR / OTA_CBOR_TSTR) of n bytes. */
static inline void ota_cbor_put_str(ota_cbor_writer_t *w, uint8_t major, const void *p,
                                    size_t n)
{
    ota_cbor_put_head(w, major, n);
    ota_cbor_put_raw(w, (const uint8_t *)p, n);
}
#define ota_cbor_put_uint(w, v) ota_cbor_put_head((w), OTA_CBOR_UINT, (v))
#define ota_cbor_put_bstr(w, p, n) ota_cbor_put_str((w), OTA_CBOR_BSTR, (p), (n))
#define ota_cbor_put_tstr(w, p, n) ota_cbor_put_str((w), OTA_CBOR_TSTR, (p), (n))

/* Encodes just a head into out (at most 9 bytes); returns its length. */
size_t ota_cbor_encode_head(uint8_t out[9], uint8_t major, uint64_t arg);

#ifdef __cplusplus
}
#endif
#endif /* OTAMQ_OTA_CBOR_H */

/* internal.h - helpers shared by the core's source files (not public). */
#ifndef OTAMQ_CORE_INTERNAL_H
#define OTAMQ_CORE_INTERNAL_H

#include <stddef.h>

#include "otamq/ota_cbor.h"

/* Table-driven encoding and decoding of the contract's int-keyed maps (and
 * of the agent's persisted state): one row per key says where the value
 * lives in a struct and what it is. One loop instead of a hand-written
 * function per message, which matters on the device (FOOTPRINT.md). */
enum {
    OTA_F_U8,     /* uint <= 255: uint8_t; decoding refuses values above
                     len_off when that is not 0 */
    OTA_F_U32,    /* uint <= 2^32-1: uint32_t; as OTA_F_U8 */
    OTA_F_U64,    /* uint: uint64_t */
    OTA_F_I32,    /* int: int32_t, encode only */
    OTA_F_TSTR,   /* text, decode only: const char * at off, size_t at len_off,
                     pointing into the input */
    OTA_F_BSTR,   /* bytes, decode only: as OTA_F_TSTR */
    OTA_F_CSTR,   /* text, encode only: const char * at off; NULL leaves the
                     key out; its length in the size_t at len_off when that is
                     not 0 and holds a non-zero value, else NUL-terminated */
    OTA_F_TEXT,   /* text in a char array at off of len_off bytes, kept
                     NUL-terminated (decoding copies; a NUL inside ends it) */
    OTA_F_DIGEST, /* 32 bytes: uint8_t[32] at off (decoding copies) */
    OTA_F_PDIGEST,/* 32 bytes: const uint8_t * at off (decoding points into
                     the input) */
    OTA_F_LOG,    /* array of uint <= 2^32-1: uint32_t[OTA_CFG_BOOT_LOG] at off,
                     uint8_t count at len_off */
    OTA_F_CUSTOM  /* decode only: the decoder's callback reads the value */
};

/* Offsets and lengths are bytes: a member at offset 256..510 (only the
 * persisted state has any) must be at an even offset and is kept halved,
 * with OTA_F_HALF set in its type (checked at compile time by OTA_OFF). */
typedef struct ota_field {
    uint8_t key;
    uint8_t type;
    uint8_t off;
    uint8_t len_off;
} ota_field_t;

#define OTA_F_HALF 0x80u
#define OTA_F_TYPE(f) ((uint8_t)((f)->type & 0x7fu))
#define OTA_F_OFF(f) ((size_t)(f)->off << ((f)->type >> 7))

#define OTA_BYTE(v) ((uint8_t)((v) * sizeof(char[(v) < 256u ? 1 : -1])))
#define OTA_OFF(v)                                                                      \
    ((uint8_t)(((v) < 256u ? (v) : (v) / 2u) *                                          \
               sizeof(char[(v) < 256u || ((v) % 2u == 0u && (v) < 512u) ? 1 : -1])))
#define OTA_HALF_IF(t, v) ((uint8_t)((t) | ((v) < 256u ? 0u : OTA_F_HALF)))
#define OTA_ROW(k, t, type, m) \
    {k, OTA_HALF_IF(t, offsetof(type, m)), OTA_OFF(offsetof(type, m)), 0}
#define OTA_ROW2(k, t, type, m, l) \
    {k, OTA_HALF_IF(t, offsetof(type, m)), OTA_OFF(offsetof(type, m)), OTA_BYTE(l)}

/* Helpers GCC would copy into each caller, at a cost in size (NOINLINE),
 * and ones it would keep out of line though a copy in each caller costs
 * less than the calls (INLINE; FOOTPRINT.md). */
#ifdef __GNUC__
#define NOINLINE __attribute__((noinline))
#define INLINE inline __attribute__((always_inline))
#else
#define NOINLINE
#define INLINE
#endif

/* p, which points at a pointer member of a struct (aligned as one): GCC
 * then copies the member with a load and a store instead of a call to
 * memcpy. */
#ifdef __GNUC__
#define OTA_PTR_MEMBER(p) __builtin_assume_aligned((p), sizeof(void *))
#else
#define OTA_PTR_MEMBER(p) (p)
#endif

typedef int (*ota_field_fn)(ota_cbor_reader_t *r, uint8_t key, void *out);

/* Zeroes out (out_size bytes), then decodes buf (exactly one map) into it.
 * Keys without a row are skipped when above max_key and refused otherwise;
 * duplicates, wrong types, indefinite lengths and trailing bytes are
 * refused. *have gets bit k for every key k < 32 seen. */
int ota_decode_map(const uint8_t *buf, size_t len, const ota_field_t *rows, size_t nrows,
                   uint8_t max_key, void *out, size_t out_size, ota_field_fn custom,
                   uint32_t *have);

/* Encodes the fields of src that rows name, in row order (rows are sorted
 * by key, so the map is in deterministic order), leaving out every key k
 * whose bit (1 << k) is set in omit and text pointers that are NULL. Text
 * is cut to 128 bytes (DESIGN §3's longest text) at a character boundary.
 * At most 255 pairs; a table of more than 23 rows must not omit any (its
 * map head is then 2 bytes). OTA_OK, OTA_ERR_ARG (buf or len NULL) or
 * OTA_ERR_NOSPACE. */
int ota_encode_map(const void *src, const ota_field_t *rows, size_t nrows, uint32_t omit,
                   uint8_t *buf, size_t cap, size_t *len);

#endif

/* internal.h - helpers shared by the core's source files (not public). */
#ifndef OTAMQ_CORE_INTERNAL_H
#define OTAMQ_CORE_INTERNAL_H

#include <stddef.h>

#include "otamq/ota_cbor.h"

/* Table-driven decoding of the contract's int-keyed maps: one row per key
 * says where the value goes. Smaller than a hand-written switch per
 * message, which matters on the device (FOOTPRINT.md). */
enum {
    OTA_F_U8,     /* uint <= 255 into uint8_t */
    OTA_F_U32,    /* uint <= 2^32-1 into uint32_t */
    OTA_F_U64,    /* uint into uint64_t */
    OTA_F_TSTR,   /* text: const char * at off, size_t at len_off */
    OTA_F_BSTR,   /* bytes: const uint8_t * at off, size_t at len_off */
    OTA_F_CUSTOM  /* the decoder's callback reads the value */
};

typedef struct ota_field {
    uint8_t key;
    uint8_t type;
    uint16_t off;
    uint16_t len_off;
} ota_field_t;

typedef int (*ota_field_fn)(ota_cbor_reader_t *r, uint8_t key, void *out);

/* Decodes buf (exactly one map) into out. Keys without a row are skipped
 * when above max_key and refused otherwise; duplicates, wrong types,
 * indefinite lengths and trailing bytes are refused. *have gets bit k for
 * every key k < 32 seen. */
int ota_decode_map(const uint8_t *buf, size_t len, const ota_field_t *rows, size_t nrows,
                   uint8_t max_key, void *out, ota_field_fn custom, uint32_t *have);

/* Reads a uint that must fit 32 bits (OTA_ERR_MSG otherwise). */
int ota_rd_u32(ota_cbor_reader_t *r, uint32_t *v);

/* Key/value writers used by the encoders. */
void ota_put_ku(ota_cbor_writer_t *w, uint8_t key, uint64_t v);
void ota_put_ks(ota_cbor_writer_t *w, uint8_t key, const char *s);

#endif

/* cbor_util.h - CBOR helpers the agent itself does not need, for the tests,
 * tools and fuzzers: built on ota_cbor.h, never linked into the device (the
 * core keeps only what it uses, FOOTPRINT.md). */
#ifndef OTAMQ_CBOR_UTIL_H
#define OTAMQ_CBOR_UTIL_H

#include "otamq/ota_cbor.h"

/* Checks that buf holds exactly one well-formed data item. */
int ota_cbor_validate(const uint8_t *buf, size_t len);

/* Reads an integer (uint or nint); OTA_ERR_CBOR_TYPE for anything else or a
 * value outside int64_t. */
int ota_cbor_read_int(ota_cbor_reader_t *r, int64_t *v);

/* Reads a text string (UTF-8 checked) in place. */
int ota_cbor_read_tstr(ota_cbor_reader_t *r, const char **p, size_t *n);

void ota_cbor_put_int(ota_cbor_writer_t *w, int64_t v);
void ota_cbor_put_cstr(ota_cbor_writer_t *w, const char *s); /* NUL-terminated */
/* OTA_OK, or OTA_ERR_NOSPACE if anything did not fit. */
int ota_cbor_writer_status(const ota_cbor_writer_t *w);

#endif

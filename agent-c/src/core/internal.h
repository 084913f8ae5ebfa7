/* internal.h - helpers shared by the core's source files (not public). */
#ifndef OTAMQ_CORE_INTERNAL_H
#define OTAMQ_CORE_INTERNAL_H

#include "otamq/ota_cbor.h"

/* Reads a uint that must fit 32 bits (OTA_ERR_MSG otherwise). */
int ota_rd_u32(ota_cbor_reader_t *r, uint32_t *v);
/* Skips the value of a key above max_key; refuses a lower unknown key. */
int ota_rd_unknown(ota_cbor_reader_t *r, uint64_t key, uint64_t max_key);
/* Ends a map walk: turns the walk's last status into OTA_OK when the input
 * is fully consumed, OTA_ERR_CBOR when bytes trail. */
int ota_rd_end(const ota_cbor_reader_t *r, int rc);

#endif

/* gw_msg.h - the device messages a gateway reads and writes besides the
 * agent core's: it reads its children's block requests and answers them
 * with blocks and block errors (DESIGN §3, "Block request"), and learns the
 * image of an offer it relays from the signed manifest inside. */
#ifndef OTAMQ_PORT_POSIX_GW_MSG_H
#define OTAMQ_PORT_POSIX_GW_MSG_H

#include <stddef.h>
#include <stdint.h>

#include "otamq/ota_msg.h"

/* Decodes a block request (keys 1..5, all required, key 1 32 bytes, count
 * >= 1, size >= 1; unknown keys skipped, nothing after the map). OTA_OK,
 * OTA_ERR_MSG or a CBOR status. out->digest points into buf. */
int gw_decode_block_request(const uint8_t *buf, size_t len, ota_block_request_t *out);

/* Encodes a block {1: req_id, 2: offset, 3: image size, 4: data} into buf.
 * OTA_OK or OTA_ERR_NOSPACE. */
int gw_encode_block(uint32_t req_id, uint32_t offset, uint32_t image_size, const uint8_t *data,
                    size_t n, uint8_t *buf, size_t cap, size_t *len);

/* Encodes a block error {1, 2, 5: error, 6: retry ms (when not 0),
 * 7: message (when not NULL)}. OTA_OK or OTA_ERR_NOSPACE. */
int gw_encode_block_error(uint32_t req_id, uint32_t offset, uint8_t error, uint32_t retry_ms,
                          const char *message, uint8_t *buf, size_t cap, size_t *len);

/* The image digest, size and rollout of an offer: OTA_OK (an offer of an
 * image), OTA_ERR_NOT_FOUND (an offer with an empty rollout ID: a cancel),
 * or a decode status. The signature is not checked here: the child checks
 * it, the gateway only needs to know which image the offer names. */
int gw_offer_image(const uint8_t *buf, size_t len, uint8_t digest[32], uint32_t *size);

#endif

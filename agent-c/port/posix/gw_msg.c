/* gw_msg.c - see gw_msg.h. */
#include "gw_msg.h"

#include <string.h>

#include "otamq/ota_cbor.h"

int gw_decode_block_request(const uint8_t *buf, size_t len, ota_block_request_t *out)
{
    ota_cbor_reader_t r;
    ota_cbor_map_t m;
    uint64_t key, v;
    unsigned have = 0;
    int rc;
    memset(out, 0, sizeof(*out));
    ota_cbor_reader_init(&r, buf, len);
    rc = ota_cbor_map_begin(&m, &r);
    while (rc == OTA_OK && (rc = ota_cbor_map_next(&m, &key)) == 1) {
        rc = OTA_OK;
        if (key == 0u) {
            rc = OTA_ERR_MSG;
        } else if (key == 1u) {
            const uint8_t *p;
            size_t n;
            rc = ota_cbor_read_bstr(&r, &p, &n);
            if (rc == OTA_OK && n != 32u)
                rc = OTA_ERR_MSG;
            out->digest = p;
        } else if (key <= 5u) {
            rc = ota_cbor_read_uint(&r, &v);
            if (rc == OTA_OK && v > 0xffffffffu)
                rc = OTA_ERR_MSG;
            if (key == 2u)
                out->offset = (uint32_t)v;
            else if (key == 3u)
                out->size = (uint32_t)v;
            else if (key == 4u)
                out->count = (uint32_t)v;
            else
                out->req_id = (uint32_t)v;
        } else {
            rc = ota_cbor_skip(&r);
        }
        if (rc == OTA_ERR_CBOR_TYPE)
            rc = OTA_ERR_MSG;
        if (rc == OTA_OK && key <= 5u)
            have |= 1u << key;
    }
    if (rc < 0)
        return rc;
    if (r.p != r.end)
        return OTA_ERR_CBOR;
    if (have != 0x3eu || out->size == 0u || out->count == 0u)
        return OTA_ERR_MSG;
    return OTA_OK;
}

int gw_encode_block(uint32_t req_id, uint32_t offset, uint32_t image_size, const uint8_t *data,
                    size_t n, uint8_t *buf, size_t cap, size_t *len)
{
    ota_cbor_writer_t w;
    ota_cbor_writer_init(&w, buf, cap);
    ota_cbor_put_head(&w, OTA_CBOR_MAP, 4);
    ota_cbor_put_uint(&w, 1);
    ota_cbor_put_uint(&w, req_id);
    ota_cbor_put_uint(&w, 2);
    ota_cbor_put_uint(&w, offset);
    ota_cbor_put_uint(&w, 3);
    ota_cbor_put_uint(&w, image_size);
    ota_cbor_put_uint(&w, 4);
    ota_cbor_put_bstr(&w, data, n);
    if (w.overflow)
        return OTA_ERR_NOSPACE;
    *len = w.len;
    return OTA_OK;
}

int gw_encode_block_error(uint32_t req_id, uint32_t offset, uint8_t error, uint32_t retry_ms,
                          const char *message, uint8_t *buf, size_t cap, size_t *len)
{
    ota_cbor_writer_t w;
    ota_cbor_writer_init(&w, buf, cap);
    ota_cbor_put_head(&w, OTA_CBOR_MAP, 3u + (retry_ms != 0u) + (message != NULL));
    ota_cbor_put_uint(&w, 1);
    ota_cbor_put_uint(&w, req_id);
    ota_cbor_put_uint(&w, 2);
    ota_cbor_put_uint(&w, offset);
    ota_cbor_put_uint(&w, 5);
    ota_cbor_put_uint(&w, error);
    if (retry_ms != 0u) {
        ota_cbor_put_uint(&w, 6);
        ota_cbor_put_uint(&w, retry_ms);
    }
    if (message != NULL) {
        ota_cbor_put_uint(&w, 7);
        ota_cbor_put_tstr(&w, message, strlen(message));
    }
    if (w.overflow)
        return OTA_ERR_NOSPACE;
    *len = w.len;
    return OTA_OK;
}

int gw_offer_image(const uint8_t *buf, size_t len, uint8_t digest[32], uint32_t *size)
{
    ota_offer_t o;
    ota_cose_sign1_t s;
    ota_manifest_t m;
    int rc = ota_msg_decode_offer(buf, len, &o);
    if (rc != OTA_OK)
        return rc;
    if (o.rollout_len == 0u)
        return OTA_ERR_NOT_FOUND;
    rc = ota_cose_parse(o.manifest, o.manifest_len, &s);
    if (rc == OTA_OK)
        rc = ota_manifest_decode(s.payload, s.payload_len, &m);
    if (rc != OTA_OK)
        return rc;
    memcpy(digest, m.digest, 32);
    *size = m.image_size;
    return OTA_OK;
}

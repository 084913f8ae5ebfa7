/* msg.c - encoders and decoders of the device messages (DESIGN §3). */
#include "otamq/ota_msg.h"

#include <string.h>

#include "internal.h"

/* ---- encoders ---------------------------------------------------------- */

static int finish(const ota_cbor_writer_t *w, size_t *len)
{
    int rc = ota_cbor_writer_status(w);
    if (rc == OTA_OK)
        *len = w->len;
    return rc;
}

int ota_msg_encode_birth(const ota_birth_t *m, uint8_t *buf, size_t cap, size_t *len)
{
    ota_cbor_writer_t w;
    if (m == NULL || buf == NULL || len == NULL || m->fw_version == NULL ||
        m->hardware == NULL || m->bootloader == NULL || m->agent_version == NULL)
        return OTA_ERR_ARG;
    ota_cbor_writer_init(&w, buf, cap);
    ota_cbor_put_head(&w, OTA_CBOR_MAP, 11);
    ota_put_ks(&w, 1, m->fw_version);
    ota_put_ks(&w, 2, m->hardware);
    ota_put_ks(&w, 3, m->bootloader);
    ota_put_ku(&w, 4, m->running_slot);
    ota_put_ku(&w, 5, m->boot_reason);
    ota_put_ku(&w, 6, m->boots_since_commit);
    ota_put_ku(&w, 7, m->ota_state);
    ota_put_ks(&w, 8, m->agent_version);
    ota_put_ku(&w, 9, m->connectivity);
    ota_cbor_put_uint(&w, 10);
    ota_cbor_put_int(&w, m->utc_offset_min);
    ota_put_ku(&w, 11, m->secure_version);
    return finish(&w, len);
}

int ota_msg_encode_heartbeat(const ota_heartbeat_t *m, uint8_t *buf, size_t cap, size_t *len)
{
    ota_cbor_writer_t w;
    if (m == NULL || buf == NULL || len == NULL)
        return OTA_ERR_ARG;
    ota_cbor_writer_init(&w, buf, cap);
    ota_cbor_put_head(&w, OTA_CBOR_MAP,
                      4u + (m->has_free_heap ? 1u : 0u) + (m->has_rssi ? 1u : 0u) +
                          (m->has_offset ? 1u : 0u));
    ota_put_ku(&w, 1, m->uptime_s);
    ota_put_ku(&w, 2, m->health);
    ota_put_ku(&w, 3, m->wdt_resets);
    if (m->has_free_heap)
        ota_put_ku(&w, 4, m->free_heap);
    if (m->has_rssi) {
        ota_cbor_put_uint(&w, 5);
        ota_cbor_put_int(&w, m->rssi);
    }
    ota_put_ku(&w, 6, m->ota_state);
    if (m->has_offset)
        ota_put_ku(&w, 7, m->offset);
    return finish(&w, len);
}

int ota_msg_encode_event(const ota_event_t *m, uint8_t *buf, size_t cap, size_t *len)
{
    ota_cbor_writer_t w;
    size_t dlen = 0;
    if (m == NULL || buf == NULL || len == NULL || m->code == 0u)
        return OTA_ERR_ARG;
    if (m->detail != NULL) {
        dlen = strlen(m->detail);
        if (dlen > 128u) {
            dlen = 128u;
            /* never cut inside a UTF-8 sequence */
            while (dlen > 0u && ((uint8_t)m->detail[dlen] & 0xc0u) == 0x80u)
                dlen--;
        }
    }
    ota_cbor_writer_init(&w, buf, cap);
    ota_cbor_put_head(&w, OTA_CBOR_MAP,
                      2u + (m->rollout != NULL ? 1u : 0u) + (m->target_version != NULL ? 1u : 0u) +
                          (m->progress >= 0 ? 1u : 0u) + (m->error != 0u ? 1u : 0u) +
                          (m->detail != NULL ? 1u : 0u));
    ota_put_ku(&w, 1, m->code);
    if (m->rollout != NULL)
        ota_put_ks(&w, 2, m->rollout);
    if (m->target_version != NULL)
        ota_put_ks(&w, 3, m->target_version);
    if (m->progress >= 0)
        ota_put_ku(&w, 4, (uint64_t)m->progress);
    if (m->error != 0u)
        ota_put_ku(&w, 5, m->error);
    if (m->detail != NULL) {
        ota_cbor_put_uint(&w, 6);
        ota_cbor_put_tstr(&w, m->detail, dlen);
    }
    ota_put_ku(&w, 7, m->device_time);
    return finish(&w, len);
}

int ota_msg_encode_block_request(const ota_block_request_t *m, uint8_t *buf, size_t cap,
                                 size_t *len)
{
    ota_cbor_writer_t w;
    if (m == NULL || buf == NULL || len == NULL || m->digest == NULL || m->count == 0u)
        return OTA_ERR_ARG;
    ota_cbor_writer_init(&w, buf, cap);
    ota_cbor_put_head(&w, OTA_CBOR_MAP, 5);
    ota_cbor_put_uint(&w, 1);
    ota_cbor_put_bstr(&w, m->digest, 32);
    ota_put_ku(&w, 2, m->offset);
    ota_put_ku(&w, 3, m->size);
    ota_put_ku(&w, 4, m->count);
    ota_put_ku(&w, 5, m->req_id);
    return finish(&w, len);
}

/* ---- decoders ---------------------------------------------------------- */

#define F(k, t, type, m) {k, t, (uint16_t)offsetof(type, m), 0}
#define S(k, t, type, m, l) {k, t, (uint16_t)offsetof(type, m), (uint16_t)offsetof(type, l)}

static const ota_field_t offer_rows[] = {
    S(1, OTA_F_TSTR, ota_offer_t, rollout, rollout_len),
    S(2, OTA_F_BSTR, ota_offer_t, manifest, manifest_len),
    F(3, OTA_F_U8, ota_offer_t, install_mode),
    F(4, OTA_F_U32, ota_offer_t, block_size),
    F(5, OTA_F_U64, ota_offer_t, deadline),
};

int ota_msg_decode_offer(const uint8_t *buf, size_t len, ota_offer_t *o)
{
    uint32_t have;
    int rc;
    if (o == NULL)
        return OTA_ERR_ARG;
    memset(o, 0, sizeof(*o));
    rc = ota_decode_map(buf, len, offer_rows, 5, 5, o, NULL, &have);
    if (rc != OTA_OK)
        return rc;
    /* rollout required; a non-empty rollout needs a manifest */
    if (!(have & 2u) || (o->rollout_len != 0u && !(have & 4u)) || o->install_mode > 1u)
        return OTA_ERR_MSG;
    return OTA_OK;
}

static const ota_field_t block_rows[] = {
    F(1, OTA_F_U32, ota_block_t, req_id),
    F(2, OTA_F_U32, ota_block_t, offset),
    F(3, OTA_F_U32, ota_block_t, image_size),
    S(4, OTA_F_BSTR, ota_block_t, data, data_len),
    F(5, OTA_F_U8, ota_block_t, error),
    F(6, OTA_F_U32, ota_block_t, retry_ms),
    S(7, OTA_F_TSTR, ota_block_t, message, message_len),
};

int ota_msg_decode_block(const uint8_t *buf, size_t len, ota_block_t *b)
{
    uint32_t have;
    int rc;
    if (b == NULL)
        return OTA_ERR_ARG;
    memset(b, 0, sizeof(*b));
    rc = ota_decode_map(buf, len, block_rows, 7, 7, b, NULL, &have);
    if (rc != OTA_OK)
        return rc;
    if ((have & 0x6u) != 0x6u) /* 1 and 2 always */
        return OTA_ERR_MSG;
    if (have & (1u << 5)) {
        /* block error: no data keys, error code non-zero */
        if ((have & 0x18u) || b->error == 0u)
            return OTA_ERR_MSG;
        b->is_error = true;
        return OTA_OK;
    }
    /* block: image size and data, none of the error keys */
    return (have & 0x18u) == 0x18u && !(have & 0xc0u) ? OTA_OK : OTA_ERR_MSG;
}

static const ota_field_t command_rows[] = {
    F(1, OTA_F_U8, ota_command_t, verb),
    S(2, OTA_F_TSTR, ota_command_t, rollout, rollout_len),
    F(3, OTA_F_U64, ota_command_t, not_after),
};

int ota_msg_decode_command(const uint8_t *buf, size_t len, ota_command_t *c)
{
    uint32_t have;
    int rc;
    if (c == NULL)
        return OTA_ERR_ARG;
    memset(c, 0, sizeof(*c));
    rc = ota_decode_map(buf, len, command_rows, 3, 3, c, NULL, &have);
    if (rc != OTA_OK)
        return rc;
    return (have & 2u) && c->verb != 0u ? OTA_OK : OTA_ERR_MSG;
}

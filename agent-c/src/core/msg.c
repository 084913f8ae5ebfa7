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
    ota_cbor_put_uint(&w, 1);
    ota_cbor_put_cstr(&w, m->fw_version);
    ota_cbor_put_uint(&w, 2);
    ota_cbor_put_cstr(&w, m->hardware);
    ota_cbor_put_uint(&w, 3);
    ota_cbor_put_cstr(&w, m->bootloader);
    ota_cbor_put_uint(&w, 4);
    ota_cbor_put_uint(&w, m->running_slot);
    ota_cbor_put_uint(&w, 5);
    ota_cbor_put_uint(&w, m->boot_reason);
    ota_cbor_put_uint(&w, 6);
    ota_cbor_put_uint(&w, m->boots_since_commit);
    ota_cbor_put_uint(&w, 7);
    ota_cbor_put_uint(&w, m->ota_state);
    ota_cbor_put_uint(&w, 8);
    ota_cbor_put_cstr(&w, m->agent_version);
    ota_cbor_put_uint(&w, 9);
    ota_cbor_put_uint(&w, m->connectivity);
    ota_cbor_put_uint(&w, 10);
    ota_cbor_put_int(&w, m->utc_offset_min);
    ota_cbor_put_uint(&w, 11);
    ota_cbor_put_uint(&w, m->secure_version);
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
    ota_cbor_put_uint(&w, 1);
    ota_cbor_put_uint(&w, m->uptime_s);
    ota_cbor_put_uint(&w, 2);
    ota_cbor_put_uint(&w, m->health);
    ota_cbor_put_uint(&w, 3);
    ota_cbor_put_uint(&w, m->wdt_resets);
    if (m->has_free_heap) {
        ota_cbor_put_uint(&w, 4);
        ota_cbor_put_uint(&w, m->free_heap);
    }
    if (m->has_rssi) {
        ota_cbor_put_uint(&w, 5);
        ota_cbor_put_int(&w, m->rssi);
    }
    ota_cbor_put_uint(&w, 6);
    ota_cbor_put_uint(&w, m->ota_state);
    if (m->has_offset) {
        ota_cbor_put_uint(&w, 7);
        ota_cbor_put_uint(&w, m->offset);
    }
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
    ota_cbor_put_uint(&w, 1);
    ota_cbor_put_uint(&w, m->code);
    if (m->rollout != NULL) {
        ota_cbor_put_uint(&w, 2);
        ota_cbor_put_cstr(&w, m->rollout);
    }
    if (m->target_version != NULL) {
        ota_cbor_put_uint(&w, 3);
        ota_cbor_put_cstr(&w, m->target_version);
    }
    if (m->progress >= 0) {
        ota_cbor_put_uint(&w, 4);
        ota_cbor_put_uint(&w, (uint64_t)m->progress);
    }
    if (m->error != 0u) {
        ota_cbor_put_uint(&w, 5);
        ota_cbor_put_uint(&w, m->error);
    }
    if (m->detail != NULL) {
        ota_cbor_put_uint(&w, 6);
        ota_cbor_put_tstr(&w, m->detail, dlen);
    }
    ota_cbor_put_uint(&w, 7);
    ota_cbor_put_uint(&w, m->device_time);
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
    ota_cbor_put_uint(&w, 2);
    ota_cbor_put_uint(&w, m->offset);
    ota_cbor_put_uint(&w, 3);
    ota_cbor_put_uint(&w, m->size);
    ota_cbor_put_uint(&w, 4);
    ota_cbor_put_uint(&w, m->count);
    ota_cbor_put_uint(&w, 5);
    ota_cbor_put_uint(&w, m->req_id);
    return finish(&w, len);
}

/* ---- decoders ---------------------------------------------------------- */

int ota_rd_u32(ota_cbor_reader_t *r, uint32_t *v)
{
    uint64_t u;
    int rc = ota_cbor_read_uint(r, &u);
    if (rc != OTA_OK)
        return rc;
    if (u > 0xffffffffu)
        return OTA_ERR_MSG;
    *v = (uint32_t)u;
    return OTA_OK;
}

static int rd_u8(ota_cbor_reader_t *r, uint8_t *v)
{
    uint64_t u;
    int rc = ota_cbor_read_uint(r, &u);
    if (rc != OTA_OK)
        return rc;
    if (u > 0xffu)
        return OTA_ERR_MSG;
    *v = (uint8_t)u;
    return OTA_OK;
}

/* Consumes the value of an unknown key: skipped when above max_key,
 * refused otherwise. */
int ota_rd_unknown(ota_cbor_reader_t *r, uint64_t key, uint64_t max_key)
{
    if (key <= max_key)
        return OTA_ERR_MSG;
    return ota_cbor_skip(r);
}

int ota_rd_end(const ota_cbor_reader_t *r, int rc)
{
    if (rc < 0)
        return rc;
    return r->p == r->end ? OTA_OK : OTA_ERR_CBOR;
}

int ota_msg_decode_offer(const uint8_t *buf, size_t len, ota_offer_t *o)
{
    ota_cbor_reader_t r;
    ota_cbor_map_t m;
    uint64_t key;
    uint32_t have = 0;
    int rc;

    if (buf == NULL || o == NULL)
        return OTA_ERR_ARG;
    memset(o, 0, sizeof(*o));
    ota_cbor_reader_init(&r, buf, len);
    rc = ota_cbor_map_begin(&m, &r);
    while (rc == OTA_OK && (rc = ota_cbor_map_next(&m, &key)) == 1) {
        switch (key) {
        case 1:
            rc = ota_cbor_read_tstr(&r, &o->rollout, &o->rollout_len);
            break;
        case 2:
            rc = ota_cbor_read_bstr(&r, &o->manifest, &o->manifest_len);
            break;
        case 3:
            rc = rd_u8(&r, &o->install_mode);
            if (rc == OTA_OK && o->install_mode > 1u)
                rc = OTA_ERR_MSG;
            break;
        case 4:
            rc = ota_rd_u32(&r, &o->block_size);
            break;
        case 5:
            rc = ota_cbor_read_uint(&r, &o->deadline);
            break;
        default:
            rc = ota_rd_unknown(&r, key, 5);
            break;
        }
        if (key < 32u)
            have |= 1u << key;
    }
    rc = ota_rd_end(&r, rc);
    if (rc != OTA_OK)
        return rc;
    if (!(have & (1u << 1)))
        return OTA_ERR_MSG;
    if (o->rollout_len != 0u && !(have & (1u << 2)))
        return OTA_ERR_MSG;
    return OTA_OK;
}

int ota_msg_decode_block(const uint8_t *buf, size_t len, ota_block_t *b)
{
    ota_cbor_reader_t r;
    ota_cbor_map_t m;
    uint64_t key;
    uint32_t have = 0;
    int rc;

    if (buf == NULL || b == NULL)
        return OTA_ERR_ARG;
    memset(b, 0, sizeof(*b));
    ota_cbor_reader_init(&r, buf, len);
    rc = ota_cbor_map_begin(&m, &r);
    while (rc == OTA_OK && (rc = ota_cbor_map_next(&m, &key)) == 1) {
        switch (key) {
        case 1:
            rc = ota_rd_u32(&r, &b->req_id);
            break;
        case 2:
            rc = ota_rd_u32(&r, &b->offset);
            break;
        case 3:
            rc = ota_rd_u32(&r, &b->image_size);
            break;
        case 4:
            rc = ota_cbor_read_bstr(&r, &b->data, &b->data_len);
            break;
        case 5:
            rc = rd_u8(&r, &b->error);
            break;
        case 6:
            rc = ota_rd_u32(&r, &b->retry_ms);
            break;
        case 7:
            rc = ota_cbor_read_tstr(&r, &b->message, &b->message_len);
            break;
        default:
            rc = ota_rd_unknown(&r, key, 7);
            break;
        }
        if (key < 32u)
            have |= 1u << key;
    }
    rc = ota_rd_end(&r, rc);
    if (rc != OTA_OK)
        return rc;
    if ((have & 0x6u) != 0x6u) /* 1 and 2 always */
        return OTA_ERR_MSG;
    if (have & (1u << 5)) {
        /* block error: no data keys, error code non-zero */
        if ((have & ((1u << 3) | (1u << 4))) || b->error == 0u)
            return OTA_ERR_MSG;
        b->is_error = true;
        return OTA_OK;
    }
    if ((have & 0x18u) != 0x18u || (have & 0xc0u))
        return OTA_ERR_MSG;
    return OTA_OK;
}

int ota_msg_decode_command(const uint8_t *buf, size_t len, ota_command_t *c)
{
    ota_cbor_reader_t r;
    ota_cbor_map_t m;
    uint64_t key;
    uint32_t have = 0;
    int rc;

    if (buf == NULL || c == NULL)
        return OTA_ERR_ARG;
    memset(c, 0, sizeof(*c));
    ota_cbor_reader_init(&r, buf, len);
    rc = ota_cbor_map_begin(&m, &r);
    while (rc == OTA_OK && (rc = ota_cbor_map_next(&m, &key)) == 1) {
        switch (key) {
        case 1:
            rc = rd_u8(&r, &c->verb);
            break;
        case 2:
            rc = ota_cbor_read_tstr(&r, &c->rollout, &c->rollout_len);
            break;
        case 3:
            rc = ota_cbor_read_uint(&r, &c->not_after);
            break;
        default:
            rc = ota_rd_unknown(&r, key, 3);
            break;
        }
        if (key < 32u)
            have |= 1u << key;
    }
    rc = ota_rd_end(&r, rc);
    if (rc != OTA_OK)
        return rc;
    if (!(have & (1u << 1)) || c->verb == 0u)
        return OTA_ERR_MSG;
    return OTA_OK;
}

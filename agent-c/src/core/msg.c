/* msg.c - encoders and decoders of the device messages (DESIGN §3), as
 * tables for ota_encode_map / ota_decode_map (internal.h). */
#include "otamq/ota_msg.h"

#include <string.h>

#include "internal.h"

#define NROWS(t) (sizeof(t) / sizeof((t)[0]))

/* ---- encoders ---------------------------------------------------------- */

static const ota_field_t birth_rows[] = {
    OTA_ROW(1, OTA_F_CSTR, ota_birth_t, fw_version),
    OTA_ROW(2, OTA_F_CSTR, ota_birth_t, hardware),
    OTA_ROW(3, OTA_F_CSTR, ota_birth_t, bootloader),
    OTA_ROW(4, OTA_F_U8, ota_birth_t, running_slot),
    OTA_ROW(5, OTA_F_U8, ota_birth_t, boot_reason),
    OTA_ROW(6, OTA_F_U32, ota_birth_t, boots_since_commit),
    OTA_ROW(7, OTA_F_U8, ota_birth_t, ota_state),
    OTA_ROW(8, OTA_F_CSTR, ota_birth_t, agent_version),
    OTA_ROW(9, OTA_F_U8, ota_birth_t, connectivity),
    OTA_ROW(10, OTA_F_I32, ota_birth_t, utc_offset_min),
    OTA_ROW(11, OTA_F_U32, ota_birth_t, secure_version),
    OTA_ROW(12, OTA_F_U64, ota_birth_t, guard),
};

int ota_msg_encode_birth(const ota_birth_t *m, uint8_t *buf, size_t cap, size_t *len)
{
    if (m == NULL || m->fw_version == NULL || m->hardware == NULL || m->bootloader == NULL ||
        m->agent_version == NULL)
        return OTA_ERR_ARG;
    /* key 12 only when there is a guard: DESIGN's births stay as they were */
    return ota_encode_map(m, birth_rows, NROWS(birth_rows), m->guard == 0u ? 1u << 12 : 0u, buf,
                          cap, len);
}

static const ota_field_t heartbeat_rows[] = {
    OTA_ROW(1, OTA_F_U32, ota_heartbeat_t, uptime_s),
    OTA_ROW(2, OTA_F_U8, ota_heartbeat_t, health),
    OTA_ROW(3, OTA_F_U32, ota_heartbeat_t, wdt_resets),
    OTA_ROW(4, OTA_F_U32, ota_heartbeat_t, free_heap),
    OTA_ROW(5, OTA_F_I32, ota_heartbeat_t, rssi),
    OTA_ROW(6, OTA_F_U8, ota_heartbeat_t, ota_state),
    OTA_ROW(7, OTA_F_U32, ota_heartbeat_t, offset),
};

int ota_msg_encode_heartbeat(const ota_heartbeat_t *m, uint8_t *buf, size_t cap, size_t *len)
{
    if (m == NULL)
        return OTA_ERR_ARG;
    return ota_encode_map(m, heartbeat_rows, NROWS(heartbeat_rows),
                          (m->has_free_heap ? 0u : 1u << 4) | (m->has_rssi ? 0u : 1u << 5) |
                              (m->has_offset ? 0u : 1u << 7),
                          buf, cap, len);
}

static const ota_field_t event_rows[] = {
    OTA_ROW(1, OTA_F_U8, ota_event_t, code),
    OTA_ROW2(2, OTA_F_CSTR, ota_event_t, rollout, offsetof(ota_event_t, rollout_len)),
    OTA_ROW2(3, OTA_F_CSTR, ota_event_t, target_version,
             offsetof(ota_event_t, target_version_len)),
    OTA_ROW(4, OTA_F_I32, ota_event_t, progress),
    OTA_ROW(5, OTA_F_U8, ota_event_t, error),
    OTA_ROW(6, OTA_F_CSTR, ota_event_t, detail),
    OTA_ROW(7, OTA_F_U64, ota_event_t, device_time),
};

int ota_msg_encode_event(const ota_event_t *m, uint8_t *buf, size_t cap, size_t *len)
{
    if (m == NULL || m->code == 0u)
        return OTA_ERR_ARG;
    return ota_encode_map(m, event_rows, NROWS(event_rows),
                          (m->progress < 0 ? 1u << 4 : 0u) | (m->error == 0u ? 1u << 5 : 0u), buf,
                          cap, len);
}

static const ota_field_t request_rows[] = {
    OTA_ROW(1, OTA_F_PDIGEST, ota_block_request_t, digest),
    OTA_ROW(2, OTA_F_U32, ota_block_request_t, offset),
    OTA_ROW(3, OTA_F_U32, ota_block_request_t, size),
    OTA_ROW(4, OTA_F_U32, ota_block_request_t, count),
    OTA_ROW(5, OTA_F_U32, ota_block_request_t, req_id),
};

int ota_msg_encode_block_request(const ota_block_request_t *m, uint8_t *buf, size_t cap,
                                 size_t *len)
{
    if (m == NULL || m->digest == NULL || m->count == 0u)
        return OTA_ERR_ARG;
    return ota_encode_map(m, request_rows, NROWS(request_rows), 0, buf, cap, len);
}

/* ---- decoders ---------------------------------------------------------- */

#define S(k, t, type, m, l) OTA_ROW2(k, t, type, m, offsetof(type, l))

static const ota_field_t offer_rows[] = {
    S(1, OTA_F_TSTR, ota_offer_t, rollout, rollout_len),
    S(2, OTA_F_BSTR, ota_offer_t, manifest, manifest_len),
    OTA_ROW2(3, OTA_F_U8, ota_offer_t, install_mode, 1),
    OTA_ROW(4, OTA_F_U32, ota_offer_t, block_size),
    OTA_ROW(5, OTA_F_U64, ota_offer_t, deadline),
    OTA_ROW(6, OTA_F_U32, ota_offer_t, max_window),
};

int ota_msg_decode_offer(const uint8_t *buf, size_t len, ota_offer_t *o)
{
    uint32_t have;
    int rc;
    rc = ota_decode_map(buf, len, offer_rows, NROWS(offer_rows), 6, o, sizeof(*o), NULL, &have);
    /* rollout required; a non-empty rollout needs a manifest */
    if (rc == OTA_OK &&
        (!(have & 2u) || (o->rollout_len != 0u && !(have & 4u))))
        rc = OTA_ERR_MSG;
    return rc;
}

static const ota_field_t block_rows[] = {
    OTA_ROW(1, OTA_F_U32, ota_block_t, req_id),
    OTA_ROW(2, OTA_F_U32, ota_block_t, offset),
    OTA_ROW(3, OTA_F_U32, ota_block_t, image_size),
    S(4, OTA_F_BSTR, ota_block_t, data, data_len),
    OTA_ROW(5, OTA_F_U8, ota_block_t, error),
    OTA_ROW(6, OTA_F_U32, ota_block_t, retry_ms),
    S(7, OTA_F_TSTR, ota_block_t, message, message_len),
};

int ota_msg_decode_block(const uint8_t *buf, size_t len, ota_block_t *b)
{
    uint32_t have;
    int rc;
    rc = ota_decode_map(buf, len, block_rows, NROWS(block_rows), 7, b, sizeof(*b), NULL, &have);
    if (rc != OTA_OK)
        return rc;
    b->is_error = (have & 1u << 5) != 0u;
    /* 1 and 2 always; a block has image size and data (3, 4) and none of
     * the error keys (5..7); a block error has a non-zero error (5), maybe
     * 6 and 7, and no data keys */
    if (b->is_error ? (have & 0x1eu) != 0x06u || b->error == 0u : (have & 0xfeu) != 0x1eu)
        return OTA_ERR_MSG;
    return OTA_OK;
}

static const ota_field_t command_rows[] = {
    OTA_ROW(1, OTA_F_U8, ota_command_t, verb),
    S(2, OTA_F_TSTR, ota_command_t, rollout, rollout_len),
    OTA_ROW(3, OTA_F_U64, ota_command_t, not_after),
};

int ota_msg_decode_command(const uint8_t *buf, size_t len, ota_command_t *c)
{
    uint32_t have;
    int rc;
    rc = ota_decode_map(buf, len, command_rows, NROWS(command_rows), 3, c, sizeof(*c), NULL,
                        &have);
    if (rc == OTA_OK && (!(have & 2u) || c->verb == 0u))
        rc = OTA_ERR_MSG;
    return rc;
}

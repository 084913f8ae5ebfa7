/* link.c - frames of the local link (ota_link.h, docs/PROTOCOL.md "Local
 * links"): CRC-32, encoder, incremental decoder, control messages. */
#include "otamq/ota_link.h"

#include <string.h>

#include "otamq/ota_cbor.h"

static const char *const suffixes[] = {"birth", "hb", "ev", "ota/get"};
static const char *const down_suffixes[] = {"ota/manifest", "ota/blk", "cmd"};

uint8_t ota_link_code_of(const char *suffix)
{
    uint8_t i;
    if (suffix == NULL)
        return 0;
    for (i = 0; i < 4u; i++)
        if (strcmp(suffix, suffixes[i]) == 0)
            return (uint8_t)(OTA_LINK_BIRTH + i);
    for (i = 0; i < 3u; i++)
        if (strcmp(suffix, down_suffixes[i]) == 0)
            return (uint8_t)(OTA_LINK_MANIFEST + i);
    return 0;
}

const char *ota_link_suffix_of(uint8_t code)
{
    if (code >= OTA_LINK_BIRTH && code <= OTA_LINK_GET)
        return suffixes[code - OTA_LINK_BIRTH];
    if (code >= OTA_LINK_MANIFEST && code <= OTA_LINK_CMD)
        return down_suffixes[code - OTA_LINK_MANIFEST];
    return NULL;
}

/* Half-byte table: 64 bytes of table instead of 1 KiB, two lookups a
 * byte; a link is slower than this by orders of magnitude. */
static const uint32_t crc_nibble[16] = {
    0x00000000u, 0x1db71064u, 0x3b6e20c8u, 0x26d930acu, 0x76dc4190u, 0x6b6b51f4u,
    0x4db26158u, 0x5005713cu, 0xedb88320u, 0xf00f9344u, 0xd6d6a3e8u, 0xcb61b38cu,
    0x9b64c2b0u, 0x86d3d2d4u, 0xa00ae278u, 0xbdbdf21cu};

uint32_t ota_link_crc32(uint32_t crc, const uint8_t *data, size_t len)
{
    size_t i;
    crc = ~crc;
    for (i = 0; i < len; i++) {
        crc ^= data[i];
        crc = (crc >> 4) ^ crc_nibble[crc & 0x0fu];
        crc = (crc >> 4) ^ crc_nibble[crc & 0x0fu];
    }
    return ~crc;
}

static void put16(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static uint32_t get16(const uint8_t *p)
{
    return ((uint32_t)p[0] << 8) | p[1];
}

static uint32_t get32(const uint8_t *p)
{
    return (get16(p) << 16) | get16(p + 2);
}

int ota_link_seal(uint8_t *frame, size_t cap, uint8_t code, uint16_t id, size_t payload_len,
                  size_t *frame_len)
{
    uint32_t crc;
    if (frame == NULL || frame_len == NULL || payload_len > 0xffffu)
        return OTA_ERR_ARG;
    if (cap < OTA_LINK_OVERHEAD || payload_len > cap - OTA_LINK_OVERHEAD)
        return OTA_ERR_NOSPACE;
    frame[0] = OTA_LINK_MARK0;
    frame[1] = OTA_LINK_MARK1;
    frame[2] = code;
    put16(frame + 3, id);
    put16(frame + 5, (uint32_t)payload_len);
    frame[7] = (uint8_t)ota_link_crc32(0, frame + 2, 5);
    crc = ota_link_crc32(0, frame + 2, OTA_LINK_HEADER - 2u + payload_len);
    put16(frame + OTA_LINK_HEADER + payload_len, crc >> 16);
    put16(frame + OTA_LINK_HEADER + payload_len + 2u, crc);
    *frame_len = payload_len + OTA_LINK_OVERHEAD;
    return OTA_OK;
}

int ota_link_encode(uint8_t *out, size_t cap, uint8_t code, uint16_t id, const uint8_t *payload,
                    size_t len, size_t *frame_len)
{
    if (out == NULL || (payload == NULL && len != 0u) || len > 0xffffu)
        return OTA_ERR_ARG;
    if (cap < OTA_LINK_OVERHEAD || len > cap - OTA_LINK_OVERHEAD)
        return OTA_ERR_NOSPACE;
    if (len != 0u)
        memmove(out + OTA_LINK_HEADER, payload, len);
    return ota_link_seal(out, cap, code, id, len, frame_len);
}

int ota_link_decoder_init(ota_link_decoder_t *d, uint8_t *buf, size_t cap)
{
    if (d == NULL || buf == NULL || cap < OTA_LINK_OVERHEAD || cap > OTA_LINK_MAX_FRAME)
        return OTA_ERR_ARG;
    memset(d, 0, sizeof(*d));
    d->buf = buf;
    d->cap = cap;
    return OTA_OK;
}

/* Drops the candidate at buf[0]: keeps what follows from the next marker
 * byte on (the bytes between are garbage). */
static void resync(ota_link_decoder_t *d)
{
    size_t k = 1;
    while (k < d->n && d->buf[k] != OTA_LINK_MARK0)
        k++;
    d->garbage += (uint32_t)(k - 1u);
    memmove(d->buf, d->buf + k, d->n - k);
    d->n -= k;
}

/* What the buffered candidate needs: the number of bytes still missing,
 * 0 when it is a complete valid frame, or it is dropped (resync) and the
 * caller looks again. */
static int examine(ota_link_decoder_t *d, size_t *need)
{
    size_t total;
    if (d->n >= 2u && d->buf[1] != OTA_LINK_MARK1) {
        d->garbage++;
        resync(d);
        return 0;
    }
    if (d->n < OTA_LINK_HEADER) {
        *need = OTA_LINK_HEADER - d->n;
        return 1;
    }
    total = get16(d->buf + 5) + OTA_LINK_OVERHEAD;
    if ((uint8_t)ota_link_crc32(0, d->buf + 2, 5) != d->buf[7] || total > d->cap) {
        d->bad_header++;
        resync(d);
        return 0;
    }
    if (d->n < total) {
        *need = total - d->n;
        return 1;
    }
    if (ota_link_crc32(0, d->buf + 2, total - 2u - OTA_LINK_TRAILER) !=
        get32(d->buf + total - OTA_LINK_TRAILER)) {
        d->bad_crc++;
        resync(d);
        return 0;
    }
    *need = 0;
    return 1;
}

int ota_link_decode(ota_link_decoder_t *d, const uint8_t *data, size_t len, size_t *used,
                    ota_link_frame_t *f)
{
    size_t need = 0, take;
    if (used != NULL)
        *used = 0;
    if (d == NULL || d->buf == NULL || used == NULL || f == NULL || (data == NULL && len != 0u))
        return OTA_ERR_ARG;
    if (d->done != 0u) {
        memmove(d->buf, d->buf + d->done, d->n - d->done);
        d->n -= d->done;
        d->done = 0;
    }
    for (;;) {
        if (d->n == 0u) {
            /* hunting: skip to the marker without buffering */
            while (*used < len && data[*used] != OTA_LINK_MARK0) {
                (*used)++;
                d->garbage++;
            }
            if (*used == len)
                return 0;
            d->buf[d->n++] = data[(*used)++];
            continue;
        }
        if (d->buf[0] != OTA_LINK_MARK0) {
            resync(d); /* only the bytes after a dropped candidate */
            continue;
        }
        if (!examine(d, &need))
            continue;
        if (need == 0u) {
            f->code = d->buf[2];
            f->id = (uint16_t)get16(d->buf + 3);
            f->len = get16(d->buf + 5);
            f->payload = d->buf + OTA_LINK_HEADER;
            d->done = f->len + OTA_LINK_OVERHEAD;
            d->frames++;
            return 1;
        }
        if (*used == len)
            return 0;
        take = len - *used < need ? len - *used : need;
        memcpy(d->buf + d->n, data + *used, take);
        d->n += take;
        *used += take;
    }
}

/* ---- control messages ------------------------------------------------- */

static bool id_ok(const uint8_t *s, size_t n)
{
    size_t i;
    if (n == 0u || n > 64u)
        return false;
    for (i = 0; i < n; i++) {
        uint8_t c = s[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return false;
    }
    return true;
}

static int finish(ota_cbor_writer_t *w, size_t *len)
{
    if (w->overflow)
        return OTA_ERR_NOSPACE;
    *len = w->len;
    return OTA_OK;
}

int ota_link_encode_hello(const ota_link_hello_t *m, uint8_t *buf, size_t cap, size_t *len)
{
    ota_cbor_writer_t w;
    if (m == NULL || buf == NULL || len == NULL || m->device_id == NULL ||
        !id_ok((const uint8_t *)m->device_id, m->device_id_len))
        return OTA_ERR_ARG;
    ota_cbor_writer_init(&w, buf, cap);
    ota_cbor_put_head(&w, OTA_CBOR_MAP, 3);
    ota_cbor_put_uint(&w, 1);
    ota_cbor_put_tstr(&w, m->device_id, m->device_id_len);
    ota_cbor_put_uint(&w, 2);
    ota_cbor_put_uint(&w, m->max_frame);
    ota_cbor_put_uint(&w, 3);
    ota_cbor_put_uint(&w, m->version);
    return finish(&w, len);
}

int ota_link_encode_welcome(const ota_link_welcome_t *m, uint8_t *buf, size_t cap, size_t *len)
{
    ota_cbor_writer_t w;
    size_t mlen;
    if (m == NULL || buf == NULL || len == NULL)
        return OTA_ERR_ARG;
    mlen = m->message == NULL ? 0u : m->message_len > 128u ? 128u : m->message_len;
    ota_cbor_writer_init(&w, buf, cap);
    ota_cbor_put_head(&w, OTA_CBOR_MAP, m->message != NULL ? 3u : 2u);
    ota_cbor_put_uint(&w, 1);
    ota_cbor_put_uint(&w, m->status);
    ota_cbor_put_uint(&w, 2);
    ota_cbor_put_uint(&w, m->max_frame);
    if (m->message != NULL) {
        ota_cbor_put_uint(&w, 3);
        ota_cbor_put_tstr(&w, m->message, mlen);
    }
    return finish(&w, len);
}

int ota_link_encode_u8(uint8_t value, uint8_t *buf, size_t cap, size_t *len)
{
    ota_cbor_writer_t w;
    if (buf == NULL || len == NULL)
        return OTA_ERR_ARG;
    ota_cbor_writer_init(&w, buf, cap);
    ota_cbor_put_head(&w, OTA_CBOR_MAP, 1);
    ota_cbor_put_uint(&w, 1);
    ota_cbor_put_uint(&w, value);
    return finish(&w, len);
}

/* One walk for the three control maps: keys 1..3, each a uint or a tstr as
 * tstr_keys says (bit k: key k is text); the values land in u[k] or
 * s[k]/sn[k]; have gets bit k for each key present. Unknown keys are
 * skipped; nothing may follow the map. */
static int decode_ctl(const uint8_t *buf, size_t len, unsigned tstr_keys, uint64_t u[4],
                      const uint8_t *s[4], size_t sn[4], unsigned *have)
{
    ota_cbor_reader_t r;
    ota_cbor_map_t m;
    uint64_t key;
    int rc;
    if (buf == NULL)
        return OTA_ERR_ARG;
    *have = 0;
    ota_cbor_reader_init(&r, buf, len);
    rc = ota_cbor_map_begin(&m, &r);
    while (rc == OTA_OK && (rc = ota_cbor_map_next(&m, &key)) == 1) {
        if (key == 0u)
            rc = OTA_ERR_MSG;
        else if (key > 3u)
            rc = ota_cbor_skip(&r);
        else if ((tstr_keys >> key) & 1u)
            rc = ota_cbor_read_str(&r, OTA_CBOR_TSTR, &s[key], &sn[key]);
        else
            rc = ota_cbor_read_uint(&r, &u[key]);
        if (rc == OTA_OK) {
            if (key <= 3u)
                *have |= 1u << key;
        } else if (rc == OTA_ERR_CBOR_TYPE) {
            rc = OTA_ERR_MSG;
        }
    }
    if (rc < 0)
        return rc;
    return r.p == r.end ? OTA_OK : OTA_ERR_CBOR;
}

int ota_link_decode_hello(const uint8_t *buf, size_t len, ota_link_hello_t *out)
{
    uint64_t u[4] = {0};
    const uint8_t *s[4] = {0};
    size_t sn[4] = {0};
    unsigned have;
    int rc = decode_ctl(buf, len, 1u << 1, u, s, sn, &have);
    if (rc != OTA_OK || out == NULL)
        return rc != OTA_OK ? rc : OTA_ERR_ARG;
    if ((have & 0x0eu) != 0x0eu || !id_ok(s[1], sn[1]) || u[2] > 0xffffffffu ||
        u[3] > 0xffffffffu)
        return OTA_ERR_MSG;
    out->device_id = (const char *)s[1];
    out->device_id_len = sn[1];
    out->max_frame = (uint32_t)u[2];
    out->version = (uint32_t)u[3];
    return OTA_OK;
}

int ota_link_decode_welcome(const uint8_t *buf, size_t len, ota_link_welcome_t *out)
{
    uint64_t u[4] = {0};
    const uint8_t *s[4] = {0};
    size_t sn[4] = {0};
    unsigned have;
    int rc = decode_ctl(buf, len, 1u << 3, u, s, sn, &have);
    if (rc != OTA_OK || out == NULL)
        return rc != OTA_OK ? rc : OTA_ERR_ARG;
    if ((have & 0x06u) != 0x06u || u[1] > 0xffu || u[2] > 0xffffffffu || sn[3] > 128u)
        return OTA_ERR_MSG;
    out->status = (uint8_t)u[1];
    out->max_frame = (uint32_t)u[2];
    out->message = (const char *)s[3];
    out->message_len = sn[3];
    return OTA_OK;
}

int ota_link_decode_u8(const uint8_t *buf, size_t len, uint8_t *value)
{
    uint64_t u[4] = {0};
    const uint8_t *s[4] = {0};
    size_t sn[4] = {0};
    unsigned have;
    int rc = decode_ctl(buf, len, 0, u, s, sn, &have);
    if (rc != OTA_OK || value == NULL)
        return rc != OTA_OK ? rc : OTA_ERR_ARG;
    if ((have & 0x02u) == 0u || u[1] > 0xffu)
        return OTA_ERR_MSG;
    *value = (uint8_t)u[1];
    return OTA_OK;
}

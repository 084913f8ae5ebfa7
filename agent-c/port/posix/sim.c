/* sim.c - simulated image header and otadata slot selection (no OS use). */
#include "sim.h"

#include <string.h>

bool ota_sim_header_parse(const uint8_t *buf, size_t len, ota_sim_header_t *h)
{
    size_t n;
    if (len < OTA_SIM_HDR_SIZE || buf[0] != OTA_SIM_MAGIC0 || buf[1] != 'S' || buf[2] != 'I' ||
        buf[3] != 'M' || buf[4] != OTA_SIM_HDR_VERSION || buf[5] > OTA_SIM_HEALTH_FAIL_LATER)
        return false;
    memset(h, 0, sizeof(*h));
    h->behaviour = buf[5];
    h->delay_s = (uint16_t)(buf[6] | (buf[7] << 8));
    h->secure_version = (uint32_t)buf[8] | (uint32_t)buf[9] << 8 | (uint32_t)buf[10] << 16 |
                        (uint32_t)buf[11] << 24;
    for (n = 0; n < OTA_SIM_VERSION_MAX && buf[16 + n] != 0u; n++)
        h->version[n] = (char)buf[16 + n];
    return n > 0u;
}

void ota_sim_header_build(uint8_t out[OTA_SIM_HDR_SIZE], const ota_sim_header_t *h)
{
    size_t n = strlen(h->version);
    memset(out, 0, OTA_SIM_HDR_SIZE);
    out[0] = OTA_SIM_MAGIC0;
    out[1] = 'S';
    out[2] = 'I';
    out[3] = 'M';
    out[4] = OTA_SIM_HDR_VERSION;
    out[5] = h->behaviour;
    out[6] = (uint8_t)h->delay_s;
    out[7] = (uint8_t)(h->delay_s >> 8);
    out[8] = (uint8_t)h->secure_version;
    out[9] = (uint8_t)(h->secure_version >> 8);
    out[10] = (uint8_t)(h->secure_version >> 16);
    out[11] = (uint8_t)(h->secure_version >> 24);
    memcpy(out + 16, h->version, n > OTA_SIM_VERSION_MAX ? OTA_SIM_VERSION_MAX : n);
}

/* ---- otadata ------------------------------------------------------------- */

/* CRC-32 (reflected, polynomial 0xEDB88320) of the 4 bytes of seq. */
static uint32_t seq_crc(uint32_t seq)
{
    uint32_t c = 0xffffffffu;
    int i, b;
    for (i = 0; i < 4; i++) {
        c ^= (seq >> (8 * i)) & 0xffu;
        for (b = 0; b < 8; b++)
            c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1u)));
    }
    return ~c;
}

void ota_od_init(ota_otadata_t *od)
{
    memset(od, 0xff, sizeof(*od));
}

void ota_od_set(ota_otadata_t *od, int i, uint32_t seq, uint32_t state)
{
    od->e[i].seq = seq;
    od->e[i].state = state;
    od->e[i].crc = seq_crc(seq);
}

/* bootloader_common_ota_select_invalid */
static bool entry_invalid(const ota_od_entry_t *e)
{
    return e->seq == OTA_OD_ERASED || e->state == OTA_OD_INVALID || e->state == OTA_OD_ABORTED;
}

/* bootloader_common_ota_select_valid */
static bool entry_usable(const ota_od_entry_t *e)
{
    return !entry_invalid(e) && e->crc == seq_crc(e->seq);
}

static int entry_slot(const ota_od_entry_t *e)
{
    return (int)((e->seq - 1u) % 2u);
}

int ota_od_active(const ota_otadata_t *od)
{
    bool v0 = entry_usable(&od->e[0]), v1 = entry_usable(&od->e[1]);
    if (v0 && v1)
        return od->e[0].seq >= od->e[1].seq ? 0 : 1;
    return v0 ? 0 : v1 ? 1 : -1;
}

int ota_od_boot(ota_otadata_t *od, const bool image_ok[2], unsigned *written)
{
    int i, start = 0, active, s;
    bool initial = false;
    *written = 0;
    for (i = 0; i < 2; i++) {
        if (od->e[i].state == OTA_OD_PENDING_VERIFY) {
            od->e[i].state = OTA_OD_ABORTED; /* its one start was not confirmed */
            *written |= 1u << i;
        }
    }
    if (entry_invalid(&od->e[0]) && entry_invalid(&od->e[1])) {
        /* "No factory image, trying OTA 0" */
        initial = true;
        for (i = 0; i < 2; i++)
            initial = initial && (od->e[i].seq == OTA_OD_ERASED ||
                                  od->e[i].crc != seq_crc(od->e[i].seq));
    } else if ((active = ota_od_active(od)) >= 0) {
        start = entry_slot(&od->e[active]);
        if (od->e[active].state == OTA_OD_NEW) {
            od->e[active].state = OTA_OD_PENDING_VERIFY;
            *written |= 1u << active;
        }
    }
    /* load the selected slot, else the other one (slots below it first) */
    for (i = 0; i < 2; i++) {
        s = start ^ i;
        if (!image_ok[s])
            continue;
        if (initial) {
            ota_od_set(od, 0, (uint32_t)s + 1u, OTA_OD_VALID);
            *written |= 1u;
        }
        return s;
    }
    return -1;
}

bool ota_od_state(const ota_otadata_t *od, int slot, uint32_t *state)
{
    int i;
    for (i = 0; i < 2; i++) {
        if (entry_slot(&od->e[i]) == slot && od->e[i].crc == seq_crc(od->e[i].seq)) {
            *state = od->e[i].state;
            return true;
        }
    }
    return false;
}

void ota_od_set_boot(ota_otadata_t *od, int slot, unsigned *written)
{
    int active = ota_od_active(od), next;
    uint32_t seq = (uint32_t)((slot + 1) % 2), i = 0;
    if (active >= 0) {
        /* the smallest seq naming slot that is not below the active one */
        while (od->e[active].seq > seq + i * 2u)
            i++;
        next = active ^ 1;
        seq += i * 2u;
    } else {
        next = 0;
        seq = (uint32_t)slot + 1u;
    }
    ota_od_set(od, next, seq, OTA_OD_NEW);
    *written = 1u << next;
}

bool ota_od_rollback_possible(const ota_otadata_t *od, const bool image_ok[2])
{
    int active = ota_od_active(od);
    const ota_od_entry_t *last;
    if (active < 0)
        return false;
    last = &od->e[active ^ 1];
    return entry_usable(last) && image_ok[entry_slot(last)];
}

bool ota_od_mark_valid(ota_otadata_t *od, unsigned *written)
{
    int active = ota_od_active(od);
    *written = 0;
    if (active < 0)
        return false;
    if (od->e[active].state != OTA_OD_VALID) {
        od->e[active].state = OTA_OD_VALID;
        *written = 1u << active;
    }
    return true;
}

bool ota_od_mark_invalid(ota_otadata_t *od, const bool image_ok[2], unsigned *written)
{
    int active = ota_od_active(od);
    *written = 0;
    if (!ota_od_rollback_possible(od, image_ok))
        return false;
    od->e[active].state = OTA_OD_INVALID;
    *written = 1u << active;
    return true;
}

bool ota_od_invalidate_inactive(ota_otadata_t *od, int running, unsigned *written)
{
    int active = ota_od_active(od), in;
    *written = 0;
    if (active < 0)
        return false;
    in = active ^ 1;
    if (od->e[in].seq == OTA_OD_ERASED || od->e[in].crc != seq_crc(od->e[in].seq) ||
        entry_slot(&od->e[in]) == running)
        return false;
    memset(&od->e[in], 0xff, sizeof(od->e[in]));
    *written = 1u << in;
    return true;
}

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

void ota_od_encode(const ota_otadata_t *od, uint8_t out[64])
{
    int i;
    memset(out, 0xff, 64);
    for (i = 0; i < 2; i++) {
        put32(out + 32 * i, od->e[i].seq);
        put32(out + 32 * i + 24, od->e[i].state);
        put32(out + 32 * i + 28, od->e[i].crc);
    }
}

void ota_od_decode(ota_otadata_t *od, const uint8_t in[64])
{
    int i;
    for (i = 0; i < 2; i++) {
        od->e[i].seq = get32(in + 32 * i);
        od->e[i].state = get32(in + 32 * i + 24);
        od->e[i].crc = get32(in + 32 * i + 28);
    }
}

/* ---- configuration store ------------------------------------------------- */

void ota_cfgdata_init(ota_cfgdata_t *c)
{
    memset(c, 0, sizeof(*c));
    c->active = c->previous = OTA_CFG_NONE;
    c->state = OTA_OD_VALID;
}

bool ota_cfgdata_boot(ota_cfgdata_t *c)
{
    if (c->active == OTA_CFG_NONE)
        return false;
    if (c->state == OTA_OD_PENDING_VERIFY) {
        ota_cfgdata_rollback(c); /* started once and not confirmed */
        return true;
    }
    if (c->state == OTA_OD_NEW) {
        c->state = OTA_OD_PENDING_VERIFY;
        return true;
    }
    return false;
}

void ota_cfgdata_activate(ota_cfgdata_t *c, uint8_t slot, uint32_t size, bool at_restart)
{
    c->previous = (uint8_t)(c->active == slot ? OTA_CFG_NONE : c->active);
    c->active = slot;
    c->size[slot] = size;
    c->state = (uint8_t)(at_restart ? OTA_OD_NEW : OTA_OD_PENDING_VERIFY);
}

void ota_cfgdata_rollback(ota_cfgdata_t *c)
{
    if (c->active != OTA_CFG_NONE)
        c->size[c->active] = 0; /* forgotten: never started again */
    c->active = c->previous;
    c->previous = OTA_CFG_NONE;
    c->state = OTA_OD_VALID;
}

static uint8_t sum8(const uint8_t *p, size_t n)
{
    uint8_t c = 0x5a;
    while (n-- > 0u)
        c = (uint8_t)((c << 1 | c >> 7) ^ *p++);
    return c;
}

void ota_cfgdata_encode(const ota_cfgdata_t *c, uint8_t out[12])
{
    out[0] = 'C';
    out[1] = c->active;
    out[2] = c->previous;
    out[3] = c->state;
    put32(out + 4, c->size[0]);
    put32(out + 8, c->size[1]);
    out[0] = sum8(out + 1, 11); /* first byte: checksum of the rest */
}

bool ota_cfgdata_decode(ota_cfgdata_t *c, const uint8_t in[12])
{
    if (in[0] != sum8(in + 1, 11) || (in[1] > 1u && in[1] != OTA_CFG_NONE) ||
        (in[2] > 1u && in[2] != OTA_CFG_NONE) || in[3] > OTA_OD_VALID)
        return false;
    c->active = in[1];
    c->previous = in[2];
    c->state = in[3];
    c->size[0] = get32(in + 4);
    c->size[1] = get32(in + 8);
    return true;
}

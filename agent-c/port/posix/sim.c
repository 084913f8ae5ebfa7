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

int ota_otadata_select(ota_otadata_t *od, const bool image_ok[2])
{
    uint8_t s = (uint8_t)(od->boot_slot & 1u);
    int tries;
    for (tries = 0; tries < 2; tries++, s ^= 1u) {
        uint8_t *st = &od->state[s];
        if (*st == OTA_SLOT_PENDING_VERIFY) {
            *st = OTA_SLOT_ABORTED; /* its one boot was not confirmed */
            continue;
        }
        if (*st == OTA_SLOT_INVALID || *st == OTA_SLOT_ABORTED || *st > OTA_SLOT_ABORTED)
            continue;
        if (!image_ok[s]) {
            if (*st == OTA_SLOT_NEW || *st == OTA_SLOT_VALID)
                *st = OTA_SLOT_INVALID;
            continue;
        }
        if (*st == OTA_SLOT_NEW)
            *st = OTA_SLOT_PENDING_VERIFY;
        od->boot_slot = s;
        return s;
    }
    return -1;
}

static uint8_t sum(const uint8_t *p)
{
    uint8_t c = 0x5a;
    int i;
    for (i = 0; i < 7; i++)
        c = (uint8_t)((c << 1 | c >> 7) ^ p[i]);
    return c;
}

void ota_otadata_encode(const ota_otadata_t *od, uint8_t out[8])
{
    memset(out, 0, 8);
    out[0] = 'O';
    out[1] = 'D';
    out[2] = od->boot_slot;
    out[3] = od->state[0];
    out[4] = od->state[1];
    out[7] = sum(out);
}

bool ota_otadata_decode(ota_otadata_t *od, const uint8_t in[8])
{
    if (in[0] != 'O' || in[1] != 'D' || in[7] != sum(in) || in[2] > 1u)
        return false;
    od->boot_slot = in[2];
    od->state[0] = in[3];
    od->state[1] = in[4];
    return true;
}

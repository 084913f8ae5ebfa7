/*
 * sim.h - pieces of the POSIX device simulator that need no OS: the
 * simulated firmware image header and the bootloader's slot selection with
 * ESP-IDF's otadata semantics. Shared by the POSIX port and the tests (the
 * power-loss simulator boots through the very same selection code).
 */
#ifndef OTAMQ_PORT_POSIX_SIM_H
#define OTAMQ_PORT_POSIX_SIM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- simulated image header (byte layout in README.md) ----------------- */

#define OTA_SIM_HDR_SIZE 64u
#define OTA_SIM_MAGIC0 0xE9u /* like an ESP image */
#define OTA_SIM_HDR_VERSION 1u
#define OTA_SIM_VERSION_MAX 32u

typedef enum ota_sim_behaviour {
    OTA_SIM_HEALTHY = 0,          /* boots and stays healthy */
    OTA_SIM_CRASH = 1,            /* crashes (panic) right at boot */
    OTA_SIM_HEALTH_FAIL = 2,      /* runs, but its health check fails */
    OTA_SIM_HANG = 3,             /* hangs at boot: the watchdog resets it */
    OTA_SIM_CRASH_LATER = 4,      /* healthy, then crashes delay_s after boot */
    OTA_SIM_HEALTH_FAIL_LATER = 5 /* healthy, health fails delay_s after boot */
} ota_sim_behaviour_t;

typedef struct ota_sim_header {
    uint8_t behaviour;                   /* ota_sim_behaviour_t */
    uint16_t delay_s;                    /* for the *_LATER behaviours */
    uint32_t secure_version;
    char version[OTA_SIM_VERSION_MAX + 1]; /* NUL-terminated */
} ota_sim_header_t;

/* Parses the first OTA_SIM_HDR_SIZE bytes of an image. false when the
 * magic, header version or version string is bad. */
bool ota_sim_header_parse(const uint8_t *buf, size_t len, ota_sim_header_t *h);

/* Writes a header (reserved bytes zero). */
void ota_sim_header_build(uint8_t out[OTA_SIM_HDR_SIZE], const ota_sim_header_t *h);

/* ---- otadata: which slot the bootloader starts --------------------------- */

typedef enum ota_slot_state {
    OTA_SLOT_UNDEFINED = 0,     /* initial image, never updated (valid) */
    OTA_SLOT_NEW = 1,           /* activated, not yet booted */
    OTA_SLOT_PENDING_VERIFY = 2,/* booted once, not confirmed */
    OTA_SLOT_VALID = 3,         /* confirmed */
    OTA_SLOT_INVALID = 4,       /* refused by the agent (rollback) */
    OTA_SLOT_ABORTED = 5        /* booted but never confirmed */
} ota_slot_state_t;

typedef struct ota_otadata {
    uint8_t boot_slot; /* slot to try first */
    uint8_t state[2];  /* ota_slot_state_t per slot */
} ota_otadata_t;

/* The bootloader's decision, applied to *od: a slot left PENDING_VERIFY by
 * the previous boot becomes ABORTED and the other slot is tried; a NEW slot
 * becomes PENDING_VERIFY; INVALID/ABORTED slots and slots whose image is not
 * bootable (image_ok false) are skipped. Returns the slot to start (0/1), or
 * -1 when neither can start. */
int ota_otadata_select(ota_otadata_t *od, const bool image_ok[2]);

/* Encodes/decodes otadata as 8 bytes with a checksum (the POSIX port writes
 * them atomically). decode returns false on a bad checksum. */
void ota_otadata_encode(const ota_otadata_t *od, uint8_t out[8]);
bool ota_otadata_decode(ota_otadata_t *od, const uint8_t in[8]);

#endif

/*
 * sim.h - pieces of the POSIX device simulator that need no OS: the
 * simulated firmware image header, ESP-IDF's otadata and what its
 * bootloader and esp_ota_ops do with it, and the configuration store of the
 * simulated device. Shared by the POSIX port and the tests (the power-loss
 * simulator boots through the very same code).
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

/* ---- otadata: ESP-IDF's two select entries ------------------------------- */

/* esp_ota_img_states_t, as ESP-IDF stores them. */
#define OTA_OD_NEW 0x0u            /* set by esp_ota_set_boot_partition */
#define OTA_OD_PENDING_VERIFY 0x1u /* the bootloader started it once */
#define OTA_OD_VALID 0x2u          /* confirmed */
#define OTA_OD_INVALID 0x3u        /* refused (rollback) */
#define OTA_OD_ABORTED 0x4u        /* started once, never confirmed */
#define OTA_OD_UNDEFINED 0xFFFFFFFFu
#define OTA_OD_ERASED 0xFFFFFFFFu  /* seq of an erased entry */

/* esp_ota_select_entry_t: the slot an entry names is (seq - 1) % 2; the
 * entry with the highest seq among the usable ones (not erased, not INVALID
 * or ABORTED, checksum right) is the active one. Each entry lives in its own
 * flash sector and is rewritten on its own: a write is erase + program, so
 * a power cut in between leaves the entry erased. */
typedef struct ota_od_entry {
    uint32_t seq;
    uint32_t state;
    uint32_t crc; /* checksum of seq (ESP-IDF: CRC-32) */
} ota_od_entry_t;

typedef struct ota_otadata {
    ota_od_entry_t e[2];
} ota_otadata_t;

/* Both entries erased (a fresh otadata partition). */
void ota_od_init(ota_otadata_t *od);

/* Sets entry i to seq and state with the right checksum. */
void ota_od_set(ota_otadata_t *od, int i, uint32_t seq, uint32_t state);

/* bootloader_common_get_active_otadata: the active entry, or -1. */
int ota_od_active(const ota_otadata_t *od);

/* What the functions below write: bit i set = entry i was rewritten (the
 * caller persists those entries, one sector write each). */

/* The second-stage bootloader (bootloader_utility_get_selected_boot_partition
 * and bootloader_utility_load_boot_image, two OTA slots, no factory app,
 * rollback enabled): every PENDING_VERIFY entry becomes ABORTED; the active
 * entry's slot is started, a NEW one first becoming PENDING_VERIFY; with no
 * usable entry, ota_0. A slot whose image does not load (image_ok false) is
 * passed over for the other one, whatever otadata says; when both entries
 * were erased and a slot is started that way, entry 0 is set to name it
 * VALID. Returns the slot started, -1 when neither loads. */
int ota_od_boot(ota_otadata_t *od, const bool image_ok[2], unsigned *written);

/* esp_ota_get_state_partition: the state of the first entry naming slot
 * with a right checksum; false when there is none (ESP_ERR_NOT_FOUND). */
bool ota_od_state(const ota_otadata_t *od, int slot, uint32_t *state);

/* esp_ota_set_boot_partition for an OTA slot whose image the caller has
 * validated: the entry that is not active gets the next seq naming slot
 * and state NEW. */
void ota_od_set_boot(ota_otadata_t *od, int slot, unsigned *written);

/* esp_ota_check_rollback_is_possible: the entry that is not active is
 * usable and its slot holds a loadable image. */
bool ota_od_rollback_possible(const ota_otadata_t *od, const bool image_ok[2]);

/* esp_ota_mark_app_valid_cancel_rollback: the active entry becomes VALID.
 * false when there is no active entry (ESP_FAIL). */
bool ota_od_mark_valid(ota_otadata_t *od, unsigned *written);

/* esp_ota_mark_app_invalid_rollback: when a rollback is possible, the
 * active entry becomes INVALID (the caller then restarts). false when it is
 * not (ESP_ERR_OTA_ROLLBACK_FAILED). */
bool ota_od_mark_invalid(ota_otadata_t *od, const bool image_ok[2], unsigned *written);

/* esp_ota_invalidate_inactive_ota_data_slot (ESP-IDF >= 5.5; also called
 * by its esp_ota_begin when rollback is enabled): the entry that is not
 * active is erased, unless it is erased already or names the running slot.
 * false when nothing was erased (ESP_FAIL). */
bool ota_od_invalidate_inactive(ota_otadata_t *od, int running, unsigned *written);

/* The 64 bytes of the otadata partition's two entries as ESP-IDF lays them
 * out (32 bytes each: seq, 20-byte label, state, crc; little-endian), and
 * back. */
void ota_od_encode(const ota_otadata_t *od, uint8_t out[64]);
void ota_od_decode(ota_otadata_t *od, const uint8_t in[64]);

/* ---- configuration store (kinds 1 and 2) --------------------------------- */

/* Each configuration kind has two slots and one record saying which one is
 * active. The record is written atomically (one kv value, one file): an
 * activation swaps active and previous in one write, so a power cut leaves
 * the old configuration or the new one, never a mix. The simulated device
 * starts the active configuration at boot, as the bootloader starts an
 * image: an activation not yet confirmed gets one start, a second start
 * reverts it. */
#define OTA_CFG_NONE 0xffu

typedef struct ota_cfgdata {
    uint8_t active;   /* slot in use, OTA_CFG_NONE: no configuration */
    uint8_t previous; /* slot to go back to, OTA_CFG_NONE: none */
    uint8_t state;    /* of the active slot: OTA_OD_NEW (activated, waiting
                         for a restart), OTA_OD_PENDING_VERIFY (running, not
                         yet confirmed), OTA_OD_VALID */
    uint32_t size[2]; /* bytes in each slot, 0 = empty */
} ota_cfgdata_t;

/* No configuration. */
void ota_cfgdata_init(ota_cfgdata_t *c);

/* At device start: a PENDING_VERIFY configuration was started before and
 * not confirmed, so the previous one is active again; a NEW one becomes
 * PENDING_VERIFY. Returns true when the record changed. */
bool ota_cfgdata_boot(ota_cfgdata_t *c);

/* Activates slot (holding size bytes) now (state PENDING_VERIFY) or at the
 * next start (NEW); the active slot becomes the previous one. */
void ota_cfgdata_activate(ota_cfgdata_t *c, uint8_t slot, uint32_t size, bool at_restart);

/* Back to the previous configuration (none when there was none); the
 * abandoned slot is forgotten. */
void ota_cfgdata_rollback(ota_cfgdata_t *c);

/* 12 bytes with a checksum, and back (false: bad checksum or values). */
void ota_cfgdata_encode(const ota_cfgdata_t *c, uint8_t out[12]);
bool ota_cfgdata_decode(ota_cfgdata_t *c, const uint8_t in[12]);

#endif

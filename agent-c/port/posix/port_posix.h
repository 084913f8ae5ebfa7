/* port_posix.h - the POSIX port: a simulated device whose flash is a data
 * directory (two slot files with ESP-IDF's otadata, two configuration slots
 * per kind, key-value files), whose network is libmosquitto and whose
 * crypto is mbedTLS 2.28.
 *
 * Data directory layout:
 *   slot0.bin, slot1.bin   images (slot0.bin is created with the initial
 *                          version on first start)
 *   slotN.part             image being downloaded into slot N
 *   otadata                64 bytes: ESP-IDF's two otadata entries (sim.h)
 *   cfgK-slotN.bin         configuration (K=1) or feature flags (K=2), slot N
 *   cfgK-slotN.part        ... being downloaded
 *   cfgdata-K              12 bytes: which configuration slot is in use
 *   kv-<key>               key-value entries
 *   reset-reason           why the previous run ended (absent: power-on)
 * Every file that replaces another is written to a temporary name,
 * fsync'ed, renamed over the old one, and the directory fsync'ed. */
#ifndef OTAMQ_PORT_POSIX_H
#define OTAMQ_PORT_POSIX_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "otamq/ota_port.h"
#include "sim.h"

/* Process exit codes of otamq-agent (documented in README.md). */
#define OTA_EXIT_OK 0        /* stopped by SIGINT/SIGTERM */
#define OTA_EXIT_ERROR 1     /* bad flags or start-up failure */
#define OTA_EXIT_REBOOT 20   /* software reboot (update, command, rollback) */
#define OTA_EXIT_PANIC 21    /* the simulated firmware crashed */
#define OTA_EXIT_WATCHDOG 22 /* the simulated firmware hung; watchdog reset */

struct ota_mq;

/* Largest configuration (each kind's slots). */
#define OTA_POSIX_CFG_MAX (64u * 1024u)

typedef struct ota_posix {
    char dir[512];
    uint32_t slot_max;       /* largest image a slot takes */
    ota_otadata_t od;
    ota_cfgdata_t cd[OTA_KINDS - 1]; /* configuration, feature flags */
    int running;
    uint8_t reason;          /* hardware boot reason of this run */
    ota_sim_header_t hdr;    /* header of the running image */
    int part_fd;             /* slot being written, -1 when none */
    int target;
    uint8_t wkind;           /* kind of the slot being written */
    uint32_t write_size;
    uint64_t t0_ms;          /* monotonic clock at start */
    struct ota_mq *mq;       /* for publish/subscribe */
    bool health_failing;     /* the simulated image fails its check */
    bool verbose;
    bool no_invalidate;      /* simulate ESP-IDF < 5.5: no
                                esp_ota_invalidate_inactive_ota_data_slot */
    /* The application: told when a configuration (kind 1 or 2) changed;
     * asked whether it needs a restart to use a new one. Optional. */
    void (*config_changed)(void *user, uint8_t kind);
    bool (*needs_restart)(void *user, uint8_t kind, const uint8_t *cfg, size_t len);
    void *user;
} ota_posix_t;

/* The "bootloader": creates the data directory and an initial image if
 * needed, selects the slot to run (otadata semantics), reads and clears
 * the reset reason. OTA_OK, or OTA_ERR_IO with a message on stderr. */
int ota_posix_boot(ota_posix_t *p, const char *dir, const char *initial_version,
                   uint32_t initial_secure_version);

/* Fills port with the POSIX members; ctx = p. */
void ota_posix_port(ota_posix_t *p, ota_port_t *port);

/* Reads the configuration of kind (1, 2) in use into buf (capacity cap):
 * its size, 0 when there is none, -1 on error or when it does not fit. */
long ota_posix_config(const ota_posix_t *p, uint8_t kind, uint8_t *buf, size_t cap);

/* Ends the process like a reset with the given reason and exit code. */
void ota_posix_reset(ota_posix_t *p, uint8_t reason, int exit_code);

/* Atomic file replace (write temp, fsync, rename, fsync dir). 0 or -1. */
int ota_posix_write_atomic(const char *dir, const char *name, const void *buf, size_t len);

uint64_t ota_posix_mono_ms(void);

#endif

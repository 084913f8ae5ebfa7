/* fake_port.h - an in-memory device for the core's tests: two flash slots
 * whose otadata behaves as ESP-IDF's (sim.h: esp_ota_set_boot_partition
 * writes NEW, the bootloader turns NEW into PENDING_VERIFY and an unconfirmed
 * PENDING_VERIFY into ABORTED), a configuration store (two slots per kind,
 * one atomic record), a kv store with atomic writes, an MQTT outbox/inbox
 * with PUBACKs, a manual clock, failure and power-cut injection (at every
 * slot write, otadata sector write, configuration record and kv write), a
 * check that every SHA-256 started also ends, and a small broker peer that
 * answers block requests like otamq would.
 *
 * A reboot, a rollback and a power cut leave the agent through longjmp, as
 * the real device would leave it through a reset; fd_call() catches that and
 * boots the device again (bootloader, fresh agent RAM, on_boot). */
#ifndef OTAMQ_FAKE_PORT_H
#define OTAMQ_FAKE_PORT_H

#include <setjmp.h>
#include <stdbool.h>
#include <stdint.h>

#include "otamq/ota_agent.h"
#include "sim.h"
#include "testkit.h"

#define FD_SLOT_SIZE (96u * 1024u)
#define FD_CFG_SIZE 4096u
#define FD_MAX_OUT 256
#define FD_MAX_IN 64
#define FD_MAX_EVENTS 256
#define FD_KV_KEYS 4
#define FD_HASHES 8

typedef struct fd_out {
    char topic[96];
    uint8_t payload[OTA_CFG_TX_BUF + 64];
    size_t len;
    int qos;
    int id;
} fd_out_t;

typedef struct fd_in {
    char topic[96];
    uint8_t payload[OTA_CFG_BLOCK_SIZE + 512];
    size_t len;
} fd_in_t;

typedef struct fd_event {
    unsigned code, error, progress;
    char detail[64];
    char rollout[72];
} fd_event_t;

typedef struct fd_kv {
    char key[32];
    uint8_t val[1024];
    size_t len;
    bool used;
} fd_kv_t;

enum { FD_RESET_REBOOT = 1, FD_RESET_ROLLBACK = 2, FD_RESET_POWER = 3 };

typedef struct fake_dev {
    ota_port_t port;
    ota_agent_t agent;
    ota_agent_config_t cfg;
    tk_key_t key;
    uint8_t pubs[2][65];

    /* flash and bootloader */
    uint8_t slot[2][FD_SLOT_SIZE];
    ota_otadata_t od;
    bool invalidate_supported; /* esp_ota_invalidate_inactive_ota_data_slot
                                  exists (ESP-IDF >= 5.5) */
    int running;
    uint8_t hw_reason;
    int target;
    bool writing;
    uint32_t write_size;
    uint32_t written;
    char version[40];

    /* configuration store: kinds 1 and 2, two slots each */
    uint8_t cfg_slot[2][2][FD_CFG_SIZE];
    uint32_t cfg_len[2][2]; /* bytes written into each, kept with them */
    ota_cfgdata_t cd[2];
    bool cfg_restart;   /* the application asks to restart for a new one */
    /* when set: the configuration (kind 1) every start must find, the old
     * (none when its length is 0) or the new one; starts finding anything
     * else are counted */
    const uint8_t *cfg_allowed[2];
    uint32_t cfg_allowed_len[2];
    int cfg_mixed;
    int cfg_changes;    /* times the application was told */

    /* kv */
    fd_kv_t kv[FD_KV_KEYS];

    /* clock */
    uint64_t now, boot_at, unix_s;

    /* mqtt */
    bool connected;
    bool link_up; /* the "network": when false the device cannot connect */
    bool offline_after_reset; /* link goes down at the next reset */
    fd_out_t out[FD_MAX_OUT];
    int nout;
    fd_in_t in[FD_MAX_IN];
    int nin;
    int subs;
    int next_id;
    int ev_fail;        /* the next ev_fail events get PUBACK ev_fail_code */
    uint8_t ev_fail_code;
    bool ev_no_puback;  /* events get no PUBACK (MQTT 3.1.1 broker that could
                           not record them) */
    int ev_publishes;   /* events published (each attempt) */
    /* The MQTT client's own QoS 1 resend: an event published and not
     * acknowledged when the connection ends is sent again, with the same
     * message ID, after the next connect (libmosquitto and esp-mqtt do;
     * esp-mqtt gives up on it after 30 s: no_lib_resend). */
    bool no_lib_resend;
    fd_out_t unacked;
    bool has_unacked;
    uint64_t ev_times[FD_MAX_EVENTS]; /* when each attempt was published */

    /* broker peer */
    uint8_t *image;
    uint32_t image_size;
    uint8_t offer[2048];
    size_t offer_len;
    bool offer_on_subscribe;
    int drop_every;       /* drop every n-th block (0 = none) */
    int drop_all;         /* answer no request */
    int blk_error;        /* answer with this block error */
    int blk_errors_left;  /* ... this many times (0 = always) */
    uint32_t blk_retry_ms;
    int blocks_sent;
    int requests;
    uint32_t req_offsets[512];
    uint64_t req_times[512];
    uint32_t served_block_size; /* 0 = as requested */
    uint32_t served_window; /* most blocks per answer (0 = as requested) */
    int served_window_for;  /* ... for this many requests (0 = always) */
    uint32_t req_counts[512]; /* blocks asked for by each request */
    int req_boot;         /* boot count at the last request */
    uint32_t resumed_from; /* offset of a first-after-boot request > 0 */
    int corrupt;          /* flip a byte of this many served blocks */

    /* observations */
    fd_event_t ev[FD_MAX_EVENTS];
    int nev;
    int births, heartbeats;
    unsigned last_birth_reason, last_birth_state, last_birth_slot;
    uint64_t last_birth_guard;
    unsigned last_birth_sv;
    bool saw_committed;   /* a birth or heartbeat said "committed" */
    unsigned last_hb_state, last_hb_health;
    char last_birth_version[40];
    int boots;
    int resets[4];

    /* hashes: every context started must end (finish or abort) before it
     * is started again; a reset ends them all (RAM is gone) */
    const void *open_hash[FD_HASHES];
    int hash_leaks;

    /* failure injection */
    int fail_write_at;    /* n-th slot_write fails (1-based, 0 = never) */
    int nwrites;
    bool fail_begin, fail_finish, fail_activate, fail_confirm, fail_kv;
    int fail_confirms;    /* the next n confirms fail */
    int fail_hash_update; /* the n-th sha256_update fails (0 = never) */
    int nhash_updates;
    uint8_t app_health;   /* bits returned by app_health */
    bool app_health_late; /* *_LATER image behaviours take effect */

    /* power cut */
    long cut_at;          /* cut at the n-th persistent write (0 = never) */
    long pwrites;         /* persistent writes so far */
    bool cut_done;
    int last_reset;
    jmp_buf jb;
} fake_dev_t;

/* A device whose slot 0 holds a healthy image of version v1, started once
 * (otadata names it VALID, as ESP-IDF's bootloader leaves a first boot). */
void fd_init(fake_dev_t *d, const char *v1);
/* Power on / boot: bootloader, agent init and on_boot (with restarts). */
void fd_boot(fake_dev_t *d);
/* Connects (if the link is up) and informs the agent. */
void fd_connect(fake_dev_t *d);
void fd_disconnect(fake_dev_t *d);
/* One 100 ms step: deliver inbox, let the peer answer, tick. */
void fd_step(fake_dev_t *d);
/* Steps until pred or max_ms of simulated time; returns pred's result. */
bool fd_run_until(fake_dev_t *d, bool (*pred)(fake_dev_t *), uint64_t max_ms);
void fd_run_for(fake_dev_t *d, uint64_t ms);

/* Sets the image the peer serves and the offer it sends on subscribe; also
 * pushes the offer now when connected. */
void fd_offer_image(fake_dev_t *d, uint8_t *image, uint32_t size, const char *version,
                    const char *rollout, unsigned mode, uint64_t seq, uint32_t sv);
/* The same for a configuration (kind 1) or feature flags (kind 2), with a
 * broker window (offer key 6, 0 = none). */
void fd_offer_kind(fake_dev_t *d, uint8_t *image, uint32_t size, const char *version,
                   const char *rollout, unsigned mode, uint64_t seq, uint32_t sv, uint8_t kind,
                   uint32_t max_window);
void fd_push(fake_dev_t *d, const char *suffix, const uint8_t *p, size_t n);

bool fd_has_event(const fake_dev_t *d, unsigned code, unsigned error);
void fd_dump_events(const fake_dev_t *d);
int fd_count_event(const fake_dev_t *d, unsigned code);
const char *fd_running_version(const fake_dev_t *d);
/* The active configuration of kind (1, 2): its bytes and size (0: none). */
const uint8_t *fd_config(const fake_dev_t *d, uint8_t kind, uint32_t *size);
/* Whether otadata could still make the bootloader start slot s (an entry
 * names it and is usable). */
bool fd_bootable(const fake_dev_t *d, int s);

#endif

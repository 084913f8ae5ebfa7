/* fake_port.h - an in-memory device for the core's tests: two flash slots
 * with the simulator's otadata semantics, a kv store with atomic writes, an
 * MQTT outbox/inbox, a manual clock, failure and power-cut injection, and a
 * small broker peer that answers block requests like otamq would.
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
#define FD_MAX_OUT 256
#define FD_MAX_IN 64
#define FD_MAX_EVENTS 128

typedef struct fd_out {
    char topic[96];
    uint8_t payload[OTA_CFG_TX_BUF + 64];
    size_t len;
    int qos;
} fd_out_t;

typedef struct fd_in {
    char topic[96];
    uint8_t payload[OTA_CFG_BLOCK_SIZE + 512];
    size_t len;
} fd_in_t;

typedef struct fd_event {
    unsigned code, error, progress;
    char detail[64];
} fd_event_t;

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
    int running;
    uint8_t hw_reason;
    int target;
    bool writing;
    uint32_t write_size;
    uint32_t written;
    char version[40];

    /* kv */
    uint8_t kv[512];
    size_t kv_len;
    bool kv_used;

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

    /* broker peer */
    uint8_t *image;
    uint32_t image_size;
    uint8_t offer[2048];
    size_t offer_len;
    bool offer_on_subscribe;
    int drop_every;       /* drop every n-th block (0 = none) */
    int drop_all;         /* answer no request */
    int blk_error;        /* answer with this block error */
    uint32_t blk_retry_ms;
    int blocks_sent;
    int requests;
    uint32_t req_offsets[512];
    uint64_t req_times[512];
    uint32_t served_block_size; /* 0 = as requested */
    uint32_t served_window; /* most blocks per answer (0 = as requested) */
    uint32_t req_counts[512]; /* blocks asked for by each request */
    int req_boot;         /* boot count at the last request */
    uint32_t resumed_from; /* offset of a first-after-boot request > 0 */
    bool corrupt;         /* flip a byte of one served block */

    /* observations */
    fd_event_t ev[FD_MAX_EVENTS];
    int nev;
    int births, heartbeats;
    unsigned last_birth_reason, last_birth_state, last_birth_slot;
    char last_birth_version[40];
    int boots;
    int resets[4];

    /* failure injection */
    int fail_write_at;    /* n-th slot_write fails (1-based, 0 = never) */
    int nwrites;
    bool fail_begin, fail_finish, fail_activate, fail_confirm;
    uint8_t app_health;   /* bits returned by app_health */
    bool app_health_late; /* *_LATER image behaviours take effect */

    /* power cut */
    long cut_at;          /* cut at the n-th persistent write (0 = never) */
    long pwrites;         /* persistent writes so far (slot writes + kv) */
    bool cut_done;
    int last_reset;
    jmp_buf jb;
} fake_dev_t;

/* A device whose slot 0 holds a healthy image of version v1. */
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
void fd_push(fake_dev_t *d, const char *suffix, const uint8_t *p, size_t n);

bool fd_has_event(const fake_dev_t *d, unsigned code, unsigned error);
void fd_dump_events(const fake_dev_t *d);
int fd_count_event(const fake_dev_t *d, unsigned code);
const char *fd_running_version(const fake_dev_t *d);

#endif

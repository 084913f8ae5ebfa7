/* test_agent.c - the agent state machine against the fake port. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "fake_port.h"

#define IMG_SIZE 20000u

static fake_dev_t *dev;
static uint8_t img[IMG_SIZE];

static int setup(void **state)
{
    (void)state;
    dev = calloc(1, sizeof(*dev));
    fd_init(dev, "1.0.0");
    tk_image(img, IMG_SIZE, OTA_SIM_HEALTHY, 0, "1.1.0", 42);
    return dev == NULL;
}

static int teardown(void **state)
{
    (void)state;
    /* every hash the agent started has ended (ESP-IDF 6 leaks otherwise) */
    if (dev->hash_leaks != 0) {
        fprintf(stderr, "%d SHA-256 computations started and never ended\n", dev->hash_leaks);
        free(dev);
        return -1;
    }
    free(dev);
    return 0;
}

/* The otadata state of slot s (OTA_OD_*; OTA_OD_UNDEFINED when no entry
 * names it). */
static uint32_t slot_state(int s)
{
    uint32_t st = OTA_OD_UNDEFINED;
    (void)ota_od_state(&dev->od, s, &st);
    return st;
}

/* The slot the bootloader would start next (on a copy of otadata). */
static int next_boot(void)
{
    ota_otadata_t od = dev->od;
    bool ok[2] = {true, true};
    unsigned w;
    return ota_od_boot(&od, ok, &w);
}

static bool is_committed(fake_dev_t *d)
{
    return ota_agent_state(&d->agent) == OTA_STATE_COMMITTED;
}
static bool is_rolled_back(fake_dev_t *d)
{
    return ota_agent_state(&d->agent) == OTA_STATE_ROLLED_BACK;
}
static bool is_failed(fake_dev_t *d)
{
    return ota_agent_state(&d->agent) == OTA_STATE_FAILED;
}
static bool is_verified(fake_dev_t *d)
{
    return ota_agent_state(&d->agent) == OTA_STATE_VERIFIED;
}
static bool is_idle(fake_dev_t *d)
{
    return ota_agent_state(&d->agent) == OTA_STATE_IDLE;
}
static bool is_downloading_half(fake_dev_t *d)
{
    return ota_agent_state(&d->agent) == OTA_STATE_DOWNLOADING &&
           ota_agent_offset(&d->agent) >= IMG_SIZE / 2;
}
static bool has_rejected(fake_dev_t *d)
{
    return fd_has_event(d, OTA_EV_REJECTED, 0);
}
static bool trial_started(fake_dev_t *d)
{
    return ota_agent_state(&d->agent) == OTA_STATE_TRIAL;
}
static bool trial_confirmed(fake_dev_t *d)
{
    return fd_has_event(d, OTA_EV_HEALTH_OK, 0);
}

static void boot_and_offer(uint8_t *image, uint32_t size, const char *v, unsigned mode,
                           uint64_t seq, uint32_t sv)
{
    fd_boot(dev);
    fd_offer_image(dev, image, size, v, "r-1", mode, seq, sv);
}

/* ---- the happy path ------------------------------------------------------ */

static void test_update_commits(void **state)
{
    (void)state;
    boot_and_offer(img, IMG_SIZE, "1.1.0", 0, 5, 1);
    assert_true(fd_run_until(dev, is_committed, 200000));
    assert_string_equal(fd_running_version(dev), "1.1.0");
    assert_int_equal(dev->running, 1);
    assert_int_equal(slot_state(1), OTA_OD_VALID);
    assert_memory_equal(dev->slot[1], img, IMG_SIZE);
    /* every step reported, in order */
    static const unsigned want[] = {OTA_EV_DOWNLOAD_STARTED, OTA_EV_DOWNLOAD_PROGRESS,
                                    OTA_EV_DOWNLOAD_COMPLETED, OTA_EV_INSTALL_STARTED,
                                    OTA_EV_INSTALL_COMPLETED, OTA_EV_REBOOT_STARTED,
                                    OTA_EV_REBOOT_COMPLETED, OTA_EV_HEALTH_OK};
    int i, j = 0;
    for (i = 0; i < dev->nev && j < (int)(sizeof(want) / sizeof(want[0])); i++)
        if (dev->ev[i].code == want[j])
            j++;
    assert_int_equal(j, (int)(sizeof(want) / sizeof(want[0])));
    assert_int_equal(fd_count_event(dev, OTA_EV_DOWNLOAD_PROGRESS), 9);
    /* the birth after the update says OTA reboot, the new version, slot 1 */
    assert_string_equal(dev->last_birth_version, "1.1.0");
    assert_int_equal(dev->last_birth_slot, 1);
    assert_true(dev->births >= 2);
    assert_true(dev->heartbeats >= 2);
    /* a re-offer of the same update does nothing */
    int before = dev->requests;
    fd_push(dev, "ota/manifest", dev->offer, dev->offer_len);
    fd_run_for(dev, 5000);
    assert_int_equal(dev->requests, before);
}

static void test_birth_reason_after_update(void **state)
{
    (void)state;
    boot_and_offer(img, IMG_SIZE, "1.1.0", 0, 5, 1);
    assert_true(fd_run_until(dev, trial_confirmed, 100000));
    assert_int_equal(dev->last_birth_reason, OTA_BOOT_OTA);
    assert_int_equal(dev->last_birth_state, OTA_STATE_TRIAL);
}

static void test_install_waits_for_command(void **state)
{
    uint8_t cmd[64];
    size_t n;
    (void)state;
    boot_and_offer(img, IMG_SIZE, "1.1.0", 1, 5, 1);
    assert_true(fd_run_until(dev, is_verified, 100000));
    fd_run_for(dev, 20000);
    assert_int_equal(ota_agent_state(&dev->agent), OTA_STATE_VERIFIED);
    assert_int_equal(dev->running, 0);
    /* an install for another rollout is ignored */
    n = tk_command(cmd, sizeof(cmd), OTA_CMD_INSTALL, "r-other", 0);
    fd_push(dev, "cmd", cmd, n);
    fd_run_for(dev, 1000);
    assert_int_equal(ota_agent_state(&dev->agent), OTA_STATE_VERIFIED);
    /* an expired one too */
    n = tk_command(cmd, sizeof(cmd), OTA_CMD_INSTALL, "r-1", 1000);
    fd_push(dev, "cmd", cmd, n);
    fd_run_for(dev, 1000);
    assert_int_equal(ota_agent_state(&dev->agent), OTA_STATE_VERIFIED);
    n = tk_command(cmd, sizeof(cmd), OTA_CMD_INSTALL, "r-1", 0);
    fd_push(dev, "cmd", cmd, n);
    assert_true(fd_run_until(dev, is_committed, 200000));
    assert_string_equal(fd_running_version(dev), "1.1.0");
}

static void test_verified_survives_reset(void **state)
{
    (void)state;
    boot_and_offer(img, IMG_SIZE, "1.1.0", 1, 5, 1);
    assert_true(fd_run_until(dev, is_verified, 100000));
    dev->connected = false;
    fd_boot(dev);
    assert_int_equal(ota_agent_state(&dev->agent), OTA_STATE_VERIFIED);
    /* a slot that changed while off is refused */
    dev->slot[1][100] ^= 1;
    dev->connected = false;
    fd_boot(dev);
    assert_int_equal(ota_agent_state(&dev->agent), OTA_STATE_FAILED);
}

/* ---- cancel -------------------------------------------------------------- */

static void test_cancel_by_empty_offer(void **state)
{
    uint8_t o[64];
    size_t n;
    (void)state;
    boot_and_offer(img, IMG_SIZE, "1.1.0", 0, 5, 1);
    assert_true(fd_run_until(dev, is_downloading_half, 100000));
    n = tk_offer(o, sizeof(o), "", NULL, 0, 0, 0, 0);
    dev->offer_len = 0;
    fd_push(dev, "ota/manifest", o, n);
    assert_true(fd_run_until(dev, is_idle, 5000));
    assert_true(fd_has_event(dev, OTA_EV_DOWNLOAD_FAILED, OTA_E_CANCELLED));
    int before = dev->requests;
    fd_run_for(dev, 10000);
    assert_int_equal(dev->requests, before);
}

static void test_cancel_by_command(void **state)
{
    uint8_t c[64];
    size_t n;
    (void)state;
    boot_and_offer(img, IMG_SIZE, "1.1.0", 1, 5, 1);
    assert_true(fd_run_until(dev, is_verified, 100000));
    n = tk_command(c, sizeof(c), OTA_CMD_CANCEL, "r-1", 0);
    fd_push(dev, "cmd", c, n);
    assert_true(fd_run_until(dev, is_idle, 5000));
    assert_true(fd_has_event(dev, OTA_EV_DOWNLOAD_FAILED, OTA_E_CANCELLED));
}

/* ---- manifest checks, in order ------------------------------------------- */

static void offer_with(tk_manifest_t *m, const tk_key_t *key, bool tamper)
{
    uint8_t payload[512], cose[1024];
    size_t plen = tk_manifest_payload(m, payload, sizeof(payload));
    size_t clen = tk_sign(key, payload, plen, cose, sizeof(cose));
    if (tamper)
        cose[clen - 70] ^= 1; /* inside the payload */
    dev->image = img;
    dev->image_size = IMG_SIZE;
    dev->offer_len = tk_offer(dev->offer, sizeof(dev->offer), "r-9", cose, clen, 0, 0, 0);
    fd_push(dev, "ota/manifest", dev->offer, dev->offer_len);
}

static void offer_rollout(tk_manifest_t *m, const char *rollout)
{
    uint8_t payload[512], cose[1024];
    size_t plen = tk_manifest_payload(m, payload, sizeof(payload));
    size_t clen = tk_sign(&dev->key, payload, plen, cose, sizeof(cose));
    dev->image = img;
    dev->image_size = IMG_SIZE;
    dev->offer_len = tk_offer(dev->offer, sizeof(dev->offer), rollout, cose, clen, 0, 0, 0);
    fd_push(dev, "ota/manifest", dev->offer, dev->offer_len);
}

static void base_manifest(tk_manifest_t *m)
{
    memset(m, 0, sizeof(*m));
    m->seq = 10;
    m->version = "1.1.0";
    m->targets[0] = "esp32-v2";
    m->ntargets = 1;
    m->min_bootloader = "2.0.0";
    m->size = IMG_SIZE;
    tk_sha256(img, IMG_SIZE, m->digest);
    m->secure_version = 1;
}

static void expect_rejected(unsigned err, const char *detail)
{
    assert_true(fd_run_until(dev, has_rejected, 5000));
    assert_int_equal(dev->ev[dev->nev - 1].code, OTA_EV_REJECTED);
    assert_int_equal(dev->ev[dev->nev - 1].error, err);
    if (detail != NULL)
        assert_string_equal(dev->ev[dev->nev - 1].detail, detail);
    assert_int_equal(ota_agent_state(&dev->agent), OTA_STATE_IDLE);
    assert_int_equal(dev->requests, 0);
}

static void test_reject_bad_signature(void **state)
{
    tk_manifest_t m;
    (void)state;
    fd_boot(dev);
    fd_run_for(dev, 500);
    base_manifest(&m);
    m.targets[0] = "other-hw"; /* the signature is checked first */
    offer_with(&m, &dev->key, true);
    expect_rejected(OTA_E_SIGNATURE, ""); /* no detail: the error code says it */
}

static void test_reject_unknown_key(void **state)
{
    tk_manifest_t m;
    tk_key_t other;
    (void)state;
    tk_keygen(&other, 99);
    fd_boot(dev);
    fd_run_for(dev, 500);
    base_manifest(&m);
    offer_with(&m, &other, false);
    expect_rejected(OTA_E_SIGNATURE, "unknown key");
}

static void test_reject_hardware(void **state)
{
    tk_manifest_t m;
    (void)state;
    fd_boot(dev);
    fd_run_for(dev, 500);
    base_manifest(&m);
    m.targets[0] = "esp32-v9";
    m.min_bootloader = "9.0.0"; /* hardware is checked before bootloader */
    offer_with(&m, &dev->key, false);
    expect_rejected(OTA_E_HARDWARE, ""); /* no detail: the error code says it */
}

static void test_reject_bootloader(void **state)
{
    tk_manifest_t m;
    (void)state;
    fd_boot(dev);
    fd_run_for(dev, 500);
    base_manifest(&m);
    m.min_bootloader = "2.2.0";
    m.version = "0.9.0"; /* bootloader is checked before version */
    offer_with(&m, &dev->key, false);
    expect_rejected(OTA_E_HARDWARE, "bootloader too old");
}

static void test_reject_downgrade(void **state)
{
    tk_manifest_t m;
    (void)state;
    fd_boot(dev);
    fd_run_for(dev, 500);
    base_manifest(&m);
    m.version = "0.9.0";
    m.secure_version = 0;
    offer_with(&m, &dev->key, false);
    expect_rejected(OTA_E_VERSION, "downgrade");
}

static void test_downgrade_allowed_by_setting(void **state)
{
    tk_manifest_t m;
    (void)state;
    dev->cfg.settings.allow_downgrade = true;
    tk_image(img, IMG_SIZE, OTA_SIM_HEALTHY, 0, "0.9.0", 42);
    fd_boot(dev);
    fd_run_for(dev, 500);
    base_manifest(&m);
    m.version = "0.9.0";
    offer_with(&m, &dev->key, false);
    bool ok = fd_run_until(dev, is_committed, 200000);
    if (!ok)
        fd_dump_events(dev);
    assert_true(ok);
    assert_string_equal(fd_running_version(dev), "0.9.0");
}

static void test_reject_same_version(void **state)
{
    tk_manifest_t m;
    (void)state;
    fd_boot(dev);
    fd_run_for(dev, 500);
    base_manifest(&m);
    m.version = "1.0.0";
    offer_with(&m, &dev->key, false);
    expect_rejected(OTA_E_VERSION, "same version");
}

static void test_reject_sequence(void **state)
{
    tk_manifest_t m;
    (void)state;
    dev->cfg.settings.probation_ms = 1000;
    boot_and_offer(img, IMG_SIZE, "1.1.0", 0, 50, 1);
    assert_true(fd_run_until(dev, is_committed, 200000));
    dev->nev = 0;
    dev->requests = 0;
    base_manifest(&m);
    m.version = "1.2.0";
    m.seq = 49;
    offer_with(&m, &dev->key, false);
    assert_true(fd_run_until(dev, has_rejected, 5000));
    assert_int_equal(dev->ev[dev->nev - 1].error, OTA_E_VERSION);
    assert_string_equal(dev->ev[dev->nev - 1].detail, "sequence");
}

static void test_reject_secure_version(void **state)
{
    tk_manifest_t m;
    (void)state;
    dev->cfg.secure_version = 3;
    fd_boot(dev);
    fd_run_for(dev, 500);
    base_manifest(&m);
    m.secure_version = 2;
    offer_with(&m, &dev->key, false);
    expect_rejected(OTA_E_SECURE_VERSION, ""); /* no detail: the error code says it */
}

static bool download_started(fake_dev_t *d)
{
    return fd_has_event(d, OTA_EV_DOWNLOAD_STARTED, 0);
}

/* The broker takes hardware names and rollout IDs up to 64 bytes (ota/wire);
 * so does the agent. Versions stop at OTA_CFG_VERSION_MAX (32): the refusal
 * says so. */
static void test_length_limits(void **state)
{
    static const char hw64[] = "hw-4567890123456789012345678901234567890123456789012345678901234";
    static const char r64[] = "r-34567890123456789012345678901234567890123456789012345678901234";
    char r65[sizeof(r64) + 1];
    tk_manifest_t m;
    (void)state;
    assert_int_equal(strlen(hw64), 64);
    assert_int_equal(strlen(r64), 64);
    snprintf(r65, sizeof(r65), "%sx", r64);

    dev->cfg.hardware = hw64;
    fd_boot(dev);
    fd_run_for(dev, 500);
    base_manifest(&m);
    m.version = "1.1.0-rc.1+build.2025112414302299"; /* 33 bytes */
    assert_int_equal(strlen(m.version), 33);
    m.targets[0] = hw64;
    offer_rollout(&m, r64);
    expect_rejected(OTA_E_VERSION, "version too long");

    dev->nev = 0;
    m.version = "1.1.0";
    offer_rollout(&m, r65);
    expect_rejected(0, "rollout ID too long");

    dev->nev = 0;
    offer_rollout(&m, r64);
    assert_true(fd_run_until(dev, download_started, 5000));
    assert_false(has_rejected(dev));

    /* one byte more than the broker allows: refused at init */
    {
        ota_agent_t *a = calloc(1, sizeof(*a));
        ota_agent_config_t c = dev->cfg;
        char hw65[sizeof(hw64) + 1];
        snprintf(hw65, sizeof(hw65), "%sx", hw64);
        c.hardware = hw65;
        assert_int_equal(ota_agent_init(a, &c), OTA_ERR_ARG);
        free(a);
    }
}

static void test_reject_garbage_offer(void **state)
{
    static const uint8_t junk[] = {0xa1, 0x01, 0x5f}; /* indefinite bstr */
    (void)state;
    fd_boot(dev);
    fd_run_for(dev, 500);
    fd_push(dev, "ota/manifest", junk, sizeof(junk));
    expect_rejected(0, "bad offer");
}

/* ---- download failures --------------------------------------------------- */

static void test_digest_mismatch(void **state)
{
    (void)state;
    dev->corrupt = 1 + OTA_CFG_DIGEST_RETRIES; /* the first and every refetch */
    boot_and_offer(img, IMG_SIZE, "1.1.0", 0, 5, 1);
    assert_true(fd_run_until(dev, is_failed, 100000));
    assert_true(fd_has_event(dev, OTA_EV_DOWNLOAD_FAILED, OTA_E_DIGEST));
    assert_int_equal(dev->running, 0);
    assert_int_equal(next_boot(), 0);
    /* the same update is not retried when offered again */
    int before = dev->requests;
    fd_push(dev, "ota/manifest", dev->offer, dev->offer_len);
    fd_run_for(dev, 5000);
    assert_int_equal(dev->requests, before);
}

static void test_lost_blocks_are_refetched(void **state)
{
    (void)state;
    dev->drop_every = 3;
    boot_and_offer(img, IMG_SIZE, "1.1.0", 0, 5, 1);
    assert_true(fd_run_until(dev, is_committed, 400000));
    assert_memory_equal(dev->slot[1], img, IMG_SIZE);
}

static void test_small_served_blocks(void **state)
{
    (void)state;
    dev->served_block_size = 300; /* broker caps below the request */
    boot_and_offer(img, IMG_SIZE, "1.1.0", 0, 5, 1);
    assert_true(fd_run_until(dev, is_committed, 400000));
}

/* The broker answers with fewer blocks than asked (it may: "up to count"):
 * after one timeout the agent asks for as many as came, and the download
 * goes on without waiting for blocks that never come. */
static void test_broker_serves_smaller_windows(void **state)
{
    int i, timeouts = 0;
    (void)state;
    dev->served_window = 2; /* the agent asks for 4 */
    boot_and_offer(img, IMG_SIZE, "1.1.0", 0, 5, 1);
    assert_true(fd_run_until(dev, is_committed, 400000));
    assert_int_equal(dev->req_counts[0], 4);
    for (i = 1; i < dev->requests && i < 512; i++) {
        assert_true(dev->req_counts[i] <= 2);
        if (dev->req_times[i] - dev->req_times[i - 1] >= 2000) /* request timeout */
            timeouts++;
    }
    assert_int_equal(timeouts, 1);
    assert_true(dev->requests > 4);
}

static void test_timeouts_back_off_and_give_up(void **state)
{
    int i;
    (void)state;
    dev->drop_all = 1;
    dev->cfg.settings.max_retries = 5;
    dev->cfg.settings.backoff_min_ms = 1000;
    dev->cfg.settings.backoff_max_ms = 6000;
    boot_and_offer(img, IMG_SIZE, "1.1.0", 0, 5, 1);
    assert_true(fd_run_until(dev, is_failed, 200000));
    assert_true(fd_has_event(dev, OTA_EV_DOWNLOAD_FAILED, OTA_E_RETRIES));
    assert_int_equal(dev->requests, 6); /* first + 5 retries */
    /* gap = timeout (2000) + backoff 1000, 2000, 4000, 6000 (capped), 6000 */
    static const uint64_t backoff[] = {1000, 2000, 4000, 6000, 6000};
    for (i = 1; i < 6; i++) {
        uint64_t gap = dev->req_times[i] - dev->req_times[i - 1];
        assert_true(gap >= 2000 + backoff[i - 1]);
        assert_true(gap <= 2000 + backoff[i - 1] + 200);
    }
}

static void test_rate_limited_waits(void **state)
{
    (void)state;
    dev->blk_error = OTA_BLKERR_RATE_LIMITED;
    dev->blk_retry_ms = 7000;
    boot_and_offer(img, IMG_SIZE, "1.1.0", 0, 5, 1);
    fd_run_for(dev, 1000);
    assert_int_equal(dev->requests, 1);
    dev->blk_error = 0;
    fd_run_for(dev, 5000);
    assert_int_equal(dev->requests, 1); /* still honouring retry-after */
    assert_true(fd_run_until(dev, is_committed, 200000));
}

static void test_fatal_block_error(void **state)
{
    (void)state;
    dev->blk_error = OTA_BLKERR_NOT_ASSIGNED;
    boot_and_offer(img, IMG_SIZE, "1.1.0", 0, 5, 1);
    assert_true(fd_run_until(dev, is_failed, 10000));
    assert_true(fd_has_event(dev, OTA_EV_DOWNLOAD_FAILED, OTA_E_RETRIES));
}

static void test_flash_write_fails(void **state)
{
    (void)state;
    dev->fail_write_at = 3;
    boot_and_offer(img, IMG_SIZE, "1.1.0", 0, 5, 1);
    assert_true(fd_run_until(dev, is_failed, 10000));
    assert_true(fd_has_event(dev, OTA_EV_DOWNLOAD_FAILED, OTA_E_FLASH));
}

static void test_image_too_large(void **state)
{
    static uint8_t big[FD_SLOT_SIZE + 1];
    (void)state;
    tk_image(big, sizeof(big), OTA_SIM_HEALTHY, 0, "1.1.0", 1);
    boot_and_offer(big, sizeof(big), "1.1.0", 0, 5, 1);
    assert_true(fd_run_until(dev, is_failed, 10000));
    assert_true(fd_has_event(dev, OTA_EV_DOWNLOAD_FAILED, OTA_E_NO_SPACE));
}

static void test_slot_begin_fails(void **state)
{
    (void)state;
    dev->fail_begin = true;
    boot_and_offer(img, IMG_SIZE, "1.1.0", 0, 5, 1);
    assert_true(fd_run_until(dev, is_failed, 10000));
    assert_true(fd_has_event(dev, OTA_EV_DOWNLOAD_FAILED, OTA_E_FLASH));
    assert_int_equal(dev->requests, 0);
}

static void test_slot_finish_fails(void **state)
{
    (void)state;
    dev->fail_finish = true; /* esp_ota_end refuses the image */
    boot_and_offer(img, IMG_SIZE, "1.1.0", 0, 5, 1);
    assert_true(fd_run_until(dev, is_failed, 100000));
    assert_true(fd_has_event(dev, OTA_EV_DOWNLOAD_FAILED, OTA_E_FLASH));
    assert_false(fd_has_event(dev, OTA_EV_INSTALL_STARTED, 0));
    assert_int_equal(next_boot(), 0);
}

static void test_offer_past_deadline(void **state)
{
    tk_manifest_t m;
    uint8_t payload[512], cose[1024];
    size_t plen, clen;
    (void)state;
    fd_boot(dev);
    fd_run_for(dev, 500);
    memset(&m, 0, sizeof(m));
    m.seq = 3;
    m.version = "1.1.0";
    m.targets[0] = "esp32-v2";
    m.ntargets = 1;
    m.size = IMG_SIZE;
    tk_sha256(img, IMG_SIZE, m.digest);
    plen = tk_manifest_payload(&m, payload, sizeof(payload));
    clen = tk_sign(&dev->key, payload, plen, cose, sizeof(cose));
    dev->offer_len = tk_offer(dev->offer, sizeof(dev->offer), "r-late", cose, clen, 0, 0,
                              1000); /* long past */
    fd_push(dev, "ota/manifest", dev->offer, dev->offer_len);
    assert_true(fd_run_until(dev, has_rejected, 5000));
    assert_string_equal(dev->ev[dev->nev - 1].detail, "deadline");
    assert_int_equal(dev->requests, 0);
}

static void test_install_command_while_downloading(void **state)
{
    uint8_t c[64];
    size_t n;
    (void)state;
    boot_and_offer(img, IMG_SIZE, "1.1.0", 1, 5, 1);
    assert_true(fd_run_until(dev, is_downloading_half, 100000));
    n = tk_command(c, sizeof(c), OTA_CMD_INSTALL, "r-1", 0);
    fd_push(dev, "cmd", c, n);
    /* installs by itself once verified */
    assert_true(fd_run_until(dev, is_committed, 200000));
}

static void test_no_rollback_target_after_confirm(void **state)
{
    (void)state;
    tk_image(img, IMG_SIZE, OTA_SIM_HEALTH_FAIL_LATER, 5, "1.1.0", 42);
    boot_and_offer(img, IMG_SIZE, "1.1.0", 0, 5, 1);
    assert_true(fd_run_until(dev, trial_confirmed, 100000));
    memset(dev->slot[0], 0xff, 256); /* the old image is gone */
    assert_true(fd_run_until(dev, is_failed, 100000));
    assert_true(fd_has_event(dev, OTA_EV_HEALTH_FAILED, OTA_E_HEALTH));
    assert_string_equal(fd_running_version(dev), "1.1.0"); /* stays: nothing to go to */
}

static void test_activate_fails(void **state)
{
    (void)state;
    dev->fail_activate = true;
    boot_and_offer(img, IMG_SIZE, "1.1.0", 0, 5, 1);
    assert_true(fd_run_until(dev, is_failed, 100000));
    assert_true(fd_has_event(dev, OTA_EV_INSTALL_COMPLETED, OTA_E_FLASH));
    assert_int_equal(dev->running, 0);
}

static void test_resume_after_reset(void **state)
{
    (void)state;
    boot_and_offer(img, IMG_SIZE, "1.1.0", 0, 5, 1);
    assert_true(fd_run_until(dev, is_downloading_half, 100000));
    int before = dev->requests;
    dev->connected = false; /* power off */
    dev->nin = 0;
    fd_boot(dev);
    fd_run_for(dev, 200);
    assert_true(dev->requests > before);
    assert_true(dev->req_offsets[before] >= 4096); /* resumed, not restarted */
    assert_true(fd_run_until(dev, is_committed, 200000));
    assert_memory_equal(dev->slot[1], img, IMG_SIZE);
}

static void test_disconnect_during_download(void **state)
{
    (void)state;
    boot_and_offer(img, IMG_SIZE, "1.1.0", 0, 5, 1);
    assert_true(fd_run_until(dev, is_downloading_half, 100000));
    dev->link_up = false;
    fd_run_for(dev, 10000);
    dev->link_up = true;
    assert_true(fd_run_until(dev, is_committed, 200000));
}

/* ---- trial and rollback -------------------------------------------------- */

static bool has_detail(unsigned code, const char *detail)
{
    int i;
    for (i = 0; i < dev->nev; i++)
        if (dev->ev[i].code == code && strcmp(dev->ev[i].detail, detail) == 0)
            return true;
    return false;
}

static bool rollback_reported(fake_dev_t *d)
{
    return is_rolled_back(d) && fd_has_event(d, OTA_EV_ROLLBACK_COMPLETED, 0);
}

static void expect_rollback(unsigned err)
{
    if (!fd_run_until(dev, rollback_reported, 300000)) {
        fprintf(stderr, "state %d running %d version %s\n", ota_agent_state(&dev->agent),
                dev->running, fd_running_version(dev));
        fd_dump_events(dev);
        fail();
    }
    assert_true(fd_has_event(dev, OTA_EV_ROLLBACK_COMPLETED, err));
    assert_string_equal(fd_running_version(dev), "1.0.0");
    assert_int_equal(dev->running, 0);
    fd_run_for(dev, 2000);
    assert_int_equal(dev->last_birth_reason, OTA_BOOT_ROLLBACK);
    assert_int_equal(dev->last_birth_state, OTA_STATE_ROLLED_BACK);
    /* the bad update is not retried on the next offer */
    int before = dev->requests;
    fd_push(dev, "ota/manifest", dev->offer, dev->offer_len);
    fd_run_for(dev, 5000);
    assert_int_equal(dev->requests, before);
}

static void test_crash_on_boot_rolls_back(void **state)
{
    (void)state;
    tk_image(img, IMG_SIZE, OTA_SIM_CRASH, 0, "1.1.0", 42);
    boot_and_offer(img, IMG_SIZE, "1.1.0", 0, 5, 1);
    expect_rollback(OTA_E_BOOT);
    assert_false(fd_bootable(dev, 1)); /* aborted, then invalidated */
}

static void test_hang_rolls_back(void **state)
{
    (void)state;
    tk_image(img, IMG_SIZE, OTA_SIM_HANG, 0, "1.1.0", 42);
    boot_and_offer(img, IMG_SIZE, "1.1.0", 0, 5, 1);
    expect_rollback(OTA_E_BOOT);
}

static void test_health_fail_rolls_back(void **state)
{
    (void)state;
    tk_image(img, IMG_SIZE, OTA_SIM_HEALTH_FAIL, 0, "1.1.0", 42);
    boot_and_offer(img, IMG_SIZE, "1.1.0", 0, 5, 1);
    expect_rollback(OTA_E_HEALTH);
    assert_true(fd_has_event(dev, OTA_EV_HEALTH_FAILED, OTA_E_HEALTH));
    assert_true(fd_has_event(dev, OTA_EV_ROLLBACK_TRIGGERED, OTA_E_HEALTH));
    assert_false(fd_bootable(dev, 1));
}

static void test_no_broker_in_trial_rolls_back(void **state)
{
    uint8_t c[64];
    size_t n;
    (void)state;
    boot_and_offer(img, IMG_SIZE, "1.1.0", 1, 5, 1);
    assert_true(fd_run_until(dev, is_verified, 100000));
    dev->offline_after_reset = true; /* the new image never reaches the broker */
    n = tk_command(c, sizeof(c), OTA_CMD_INSTALL, NULL, 0);
    fd_push(dev, "cmd", c, n);
    assert_true(fd_run_until(dev, is_rolled_back, 300000));
    dev->link_up = true;
    assert_true(fd_run_until(dev, rollback_reported, 10000));
    assert_true(fd_has_event(dev, OTA_EV_ROLLBACK_COMPLETED, OTA_E_HEALTH));
    assert_string_equal(fd_running_version(dev), "1.0.0");
}

/* After a rollback from a confirmed image (ESP-IDF: through
 * esp_ota_set_boot_partition, so the old image starts PENDING_VERIFY like a
 * new one): reported as rollback completed, not as the new image's reboot;
 * the old image confirmed at once and the abandoned one unbootable; never
 * committed, the secure version not raised; and it stays so through a
 * probation's worth of running and power cycles. */
static void expect_probation_rollback(unsigned err)
{
    int i;
    expect_rollback(err);
    assert_int_equal(fd_count_event(dev, OTA_EV_REBOOT_COMPLETED), 1); /* the new image's */
    assert_true(fd_has_event(dev, OTA_EV_ROLLBACK_TRIGGERED, err));
    assert_int_equal(slot_state(0), OTA_OD_VALID);
    assert_false(fd_bootable(dev, 1));
    assert_false(dev->saw_committed);
    assert_int_equal(dev->last_birth_sv, 0); /* the old image's, not the new 1 */
    for (i = 0; i < 3; i++) {
        fd_run_for(dev, dev->cfg.settings.probation_ms);
        dev->connected = false; /* power cycle */
        dev->nin = 0;
        fd_boot(dev);
    }
    fd_run_for(dev, 2000);
    assert_int_equal(dev->running, 0);
    assert_string_equal(fd_running_version(dev), "1.0.0");
    assert_int_equal(ota_agent_state(&dev->agent), OTA_STATE_ROLLED_BACK);
    assert_int_equal(fd_count_event(dev, OTA_EV_REBOOT_COMPLETED), 1);
    assert_false(dev->saw_committed);
    assert_int_equal(dev->last_birth_sv, 0);
}

static void test_crash_loop_after_confirm_rolls_back(void **state)
{
    (void)state;
    tk_image(img, IMG_SIZE, OTA_SIM_CRASH_LATER, 3, "1.1.0", 42);
    boot_and_offer(img, IMG_SIZE, "1.1.0", 0, 5, 1);
    assert_true(fd_run_until(dev, trial_confirmed, 100000));
    /* the trigger fires at boot, before any connection: the persisted
     * error travels with rollback.completed */
    expect_probation_rollback(OTA_E_BOOT);
}

static void test_health_failing_later_rolls_back(void **state)
{
    (void)state;
    tk_image(img, IMG_SIZE, OTA_SIM_HEALTH_FAIL_LATER, 5, "1.1.0", 42);
    boot_and_offer(img, IMG_SIZE, "1.1.0", 0, 5, 1);
    assert_true(fd_run_until(dev, trial_confirmed, 100000));
    expect_probation_rollback(OTA_E_HEALTH);
}

/* ESP-IDF < 5.5 has no esp_ota_invalidate_inactive_ota_data_slot: the
 * abandoned image stays in otadata, but the old one is confirmed, so the
 * bootloader keeps starting it. */
static void test_probation_rollback_without_invalidate(void **state)
{
    int i;
    (void)state;
    dev->invalidate_supported = false;
    tk_image(img, IMG_SIZE, OTA_SIM_HEALTH_FAIL_LATER, 5, "1.1.0", 42);
    boot_and_offer(img, IMG_SIZE, "1.1.0", 0, 5, 1);
    assert_true(fd_run_until(dev, trial_confirmed, 100000));
    expect_rollback(OTA_E_HEALTH);
    assert_int_equal(slot_state(0), OTA_OD_VALID);
    assert_true(fd_bootable(dev, 1)); /* still named, VALID */
    for (i = 0; i < 3; i++) {
        dev->connected = false;
        dev->nin = 0;
        fd_boot(dev);
        fd_run_for(dev, 1000);
        assert_int_equal(dev->running, 0);
    }
    assert_int_equal(fd_count_event(dev, OTA_EV_REBOOT_COMPLETED), 1);
}

/* The old image could not be confirmed after the rollback; a reset then
 * makes the bootloader fall back to the abandoned image (its entry is still
 * VALID). The agent sees the image it rolled back from running and rolls
 * back again. */
static void test_abandoned_image_started_again(void **state)
{
    (void)state;
    dev->invalidate_supported = false;
    tk_image(img, IMG_SIZE, OTA_SIM_HEALTH_FAIL_LATER, 5, "1.1.0", 42);
    boot_and_offer(img, IMG_SIZE, "1.1.0", 0, 5, 1);
    assert_true(fd_run_until(dev, trial_confirmed, 100000));
    dev->fail_confirms = 1; /* the old image's confirmation fails once */
    assert_true(fd_run_until(dev, rollback_reported, 100000));
    assert_int_equal(slot_state(0), OTA_OD_PENDING_VERIFY);
    dev->connected = false; /* reset: PENDING_VERIFY becomes ABORTED */
    dev->nin = 0;
    fd_boot(dev);
    assert_true(fd_run_until(dev, rollback_reported, 100000));
    fd_run_for(dev, 2000);
    assert_int_equal(dev->running, 0);
    assert_int_equal(slot_state(0), OTA_OD_VALID);
    assert_true(has_detail(OTA_EV_ROLLBACK_TRIGGERED, "abandoned image"));
    assert_int_equal(fd_count_event(dev, OTA_EV_REBOOT_COMPLETED), 1);
    assert_false(dev->saw_committed);
}

static void test_broker_lost_in_probation_rolls_back(void **state)
{
    (void)state;
    boot_and_offer(img, IMG_SIZE, "1.1.0", 0, 5, 1);
    assert_true(fd_run_until(dev, trial_confirmed, 100000));
    dev->link_up = false;
    assert_true(fd_run_until(dev, is_rolled_back, 100000));
    dev->link_up = true;
    fd_run_for(dev, 1000);
    /* everything that happened offline arrives */
    assert_true(fd_has_event(dev, OTA_EV_HEALTH_FAILED, OTA_E_HEALTH));
    assert_true(fd_has_event(dev, OTA_EV_ROLLBACK_TRIGGERED, OTA_E_HEALTH));
    expect_probation_rollback(OTA_E_HEALTH);
}

static void test_watchdog_resets_roll_back(void **state)
{
    int i;
    (void)state;
    dev->cfg.settings.max_reboots = 7; /* only the watchdog trigger counts */
    dev->cfg.settings.max_wdt_resets = 2;
    boot_and_offer(img, IMG_SIZE, "1.1.0", 0, 5, 1);
    assert_true(fd_run_until(dev, trial_confirmed, 100000));
    for (i = 0; i < 3 && ota_agent_state(&dev->agent) == OTA_STATE_TRIAL; i++) {
        fd_run_for(dev, 1000);
        dev->connected = false;
        dev->nin = 0;
        dev->hw_reason = OTA_BOOT_WATCHDOG;
        fd_boot(dev);
    }
    assert_true(fd_run_until(dev, rollback_reported, 10000));
    assert_true(fd_has_event(dev, OTA_EV_ROLLBACK_COMPLETED, OTA_E_BOOT));
    assert_string_equal(fd_running_version(dev), "1.0.0");
    expect_probation_rollback(OTA_E_BOOT);
}

static void test_confirm_failure_rolls_back(void **state)
{
    (void)state;
    dev->fail_confirm = true;
    boot_and_offer(img, IMG_SIZE, "1.1.0", 0, 5, 1);
    expect_rollback(OTA_E_BOOT);
}

static void test_offer_ignored_during_trial(void **state)
{
    tk_manifest_t m;
    (void)state;
    boot_and_offer(img, IMG_SIZE, "1.1.0", 0, 5, 1);
    assert_true(fd_run_until(dev, trial_confirmed, 100000));
    int before = dev->requests;
    base_manifest(&m);
    m.version = "1.2.0";
    m.seq = 20;
    offer_with(&m, &dev->key, false);
    fd_run_for(dev, 3000);
    assert_int_equal(dev->requests, before);
    assert_int_equal(ota_agent_state(&dev->agent), OTA_STATE_TRIAL);
}


/* ---- events reach the broker (PUBACKs, link losses, resets) -------------- */

/* The new image never reaches the broker, its trial fails, the device rolls
 * back and is power-cycled, all offline: every result arrives once the link
 * is back, in order. */
static void test_results_survive_offline_and_reset(void **state)
{
    static const unsigned want[] = {OTA_EV_INSTALL_COMPLETED, OTA_EV_REBOOT_COMPLETED,
                                    OTA_EV_HEALTH_FAILED, OTA_EV_ROLLBACK_TRIGGERED,
                                    OTA_EV_ROLLBACK_COMPLETED};
    uint8_t c[64];
    size_t n;
    int i, j = 0;
    (void)state;
    boot_and_offer(img, IMG_SIZE, "1.1.0", 1, 5, 1);
    assert_true(fd_run_until(dev, is_verified, 100000));
    dev->offline_after_reset = true;
    n = tk_command(c, sizeof(c), OTA_CMD_INSTALL, NULL, 0);
    fd_push(dev, "cmd", c, n);
    assert_true(fd_run_until(dev, is_rolled_back, 300000));
    assert_false(fd_has_event(dev, OTA_EV_REBOOT_COMPLETED, 0)); /* nothing got out */
    dev->connected = false; /* and a power cycle, still offline */
    fd_boot(dev);
    fd_run_for(dev, 5000);
    dev->link_up = true;
    fd_run_for(dev, 5000);
    for (i = 0; i < dev->nev && j < (int)(sizeof(want) / sizeof(want[0])); i++)
        if (dev->ev[i].code == want[j])
            j++;
    if (j != (int)(sizeof(want) / sizeof(want[0])))
        fd_dump_events(dev);
    assert_int_equal(j, (int)(sizeof(want) / sizeof(want[0])));
    assert_true(fd_has_event(dev, OTA_EV_ROLLBACK_COMPLETED, OTA_E_HEALTH));
}

/* PUBACK 0x80 (the broker could not record it): kept and sent again after
 * 5 s, then 10 s; the events behind it wait their turn. */
static void test_event_retried_on_store_failure(void **state)
{
    uint8_t c[64];
    size_t n;
    int first;
    (void)state;
    fd_boot(dev);
    fd_run_for(dev, 1000);
    dev->ev_fail = 2;
    dev->ev_fail_code = 0x80;
    first = dev->ev_publishes;
    fd_offer_image(dev, img, IMG_SIZE, "1.1.0", "r-1", 1, 5, 1); /* no reboot meanwhile */
    assert_true(fd_run_until(dev, is_verified, 100000));
    fd_run_for(dev, 20000);
    /* download.started: refused twice, then recorded, and first */
    assert_true(dev->ev_publishes >= first + 3);
    assert_true(dev->ev_times[first + 1] - dev->ev_times[first] >= OTA_CFG_EVENT_RETRY_MS);
    assert_true(dev->ev_times[first + 2] - dev->ev_times[first + 1] >= 2 * OTA_CFG_EVENT_RETRY_MS);
    assert_int_equal(dev->ev[0].code, OTA_EV_DOWNLOAD_STARTED);
    n = tk_command(c, sizeof(c), OTA_CMD_INSTALL, NULL, 0);
    fd_push(dev, "cmd", c, n);
    assert_true(fd_run_until(dev, is_committed, 200000));
    assert_int_equal(fd_count_event(dev, OTA_EV_DOWNLOAD_STARTED), 1);
    /* the download ended while download.started waited: of its progress
     * only the first was queued behind it, the rest would be old news */
    assert_int_equal(fd_count_event(dev, OTA_EV_DOWNLOAD_PROGRESS), 1);
    assert_true(fd_has_event(dev, OTA_EV_DOWNLOAD_COMPLETED, 0));
    assert_true(fd_has_event(dev, OTA_EV_HEALTH_OK, 0));
}

/* PUBACK 0x99 or 0x87: the event itself is wrong, resending cannot help:
 * dropped, the next one goes out. */
static void test_event_dropped_when_refused(void **state)
{
    static const uint8_t codes[] = {0x99, 0x87, 0x90};
    size_t i;
    (void)state;
    for (i = 0; i < sizeof(codes); i++) {
        fd_init(dev, "1.0.0");
        fd_boot(dev);
        fd_run_for(dev, 1000);
        dev->ev_fail = 1;
        dev->ev_fail_code = codes[i];
        fd_offer_image(dev, img, IMG_SIZE, "1.1.0", "r-1", 0, 5, 1);
        assert_true(fd_run_until(dev, is_committed, 200000));
        assert_false(fd_has_event(dev, OTA_EV_DOWNLOAD_STARTED, 0)); /* never again */
        assert_int_equal(dev->ev[0].code, OTA_EV_DOWNLOAD_PROGRESS);
        assert_int_equal(dev->ev_publishes, dev->nev + 1);
    }
}

/* An MQTT 3.1.1 broker that could not record an event sends no PUBACK: the
 * event stays queued, goes out again after a reconnect (the client's own
 * resend), and after OTA_CFG_EVENT_ACK_MS on the same connection. */
static void test_event_without_puback_is_resent(void **state)
{
    int before;
    (void)state;
    fd_boot(dev);
    fd_run_for(dev, 1000);
    dev->ev_no_puback = true;
    fd_offer_image(dev, img, 20000, "1.1.0", "r-1", 1, 5, 1); /* waits for install */
    assert_true(fd_run_until(dev, is_verified, 100000));
    assert_int_equal(dev->nev, 0);
    assert_int_equal(dev->ev_publishes, 1); /* one at a time, not acknowledged */
    fd_disconnect(dev);
    fd_run_for(dev, 200);
    /* the client sent it again after the reconnect (same message ID): the
     * agent waits for that one's PUBACK instead of publishing a copy */
    assert_int_equal(dev->ev_publishes, 2);
    before = dev->ev_publishes;
    fd_run_for(dev, OTA_CFG_EVENT_ACK_MS + 1000);
    assert_int_equal(dev->ev_publishes, before + 1); /* again after the ack timeout */
    dev->ev_no_puback = false;
    fd_run_for(dev, OTA_CFG_EVENT_ACK_MS + 5000);
    assert_int_equal(fd_count_event(dev, OTA_EV_DOWNLOAD_STARTED), 1);
    assert_true(fd_has_event(dev, OTA_EV_DOWNLOAD_COMPLETED, 0));

    /* a client that dropped it at the disconnect (esp-mqtt after 30 s): the
     * agent publishes it again OTA_CFG_EVENT_ACK_MS after it went out */
    fd_init(dev, "1.0.0");
    fd_boot(dev);
    fd_run_for(dev, 1000);
    dev->ev_no_puback = true;
    dev->no_lib_resend = true;
    fd_offer_image(dev, img, 20000, "1.1.0", "r-1", 1, 5, 1);
    assert_true(fd_run_until(dev, is_verified, 100000));
    dev->ev_no_puback = false;
    fd_disconnect(dev);
    fd_run_for(dev, 1000);
    assert_int_equal(dev->ev_publishes, 1);
    assert_int_equal(dev->nev, 0);
    fd_run_for(dev, OTA_CFG_EVENT_ACK_MS);
    assert_int_equal(fd_count_event(dev, OTA_EV_DOWNLOAD_STARTED), 1);
    assert_true(fd_has_event(dev, OTA_EV_DOWNLOAD_COMPLETED, 0));
}

/* A full queue keeps its results: an event that is not one is dropped
 * instead; a result makes room by dropping the oldest. */
static void test_event_queue_keeps_results(void **state)
{
    tk_manifest_t m;
    uint8_t c[64];
    size_t n;
    int i;
    (void)state;
    fd_boot(dev);
    fd_run_for(dev, 1000);
    dev->offer_on_subscribe = false; /* a check finds nothing */
    dev->ev_no_puback = true; /* everything stays queued */
    base_manifest(&m);
    m.targets[0] = "other-hw";
    offer_with(&m, &dev->key, false); /* rejected: a result */
    fd_run_for(dev, 300);
    n = tk_command(c, sizeof(c), OTA_CMD_CHECK, NULL, 0);
    for (i = 0; i < 100; i++) { /* check started: not a result, ~9 bytes each */
        fd_push(dev, "cmd", c, n);
        fd_run_for(dev, 100);
    }
    dev->ev_no_puback = false;
    fd_disconnect(dev);
    fd_run_for(dev, 60000);
    assert_int_equal(dev->ev[0].code, OTA_EV_REJECTED);
    assert_int_equal(dev->ev[0].error, OTA_E_HARDWARE);
    assert_true(dev->nev > 1 && dev->nev < 100); /* the later checks were dropped */
    /* a result when the queue is full of others: the oldest make room */
    fd_init(dev, "1.0.0");
    fd_boot(dev);
    fd_run_for(dev, 1000);
    dev->offer_on_subscribe = false;
    dev->ev_no_puback = true;
    for (i = 0; i < 100; i++) {
        fd_push(dev, "cmd", c, n);
        fd_run_for(dev, 100);
    }
    offer_with(&m, &dev->key, false);
    fd_run_for(dev, 300);
    dev->ev_no_puback = false;
    fd_disconnect(dev);
    fd_run_for(dev, 60000);
    assert_int_equal(dev->ev[dev->nev - 1].code, OTA_EV_REJECTED);
    /* the event in flight is among those dropped: the next ones go at
     * once, not after OTA_CFG_EVENT_ACK_MS */
    fd_init(dev, "1.0.0");
    fd_boot(dev);
    fd_run_for(dev, 1000);
    dev->offer_on_subscribe = false;
    dev->ev_no_puback = true;
    for (i = 0; i < 100; i++) {
        fd_push(dev, "cmd", c, n);
        fd_run_for(dev, 100);
    }
    dev->ev_no_puback = false;
    offer_with(&m, &dev->key, false);
    fd_run_for(dev, 5000);
    assert_int_equal(dev->ev[dev->nev - 1].code, OTA_EV_REJECTED);
}

/* ---- every SHA-256 the agent starts ends (ESP-IDF 6 allocates them) ------ */

static void test_abandoned_hashes_end(void **state)
{
    uint8_t c[64];
    size_t n;
    tk_manifest_t m;
    ota_sha256_t h;
    (void)state;
    /* cancelled, superseded, restarted after a reset, refused on a failing
     * hash: every one ended (teardown checks) */
    boot_and_offer(img, IMG_SIZE, "1.1.0", 0, 5, 1);
    assert_true(fd_run_until(dev, is_downloading_half, 100000));
    n = tk_command(c, sizeof(c), OTA_CMD_CANCEL, NULL, 0);
    fd_push(dev, "cmd", c, n);
    assert_true(fd_run_until(dev, is_idle, 10000));
    fd_offer_image(dev, img, IMG_SIZE, "1.1.0", "r-2", 0, 6, 1);
    assert_true(fd_run_until(dev, is_downloading_half, 100000));
    base_manifest(&m);
    m.version = "1.2.0";
    m.seq = 30;
    offer_with(&m, &dev->key, false); /* supersedes */
    fd_run_for(dev, 500);
    dev->connected = false;
    fd_boot(dev); /* resumes: the written part hashed again */
    fd_run_for(dev, 500);
    dev->fail_hash_update = dev->nhash_updates + 2; /* inside the next verify */
    base_manifest(&m);
    m.version = "1.3.0";
    m.seq = 31;
    offer_with(&m, &dev->key, false);
    fd_run_for(dev, 500);
    assert_int_equal(dev->hash_leaks, 0);
    /* the check itself works: a start on a started context is a leak */
    assert_int_equal(dev->port.sha256_start(dev->port.ctx, &h), OTA_OK);
    assert_int_equal(dev->port.sha256_start(dev->port.ctx, &h), OTA_OK);
    assert_int_equal(dev->hash_leaks, 1);
    dev->port.sha256_abort(dev->port.ctx, &h);
    dev->hash_leaks = 0;
}

/* ---- sequence numbers after a rollback ------------------------------------ */

/* A bad release (sequence 20) rolls back; the release before it (sequence
 * 10, signed earlier) is then offered and commits; the guard (birth key 12)
 * becomes 10, and refuses an older manifest from then on. */
static void test_previous_release_after_rollback(void **state)
{
    static uint8_t good[IMG_SIZE];
    tk_manifest_t m;
    (void)state;
    tk_image(img, IMG_SIZE, OTA_SIM_CRASH, 0, "1.2.0", 42);
    tk_image(good, IMG_SIZE, OTA_SIM_HEALTHY, 0, "1.1.0", 43);
    boot_and_offer(img, IMG_SIZE, "1.2.0", 0, 20, 1);
    assert_true(fd_run_until(dev, rollback_reported, 300000));
    assert_int_equal(dev->last_birth_guard, 0);
    dev->nev = 0;
    fd_offer_image(dev, good, IMG_SIZE, "1.1.0", "r-prev", 0, 10, 1);
    assert_true(fd_run_until(dev, is_committed, 300000));
    assert_false(fd_has_event(dev, OTA_EV_REJECTED, 0));
    assert_string_equal(fd_running_version(dev), "1.1.0");
    fd_disconnect(dev);
    fd_run_for(dev, 500);
    assert_int_equal(dev->last_birth_guard, 10);
    /* older than the running image: refused */
    base_manifest(&m);
    m.version = "1.1.5";
    m.seq = 9;
    offer_with(&m, &dev->key, false);
    assert_true(fd_run_until(dev, has_rejected, 5000));
    assert_string_equal(dev->ev[dev->nev - 1].detail, "sequence");
}

/* ---- downloads ------------------------------------------------------------- */

static void test_offer_window_honoured(void **state)
{
    int i;
    (void)state;
    fd_boot(dev);
    fd_offer_kind(dev, img, IMG_SIZE, "1.1.0", "r-1", 0, 5, 1, 0, 2); /* broker: 2 */
    dev->served_window = 2;
    assert_true(fd_run_until(dev, is_committed, 200000));
    for (i = 0; i < dev->requests && i < 512; i++)
        assert_true(dev->req_counts[i] <= 2);
    for (i = 1; i < dev->requests && i < 512; i++) /* no request timed out */
        assert_true(dev->req_times[i] - dev->req_times[i - 1] < 2000);
    /* it is kept with the download: after a reset, the first request
     * (before any offer) asks for the broker's window too */
    fd_init(dev, "1.0.0");
    fd_boot(dev);
    fd_offer_kind(dev, img, IMG_SIZE, "1.1.0", "r-1", 0, 5, 1, 0, 2);
    dev->served_window = 2;
    assert_true(fd_run_until(dev, is_downloading_half, 100000));
    i = dev->requests;
    dev->connected = false; /* power off */
    dev->nin = 0;
    dev->offer_on_subscribe = false;
    fd_boot(dev);
    fd_run_for(dev, 200);
    assert_true(dev->requests > i);
    for (; i < dev->requests; i++)
        assert_true(dev->req_counts[i] <= 2);
}

/* A stall (part of a window lost) shrinks the window; full answers grow it
 * back to the broker's (offer key 6). */
static void test_window_grows_back(void **state)
{
    static uint8_t big[60000];
    (void)state;
    tk_image(big, sizeof(big), OTA_SIM_HEALTHY, 0, "1.1.0", 42);
    fd_boot(dev);
    dev->served_window = 1;
    dev->served_window_for = 3;
    fd_offer_kind(dev, big, sizeof(big), "1.1.0", "r-1", 0, 5, 1, 0, 4);
    assert_true(fd_run_until(dev, is_committed, 300000));
    assert_true(dev->requests > 8);
    assert_int_equal(dev->req_counts[dev->requests - 2], 4);
}

/* "rate limited" does not count toward max_retries; a huge retry-after is
 * capped at backoff_max. */
static void test_rate_limited_does_not_give_up(void **state)
{
    (void)state;
    dev->blk_error = OTA_BLKERR_RATE_LIMITED;
    dev->blk_errors_left = 15; /* more than max_retries (10) */
    dev->blk_retry_ms = 100;
    boot_and_offer(img, IMG_SIZE, "1.1.0", 0, 5, 1);
    assert_true(fd_run_until(dev, is_committed, 300000));
    assert_false(fd_has_event(dev, OTA_EV_DOWNLOAD_FAILED, 0));
    fd_init(dev, "1.0.0");
    dev->blk_error = OTA_BLKERR_INTERNAL;
    dev->blk_errors_left = 1;
    dev->blk_retry_ms = 0xffffffffu; /* 49 days */
    boot_and_offer(img, IMG_SIZE, "1.1.0", 0, 5, 1);
    assert_true(fd_run_until(dev, is_committed, 300000));
    assert_true(dev->req_times[1] - dev->req_times[0] <= OTA_CFG_BACKOFF_MAX_MS + 200);
}

/* One corrupted block: the digest does not match, the image is fetched
 * again from 0 and commits. */
static void test_digest_mismatch_refetched(void **state)
{
    int i, restarts = 0;
    (void)state;
    dev->corrupt = 1;
    boot_and_offer(img, IMG_SIZE, "1.1.0", 0, 5, 1);
    assert_true(fd_run_until(dev, is_committed, 300000));
    assert_int_equal(fd_count_event(dev, OTA_EV_DOWNLOAD_STARTED), 2);
    assert_true(has_detail(OTA_EV_DOWNLOAD_STARTED, "refetching"));
    for (i = 1; i < dev->requests && i < 512; i++)
        restarts += dev->req_offsets[i] == 0u;
    assert_int_equal(restarts, 1);
    assert_memory_equal(dev->slot[1], img, IMG_SIZE);
}

/* The broker learns of a commit when it happens, not at the next heartbeat. */
static void test_commit_reported_at_once(void **state)
{
    (void)state;
    dev->cfg.settings.heartbeat_ms = 3600000;
    boot_and_offer(img, IMG_SIZE, "1.1.0", 0, 5, 1);
    assert_true(fd_run_until(dev, is_committed, 200000));
    fd_step(dev);
    assert_int_equal(dev->last_hb_state, OTA_STATE_COMMITTED);
}

/* A state record with a download of block size 0 (send_request divides by
 * it) is refused like any unreadable record. */
static void test_zero_block_size_refused(void **state)
{
    uint8_t rec[32];
    ota_cbor_writer_t w;
    (void)state;
    ota_cbor_writer_init(&w, rec, sizeof(rec));
    ota_cbor_put_head(&w, OTA_CBOR_MAP, 3);
    ota_cbor_put_uint(&w, 1); /* state: downloading */
    ota_cbor_put_uint(&w, OTA_STATE_DOWNLOADING);
    ota_cbor_put_uint(&w, 5); /* size */
    ota_cbor_put_uint(&w, IMG_SIZE);
    ota_cbor_put_uint(&w, 7); /* block size */
    ota_cbor_put_uint(&w, 0);
    dev->kv[0].used = true;
    strcpy(dev->kv[0].key, OTA_KV_STATE);
    memcpy(dev->kv[0].val, rec, w.len);
    dev->kv[0].len = w.len;
    fd_boot(dev);
    fd_run_for(dev, 3000);
    assert_int_equal(ota_agent_state(&dev->agent), OTA_STATE_IDLE);
    assert_int_equal(dev->requests, 0);
}

/* The persisted offset is a multiple of 16 (flash encryption keeps the last
 * partial 16 bytes in RAM), also with blocks that are not. */
static void test_resume_offset_multiple_of_16(void **state)
{
    (void)state;
    dev->served_block_size = 300;
    boot_and_offer(img, IMG_SIZE, "1.1.0", 0, 5, 1);
    assert_true(fd_run_until(dev, is_downloading_half, 100000));
    dev->connected = false;
    dev->nin = 0;
    fd_boot(dev);
    fd_run_for(dev, 300);
    assert_true(dev->resumed_from > 0u);
    assert_int_equal(dev->resumed_from % 16u, 0);
    assert_true(fd_run_until(dev, is_committed, 200000));
    assert_memory_equal(dev->slot[1], img, IMG_SIZE);
}

/* An install command is not lost by a reset during the activation: cut at
 * each write from the command on, the device installs by itself after. */
static void test_install_command_survives_reset(void **state)
{
    uint8_t c[64];
    size_t n;
    long k, base;
    (void)state;
    /* write 1 after the command persists the install itself (state
     * installing, install mode 0): a cut before it loses the command like
     * any message not yet persisted; from the activation on it is kept */
    for (k = 2; k <= 5; k++) {
        fd_init(dev, "1.0.0");
        boot_and_offer(img, IMG_SIZE, "1.1.0", 1, 5, 1);
        assert_true(fd_run_until(dev, is_verified, 100000));
        base = dev->pwrites;
        dev->cut_at = base + k;
        n = tk_command(c, sizeof(c), OTA_CMD_INSTALL, NULL, 0);
        fd_push(dev, "cmd", c, n);
        if (!fd_run_until(dev, is_committed, 200000)) {
            fprintf(stderr, "cut at write %ld after the install command\n", k);
            fd_dump_events(dev);
            fail();
        }
        assert_true(dev->cut_done);
    }
}

/* A failing state write is reported: heartbeat health bit 1 (required
 * resources) is clear until a write succeeds again. */
static void test_persist_failure_reported(void **state)
{
    uint8_t c[64];
    size_t n;
    (void)state;
    fd_boot(dev);
    fd_run_for(dev, 1000);
    assert_true(dev->last_hb_health & OTA_HEALTH_RESOURCES);
    dev->fail_kv = true;
    fd_offer_image(dev, img, IMG_SIZE, "1.1.0", "r-1", 1, 5, 1);
    fd_run_for(dev, 11000);
    assert_false(dev->last_hb_health & OTA_HEALTH_RESOURCES);
    dev->fail_kv = false;
    n = tk_command(c, sizeof(c), OTA_CMD_INSTALL, NULL, 0);
    fd_push(dev, "cmd", c, n); /* persists the install mode */
    fd_run_for(dev, 11000);
    assert_true(dev->last_hb_health & OTA_HEALTH_RESOURCES);
}

/* ---- configurations and feature flags -------------------------------------- */

static uint8_t blob[1000];

static size_t make_blob(const char *head, unsigned seed)
{
    size_t i, n = strlen(head);
    memcpy(blob, head, n);
    for (i = n; i < sizeof(blob); i++)
        blob[i] = (uint8_t)('a' + (i * 7u + seed) % 26u);
    return sizeof(blob);
}

static bool config_is(uint8_t kind, const uint8_t *want, uint32_t n)
{
    uint32_t have;
    const uint8_t *c = fd_config(dev, kind, &have);
    return have == n && (n == 0u || memcmp(c, want, n) == 0);
}

/* A configuration update: the same manifest, download and events as
 * firmware, swapped in without a reboot, committed after probation; the
 * application is told. The next one keeps this one as its previous. */
static void test_config_update_commits(void **state)
{
    static uint8_t first[1000];
    int boots;
    (void)state;
    fd_boot(dev);
    boots = dev->boots;
    make_blob("wifi=office\n", 1);
    memcpy(first, blob, sizeof(blob));
    fd_offer_kind(dev, first, sizeof(first), "1.0.0", "r-cfg", 0, 5, 0, OTA_KIND_CONFIG, 0);
    assert_true(fd_run_until(dev, is_committed, 200000));
    assert_true(config_is(OTA_KIND_CONFIG, first, sizeof(first)));
    assert_true(dev->cfg_changes >= 1);
    assert_int_equal(dev->boots, boots); /* no reboot */
    assert_string_equal(fd_running_version(dev), "1.0.0");
    assert_true(fd_has_event(dev, OTA_EV_INSTALL_COMPLETED, 0));
    assert_true(fd_has_event(dev, OTA_EV_REBOOT_COMPLETED, 0)); /* "in use" */
    assert_true(fd_has_event(dev, OTA_EV_HEALTH_OK, 0));
    assert_false(fd_has_event(dev, OTA_EV_REBOOT_STARTED, 0));
    assert_true(config_is(OTA_KIND_FLAGS, NULL, 0)); /* the flags are apart */
    /* the same version again is refused; a newer one commits */
    fd_offer_kind(dev, first, sizeof(first), "1.0.0", "r-cfg2", 0, 6, 0, OTA_KIND_CONFIG, 0);
    assert_true(fd_run_until(dev, has_rejected, 5000));
    assert_string_equal(dev->ev[dev->nev - 1].detail, "same version");
    make_blob("wifi=home\n", 2);
    fd_offer_kind(dev, blob, sizeof(blob), "1.1.0", "r-cfg3", 0, 7, 0, OTA_KIND_CONFIG, 0);
    assert_true(fd_run_until(dev, trial_started, 200000));
    assert_true(fd_run_until(dev, is_committed, 200000));
    assert_true(config_is(OTA_KIND_CONFIG, blob, sizeof(blob)));
    assert_int_equal(dev->cd[0].previous, dev->cd[0].active ^ 1);
}

static void test_flags_update_commits(void **state)
{
    (void)state;
    fd_boot(dev);
    make_blob("{\"new_ui\":true}", 3);
    fd_offer_kind(dev, blob, 200, "2.0.0", "r-flags", 0, 5, 0, OTA_KIND_FLAGS, 0);
    assert_true(fd_run_until(dev, is_committed, 200000));
    assert_true(config_is(OTA_KIND_FLAGS, blob, 200));
    assert_true(config_is(OTA_KIND_CONFIG, NULL, 0));
    assert_int_equal(dev->boots, 1);
}

/* A configuration the application's health check fails on: the trial
 * fails, the previous one (here: none) is back, reported, no reboot. */
static void test_bad_config_rolls_back(void **state)
{
    static uint8_t good[1000];
    (void)state;
    fd_boot(dev);
    make_blob("wifi=ok\n", 4);
    memcpy(good, blob, sizeof(blob));
    fd_offer_kind(dev, good, sizeof(good), "1.0.0", "r-ok", 0, 5, 0, OTA_KIND_CONFIG, 0);
    assert_true(fd_run_until(dev, is_committed, 200000));
    make_blob("#fail-health wifi=typo\n", 5);
    fd_offer_kind(dev, blob, sizeof(blob), "1.1.0", "r-bad", 0, 6, 0, OTA_KIND_CONFIG, 0);
    assert_true(fd_run_until(dev, rollback_reported, 200000));
    assert_true(config_is(OTA_KIND_CONFIG, good, sizeof(good)));
    assert_true(fd_has_event(dev, OTA_EV_HEALTH_FAILED, OTA_E_HEALTH));
    assert_true(fd_has_event(dev, OTA_EV_ROLLBACK_COMPLETED, OTA_E_HEALTH));
    assert_int_equal(dev->boots, 1);
    assert_int_equal(dev->app_health, 3); /* healthy again */
    /* not retried under the same rollout */
    int before = dev->requests;
    fd_push(dev, "ota/manifest", dev->offer, dev->offer_len);
    fd_run_for(dev, 5000);
    assert_int_equal(dev->requests, before);
}

/* A reset before the new configuration was confirmed (it may be what made
 * the application crash): the previous one is back at the start, as an
 * unconfirmed image is reverted by the bootloader, and it is reported; after
 * a watchdog reset the update is not retried, after a power cut it may be. */
static void test_config_reset_before_confirm_reverts(void **state)
{
    static const uint8_t reasons[] = {OTA_BOOT_WATCHDOG, OTA_BOOT_POWER_ON};
    size_t i;
    (void)state;
    for (i = 0; i < sizeof(reasons); i++) {
        fd_init(dev, "1.0.0");
        fd_boot(dev);
        make_blob("#fail-health\n", 6); /* never confirmed */
        fd_offer_kind(dev, blob, sizeof(blob), "1.0.0", "r-c", 0, 5, 0, OTA_KIND_CONFIG, 0);
        assert_true(fd_run_until(dev, trial_started, 100000));
        assert_true(config_is(OTA_KIND_CONFIG, blob, sizeof(blob)));
        dev->connected = false; /* reset before the confirmation */
        dev->nin = 0;
        dev->hw_reason = reasons[i];
        fd_boot(dev);
        assert_true(config_is(OTA_KIND_CONFIG, NULL, 0)); /* reverted at start */
        assert_int_equal(ota_agent_state(&dev->agent), OTA_STATE_ROLLED_BACK);
        assert_true(has_detail(OTA_EV_ROLLBACK_TRIGGERED, reasons[i] == OTA_BOOT_WATCHDOG
                                                              ? "not confirmed"
                                                              : "power lost") ||
                    (fd_run_for(dev, 2000),
                     has_detail(OTA_EV_ROLLBACK_TRIGGERED, reasons[i] == OTA_BOOT_WATCHDOG
                                                               ? "not confirmed"
                                                               : "power lost")));
        assert_true(fd_has_event(dev, OTA_EV_ROLLBACK_COMPLETED, OTA_E_BOOT));
        fd_run_for(dev, 5000);
        if (reasons[i] == OTA_BOOT_WATCHDOG)
            assert_int_equal(fd_count_event(dev, OTA_EV_DOWNLOAD_STARTED), 1);
        else
            assert_int_equal(fd_count_event(dev, OTA_EV_DOWNLOAD_STARTED), 2); /* tried again */
    }
}

/* The application asks to restart for a new configuration: the swap waits
 * for the next start, which is its trial's first boot. */
static void test_config_with_restart(void **state)
{
    (void)state;
    dev->cfg_restart = true;
    fd_boot(dev);
    make_blob("endpoint=b\n", 7);
    fd_offer_kind(dev, blob, sizeof(blob), "1.0.0", "r-r", 0, 5, 0, OTA_KIND_CONFIG, 0);
    assert_true(fd_run_until(dev, is_committed, 200000));
    assert_int_equal(dev->boots, 2);
    assert_true(fd_has_event(dev, OTA_EV_REBOOT_STARTED, 0));
    assert_true(config_is(OTA_KIND_CONFIG, blob, sizeof(blob)));
}

static void test_unsupported_kind_refused(void **state)
{
    (void)state;
    dev->port.kinds = 0;
    fd_boot(dev);
    fd_run_for(dev, 500);
    make_blob("x", 8);
    fd_offer_kind(dev, blob, 100, "1.0.0", "r-k", 0, 5, 0, OTA_KIND_FLAGS, 0);
    expect_rejected(OTA_E_VERSION, "unknown kind");
}

/* ---- commands, heartbeats ------------------------------------------------ */

static void test_check_and_reboot_commands(void **state)
{
    uint8_t c[64];
    size_t n;
    int births, boots;
    (void)state;
    fd_boot(dev);
    fd_run_for(dev, 500);
    int subs = dev->subs;
    n = tk_command(c, sizeof(c), OTA_CMD_CHECK, NULL, 0);
    fd_push(dev, "cmd", c, n);
    fd_run_for(dev, 500);
    assert_int_equal(dev->subs, subs + 1);
    assert_true(fd_has_event(dev, OTA_EV_CHECK_STARTED, 0));
    births = dev->births;
    boots = dev->boots;
    n = tk_command(c, sizeof(c), OTA_CMD_REBOOT, NULL, 0);
    fd_push(dev, "cmd", c, n);
    fd_run_for(dev, 500);
    assert_int_equal(dev->boots, boots + 1);
    assert_int_equal(dev->births, births + 1);
    assert_int_equal(dev->last_birth_reason, OTA_BOOT_SOFTWARE);
}

static void test_heartbeats_periodic(void **state)
{
    (void)state;
    fd_boot(dev);
    fd_run_for(dev, 500);
    int hb = dev->heartbeats;
    fd_run_for(dev, 30000);
    assert_int_equal(dev->heartbeats - hb, 3);
    assert_int_equal(dev->births, 1);
    fd_disconnect(dev);
    fd_run_for(dev, 100);
    assert_int_equal(dev->births, 2); /* birth at every connect */
}

static void test_init_rejects_bad_config(void **state)
{
    ota_agent_config_t c;
    ota_agent_t *a = calloc(1, sizeof(*a));
    (void)state;
    fd_boot(dev);
    c = dev->cfg;
    c.device_id = "bad/id";
    assert_int_equal(ota_agent_init(a, &c), OTA_ERR_ARG);
    c = dev->cfg;
    c.nkeys = 0;
    assert_int_equal(ota_agent_init(a, &c), OTA_ERR_ARG);
    c = dev->cfg;
    c.port = NULL;
    assert_int_equal(ota_agent_init(a, &c), OTA_ERR_ARG);
    assert_int_equal(ota_agent_init(a, &dev->cfg), OTA_OK);
    assert_int_equal(ota_agent_on_message(a, "dm/dev-1/cmd", NULL, 0), OTA_ERR_ARG); /* not booted */
    free(a);
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_update_commits),
        T(test_birth_reason_after_update),
        T(test_install_waits_for_command),
        T(test_verified_survives_reset),
        T(test_cancel_by_empty_offer),
        T(test_cancel_by_command),
        T(test_reject_bad_signature),
        T(test_reject_unknown_key),
        T(test_reject_hardware),
        T(test_reject_bootloader),
        T(test_reject_downgrade),
        T(test_downgrade_allowed_by_setting),
        T(test_reject_same_version),
        T(test_reject_sequence),
        T(test_reject_secure_version),
        T(test_reject_garbage_offer),
        T(test_length_limits),
        T(test_digest_mismatch),
        T(test_lost_blocks_are_refetched),
        T(test_small_served_blocks),
        T(test_broker_serves_smaller_windows),
        T(test_timeouts_back_off_and_give_up),
        T(test_rate_limited_waits),
        T(test_fatal_block_error),
        T(test_flash_write_fails),
        T(test_image_too_large),
        T(test_slot_begin_fails),
        T(test_slot_finish_fails),
        T(test_offer_past_deadline),
        T(test_install_command_while_downloading),
        T(test_no_rollback_target_after_confirm),
        T(test_activate_fails),
        T(test_resume_after_reset),
        T(test_disconnect_during_download),
        T(test_crash_on_boot_rolls_back),
        T(test_hang_rolls_back),
        T(test_health_fail_rolls_back),
        T(test_no_broker_in_trial_rolls_back),
        T(test_crash_loop_after_confirm_rolls_back),
        T(test_health_failing_later_rolls_back),
        T(test_broker_lost_in_probation_rolls_back),
        T(test_watchdog_resets_roll_back),
        T(test_confirm_failure_rolls_back),
        T(test_probation_rollback_without_invalidate),
        T(test_abandoned_image_started_again),
        T(test_results_survive_offline_and_reset),
        T(test_event_retried_on_store_failure),
        T(test_event_dropped_when_refused),
        T(test_event_without_puback_is_resent),
        T(test_event_queue_keeps_results),
        T(test_abandoned_hashes_end),
        T(test_previous_release_after_rollback),
        T(test_offer_window_honoured),
        T(test_window_grows_back),
        T(test_rate_limited_does_not_give_up),
        T(test_digest_mismatch_refetched),
        T(test_commit_reported_at_once),
        T(test_zero_block_size_refused),
        T(test_resume_offset_multiple_of_16),
        T(test_install_command_survives_reset),
        T(test_persist_failure_reported),
        T(test_config_update_commits),
        T(test_flags_update_commits),
        T(test_bad_config_rolls_back),
        T(test_config_reset_before_confirm_reverts),
        T(test_config_with_restart),
        T(test_unsupported_kind_refused),
        T(test_offer_ignored_during_trial),
        T(test_check_and_reboot_commands),
        T(test_heartbeats_periodic),
        T(test_init_rejects_bad_config),
    };
    if (getenv("TEST_FILTER") != NULL)
        cmocka_set_test_filter(getenv("TEST_FILTER"));
    return cmocka_run_group_tests_name("agent", tests, NULL, NULL);
}

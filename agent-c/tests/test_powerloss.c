/* test_powerloss.c - MCUboot-simulator style: an update is run once to count
 * its persistent writes (slot writes, otadata sector writes, configuration
 * records, state and event persists), then once per write with the power
 * cut exactly there (a torn slot write, an otadata sector left erased, a
 * record that keeps its old value). After every cut the simulated device
 * must boot a valid image and the update must end where it should: the new
 * image committed; a bad one rolled back; an image rolled back from after
 * its confirmation never started again; a configuration swapped in whole
 * or not at all. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "fake_port.h"

#define IMG_SIZE 12000u

static uint8_t img[IMG_SIZE];

static bool done(fake_dev_t *d)
{
    return ota_agent_state(&d->agent) == OTA_STATE_COMMITTED;
}

static bool rolled_back(fake_dev_t *d)
{
    return ota_agent_state(&d->agent) == OTA_STATE_ROLLED_BACK && d->running == 0 &&
           fd_has_event(d, OTA_EV_ROLLBACK_COMPLETED, 0);
}

static void fail_run(fake_dev_t *d, long n, const char *what)
{
    fprintf(stderr, "cut at write %ld: %s (state %d, running %d, version %s)\n", n, what,
            ota_agent_state(&d->agent), d->running, fd_running_version(d));
    fd_dump_events(d);
    fail();
}

/* Runs the whole update with a cut at write n (0 = none). Returns the number
 * of persistent writes the run made. */
static long run(long n, unsigned behaviour, bool *resumed)
{
    fake_dev_t *d = calloc(1, sizeof(*d));
    long writes;
    assert_non_null(d);
    fd_init(d, "1.0.0");
    d->cfg.settings.probation_ms = 8000;
    d->cut_at = n;
    tk_image(img, IMG_SIZE, behaviour, 3, "1.1.0", 3);
    fd_boot(d);
    fd_offer_image(d, img, IMG_SIZE, "1.1.0", "r-pl", 0, 1, 1);
    if (behaviour == OTA_SIM_HEALTHY) {
        if (!fd_run_until(d, done, 400000))
            fail_run(d, n, "not committed");
        assert_string_equal(fd_running_version(d), "1.1.0");
        assert_memory_equal(d->slot[1], img, IMG_SIZE);
    } else if (behaviour == OTA_SIM_CRASH) {
        fd_run_for(d, 120000);
        assert_true(d->running >= 0);
        assert_string_equal(fd_running_version(d), "1.0.0");
    } else {
        /* OTA_SIM_CRASH_LATER: confirmed, then a crash loop rolls it back
         * through esp_ota_set_boot_partition (the old image starts
         * PENDING_VERIFY) */
        if (!fd_run_until(d, rolled_back, 600000))
            fail_run(d, n, "not rolled back");
        fd_run_for(d, 30000); /* a probation's worth and more on the old image */
        if (d->running != 0 || ota_agent_state(&d->agent) != OTA_STATE_ROLLED_BACK)
            fail_run(d, n, "did not stay rolled back");
        assert_string_equal(fd_running_version(d), "1.0.0");
        assert_false(d->saw_committed);
        assert_int_equal(d->last_birth_sv, 0); /* never raised to the new image's 1 */
        /* the old image is confirmed; the abandoned one cannot start */
        {
            uint32_t st = OTA_OD_UNDEFINED;
            assert_true(ota_od_state(&d->od, 0, &st));
            assert_int_equal(st, OTA_OD_VALID);
            assert_false(fd_bootable(d, 1));
        }
    }
    assert_true(d->running >= 0); /* never bricked */
    if (n != 0)
        assert_true(d->cut_done);
    if (resumed != NULL)
        *resumed = d->resumed_from != 0u; /* continued after a reset, not from 0 */
    writes = d->pwrites;
    free(d);
    return writes;
}

static void test_cut_at_every_write(void **state)
{
    long total, n;
    int resumes = 0;
    (void)state;
    total = run(0, OTA_SIM_HEALTHY, NULL);
    assert_true(total > 15); /* the update really writes */
    for (n = 1; n <= total; n++) {
        bool resumed = false;
        run(n, OTA_SIM_HEALTHY, &resumed);
        resumes += resumed;
    }
    printf("power-loss: %ld cut points, device recovered from each, %d resumed a download\n",
           total, resumes);
    assert_true(resumes > 0); /* cuts during the download resume, not restart */
}

static void test_cut_with_bad_image(void **state)
{
    long total, n;
    (void)state;
    total = run(0, OTA_SIM_CRASH, NULL);
    for (n = 1; n <= total; n++)
        run(n, OTA_SIM_CRASH, NULL);
}

/* The path of issue 8: confirmed, then rolled back; the old image boots
 * PENDING_VERIFY and is confirmed at once, the abandoned one invalidated. */
static void test_cut_during_probation_rollback(void **state)
{
    long total, n;
    (void)state;
    total = run(0, OTA_SIM_CRASH_LATER, NULL);
    for (n = 1; n <= total; n++)
        run(n, OTA_SIM_CRASH_LATER, NULL);
    printf("power-loss: %ld cut points on the probation rollback path\n", total);
}

/* ---- the configuration swap ------------------------------------------------ */

static uint8_t cfg_old[700], cfg_new[900];

static bool cfg_done(fake_dev_t *d)
{
    uint32_t n;
    const uint8_t *c = fd_config(d, OTA_KIND_CONFIG, &n);
    return done(d) && n == sizeof(cfg_new) && memcmp(c, cfg_new, n) == 0;
}

/* A configuration replaces one in use. The swap is one atomic record: at
 * every start the configuration in use is the old one or the new one,
 * never a mix, and the update ends committed. */
static long run_config(long n)
{
    fake_dev_t *d = calloc(1, sizeof(*d));
    long writes;
    size_t i;
    assert_non_null(d);
    for (i = 0; i < sizeof(cfg_old); i++)
        cfg_old[i] = (uint8_t)(i * 13u + 1u);
    for (i = 0; i < sizeof(cfg_new); i++)
        cfg_new[i] = (uint8_t)(i * 7u + 5u);
    fd_init(d, "1.0.0");
    d->cfg.settings.probation_ms = 8000;
    fd_boot(d);
    fd_offer_kind(d, cfg_old, sizeof(cfg_old), "1.0.0", "r-old", 0, 1, 0, OTA_KIND_CONFIG, 0);
    if (!fd_run_until(d, done, 200000))
        fail_run(d, 0, "old configuration not committed");
    d->cfg_allowed[0] = cfg_old;
    d->cfg_allowed_len[0] = sizeof(cfg_old);
    d->cfg_allowed[1] = cfg_new;
    d->cfg_allowed_len[1] = sizeof(cfg_new);
    d->cut_at = n == 0 ? 0 : d->pwrites + n;
    writes = d->pwrites;
    fd_offer_kind(d, cfg_new, sizeof(cfg_new), "1.1.0", "r-new", 0, 2, 0, OTA_KIND_CONFIG, 0);
    if (!fd_run_until(d, cfg_done, 400000))
        fail_run(d, n, "new configuration not committed");
    assert_int_equal(d->cfg_mixed, 0);
    assert_true(d->running == 0); /* the firmware untouched */
    if (n != 0)
        assert_true(d->cut_done);
    writes = d->pwrites - writes;
    free(d);
    return writes;
}

static void test_cut_during_config_swap(void **state)
{
    long total, n;
    (void)state;
    total = run_config(0);
    assert_true(total > 5);
    for (n = 1; n <= total; n++)
        run_config(n);
    printf("power-loss: %ld cut points on the configuration update\n", total);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cut_at_every_write),
        cmocka_unit_test(test_cut_with_bad_image),
        cmocka_unit_test(test_cut_during_probation_rollback),
        cmocka_unit_test(test_cut_during_config_swap),
    };
    return cmocka_run_group_tests_name("powerloss", tests, NULL, NULL);
}

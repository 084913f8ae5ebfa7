/* test_powerloss.c - MCUboot-simulator style: an update is run once to count
 * its persistent writes (slot writes and state persists), then once per
 * write with the power cut exactly there (a torn slot write, or a state
 * record that keeps its old value). After every cut the simulated device
 * must boot a valid image, and the update must then either complete
 * (resumed or restarted) with the new image committed. */
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
    tk_image(img, IMG_SIZE, behaviour, 0, "1.1.0", 3);
    fd_boot(d);
    fd_offer_image(d, img, IMG_SIZE, "1.1.0", "r-pl", 0, 1, 0);
    if (behaviour == OTA_SIM_HEALTHY) {
        if (!fd_run_until(d, done, 400000)) {
            fprintf(stderr, "cut at write %ld: not committed (state %d, running %d)\n", n,
                    ota_agent_state(&d->agent), d->running);
            fd_dump_events(d);
            fail();
        }
        assert_string_equal(fd_running_version(d), "1.1.0");
        assert_memory_equal(d->slot[1], img, IMG_SIZE);
    } else {
        fd_run_for(d, 120000);
        assert_true(d->running >= 0);
        assert_string_equal(fd_running_version(d), "1.0.0");
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cut_at_every_write),
        cmocka_unit_test(test_cut_with_bad_image),
    };
    return cmocka_run_group_tests_name("powerloss", tests, NULL, NULL);
}

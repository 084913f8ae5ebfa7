/* test_posix_slots.c - the simulator's ESP-IDF otadata (bootloader and
 * esp_ota_ops, as in ESP-IDF's sources: NEW -> PENDING_VERIFY -> VALID, an
 * unconfirmed boot reverts, esp_ota_set_boot_partition always writes NEW),
 * its configuration store, and the POSIX port's flash simulation on top:
 * slot files, resume, atomic kv, reset reasons and exit codes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "port_posix.h"
#include "testkit.h"

static char dir[256];

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof(dir), "%s/otamq-slots-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    return mkdtemp(dir) == NULL;
}

static int teardown(void **state)
{
    char cmd[300];
    (void)state;
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    return system(cmd);
}

static uint32_t state_of(const ota_otadata_t *od, int slot)
{
    uint32_t st = OTA_OD_UNDEFINED;
    (void)ota_od_state(od, slot, &st);
    return st;
}

static void test_otadata_semantics(void **state)
{
    ota_otadata_t od;
    bool ok[2] = {true, true}, bad1[2] = {true, false}, none[2] = {false, false};
    unsigned w;
    (void)state;
    /* a fresh (erased) otadata: ota_0, and entry 0 is set to name it */
    ota_od_init(&od);
    assert_int_equal(ota_od_boot(&od, ok, &w), 0);
    assert_int_equal(w, 1u);
    assert_int_equal(od.e[0].seq, 1u);
    assert_int_equal(state_of(&od, 0), OTA_OD_VALID);
    /* esp_ota_set_boot_partition(ota_1): the other entry, seq 2, NEW */
    ota_od_set_boot(&od, 1, &w);
    assert_int_equal(w, 2u);
    assert_int_equal(od.e[1].seq, 2u);
    assert_int_equal(state_of(&od, 1), OTA_OD_NEW);
    /* the bootloader starts it PENDING_VERIFY ... */
    assert_int_equal(ota_od_boot(&od, ok, &w), 1);
    assert_int_equal(state_of(&od, 1), OTA_OD_PENDING_VERIFY);
    assert_true(ota_od_rollback_possible(&od, ok));
    /* ... and, unconfirmed, ABORTED at the next start: back to ota_0 */
    assert_int_equal(ota_od_boot(&od, ok, &w), 0);
    assert_int_equal(state_of(&od, 1), OTA_OD_ABORTED);
    /* confirmed, it stays */
    ota_od_set_boot(&od, 1, &w);
    assert_int_equal(od.e[1].seq, 2u);
    assert_int_equal(ota_od_boot(&od, ok, &w), 1);
    assert_true(ota_od_mark_valid(&od, &w));
    assert_int_equal(state_of(&od, 1), OTA_OD_VALID);
    assert_int_equal(ota_od_boot(&od, ok, &w), 1);
    assert_int_equal(w, 0u);
    /* a rollback after confirming goes through esp_ota_set_boot_partition:
     * the OLD image is NEW again and starts PENDING_VERIFY, like an update */
    ota_od_set_boot(&od, 0, &w);
    assert_int_equal(od.e[0].seq, 3u);
    assert_int_equal(ota_od_boot(&od, ok, &w), 0);
    assert_int_equal(state_of(&od, 0), OTA_OD_PENDING_VERIFY);
    /* and if it is not confirmed, the bootloader goes back to the image
     * rolled back from, which is still VALID */
    {
        ota_otadata_t copy = od;
        assert_int_equal(ota_od_boot(&copy, ok, &w), 1);
    }
    /* confirmed and the inactive entry invalidated, it cannot */
    assert_true(ota_od_mark_valid(&od, &w));
    assert_true(ota_od_invalidate_inactive(&od, 0, &w));
    assert_int_equal(od.e[1].seq, OTA_OD_ERASED);
    assert_false(ota_od_rollback_possible(&od, ok));
    assert_false(ota_od_invalidate_inactive(&od, 0, &w)); /* nothing left to erase */
    assert_int_equal(ota_od_boot(&od, ok, &w), 0);
    /* esp_ota_mark_app_invalid_rollback needs somewhere to go */
    assert_false(ota_od_mark_invalid(&od, ok, &w));
    /* invalidate never erases the entry of the running slot */
    ota_od_set_boot(&od, 1, &w);
    assert_false(ota_od_invalidate_inactive(&od, 0, &w) && od.e[0].seq == OTA_OD_ERASED);
    /* a slot whose image does not load is passed over, whatever otadata says */
    assert_int_equal(ota_od_boot(&od, bad1, &w), 0);
    assert_int_equal(ota_od_boot(&od, none, &w), -1);
}

static void test_otadata_codec(void **state)
{
    ota_otadata_t a, b;
    uint8_t raw[64];
    unsigned w;
    bool ok[2] = {true, true};
    (void)state;
    ota_od_init(&a);
    ota_od_set(&a, 0, 5, OTA_OD_VALID);
    ota_od_set(&a, 1, 6, OTA_OD_PENDING_VERIFY);
    ota_od_encode(&a, raw);
    ota_od_decode(&b, raw);
    assert_memory_equal(&a, &b, sizeof(a));
    /* a corrupt entry (its checksum no longer matches) is not used */
    raw[32] ^= 1;
    ota_od_decode(&b, raw);
    assert_int_equal(ota_od_active(&b), 0);
    assert_int_equal(ota_od_boot(&b, ok, &w), 0);
}

static void test_cfgdata_semantics(void **state)
{
    ota_cfgdata_t c, d;
    uint8_t raw[12];
    (void)state;
    ota_cfgdata_init(&c);
    assert_false(ota_cfgdata_boot(&c));
    /* in use at once, unconfirmed: a start reverts it to none */
    ota_cfgdata_activate(&c, 0, 100, false);
    assert_int_equal(c.active, 0);
    assert_int_equal(c.state, OTA_OD_PENDING_VERIFY);
    assert_true(ota_cfgdata_boot(&c));
    assert_int_equal(c.active, OTA_CFG_NONE);
    /* confirmed, it stays; the next one keeps it as the previous */
    ota_cfgdata_activate(&c, 0, 100, false);
    c.state = OTA_OD_VALID;
    assert_false(ota_cfgdata_boot(&c));
    ota_cfgdata_activate(&c, 1, 200, true); /* at the next start */
    assert_int_equal(c.state, OTA_OD_NEW);
    assert_true(ota_cfgdata_boot(&c));
    assert_int_equal(c.active, 1);
    assert_int_equal(c.state, OTA_OD_PENDING_VERIFY);
    assert_true(ota_cfgdata_boot(&c)); /* started once, not confirmed */
    assert_int_equal(c.active, 0);
    assert_int_equal(c.size[1], 0u); /* forgotten */
    /* a rollback after confirming goes back to the previous one */
    ota_cfgdata_activate(&c, 1, 300, false);
    c.state = OTA_OD_VALID;
    ota_cfgdata_rollback(&c);
    assert_int_equal(c.active, 0);
    assert_int_equal(c.previous, OTA_CFG_NONE);
    ota_cfgdata_encode(&c, raw);
    assert_true(ota_cfgdata_decode(&d, raw));
    assert_int_equal(d.active, c.active);
    assert_int_equal(d.previous, c.previous);
    assert_int_equal(d.state, c.state);
    assert_int_equal(d.size[0], c.size[0]);
    assert_int_equal(d.size[1], c.size[1]);
    raw[5] ^= 1;
    assert_false(ota_cfgdata_decode(&d, raw));
}

static void boot(ota_posix_t *p, ota_port_t *port)
{
    memset(p, 0, sizeof(*p));
    assert_int_equal(ota_posix_boot(p, dir, "1.0.0", 0), OTA_OK);
    ota_posix_port(p, port);
}

static void write_slot(ota_port_t *port, uint8_t kind, const uint8_t *img, uint32_t n)
{
    assert_int_equal(port->slot_begin(port->ctx, kind, n, 0), OTA_OK);
    assert_int_equal(port->slot_write(port->ctx, kind, 0, img, n / 2u), OTA_OK);
    assert_int_equal(port->slot_write(port->ctx, kind, n / 2u, img + n / 2u, n - n / 2u), OTA_OK);
    assert_int_equal(port->slot_finish(port->ctx, kind), OTA_OK);
}

static void install_image(ota_port_t *port, const char *version)
{
    uint8_t img[5000];
    tk_image(img, sizeof(img), OTA_SIM_HEALTHY, 0, version, 3);
    write_slot(port, 0, img, sizeof(img));
    assert_int_equal(port->slot_activate(port->ctx, 0), OTA_OK);
}

/* Runs fn in a child process (the port's rollback and reboot end it) and
 * returns its exit code. */
static int in_child(ota_port_t *port, int (*fn)(ota_port_t *))
{
    int status;
    pid_t pid = fork();
    if (pid == 0)
        _exit(fn(port) == OTA_OK ? 0 : 99);
    assert_true(waitpid(pid, &status, 0) == pid);
    assert_true(WIFEXITED(status));
    return WEXITSTATUS(status);
}

static int do_rollback(ota_port_t *port)
{
    return port->rollback(port->ctx, 0);
}

static void test_update_confirm_and_revert(void **state)
{
    ota_posix_t p;
    ota_port_t port;
    ota_boot_info_t bi;
    (void)state;
    boot(&p, &port);
    assert_int_equal(p.running, 0);
    assert_string_equal(p.hdr.version, "1.0.0");
    install_image(&port, "1.1.0");

    boot(&p, &port); /* first boot of the new image */
    assert_int_equal(p.running, 1);
    assert_string_equal(p.hdr.version, "1.1.0");
    assert_int_equal(port.boot_state(port.ctx, 0, &bi), OTA_OK);
    assert_int_equal(bi.img_state, OTA_IMG_PENDING_VERIFY);
    /* a download may not start before the trial ends (esp_ota_begin) */
    assert_int_equal(port.slot_begin(port.ctx, 0, 100, 0), OTA_ERR_STATE);

    boot(&p, &port); /* not confirmed: the bootloader reverts */
    assert_int_equal(p.running, 0);
    assert_string_equal(p.hdr.version, "1.0.0");
    assert_int_equal(state_of(&p.od, 1), OTA_OD_ABORTED);

    install_image(&port, "1.2.0");
    boot(&p, &port);
    assert_int_equal(p.running, 1);
    assert_int_equal(port.confirm(port.ctx, 0), OTA_OK);
    boot(&p, &port); /* confirmed: stays */
    assert_int_equal(p.running, 1);
    assert_string_equal(p.hdr.version, "1.2.0");
    assert_int_equal(port.boot_state(port.ctx, 0, &bi), OTA_OK);
    assert_int_equal(bi.img_state, OTA_IMG_VALID);
}

/* The POSIX port's rollback of a confirmed image is ESP-IDF's: the old
 * image starts PENDING_VERIFY (and the agent confirms it and invalidates
 * the other entry, see test_agent.c); before confirming, the old one is
 * started as it was. */
static void test_rollbacks(void **state)
{
    ota_posix_t p;
    ota_port_t port;
    ota_boot_info_t bi;
    (void)state;
    boot(&p, &port);
    install_image(&port, "1.1.0");
    boot(&p, &port);
    assert_int_equal(in_child(&port, do_rollback), OTA_EXIT_REBOOT); /* unconfirmed */
    boot(&p, &port);
    assert_int_equal(p.running, 0);
    assert_int_equal(port.boot_state(port.ctx, 0, &bi), OTA_OK);
    assert_int_equal(bi.img_state, OTA_IMG_VALID);
    assert_int_equal(state_of(&p.od, 1), OTA_OD_INVALID);

    install_image(&port, "1.2.0");
    boot(&p, &port);
    assert_int_equal(port.confirm(port.ctx, 0), OTA_OK);
    assert_int_equal(in_child(&port, do_rollback), OTA_EXIT_REBOOT); /* confirmed */
    boot(&p, &port);
    assert_int_equal(p.running, 0);
    assert_int_equal(port.boot_state(port.ctx, 0, &bi), OTA_OK);
    assert_int_equal(bi.img_state, OTA_IMG_PENDING_VERIFY);
    assert_int_equal(port.confirm(port.ctx, 0), OTA_OK);
    assert_int_equal(port.invalidate_other(port.ctx), OTA_OK);
    assert_int_equal(state_of(&p.od, 1), OTA_OD_UNDEFINED); /* no entry names it */
    boot(&p, &port);
    assert_int_equal(p.running, 0);
    /* a rollback needs an image in the other slot (esp_ota_set_boot_
     * partition validates it, whatever otadata says) */
    {
        char f[300];
        snprintf(f, sizeof(f), "%s/slot1.bin", dir);
        assert_int_equal(unlink(f), 0);
    }
    assert_int_equal(port.rollback(port.ctx, 0), OTA_ERR_STATE);
    /* esp_ota_begin of ESP-IDF >= 5.5 invalidates too; --no-invalidate
     * (ESP-IDF < 5.5) has no such member */
    p.no_invalidate = true;
    ota_posix_port(&p, &port);
    assert_null(port.invalidate_other);
}

static void test_resume_and_read(void **state)
{
    ota_posix_t p;
    ota_port_t port;
    uint8_t img[5000], back[5000];
    (void)state;
    boot(&p, &port);
    tk_image(img, sizeof(img), OTA_SIM_HEALTHY, 0, "1.1.0", 4);
    assert_int_equal(port.slot_begin(port.ctx, 0, sizeof(img), 0), OTA_OK);
    assert_int_equal(port.slot_write(port.ctx, 0, 0, img, 4000), OTA_OK);
    /* "reset": resume at a persisted offset below what was written */
    boot(&p, &port);
    assert_int_equal(port.slot_begin(port.ctx, 0, sizeof(img), 2048), OTA_OK);
    assert_int_equal(port.slot_read(port.ctx, 0, 0, back, 2048), OTA_OK);
    assert_memory_equal(back, img, 2048);
    assert_int_equal(port.slot_read(port.ctx, 0, 2048, back, 10), OTA_ERR_FLASH); /* truncated */
    assert_int_equal(port.slot_write(port.ctx, 0, 2048, img + 2048, 2952), OTA_OK);
    assert_int_equal(port.slot_finish(port.ctx, 0), OTA_OK);
    assert_int_equal(port.slot_read(port.ctx, 0, 0, back, sizeof(img)), OTA_OK);
    assert_memory_equal(back, img, sizeof(img));
    /* resume beyond what exists is refused */
    assert_int_equal(port.slot_begin(port.ctx, 0, sizeof(img), 0), OTA_OK);
    boot(&p, &port);
    assert_int_equal(port.slot_begin(port.ctx, 0, sizeof(img), 100), OTA_ERR_FLASH);
    /* not an image: finish refuses */
    assert_int_equal(port.slot_begin(port.ctx, 0, 100, 0), OTA_OK);
    memset(back, 0, 100);
    assert_int_equal(port.slot_write(port.ctx, 0, 0, back, 100), OTA_OK);
    assert_int_equal(port.slot_finish(port.ctx, 0), OTA_ERR_FLASH);
}

static int changes;
static void count_change(void *user, uint8_t kind)
{
    (void)user;
    (void)kind;
    changes++;
}

static void test_config_slots(void **state)
{
    ota_posix_t p;
    ota_port_t port;
    ota_boot_info_t bi;
    uint8_t buf[64];
    (void)state;
    boot(&p, &port);
    assert_int_equal(ota_posix_config(&p, 1, buf, sizeof(buf)), 0); /* none */
    p.config_changed = count_change;
    changes = 0;
    write_slot(&port, 1, (const uint8_t *)"wifi=a", 6);
    assert_int_equal(port.boot_state(port.ctx, 1, &bi), OTA_OK);
    assert_int_equal(bi.running_slot, 1); /* none yet: the first goes to 0 */
    assert_int_equal(port.slot_activate(port.ctx, 1), OTA_OK);
    assert_int_equal(changes, 1);
    assert_int_equal(ota_posix_config(&p, 1, buf, sizeof(buf)), 6);
    assert_memory_equal(buf, "wifi=a", 6);
    assert_int_equal(port.boot_state(port.ctx, 1, &bi), OTA_OK);
    assert_int_equal(bi.running_slot, 0);
    assert_int_equal(bi.img_state, OTA_IMG_PENDING_VERIFY);
    /* not confirmed before a start: gone again */
    boot(&p, &port);
    assert_int_equal(ota_posix_config(&p, 1, buf, sizeof(buf)), 0);
    /* confirmed: kept, and the previous one when the next is rolled back */
    write_slot(&port, 1, (const uint8_t *)"wifi=a", 6);
    assert_int_equal(port.slot_activate(port.ctx, 1), OTA_OK);
    assert_int_equal(port.confirm(port.ctx, 1), OTA_OK);
    boot(&p, &port);
    assert_int_equal(ota_posix_config(&p, 1, buf, sizeof(buf)), 6);
    write_slot(&port, 1, (const uint8_t *)"wifi=bb", 7);
    assert_int_equal(port.slot_activate(port.ctx, 1), OTA_OK);
    assert_int_equal(ota_posix_config(&p, 1, buf, sizeof(buf)), 7);
    assert_int_equal(port.rollback(port.ctx, 1), OTA_OK); /* returns: no restart */
    assert_int_equal(ota_posix_config(&p, 1, buf, sizeof(buf)), 6);
    assert_memory_equal(buf, "wifi=a", 6);
    /* the feature flags are apart */
    assert_int_equal(ota_posix_config(&p, 2, buf, sizeof(buf)), 0);
}

static void test_kv(void **state)
{
    ota_posix_t p;
    ota_port_t port;
    uint8_t buf[16];
    size_t len = sizeof(buf);
    (void)state;
    boot(&p, &port);
    assert_int_equal(port.kv_get(port.ctx, "k", buf, &len), OTA_ERR_NOT_FOUND);
    assert_int_equal(port.kv_set(port.ctx, "k", (const uint8_t *)"hello", 5), OTA_OK);
    len = sizeof(buf);
    assert_int_equal(port.kv_get(port.ctx, "k", buf, &len), OTA_OK);
    assert_int_equal(len, 5);
    assert_memory_equal(buf, "hello", 5);
    len = 3;
    assert_int_equal(port.kv_get(port.ctx, "k", buf, &len), OTA_ERR_NOSPACE);
    assert_int_equal(port.kv_set(port.ctx, "../x", buf, 1), OTA_ERR_ARG);
    /* no temporary files left behind */
    char cmd[400];
    snprintf(cmd, sizeof(cmd), "ls -a '%s' | grep -q tmp", dir);
    assert_int_not_equal(system(cmd), 0);
}

static void test_reset_reason_and_exit_code(void **state)
{
    ota_posix_t p;
    ota_port_t port;
    int status;
    pid_t pid;
    (void)state;
    boot(&p, &port);
    assert_int_equal(p.reason, OTA_BOOT_POWER_ON);
    pid = fork();
    if (pid == 0)
        ota_posix_reset(&p, OTA_BOOT_WATCHDOG, OTA_EXIT_WATCHDOG);
    assert_true(waitpid(pid, &status, 0) == pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), OTA_EXIT_WATCHDOG);
    boot(&p, &port);
    assert_int_equal(p.reason, OTA_BOOT_WATCHDOG);
    boot(&p, &port); /* the reason is consumed: next is a power-on */
    assert_int_equal(p.reason, OTA_BOOT_POWER_ON);
    pid = fork();
    if (pid == 0)
        port.reboot(port.ctx);
    assert_true(waitpid(pid, &status, 0) == pid);
    assert_int_equal(WEXITSTATUS(status), OTA_EXIT_REBOOT);
    boot(&p, &port);
    assert_int_equal(p.reason, OTA_BOOT_SOFTWARE);
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_otadata_semantics), cmocka_unit_test(test_otadata_codec),
        cmocka_unit_test(test_cfgdata_semantics), T(test_update_confirm_and_revert),
        T(test_rollbacks),                        T(test_resume_and_read),
        T(test_config_slots),                     T(test_kv),
        T(test_reset_reason_and_exit_code),
    };
    return cmocka_run_group_tests_name("posix_slots", tests, NULL, NULL);
}

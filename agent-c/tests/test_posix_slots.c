/* test_posix_slots.c - the POSIX port's flash simulation: otadata
 * semantics (NEW -> PENDING_VERIFY -> VALID, an unconfirmed boot reverts),
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

static void test_select_semantics(void **state)
{
    ota_otadata_t od;
    bool ok[2] = {true, true}, bad1[2] = {true, false};
    (void)state;
    memset(&od, 0, sizeof(od));
    assert_int_equal(ota_otadata_select(&od, ok), 0); /* factory state */
    od.boot_slot = 1;
    od.state[1] = OTA_SLOT_NEW;
    assert_int_equal(ota_otadata_select(&od, ok), 1);
    assert_int_equal(od.state[1], OTA_SLOT_PENDING_VERIFY);
    /* the next boot was not confirmed: revert */
    assert_int_equal(ota_otadata_select(&od, ok), 0);
    assert_int_equal(od.state[1], OTA_SLOT_ABORTED);
    assert_int_equal(od.boot_slot, 0);
    /* a NEW slot whose image is not bootable is skipped and invalidated */
    od.boot_slot = 1;
    od.state[1] = OTA_SLOT_NEW;
    assert_int_equal(ota_otadata_select(&od, bad1), 0);
    assert_int_equal(od.state[1], OTA_SLOT_INVALID);
    /* nothing bootable */
    od.state[0] = OTA_SLOT_INVALID;
    assert_int_equal(ota_otadata_select(&od, bad1), -1);
}

static void test_otadata_codec(void **state)
{
    ota_otadata_t a = {1, {OTA_SLOT_VALID, OTA_SLOT_PENDING_VERIFY}}, b;
    uint8_t raw[8];
    (void)state;
    ota_otadata_encode(&a, raw);
    assert_true(ota_otadata_decode(&b, raw));
    assert_memory_equal(&a, &b, sizeof(a));
    raw[3] ^= 1;
    assert_false(ota_otadata_decode(&b, raw));
}

static void boot(ota_posix_t *p, ota_port_t *port)
{
    memset(p, 0, sizeof(*p));
    assert_int_equal(ota_posix_boot(p, dir, "1.0.0", 0), OTA_OK);
    ota_posix_port(p, port);
}

static void install_image(ota_port_t *port, const char *version)
{
    uint8_t img[5000];
    tk_image(img, sizeof(img), OTA_SIM_HEALTHY, 0, version, 3);
    assert_int_equal(port->slot_begin(port->ctx, sizeof(img), 0), OTA_OK);
    assert_int_equal(port->slot_write(port->ctx, 0, img, 3000), OTA_OK);
    assert_int_equal(port->slot_write(port->ctx, 3000, img + 3000, 2000), OTA_OK);
    assert_int_equal(port->slot_finish(port->ctx), OTA_OK);
    assert_int_equal(port->slot_activate(port->ctx), OTA_OK);
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
    assert_int_equal(port.boot_state(port.ctx, &bi), OTA_OK);
    assert_int_equal(bi.img_state, OTA_IMG_PENDING_VERIFY);
    assert_true(bi.other_slot_bootable);
    /* a download may not start before the trial ends (esp_ota_begin) */
    assert_int_equal(port.slot_begin(port.ctx, 100, 0), OTA_ERR_STATE);

    boot(&p, &port); /* not confirmed: the bootloader reverts */
    assert_int_equal(p.running, 0);
    assert_string_equal(p.hdr.version, "1.0.0");
    assert_int_equal(p.od.state[1], OTA_SLOT_ABORTED);

    install_image(&port, "1.2.0");
    boot(&p, &port);
    assert_int_equal(p.running, 1);
    assert_int_equal(port.confirm(port.ctx), OTA_OK);
    boot(&p, &port); /* confirmed: stays */
    assert_int_equal(p.running, 1);
    assert_string_equal(p.hdr.version, "1.2.0");
    assert_int_equal(port.boot_state(port.ctx, &bi), OTA_OK);
    assert_int_equal(bi.img_state, OTA_IMG_VALID);
}

static void test_resume_and_read(void **state)
{
    ota_posix_t p;
    ota_port_t port;
    uint8_t img[5000], back[5000];
    (void)state;
    boot(&p, &port);
    tk_image(img, sizeof(img), OTA_SIM_HEALTHY, 0, "1.1.0", 4);
    assert_int_equal(port.slot_begin(port.ctx, sizeof(img), 0), OTA_OK);
    assert_int_equal(port.slot_write(port.ctx, 0, img, 4000), OTA_OK);
    /* "reset": resume at a persisted offset below what was written */
    boot(&p, &port);
    assert_int_equal(port.slot_begin(port.ctx, sizeof(img), 2048), OTA_OK);
    assert_int_equal(port.slot_read(port.ctx, 0, back, 2048), OTA_OK);
    assert_memory_equal(back, img, 2048);
    assert_int_equal(port.slot_read(port.ctx, 2048, back, 10), OTA_ERR_FLASH); /* truncated */
    assert_int_equal(port.slot_write(port.ctx, 2048, img + 2048, 2952), OTA_OK);
    assert_int_equal(port.slot_finish(port.ctx), OTA_OK);
    assert_int_equal(port.slot_read(port.ctx, 0, back, sizeof(img)), OTA_OK);
    assert_memory_equal(back, img, sizeof(img));
    /* resume beyond what exists is refused */
    assert_int_equal(port.slot_begin(port.ctx, sizeof(img), 0), OTA_OK);
    boot(&p, &port);
    assert_int_equal(port.slot_begin(port.ctx, sizeof(img), 100), OTA_ERR_FLASH);
    /* not an image: finish refuses */
    assert_int_equal(port.slot_begin(port.ctx, 100, 0), OTA_OK);
    memset(back, 0, 100);
    assert_int_equal(port.slot_write(port.ctx, 0, back, 100), OTA_OK);
    assert_int_equal(port.slot_finish(port.ctx), OTA_ERR_FLASH);
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
        cmocka_unit_test(test_select_semantics), cmocka_unit_test(test_otadata_codec),
        T(test_update_confirm_and_revert),       T(test_resume_and_read),
        T(test_kv),                              T(test_reset_reason_and_exit_code),
    };
    return cmocka_run_group_tests_name("posix_slots", tests, NULL, NULL);
}

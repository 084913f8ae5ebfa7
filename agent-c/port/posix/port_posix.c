/* port_posix.c - slots, otadata, kv store, clock and boot of the POSIX port. */
#include "port_posix.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "crypto_mbedtls.h"
#include "mqtt_mosquitto.h"

static ota_posix_t *P(void *ctx)
{
    return (ota_posix_t *)ctx;
}

uint64_t ota_posix_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void path(char *out, size_t cap, const char *dir, const char *name)
{
    snprintf(out, cap, "%s/%s", dir, name);
}

static int fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    int rc;
    if (fd < 0)
        return -1;
    rc = fsync(fd);
    close(fd);
    return rc;
}

static int write_all(int fd, const void *buf, size_t len, off_t off)
{
    const uint8_t *p = (const uint8_t *)buf;
    while (len > 0u) {
        ssize_t n = pwrite(fd, p, len, off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += n;
        len -= (size_t)n;
        off += (off_t)n;
    }
    return 0;
}

int ota_posix_write_atomic(const char *dir, const char *name, const void *buf, size_t len)
{
    char tmp[600], dst[600];
    int fd, rc;
    snprintf(tmp, sizeof(tmp), "%s/.%s.tmp", dir, name);
    path(dst, sizeof(dst), dir, name);
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        return -1;
    rc = write_all(fd, buf, len, 0);
    if (rc == 0)
        rc = fsync(fd);
    if (close(fd) != 0)
        rc = -1;
    if (rc == 0)
        rc = rename(tmp, dst);
    if (rc == 0)
        rc = fsync_dir(dir);
    if (rc != 0)
        unlink(tmp);
    return rc;
}

static int read_file(const char *dir, const char *name, void *buf, size_t cap, size_t *len)
{
    char p[600];
    int fd;
    ssize_t n;
    path(p, sizeof(p), dir, name);
    fd = open(p, O_RDONLY);
    if (fd < 0)
        return errno == ENOENT ? OTA_ERR_NOT_FOUND : OTA_ERR_IO;
    n = read(fd, buf, cap);
    if (n >= 0 && (size_t)n == cap) {
        char extra;
        if (read(fd, &extra, 1) == 1)
            n = -2;
    }
    close(fd);
    if (n == -2)
        return OTA_ERR_NOSPACE;
    if (n < 0)
        return OTA_ERR_IO;
    *len = (size_t)n;
    return OTA_OK;
}

static int save_otadata(ota_posix_t *p)
{
    uint8_t b[64];
    ota_od_encode(&p->od, b);
    return ota_posix_write_atomic(p->dir, "otadata", b, sizeof(b)) == 0 ? OTA_OK : OTA_ERR_IO;
}

static int save_cfgdata(ota_posix_t *p, uint8_t kind)
{
    char name[32];
    uint8_t b[12];
    snprintf(name, sizeof(name), "cfgdata-%u", (unsigned)kind);
    ota_cfgdata_encode(&p->cd[kind - 1u], b);
    return ota_posix_write_atomic(p->dir, name, b, sizeof(b)) == 0 ? OTA_OK : OTA_ERR_IO;
}

static bool slot_header(const char *dir, int s, ota_sim_header_t *h)
{
    char name[32], fp[600];
    uint8_t b[OTA_SIM_HDR_SIZE];
    ssize_t n;
    int fd;
    snprintf(name, sizeof(name), "slot%d.bin", s);
    path(fp, sizeof(fp), dir, name);
    fd = open(fp, O_RDONLY);
    if (fd < 0)
        return false;
    n = pread(fd, b, sizeof(b), 0);
    close(fd);
    return n == (ssize_t)sizeof(b) && ota_sim_header_parse(b, sizeof(b), h);
}

static void images_ok(const ota_posix_t *p, bool ok[2])
{
    ota_sim_header_t h;
    ok[0] = slot_header(p->dir, 0, &h);
    ok[1] = slot_header(p->dir, 1, &h);
}

/* The name of slot s of kind: slotN.bin or cfgK-slotN.bin (".part" while
 * being written). */
static void slot_name(char *out, size_t cap, uint8_t kind, int s, bool part)
{
    if (kind == 0u)
        snprintf(out, cap, "slot%d.%s", s, part ? "part" : "bin");
    else
        snprintf(out, cap, "cfg%u-slot%d.%s", (unsigned)kind, s, part ? "part" : "bin");
}

static int cfg_target(const ota_posix_t *p, uint8_t kind)
{
    const ota_cfgdata_t *c = &p->cd[kind - 1u];
    return c->active == OTA_CFG_NONE ? 0 : c->active ^ 1;
}

long ota_posix_config(const ota_posix_t *p, uint8_t kind, uint8_t *buf, size_t cap)
{
    const ota_cfgdata_t *c;
    char name[32];
    size_t n;
    if (kind < 1u || kind >= OTA_KINDS)
        return -1;
    c = &p->cd[kind - 1u];
    if (c->active == OTA_CFG_NONE)
        return 0;
    slot_name(name, sizeof(name), kind, c->active, false);
    if (read_file(p->dir, name, buf, cap, &n) != OTA_OK || n != c->size[c->active])
        return -1;
    return (long)n;
}

/* ---- boot ------------------------------------------------------------------ */

static uint8_t reason_from_text(const char *s)
{
    if (strncmp(s, "software", 8) == 0)
        return OTA_BOOT_SOFTWARE;
    if (strncmp(s, "watchdog", 8) == 0)
        return OTA_BOOT_WATCHDOG;
    if (strncmp(s, "panic", 5) == 0)
        return OTA_BOOT_PANIC;
    return OTA_BOOT_POWER_ON;
}

int ota_posix_boot(ota_posix_t *p, const char *dir, const char *initial_version,
                   uint32_t initial_secure_version)
{
    uint8_t b[OTA_SIM_HDR_SIZE + 4096];
    char txt[32], name[32];
    size_t n;
    bool ok[2];
    ota_sim_header_t h;
    unsigned written;
    uint8_t k;
    int s;

    p->part_fd = -1;
    p->t0_ms = ota_posix_mono_ms();
    if (p->slot_max == 0u)
        p->slot_max = 64u * 1024u * 1024u;
    snprintf(p->dir, sizeof(p->dir), "%s", dir);
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "otamq-agent: cannot create %s: %s\n", dir, strerror(errno));
        return OTA_ERR_IO;
    }
    if (!slot_header(dir, 0, &h) && !slot_header(dir, 1, &h)) {
        /* factory state: a healthy image of the initial version in slot 0 */
        memset(&h, 0, sizeof(h));
        snprintf(h.version, sizeof(h.version), "%s", initial_version);
        h.secure_version = initial_secure_version;
        memset(b, 0, sizeof(b));
        ota_sim_header_build(b, &h);
        if (ota_posix_write_atomic(dir, "slot0.bin", b, sizeof(b)) != 0)
            return OTA_ERR_IO;
    }
    if (read_file(dir, "otadata", b, 64, &n) == OTA_OK && n == 64u)
        ota_od_decode(&p->od, b);
    else
        ota_od_init(&p->od); /* erased */
    images_ok(p, ok);
    s = ota_od_boot(&p->od, ok, &written);
    if (written != 0u && save_otadata(p) != OTA_OK)
        return OTA_ERR_IO;
    if (s < 0) {
        fprintf(stderr, "otamq-agent: no bootable slot\n");
        return OTA_ERR_IO;
    }
    p->running = s;
    if (!slot_header(dir, s, &p->hdr))
        return OTA_ERR_IO;
    /* the configurations start with the image, by the same rules */
    for (k = 1; k < OTA_KINDS; k++) {
        snprintf(name, sizeof(name), "cfgdata-%u", (unsigned)k);
        if (read_file(dir, name, b, 12, &n) != OTA_OK || n != 12u ||
            !ota_cfgdata_decode(&p->cd[k - 1u], b))
            ota_cfgdata_init(&p->cd[k - 1u]);
        if (ota_cfgdata_boot(&p->cd[k - 1u]) && save_cfgdata(p, k) != OTA_OK)
            return OTA_ERR_IO;
    }
    p->reason = OTA_BOOT_POWER_ON;
    memset(txt, 0, sizeof(txt));
    if (read_file(dir, "reset-reason", txt, sizeof(txt) - 1u, &n) == OTA_OK) {
        char rp[600];
        p->reason = reason_from_text(txt);
        path(rp, sizeof(rp), dir, "reset-reason");
        unlink(rp);
        fsync_dir(dir);
    }
    return OTA_OK;
}

void ota_posix_reset(ota_posix_t *p, uint8_t reason, int exit_code)
{
    const char *txt = reason == OTA_BOOT_WATCHDOG ? "watchdog"
                      : reason == OTA_BOOT_PANIC  ? "panic"
                                                  : "software";
    if (p->part_fd >= 0)
        close(p->part_fd);
    ota_posix_write_atomic(p->dir, "reset-reason", txt, strlen(txt));
    fflush(NULL);
    _exit(exit_code);
}

/* ---- port members ------------------------------------------------------ */

static int pp_publish(void *ctx, const char *topic, const uint8_t *payload, size_t len, int qos)
{
    return ota_mq_publish(P(ctx)->mq, topic, payload, len, qos);
}

static int pp_subscribe(void *ctx, const char *topic, int qos)
{
    return ota_mq_subscribe(P(ctx)->mq, topic, qos);
}

static uint32_t running_state(const ota_posix_t *p)
{
    uint32_t st = OTA_OD_UNDEFINED;
    (void)ota_od_state(&p->od, p->running, &st);
    return st;
}

static int pp_slot_begin(void *ctx, uint8_t kind, uint32_t size, uint32_t resume)
{
    ota_posix_t *p = P(ctx);
    char name[32], fp[600];
    struct stat st;
    unsigned written;
    if (kind == 0u) {
        if (running_state(p) == OTA_OD_PENDING_VERIFY)
            return OTA_ERR_STATE; /* as esp_ota_begin: finish the trial first */
        if (size > p->slot_max)
            return OTA_ERR_NOSPACE;
        p->target = p->running ^ 1;
    } else {
        if (size > OTA_POSIX_CFG_MAX)
            return OTA_ERR_NOSPACE;
        p->target = cfg_target(p, kind);
    }
    if (p->part_fd >= 0)
        close(p->part_fd);
    p->wkind = kind;
    slot_name(name, sizeof(name), kind, p->target, true);
    path(fp, sizeof(fp), p->dir, name);
    p->part_fd = open(fp, O_RDWR | O_CREAT | (resume == 0u ? O_TRUNC : 0), 0644);
    if (p->part_fd < 0)
        return OTA_ERR_FLASH;
    if (resume != 0u && (fstat(p->part_fd, &st) != 0 || (uint64_t)st.st_size < resume ||
                         ftruncate(p->part_fd, (off_t)resume) != 0)) {
        close(p->part_fd);
        p->part_fd = -1;
        return OTA_ERR_FLASH;
    }
    p->write_size = size;
    fsync_dir(p->dir);
    /* esp_ota_begin (ESP-IDF >= 5.5, rollback enabled): the bootloader may
     * no longer fall back to the slot being overwritten */
    if (kind == 0u && resume == 0u && !p->no_invalidate &&
        ota_od_invalidate_inactive(&p->od, p->running, &written) && save_otadata(p) != OTA_OK)
        return OTA_ERR_FLASH;
    return OTA_OK;
}

static int pp_slot_write(void *ctx, uint8_t kind, uint32_t off, const uint8_t *data, size_t len)
{
    ota_posix_t *p = P(ctx);
    if (p->part_fd < 0 || kind != p->wkind || (uint64_t)off + len > p->write_size)
        return OTA_ERR_FLASH;
    /* durable before the agent persists the new offset */
    if (write_all(p->part_fd, data, len, (off_t)off) != 0 || fdatasync(p->part_fd) != 0)
        return OTA_ERR_FLASH;
    return OTA_OK;
}

static int pp_slot_read(void *ctx, uint8_t kind, uint32_t off, uint8_t *buf, size_t len)
{
    ota_posix_t *p = P(ctx);
    char name[32], fp[600];
    int fd = p->part_fd, rc = OTA_OK;
    if (fd < 0 || kind != p->wkind) {
        slot_name(name, sizeof(name), kind, kind == 0u ? p->running ^ 1 : cfg_target(p, kind),
                  false);
        path(fp, sizeof(fp), p->dir, name);
        fd = open(fp, O_RDONLY);
        if (fd < 0)
            return OTA_ERR_FLASH;
    }
    if (pread(fd, buf, len, (off_t)off) != (ssize_t)len)
        rc = OTA_ERR_FLASH;
    if (fd != p->part_fd)
        close(fd);
    return rc;
}

static int pp_slot_finish(void *ctx, uint8_t kind)
{
    ota_posix_t *p = P(ctx);
    char from[600], to[600], name[32];
    uint8_t b[OTA_SIM_HDR_SIZE];
    ota_sim_header_t h;
    if (p->part_fd < 0 || kind != p->wkind)
        return OTA_ERR_FLASH;
    /* like esp_ota_end: refuse what is not an image */
    if ((kind == 0u && (pread(p->part_fd, b, sizeof(b), 0) != (ssize_t)sizeof(b) ||
                        !ota_sim_header_parse(b, sizeof(b), &h))) ||
        fsync(p->part_fd) != 0)
        return OTA_ERR_FLASH;
    close(p->part_fd);
    p->part_fd = -1;
    slot_name(name, sizeof(name), kind, p->target, true);
    path(from, sizeof(from), p->dir, name);
    slot_name(name, sizeof(name), kind, p->target, false);
    path(to, sizeof(to), p->dir, name);
    if (rename(from, to) != 0 || fsync_dir(p->dir) != 0)
        return OTA_ERR_FLASH;
    return OTA_OK;
}

static void pp_slot_abort(void *ctx, uint8_t kind)
{
    ota_posix_t *p = P(ctx);
    (void)kind;
    if (p->part_fd >= 0) {
        close(p->part_fd);
        p->part_fd = -1;
    }
}

static int pp_slot_activate(void *ctx, uint8_t kind)
{
    ota_posix_t *p = P(ctx);
    ota_sim_header_t h;
    unsigned written;
    uint8_t *buf;
    char name[32];
    size_t n;
    bool restart;
    ota_cfgdata_t old;
    if (kind == 0u) {
        /* esp_ota_set_boot_partition validates the image, then writes NEW */
        if (!slot_header(p->dir, p->running ^ 1, &h))
            return OTA_ERR_FLASH;
        ota_od_set_boot(&p->od, p->running ^ 1, &written);
        return save_otadata(p) == OTA_OK ? OTA_OK : OTA_ERR_FLASH;
    }
    old = p->cd[kind - 1u];
    buf = malloc(OTA_POSIX_CFG_MAX);
    slot_name(name, sizeof(name), kind, cfg_target(p, kind), false);
    if (buf == NULL || read_file(p->dir, name, buf, OTA_POSIX_CFG_MAX, &n) != OTA_OK) {
        free(buf);
        return OTA_ERR_FLASH;
    }
    restart = p->needs_restart != NULL && p->needs_restart(p->user, kind, buf, n);
    free(buf);
    ota_cfgdata_activate(&p->cd[kind - 1u], (uint8_t)cfg_target(p, kind), (uint32_t)n, restart);
    if (save_cfgdata(p, kind) != OTA_OK) {
        p->cd[kind - 1u] = old;
        return OTA_ERR_FLASH;
    }
    if (restart)
        return OTA_ACTIVATE_RESTART;
    if (p->config_changed != NULL)
        p->config_changed(p->user, kind);
    return OTA_OK;
}

static int pp_boot_state(void *ctx, uint8_t kind, ota_boot_info_t *bi)
{
    ota_posix_t *p = P(ctx);
    uint32_t st;
    bi->reason = p->reason;
    if (kind == 0u) {
        bi->running_slot = (uint8_t)p->running;
        st = running_state(p);
    } else {
        const ota_cfgdata_t *c = &p->cd[kind - 1u];
        bi->running_slot = c->active == OTA_CFG_NONE ? 1u : c->active;
        st = c->state;
    }
    bi->img_state = st == OTA_OD_PENDING_VERIFY ? OTA_IMG_PENDING_VERIFY
                    : st == OTA_OD_VALID        ? OTA_IMG_VALID
                                                : OTA_IMG_UNDEFINED;
    return OTA_OK;
}

static int pp_confirm(void *ctx, uint8_t kind)
{
    ota_posix_t *p = P(ctx);
    unsigned written;
    if (kind != 0u) {
        p->cd[kind - 1u].state = OTA_OD_VALID;
        return save_cfgdata(p, kind);
    }
    if (!ota_od_mark_valid(&p->od, &written))
        return OTA_ERR_IO;
    return written != 0u ? save_otadata(p) : OTA_OK;
}

/* Unconfirmed: esp_ota_mark_app_invalid_rollback_and_reboot. Confirmed:
 * esp_ota_set_boot_partition of the other slot (which makes the old image
 * NEW again) and a restart, as the ESP-IDF port does. */
static int pp_rollback(void *ctx, uint8_t kind)
{
    ota_posix_t *p = P(ctx);
    bool ok[2];
    unsigned written;
    if (kind != 0u) {
        ota_cfgdata_rollback(&p->cd[kind - 1u]);
        if (save_cfgdata(p, kind) != OTA_OK)
            return OTA_ERR_IO;
        if (p->config_changed != NULL)
            p->config_changed(p->user, kind);
        return OTA_OK;
    }
    images_ok(p, ok);
    if (running_state(p) == OTA_OD_PENDING_VERIFY) {
        if (!ota_od_mark_invalid(&p->od, ok, &written))
            return OTA_ERR_STATE;
    } else {
        /* esp_ota_set_boot_partition validates the other image */
        if (!ok[p->running ^ 1])
            return OTA_ERR_STATE;
        ota_od_set_boot(&p->od, p->running ^ 1, &written);
    }
    if (save_otadata(p) != OTA_OK)
        return OTA_ERR_IO;
    ota_posix_reset(p, OTA_BOOT_SOFTWARE, OTA_EXIT_REBOOT);
    return OTA_OK;
}

static int pp_invalidate_other(void *ctx)
{
    ota_posix_t *p = P(ctx);
    unsigned written;
    if (!ota_od_invalidate_inactive(&p->od, p->running, &written))
        return OTA_ERR_IO;
    return save_otadata(p);
}

static void pp_reboot(void *ctx)
{
    ota_posix_reset(P(ctx), OTA_BOOT_SOFTWARE, OTA_EXIT_REBOOT);
}

static int kv_name(char *out, size_t cap, const char *key)
{
    size_t i;
    for (i = 0; key[i] != '\0'; i++)
        if (key[i] == '/' || key[i] == '\\')
            return -1;
    snprintf(out, cap, "kv-%s", key);
    return 0;
}

static int pp_kv_get(void *ctx, const char *key, uint8_t *buf, size_t *len)
{
    char name[128];
    if (kv_name(name, sizeof(name), key) != 0)
        return OTA_ERR_ARG;
    return read_file(P(ctx)->dir, name, buf, *len, len);
}

static int pp_kv_set(void *ctx, const char *key, const uint8_t *buf, size_t len)
{
    char name[128];
    if (kv_name(name, sizeof(name), key) != 0)
        return OTA_ERR_ARG;
    return ota_posix_write_atomic(P(ctx)->dir, name, buf, len) == 0 ? OTA_OK : OTA_ERR_IO;
}

static uint64_t pp_now(void *ctx)
{
    return ota_posix_mono_ms() - P(ctx)->t0_ms;
}

static uint64_t pp_unix(void *ctx)
{
    (void)ctx;
    return (uint64_t)time(NULL);
}

static uint8_t pp_health(void *ctx)
{
    return P(ctx)->health_failing ? 0u : 3u;
}

void ota_posix_port(ota_posix_t *p, ota_port_t *port)
{
    memset(port, 0, sizeof(*port));
    port->ctx = p;
    port->kinds = 1u << OTA_KIND_CONFIG | 1u << OTA_KIND_FLAGS;
    port->mqtt_publish = pp_publish;
    port->mqtt_subscribe = pp_subscribe;
    port->slot_begin = pp_slot_begin;
    port->slot_write = pp_slot_write;
    port->slot_read = pp_slot_read;
    port->slot_finish = pp_slot_finish;
    port->slot_abort = pp_slot_abort;
    port->slot_activate = pp_slot_activate;
    port->boot_state = pp_boot_state;
    port->confirm = pp_confirm;
    port->rollback = pp_rollback;
    port->invalidate_other = p->no_invalidate ? NULL : pp_invalidate_other;
    port->reboot = pp_reboot;
    port->sha256_start = ota_mbedtls_sha256_start;
    port->sha256_update = ota_mbedtls_sha256_update;
    port->sha256_finish = ota_mbedtls_sha256_finish;
    port->sha256_abort = ota_mbedtls_sha256_abort;
    port->ecdsa_p256_verify = ota_mbedtls_ecdsa_p256_verify;
    port->kv_get = pp_kv_get;
    port->kv_set = pp_kv_set;
    port->now_ms = pp_now;
    port->unix_time = pp_unix;
    port->app_health = pp_health;
}

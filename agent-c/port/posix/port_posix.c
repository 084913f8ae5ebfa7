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
    uint8_t b[8];
    ota_otadata_encode(&p->od, b);
    return ota_posix_write_atomic(p->dir, "otadata", b, sizeof(b)) == 0 ? OTA_OK : OTA_ERR_IO;
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
    char txt[32];
    size_t n;
    bool ok[2];
    ota_sim_header_t h;
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
    if (read_file(dir, "otadata", b, 8, &n) != OTA_OK || n != 8u ||
        !ota_otadata_decode(&p->od, b)) {
        memset(&p->od, 0, sizeof(p->od));
    }
    ok[0] = slot_header(dir, 0, &h);
    ok[1] = slot_header(dir, 1, &h);
    s = ota_otadata_select(&p->od, ok);
    if (s < 0) {
        fprintf(stderr, "otamq-agent: no bootable slot\n");
        return OTA_ERR_IO;
    }
    p->running = s;
    if (save_otadata(p) != OTA_OK || !slot_header(dir, s, &p->hdr))
        return OTA_ERR_IO;
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

static void part_name(char *out, size_t cap, int s)
{
    snprintf(out, cap, "slot%d.part", s);
}

static int pp_slot_begin(void *ctx, uint32_t size, uint32_t resume)
{
    ota_posix_t *p = P(ctx);
    char name[32], fp[600];
    struct stat st;
    if (p->od.state[p->running] == OTA_SLOT_PENDING_VERIFY)
        return OTA_ERR_STATE; /* as esp_ota_begin: finish the trial first */
    if (size > p->slot_max)
        return OTA_ERR_NOSPACE;
    if (p->part_fd >= 0)
        close(p->part_fd);
    p->target = p->running ^ 1;
    part_name(name, sizeof(name), p->target);
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
    return OTA_OK;
}

static int pp_slot_write(void *ctx, uint32_t off, const uint8_t *data, size_t len)
{
    ota_posix_t *p = P(ctx);
    if (p->part_fd < 0 || (uint64_t)off + len > p->write_size)
        return OTA_ERR_FLASH;
    /* durable before the agent persists the new offset */
    if (write_all(p->part_fd, data, len, (off_t)off) != 0 || fdatasync(p->part_fd) != 0)
        return OTA_ERR_FLASH;
    return OTA_OK;
}

static int pp_slot_read(void *ctx, uint32_t off, uint8_t *buf, size_t len)
{
    ota_posix_t *p = P(ctx);
    char name[32], fp[600];
    int fd = p->part_fd, rc = OTA_OK;
    if (fd < 0) {
        snprintf(name, sizeof(name), "slot%d.bin", p->running ^ 1);
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

static int pp_slot_finish(void *ctx)
{
    ota_posix_t *p = P(ctx);
    char from[600], to[600], name[32];
    uint8_t b[OTA_SIM_HDR_SIZE];
    ota_sim_header_t h;
    if (p->part_fd < 0)
        return OTA_ERR_FLASH;
    /* like esp_ota_end: refuse what is not an image */
    if (pread(p->part_fd, b, sizeof(b), 0) != (ssize_t)sizeof(b) ||
        !ota_sim_header_parse(b, sizeof(b), &h) || fsync(p->part_fd) != 0) {
        return OTA_ERR_FLASH;
    }
    close(p->part_fd);
    p->part_fd = -1;
    part_name(name, sizeof(name), p->target);
    path(from, sizeof(from), p->dir, name);
    snprintf(name, sizeof(name), "slot%d.bin", p->target);
    path(to, sizeof(to), p->dir, name);
    /* the slot's old otadata state no longer describes its content */
    p->od.state[p->target] = OTA_SLOT_INVALID;
    if (save_otadata(p) != OTA_OK || rename(from, to) != 0 || fsync_dir(p->dir) != 0)
        return OTA_ERR_FLASH;
    return OTA_OK;
}

static void pp_slot_abort(void *ctx)
{
    ota_posix_t *p = P(ctx);
    if (p->part_fd >= 0) {
        close(p->part_fd);
        p->part_fd = -1;
    }
}

static int pp_slot_activate(void *ctx)
{
    ota_posix_t *p = P(ctx);
    int t = p->running ^ 1;
    p->od.state[t] = OTA_SLOT_NEW;
    p->od.boot_slot = (uint8_t)t;
    return save_otadata(p) == OTA_OK ? OTA_OK : OTA_ERR_FLASH;
}

static int pp_boot_state(void *ctx, ota_boot_info_t *bi)
{
    ota_posix_t *p = P(ctx);
    ota_sim_header_t h;
    uint8_t st = p->od.state[p->running], other = p->od.state[p->running ^ 1];
    bi->running_slot = (uint8_t)p->running;
    bi->img_state = st == OTA_SLOT_PENDING_VERIFY ? OTA_IMG_PENDING_VERIFY
                    : st == OTA_SLOT_VALID        ? OTA_IMG_VALID
                                                  : OTA_IMG_UNDEFINED;
    bi->reason = p->reason;
    bi->other_slot_bootable = (other == OTA_SLOT_VALID || other == OTA_SLOT_UNDEFINED) &&
                              slot_header(p->dir, p->running ^ 1, &h);
    return OTA_OK;
}

static int pp_confirm(void *ctx)
{
    ota_posix_t *p = P(ctx);
    p->od.state[p->running] = OTA_SLOT_VALID;
    return save_otadata(p);
}

static int pp_rollback(void *ctx)
{
    ota_posix_t *p = P(ctx);
    ota_sim_header_t h;
    int o = p->running ^ 1;
    uint8_t st = p->od.state[o];
    if (p->od.state[p->running] != OTA_SLOT_PENDING_VERIFY &&
        !((st == OTA_SLOT_VALID || st == OTA_SLOT_UNDEFINED) && slot_header(p->dir, o, &h)))
        return OTA_ERR_STATE;
    p->od.state[p->running] = OTA_SLOT_INVALID;
    p->od.boot_slot = (uint8_t)o;
    if (save_otadata(p) != OTA_OK)
        return OTA_ERR_IO;
    if (p->mq != NULL)
        ota_mq_flush(p->mq, 1000);
    ota_posix_reset(p, OTA_BOOT_SOFTWARE, OTA_EXIT_REBOOT);
    return OTA_OK;
}

static void pp_reboot(void *ctx)
{
    ota_posix_t *p = P(ctx);
    if (p->mq != NULL)
        ota_mq_flush(p->mq, 1000);
    ota_posix_reset(p, OTA_BOOT_SOFTWARE, OTA_EXIT_REBOOT);
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
    port->reboot = pp_reboot;
    port->sha256_start = ota_mbedtls_sha256_start;
    port->sha256_update = ota_mbedtls_sha256_update;
    port->sha256_finish = ota_mbedtls_sha256_finish;
    port->ecdsa_p256_verify = ota_mbedtls_ecdsa_p256_verify;
    port->kv_get = pp_kv_get;
    port->kv_set = pp_kv_set;
    port->now_ms = pp_now;
    port->unix_time = pp_unix;
    port->app_health = pp_health;
}

/* link_posix.c - see link_posix.h. */
#include "link_posix.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "otamq/ota_link.h"
#include "otamq/ota_status.h"
#include "port_posix.h"

#define LC_PENDING 4        /* QoS 1 frames waiting for their ACK */
#define LC_PENDING_MAX 640  /* the largest of them (births, events) */
#define LC_RECENT 8         /* down frame ids remembered against repeats */
#define LC_RESEND_MS 1000u
#define LC_WELCOME_MS 10000u /* the gateway asks the broker first */
#define LC_REFUSED_MS 30000u

enum { LC_DOWN, LC_HELLO, LC_UP };

typedef struct lc_pending {
    uint16_t id; /* 0: free */
    size_t len;
    uint64_t sent_ms;
    uint8_t frame[LC_PENDING_MAX];
} lc_pending_t;

struct ota_lc {
    ota_lc_config_t cfg;
    char path[108];
    int fd;
    int state;
    uint64_t next_try_ms, hello_ms;
    uint32_t backoff_ms;
    uint16_t next_id;
    uint32_t gw_max_frame;
    lc_pending_t pend[LC_PENDING];
    uint16_t recent[LC_RECENT];
    unsigned nrecent;
    ota_link_decoder_t dec;
    uint8_t *rx;      /* decoder buffer: cfg.max_frame */
    uint8_t *tx;      /* one frame out */
    char topic[160];
    size_t topic_base; /* length of "dm/{id}/" */
    bool lost;         /* the link ended after a WELCOME: on_disconnect due */
    uint32_t damage_logged; /* decoder refusals last logged */
    uint64_t damage_at_ms;
};

#define LOG(lc, ...) \
    ((lc)->cfg.verbose ? (void)(fprintf(stderr, "otamq-agent: link: " __VA_ARGS__), fputc('\n', stderr)) : (void)0)

struct ota_lc *ota_lc_new(const ota_lc_config_t *cfg)
{
    struct ota_lc *lc;
    if (strncmp(cfg->addr, "unix:", 5) != 0 || strlen(cfg->addr + 5) == 0u ||
        strlen(cfg->addr + 5) >= sizeof(lc->path)) {
        fprintf(stderr, "otamq-agent: bad link address %s (want unix:PATH)\n", cfg->addr);
        return NULL;
    }
    if (cfg->max_frame < OTA_LINK_MIN_FRAME || cfg->max_frame > OTA_LINK_MAX_FRAME)
        return NULL;
    lc = calloc(1, sizeof(*lc));
    if (lc == NULL)
        return NULL;
    lc->cfg = *cfg;
    lc->fd = -1;
    lc->next_id = 1;
    strcpy(lc->path, cfg->addr + 5);
    lc->rx = malloc(cfg->max_frame);
    lc->tx = malloc(OTA_LINK_MAX_FRAME);
    if (lc->rx == NULL || lc->tx == NULL) {
        ota_lc_destroy(lc);
        return NULL;
    }
    lc->topic_base = (size_t)snprintf(lc->topic, sizeof(lc->topic), "%s/%s/", cfg->topic_prefix,
                                      cfg->device_id);
    return lc;
}

/* Ends the link. on_disconnect is called from ota_lc_loop (lost), never
 * from here: this may run inside ota_lc_publish, a port call. */
static void lc_close(struct ota_lc *lc, uint32_t backoff_ms)
{
    if (lc->state == LC_UP)
        lc->lost = true;
    if (lc->fd >= 0)
        close(lc->fd);
    lc->fd = -1;
    lc->state = LC_DOWN;
    lc->next_try_ms = ota_posix_mono_ms() + backoff_ms;
}

static void report_lost(struct ota_lc *lc)
{
    if (lc->lost) {
        lc->lost = false;
        if (lc->cfg.on_disconnect)
            lc->cfg.on_disconnect(lc->cfg.user);
    }
}

static uint32_t next_backoff(struct ota_lc *lc)
{
    lc->backoff_ms = lc->backoff_ms == 0u ? 250u : lc->backoff_ms * 2u;
    if (lc->backoff_ms > 2000u)
        lc->backoff_ms = 2000u;
    return lc->backoff_ms;
}

/* Writes a whole frame (the socket has a send timeout); false when the
 * link broke. */
static bool lc_write(struct ota_lc *lc, const uint8_t *p, size_t n)
{
    while (n > 0u) {
        ssize_t k = send(lc->fd, p, n, MSG_NOSIGNAL);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            LOG(lc, "write: %s", k < 0 ? strerror(errno) : "closed");
            lc_close(lc, next_backoff(lc));
            return false;
        }
        p += k;
        n -= (size_t)k;
    }
    return true;
}

static bool lc_send(struct ota_lc *lc, uint8_t code, uint16_t id, const uint8_t *p, size_t n)
{
    size_t flen;
    if (lc->fd < 0 || ota_link_encode(lc->tx, OTA_LINK_MAX_FRAME, code, id, p, n, &flen) != OTA_OK)
        return false;
    if (lc->state == LC_UP && flen > lc->gw_max_frame)
        return false; /* larger than the gateway takes */
    return lc_write(lc, lc->tx, flen);
}

static void lc_connect(struct ota_lc *lc)
{
    struct sockaddr_un sa;
    struct timeval tv = {1, 0};
    uint8_t hello[96];
    size_t n;
    ota_link_hello_t h;
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0)
        return;
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    strcpy(sa.sun_path, lc->path);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        LOG(lc, "connect %s: %s", lc->path, strerror(errno));
        close(fd);
        lc->next_try_ms = ota_posix_mono_ms() + next_backoff(lc);
        return;
    }
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    lc->fd = fd;
    ota_link_decoder_init(&lc->dec, lc->rx, lc->cfg.max_frame);
    lc->damage_logged = 0;
    h.device_id = lc->cfg.device_id;
    h.device_id_len = strlen(lc->cfg.device_id);
    h.max_frame = lc->cfg.max_frame;
    h.version = OTA_LINK_VERSION;
    if (ota_link_encode_hello(&h, hello, sizeof(hello), &n) != OTA_OK) {
        lc_close(lc, 5000u);
        return;
    }
    lc->state = LC_HELLO;
    lc->hello_ms = ota_posix_mono_ms();
    LOG(lc, "connected to %s, HELLO sent", lc->path);
    lc_send(lc, OTA_LINK_HELLO, 0, hello, n);
}

static void resend_pending(struct ota_lc *lc, bool all)
{
    uint64_t now = ota_posix_mono_ms();
    int i;
    for (i = 0; i < LC_PENDING && lc->state == LC_UP; i++) {
        lc_pending_t *e = &lc->pend[i];
        if (e->id != 0u && (all || now - e->sent_ms >= LC_RESEND_MS)) {
            e->sent_ms = now;
            lc_write(lc, e->frame, e->len);
        }
    }
}

static void on_frame(struct ota_lc *lc, const ota_link_frame_t *f)
{
    uint8_t v, ack[8];
    size_t n;
    unsigned i;
    if (f->code == OTA_LINK_WELCOME) {
        ota_link_welcome_t w;
        if (ota_link_decode_welcome(f->payload, f->len, &w) != OTA_OK)
            return;
        if (w.status != OTA_LINK_OK) {
            fprintf(stderr, "otamq-agent: the gateway refused the link (status %u%s%.*s)\n",
                    w.status, w.message != NULL ? ": " : "", (int)w.message_len,
                    w.message != NULL ? w.message : "");
            lc_close(lc, w.status == OTA_LINK_REFUSED ? LC_REFUSED_MS : next_backoff(lc));
            return;
        }
        if (lc->state != LC_HELLO)
            return;
        lc->gw_max_frame = w.max_frame < OTA_LINK_MIN_FRAME ? OTA_LINK_MIN_FRAME : w.max_frame;
        lc->state = LC_UP;
        lc->backoff_ms = 0;
        LOG(lc, "welcome (gateway takes frames of %u bytes)", (unsigned)lc->gw_max_frame);
        resend_pending(lc, true);
        if (lc->state == LC_UP && lc->cfg.on_connect)
            lc->cfg.on_connect(lc->cfg.user);
        return;
    }
    if (lc->state != LC_UP)
        return;
    if (f->code == OTA_LINK_ACK) {
        if (ota_link_decode_u8(f->payload, f->len, &v) != OTA_OK || f->id == 0u)
            return;
        for (i = 0; i < LC_PENDING; i++) {
            if (lc->pend[i].id == f->id) {
                lc->pend[i].id = 0;
                if (lc->cfg.on_puback)
                    lc->cfg.on_puback(lc->cfg.user, f->id, v);
            }
        }
        return;
    }
    if (f->code != OTA_LINK_MANIFEST && f->code != OTA_LINK_BLK && f->code != OTA_LINK_CMD)
        return; /* unknown codes are ignored */
    if (f->id != 0u) {
        bool seen = false;
        if (ota_link_encode_u8(0, ack, sizeof(ack), &n) == OTA_OK &&
            !lc_send(lc, OTA_LINK_ACK, f->id, ack, n))
            return;
        for (i = 0; i < LC_RECENT; i++)
            seen = seen || lc->recent[i] == f->id;
        if (seen)
            return; /* a repeat: its ACK was lost */
        lc->recent[lc->nrecent++ % LC_RECENT] = f->id;
    }
    snprintf(lc->topic + lc->topic_base, sizeof(lc->topic) - lc->topic_base, "%s",
             ota_link_suffix_of(f->code));
    if (lc->cfg.on_message)
        lc->cfg.on_message(lc->cfg.user, lc->topic, f->payload, f->len);
}

void ota_lc_loop(struct ota_lc *lc, int timeout_ms)
{
    uint64_t now = ota_posix_mono_ms();
    struct pollfd pfd;
    uint8_t buf[4096];
    report_lost(lc);
    if (lc->state == LC_DOWN && now >= lc->next_try_ms)
        lc_connect(lc);
    if (lc->state == LC_HELLO && now - lc->hello_ms >= LC_WELCOME_MS) {
        LOG(lc, "no WELCOME");
        lc_close(lc, next_backoff(lc));
    }
    if (lc->fd < 0) {
        report_lost(lc);
        poll(NULL, 0, timeout_ms);
        return;
    }
    pfd.fd = lc->fd;
    pfd.events = POLLIN;
    if (poll(&pfd, 1, timeout_ms) > 0) {
        ssize_t k = recv(lc->fd, buf, sizeof(buf), MSG_DONTWAIT);
        if (k == 0 || (k < 0 && errno != EAGAIN && errno != EINTR)) {
            LOG(lc, "the gateway closed the link");
            lc_close(lc, next_backoff(lc));
            report_lost(lc);
            return;
        }
        if (k > 0) {
            size_t off = 0;
            for (;;) {
                size_t used;
                ota_link_frame_t f;
                int rc = ota_link_decode(&lc->dec, buf + off, (size_t)k - off, &used, &f);
                off += used;
                if (rc != 1)
                    break;
                on_frame(lc, &f);
                if (lc->fd < 0) {
                    report_lost(lc);
                    return;
                }
            }
        }
    }
    resend_pending(lc, false);
    report_lost(lc);
    if (lc->fd >= 0) {
        uint32_t d = lc->dec.bad_crc + lc->dec.bad_header + lc->dec.garbage;
        if (d != lc->damage_logged && now - lc->damage_at_ms >= 1000u) {
            lc->damage_logged = d;
            lc->damage_at_ms = now;
            LOG(lc, "resynchronised: %u bad CRC, %u bad header, %u garbage bytes, %u frames",
                (unsigned)lc->dec.bad_crc, (unsigned)lc->dec.bad_header,
                (unsigned)lc->dec.garbage, (unsigned)lc->dec.frames);
        }
    }
}

int ota_lc_publish(struct ota_lc *lc, const char *topic, const uint8_t *p, size_t n, int qos)
{
    uint8_t code;
    size_t flen;
    int i;
    if (lc->state != LC_UP || strncmp(topic, lc->topic, lc->topic_base) != 0)
        return OTA_ERR_IO;
    code = ota_link_code_of(topic + lc->topic_base);
    if (code < OTA_LINK_BIRTH || code > OTA_LINK_GET)
        return OTA_ERR_IO;
    if (qos == 0)
        return lc_send(lc, code, 0, p, n) ? 0 : OTA_ERR_IO;
    for (i = 0; i < LC_PENDING && lc->pend[i].id != 0u; i++)
        ;
    if (i == LC_PENDING)
        return OTA_ERR_IO;
    if (ota_link_encode(lc->pend[i].frame, LC_PENDING_MAX, code, lc->next_id, p, n, &flen) !=
            OTA_OK ||
        flen > lc->gw_max_frame)
        return OTA_ERR_IO;
    lc->pend[i].id = lc->next_id;
    lc->pend[i].len = flen;
    lc->pend[i].sent_ms = ota_posix_mono_ms();
    lc->next_id = (uint16_t)(lc->next_id == 0xffffu ? 1u : lc->next_id + 1u);
    if (!lc_write(lc, lc->pend[i].frame, flen))
        return lc->pend[i].id; /* kept: sent again after the next WELCOME */
    return lc->pend[i].id;
}

int ota_lc_subscribe(struct ota_lc *lc, const char *topic, int qos)
{
    uint8_t code, p[8];
    size_t n;
    (void)qos;
    if (lc->state != LC_UP || strncmp(topic, lc->topic, lc->topic_base) != 0)
        return OTA_ERR_IO;
    code = ota_link_code_of(topic + lc->topic_base);
    if (code < OTA_LINK_MANIFEST || code > OTA_LINK_CMD)
        return OTA_ERR_IO;
    if (ota_link_encode_u8(code, p, sizeof(p), &n) != OTA_OK)
        return OTA_ERR_IO;
    return lc_send(lc, OTA_LINK_SUB, 0, p, n) ? OTA_OK : OTA_ERR_IO;
}

void ota_lc_destroy(struct ota_lc *lc)
{
    if (lc == NULL)
        return;
    if (lc->fd >= 0)
        close(lc->fd);
    free(lc->rx);
    free(lc->tx);
    free(lc);
}

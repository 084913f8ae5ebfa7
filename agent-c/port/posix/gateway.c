/* gateway.c - otamq-gateway: the simulated device of main.c (its own agent
 * core, its own updates, --supervise) plus a relay for children on local
 * links (docs/PROTOCOL.md "Local links", docs/GATEWAYS.md).
 *
 * One thread: gw_loop polls the listening socket, the children's sockets
 * and the broker connection, and does everything from there.
 *
 * Children. A child's first frame is HELLO. The gateway asks the broker
 * whether it may act for it by subscribing to the child's ota/manifest
 * and cmd topics: granted, it sends WELCOME 0 and relays; refused, WELCOME
 * 1 and the link is closed. Births and events go up at QoS 1 and the
 * broker's PUBACK reason goes back as the frame's ACK; heartbeats at QoS 0.
 * Offers and commands come down as frames the child acknowledges.
 *
 * Cache. Images by digest in the cache directory (<hex>.part while
 * fetched, <hex>.img once its digest is checked), fetched once, in order,
 * on the gateway's own ota/get, and bounded by --cache-max-bytes: a new
 * image evicts the least recently used complete images no child's current
 * offer names. A child's block request is answered from the cache; what is
 * not there yet is served as it arrives.
 *
 * Broker down. Children keep their links and keep downloading what is
 * cached; births and events wait in a bounded in-memory queue (--queue)
 * and go out on reconnect; a child the broker accepted before (a file in
 * <cache>/children) is welcomed without asking.
 *
 * Memory: per child about GW_OUT_MAX + GW_RX_MAX + 2 * GW_DOWN_MAX bytes,
 * allocated when it connects (docs/BENCHMARKS.md measures it). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <mbedtls/sha256.h>

#include "app_ext.h"
#include "gw_msg.h"
#include "mqtt_mosquitto.h"
#include "otamq/ota_config.h"
#include "otamq/ota_link.h"
#include "port_posix.h"

#define GW_RX_MAX 1024u          /* largest frame a child may send */
#define GW_OUT_MAX (48u * 1024u) /* bytes waiting to be written to a child */
#define GW_DOWN_MAX 4096u        /* largest offer or command frame */
#define GW_RECENT 8u             /* child frame ids remembered */
#define GW_IMAGES 16             /* images in the cache at once */
#define GW_INFLIGHT 512          /* relayed QoS 1 publishes awaiting PUBACK */
#define GW_RESEND_MS 1000u
#define GW_HELLO_MS 8000u /* HELLO, then the broker's SUBACK, within */
#define GW_FETCH_TIMEOUT_MS 3000u
#define GW_RETRY_AFTER_MS 1000u
#define GW_RID_BASE 0x40000000u  /* fetch request IDs; the agent's are small */

#define LOG(...) (fprintf(stderr, "otamq-gateway: " __VA_ARGS__), fputc('\n', stderr))

enum { C_FREE, C_HELLO, C_ASKING, C_UP };

typedef struct down_slot {
    uint16_t id; /* 0: nothing waiting for an ACK */
    size_t len;
    uint64_t sent_ms;
    uint8_t frame[GW_DOWN_MAX];
} down_slot_t;

typedef struct seen {
    uint16_t id;
    uint8_t state; /* 0 free, 1 waiting for the broker, 2 acknowledged */
    uint8_t reason;
} seen_t;

typedef struct child {
    int state;
    int fd;
    char id[OTA_CFG_DEVICE_ID_MAX + 1];
    uint32_t max_frame;
    uint64_t since_ms;
    ota_link_decoder_t dec;
    uint8_t rx[GW_RX_MAX];
    uint8_t *out;
    size_t out_len;
    down_slot_t down[2]; /* 0 offer, 1 command */
    uint16_t next_down;
    seen_t seen[GW_RECENT];
    unsigned nseen;
    int sub_mid;         /* the SUBACK that decides the WELCOME */
    bool has_offer;      /* the image of the offer last relayed */
    uint8_t digest[32];
    uint32_t size;
    uint8_t birth[512];  /* the last birth, sent again after a reconnect */
    size_t birth_len;
    /* a block request answered as the cache fills */
    bool want;
    uint32_t want_rid, want_off, want_left, want_bs;
    uint8_t want_digest[32];
} child_t;

typedef struct image {
    bool used;
    uint8_t digest[32];
    char hex[65];
    uint32_t size;
    uint32_t have;     /* bytes in the file, in order from 0 */
    bool complete;     /* digest checked */
    uint8_t failed;    /* block error the broker gave (1..4), 0 none */
    int fd;
    uint64_t used_ms;
    bool fetching;
    uint32_t rid, req_n, req_got;
    uint64_t req_ms, retry_at_ms;
    uint32_t refetches;
    /* "": fetched on the gateway's own ota/get; else on this child's (a
     * broker that does not serve a gateway its children's images on its
     * own topics answers "not assigned" there) */
    char via[OTA_CFG_DEVICE_ID_MAX + 1];
} image_t;

typedef struct queued {
    char child[OTA_CFG_DEVICE_ID_MAX + 1];
    uint8_t code;
    uint16_t link_id;
    size_t len;
    uint8_t *payload;
} queued_t;

typedef struct inflight {
    int mid; /* 0: free */
    char child[OTA_CFG_DEVICE_ID_MAX + 1];
    uint16_t link_id;
} inflight_t;

typedef struct subinfo {
    int mid;
    char child[OTA_CFG_DEVICE_ID_MAX + 1];
} subinfo_t;

static struct {
    const char *listen;
    const char *cache_dir;
    uint64_t cache_max;
    unsigned max_children;
    unsigned queue_max;
    uint32_t fetch_bs, fetch_window;
    uint32_t recheck_ms;
    struct ota_mq *mq;
    char gw[OTA_CFG_DEVICE_ID_MAX + 1];
    int lfd;
    child_t *children;
    image_t images[GW_IMAGES];
    queued_t *queue;
    unsigned qhead, qlen;
    inflight_t inflight[GW_INFLIGHT];
    subinfo_t subs[256];
    unsigned nsubs;
    uint32_t next_rid;
    uint64_t recheck_at;
    uint8_t frame[OTA_LINK_MAX_FRAME];
    uint8_t data[OTA_LINK_MAX_FRAME]; /* a block's data read from the cache */
    char topic[160];
} g = {.cache_dir = "./otamq-cache", .cache_max = 64u * 1024u * 1024u, .max_children = 32,
       .queue_max = 256, .fetch_bs = 4096, .fetch_window = 4, .recheck_ms = 60000u, .lfd = -1};

/* ---- options --------------------------------------------------------- */

enum { G_LISTEN = OTA_EXT_OPT, G_CACHE, G_CACHE_MAX, G_MAXCH, G_QUEUE, G_FBS, G_FWIN, G_RECHECK };

static const struct option gw_opts[] = {
    {"listen", 1, 0, G_LISTEN},       {"cache-dir", 1, 0, G_CACHE},
    {"cache-max-bytes", 1, 0, G_CACHE_MAX}, {"max-children", 1, 0, G_MAXCH},
    {"queue", 1, 0, G_QUEUE},         {"fetch-block-size", 1, 0, G_FBS},
    {"fetch-window", 1, 0, G_FWIN},   {"recheck-ms", 1, 0, G_RECHECK},
    {0, 0, 0, 0}};

static int gw_option(int code, const char *arg)
{
    char *end;
    unsigned long long v = 0;
    if (code != G_LISTEN && code != G_CACHE) {
        errno = 0;
        v = strtoull(arg, &end, 10);
        if (errno != 0 || *end != '\0' || end == arg || v == 0u) {
            fprintf(stderr, "otamq-gateway: bad number %s\n", arg);
            return -1;
        }
    }
    switch (code) {
    case G_LISTEN: g.listen = arg; break;
    case G_CACHE: g.cache_dir = arg; break;
    case G_CACHE_MAX: g.cache_max = v; break;
    case G_MAXCH: g.max_children = v > 4096u ? 4096u : (unsigned)v; break;
    case G_QUEUE: g.queue_max = v > 65536u ? 65536u : (unsigned)v; break;
    case G_FBS: g.fetch_bs = v > 65536u ? 65536u : (uint32_t)v; break;
    case G_FWIN: g.fetch_window = v > 64u ? 64u : (uint32_t)v; break;
    case G_RECHECK: g.recheck_ms = v > 0xffffffffu ? 0xffffffffu : (uint32_t)v; break;
    default: return -1;
    }
    return 0;
}

/* ---- small helpers --------------------------------------------------- */

static void hexof(const uint8_t d[32], char out[65])
{
    static const char x[] = "0123456789abcdef";
    int i;
    for (i = 0; i < 32; i++) {
        out[2 * i] = x[d[i] >> 4];
        out[2 * i + 1] = x[d[i] & 15];
    }
    out[64] = '\0';
}

static void cpath(char *out, size_t cap, const char *a, const char *b)
{
    snprintf(out, cap, "%s/%s%s", g.cache_dir, a, b);
}

static child_t *child_by_id(const char *id)
{
    unsigned i;
    for (i = 0; i < g.max_children; i++)
        if (g.children[i].state != C_FREE && strcmp(g.children[i].id, id) == 0)
            return &g.children[i];
    return NULL;
}

/* "dm/{id}/rest": id into out, the rest returned; NULL when not a device
 * topic. */
static const char *split_topic(const char *topic, char out[OTA_CFG_DEVICE_ID_MAX + 1])
{
    size_t pl = strlen(OTA_CFG_TOPIC_PREFIX), n;
    const char *id, *slash;
    if (strncmp(topic, OTA_CFG_TOPIC_PREFIX, pl) != 0 || topic[pl] != '/')
        return NULL;
    id = topic + pl + 1;
    slash = strchr(id, '/');
    if (slash == NULL || (n = (size_t)(slash - id)) == 0u || n > OTA_CFG_DEVICE_ID_MAX)
        return NULL;
    memcpy(out, id, n);
    out[n] = '\0';
    return slash + 1;
}

static const char *topic_of(const char *id, const char *suffix)
{
    snprintf(g.topic, sizeof(g.topic), "%s/%s/%s", OTA_CFG_TOPIC_PREFIX, id, suffix);
    return g.topic;
}

/* ---- known children (accepted by the broker before) and their offers -- */

static void known_save(const child_t *c)
{
    uint8_t rec[36];
    char name[96];
    size_t n = 0;
    if (c->has_offer) {
        memcpy(rec, c->digest, 32);
        rec[32] = (uint8_t)(c->size >> 24);
        rec[33] = (uint8_t)(c->size >> 16);
        rec[34] = (uint8_t)(c->size >> 8);
        rec[35] = (uint8_t)c->size;
        n = sizeof(rec);
    }
    snprintf(name, sizeof(name), "child-%s", c->id);
    if (ota_posix_write_atomic(g.cache_dir, name, rec, n) != 0)
        LOG("cannot record child %s in %s: %s", c->id, g.cache_dir, strerror(errno));
}

/* true when id was accepted before; loads its last offer into c */
static bool known_load(child_t *c)
{
    char p[700];
    uint8_t rec[36];
    int fd;
    ssize_t n;
    cpath(p, sizeof(p), "child-", c->id);
    fd = open(p, O_RDONLY);
    if (fd < 0)
        return false;
    n = read(fd, rec, sizeof(rec));
    close(fd);
    if (n == (ssize_t)sizeof(rec)) {
        c->has_offer = true;
        memcpy(c->digest, rec, 32);
        c->size = ((uint32_t)rec[32] << 24) | ((uint32_t)rec[33] << 16) |
                  ((uint32_t)rec[34] << 8) | rec[35];
    }
    return true;
}

static void known_forget(const char *id)
{
    char p[700];
    cpath(p, sizeof(p), "child-", id);
    unlink(p);
}

/* ---- frames to children ---------------------------------------------- */

static void child_close(child_t *c, const char *why)
{
    if (c->state == C_FREE)
        return;
    LOG("child %s: link closed (%s)", c->id[0] ? c->id : "?", why);
    close(c->fd);
    free(c->out);
    memset(c, 0, sizeof(*c));
    c->state = C_FREE;
    c->fd = -1;
}

static void child_flush(child_t *c)
{
    while (c->out_len > 0u) {
        ssize_t k = send(c->fd, c->out, c->out_len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (k <= 0) {
            child_close(c, "write failed");
            return;
        }
        memmove(c->out, c->out + k, c->out_len - (size_t)k);
        c->out_len -= (size_t)k;
    }
}

static size_t child_room(const child_t *c)
{
    return GW_OUT_MAX - c->out_len;
}

/* Queues a frame for the child; false when it does not fit now (the frame
 * is dropped: blocks are asked for again, offers and commands resent) or
 * is larger than the child takes. */
static bool child_put(child_t *c, const uint8_t *frame, size_t n)
{
    if (c->state == C_FREE || n > c->max_frame || n > child_room(c))
        return false;
    memcpy(c->out + c->out_len, frame, n);
    c->out_len += n;
    return true;
}

static bool child_send(child_t *c, uint8_t code, uint16_t id, const uint8_t *p, size_t n)
{
    size_t flen;
    if (ota_link_encode(g.frame, sizeof(g.frame), code, id, p, n, &flen) != OTA_OK)
        return false;
    return child_put(c, g.frame, flen);
}

static void child_welcome(child_t *c, uint8_t status, const char *msg)
{
    ota_link_welcome_t w;
    uint8_t b[200];
    size_t n;
    w.status = status;
    w.max_frame = GW_RX_MAX;
    w.message = msg;
    w.message_len = msg != NULL ? strlen(msg) : 0u;
    if (ota_link_encode_welcome(&w, b, sizeof(b), &n) == OTA_OK) {
        if (c->max_frame == 0u)
            c->max_frame = OTA_LINK_MIN_FRAME;
        child_send(c, OTA_LINK_WELCOME, 0, b, n);
    }
    child_flush(c);
    if (status != OTA_LINK_OK && c->state != C_FREE)
        child_close(c, msg != NULL ? msg : "refused");
}

static void child_ack(child_t *c, uint16_t id, uint8_t reason)
{
    uint8_t b[8];
    size_t n;
    if (ota_link_encode_u8(reason, b, sizeof(b), &n) == OTA_OK)
        child_send(c, OTA_LINK_ACK, id, b, n);
}

/* The broker no longer lets this gateway act for the child. */
static void child_refused(child_t *c, const char *why)
{
    LOG("child %s: the broker refused this gateway for it (%s)", c->id, why);
    known_forget(c->id);
    child_welcome(c, OTA_LINK_REFUSED, "the broker does not let this gateway act for you");
}

/* Offers (slot 0) and commands (slot 1): kept until the child ACKs. */
static void child_down(child_t *c, int slot, uint8_t code, const uint8_t *p, size_t n)
{
    down_slot_t *d = &c->down[slot];
    c->next_down = (uint16_t)(c->next_down == 0xffffu || c->next_down == 0u ? 1u : c->next_down + 1u);
    if (ota_link_encode(d->frame, sizeof(d->frame), code, c->next_down, p, n, &d->len) != OTA_OK ||
        d->len > c->max_frame) {
        LOG("child %s: a message of %zu bytes does not fit its frames: dropped", c->id, n);
        d->id = 0;
        return;
    }
    d->id = c->next_down;
    d->sent_ms = ota_posix_mono_ms();
    child_put(c, d->frame, d->len);
}

/* ---- subscriptions for children -------------------------------------- */

static void note_sub(int mid, const char *child)
{
    subinfo_t *s = &g.subs[g.nsubs++ % (sizeof(g.subs) / sizeof(g.subs[0]))];
    s->mid = mid;
    snprintf(s->child, sizeof(s->child), "%s", child);
}

/* Subscribes to the child's offer and command topics; the SUBACK of the
 * first decides (sub_mid). false when the broker is not connected. */
static bool subscribe_child(child_t *c, bool manifest)
{
    int mid = 0;
    if (manifest) {
        mid = ota_mq_subscribe_id(g.mq, topic_of(c->id, "ota/manifest"), 1);
        if (mid < 0)
            return false;
        note_sub(mid, c->id);
        c->sub_mid = mid;
    }
    mid = ota_mq_subscribe_id(g.mq, topic_of(c->id, "cmd"), 1);
    if (mid < 0)
        return false;
    note_sub(mid, c->id);
    if (!manifest)
        c->sub_mid = mid;
    return true;
}

static void gw_suback(int mid, int reason)
{
    unsigned i, n = sizeof(g.subs) / sizeof(g.subs[0]);
    for (i = 0; i < n; i++) {
        subinfo_t *s = &g.subs[i];
        child_t *c;
        if (s->mid != mid || mid == 0)
            continue;
        s->mid = 0;
        c = child_by_id(s->child);
        if (c == NULL)
            return;
        if (reason >= 0x80) {
            if (c->state == C_ASKING || c->state == C_UP)
                child_refused(c, "SUBACK refused");
            return;
        }
        if (c->state == C_ASKING && c->sub_mid == mid) {
            c->state = C_UP;
            known_save(c);
            LOG("child %s: relaying", c->id);
            child_welcome(c, OTA_LINK_OK, NULL);
        }
        return;
    }
}

/* ---- publishing for children ----------------------------------------- */

static bool publish_now(const char *child, uint8_t code, uint16_t link_id, const uint8_t *p,
                        size_t n)
{
    int qos = code == OTA_LINK_HB ? 0 : 1, mid, i;
    if (!ota_mq_connected(g.mq))
        return false;
    if (qos == 1) {
        for (i = 0; i < GW_INFLIGHT && g.inflight[i].mid != 0; i++)
            ;
        if (i == GW_INFLIGHT)
            return false;
        mid = ota_mq_publish(g.mq, topic_of(child, ota_link_suffix_of(code)), p, n, 1);
        if (mid < 0)
            return false;
        g.inflight[i].mid = mid;
        g.inflight[i].link_id = link_id;
        snprintf(g.inflight[i].child, sizeof(g.inflight[i].child), "%s", child);
        return true;
    }
    return ota_mq_publish(g.mq, topic_of(child, ota_link_suffix_of(code)), p, n, 0) >= 0;
}

static void enqueue(const char *child, uint8_t code, uint16_t link_id, const uint8_t *p, size_t n)
{
    queued_t *q;
    if (g.qlen == g.queue_max) { /* full: the oldest goes; its child resends it */
        queued_t *old = &g.queue[g.qhead];
        child_t *c = child_by_id(old->child);
        unsigned k;
        LOG("queue full (--queue %u): dropped the oldest message, of child %s; it sends it again",
            g.queue_max, old->child);
        for (k = 0; c != NULL && k < GW_RECENT; k++)
            if (c->seen[k].id == old->link_id)
                c->seen[k].state = 0; /* its next resend is taken again */
        free(old->payload);
        g.qhead = (g.qhead + 1u) % g.queue_max;
        g.qlen--;
    }
    q = &g.queue[(g.qhead + g.qlen) % g.queue_max];
    q->payload = malloc(n ? n : 1u);
    if (q->payload == NULL)
        return;
    memcpy(q->payload, p, n);
    q->len = n;
    q->code = code;
    q->link_id = link_id;
    snprintf(q->child, sizeof(q->child), "%s", child);
    g.qlen++;
}

static void flush_queue(void)
{
    while (g.qlen > 0u) {
        queued_t *q = &g.queue[g.qhead];
        if (!publish_now(q->child, q->code, q->link_id, q->payload, q->len))
            return;
        free(q->payload);
        g.qhead = (g.qhead + 1u) % g.queue_max;
        g.qlen--;
    }
}

static void gw_puback(int mid, int reason)
{
    int i;
    for (i = 0; i < GW_INFLIGHT; i++) {
        inflight_t *f = &g.inflight[i];
        child_t *c;
        unsigned k;
        if (f->mid != mid)
            continue;
        f->mid = 0;
        c = child_by_id(f->child);
        if (c == NULL || c->state != C_UP)
            return;
        for (k = 0; k < GW_RECENT; k++) {
            if (c->seen[k].id == f->link_id && c->seen[k].state == 1u) {
                c->seen[k].state = 2;
                c->seen[k].reason = (uint8_t)reason;
            }
        }
        if (f->link_id != 0u)
            child_ack(c, f->link_id, (uint8_t)reason);
        if (reason >= 0x80)
            LOG("child %s: the broker answered PUBACK 0x%02x", c->id, (unsigned)reason);
        if (reason == 0x87)
            child_refused(c, "PUBACK 0x87");
        return;
    }
}

/* ---- cache ------------------------------------------------------------ */

static uint64_t cache_bytes(void)
{
    uint64_t n = 0;
    int i;
    for (i = 0; i < GW_IMAGES; i++)
        if (g.images[i].used)
            n += g.images[i].size;
    return n;
}

static bool image_wanted(const image_t *im)
{
    unsigned i;
    for (i = 0; i < g.max_children; i++) {
        const child_t *c = &g.children[i];
        if (c->state != C_FREE && c->has_offer && memcmp(c->digest, im->digest, 32) == 0)
            return true;
    }
    return false;
}

static void image_drop(image_t *im, const char *why)
{
    char p[700];
    LOG("cache: %s dropped (%s)", im->hex, why);
    if (im->fd >= 0)
        close(im->fd);
    cpath(p, sizeof(p), im->hex, im->complete ? ".img" : ".part");
    unlink(p);
    memset(im, 0, sizeof(*im));
    im->fd = -1;
}

static image_t *image_find(const uint8_t d[32])
{
    int i;
    for (i = 0; i < GW_IMAGES; i++)
        if (g.images[i].used && memcmp(g.images[i].digest, d, 32) == 0)
            return &g.images[i];
    return NULL;
}

/* Makes room for size more bytes: evicts the least recently used images
 * no connected child's offer names. */
static bool make_room(uint64_t size, const image_t *keep)
{
    while (cache_bytes() + size > g.cache_max) {
        image_t *lru = NULL;
        int i;
        for (i = 0; i < GW_IMAGES; i++) {
            image_t *im = &g.images[i];
            if (im->used && im != keep && !image_wanted(im) &&
                (lru == NULL || im->used_ms < lru->used_ms))
                lru = im;
        }
        if (lru == NULL)
            return false;
        image_drop(lru, "evicted: the cache is full");
    }
    return true;
}

/* The cache entry of digest d (of size bytes), created when missing:
 * NULL when it cannot be held. */
static image_t *image_get(const uint8_t d[32], uint32_t size)
{
    image_t *im = image_find(d);
    char p[700];
    int i;
    if (im != NULL) {
        im->used_ms = ota_posix_mono_ms();
        return im;
    }
    if (size > g.cache_max || !make_room(size, NULL))
        return NULL;
    for (i = 0; i < GW_IMAGES && g.images[i].used; i++)
        ;
    if (i == GW_IMAGES) {
        image_t *lru = NULL;
        int k;
        for (k = 0; k < GW_IMAGES; k++)
            if (!image_wanted(&g.images[k]) &&
                (lru == NULL || g.images[k].used_ms < lru->used_ms))
                lru = &g.images[k];
        if (lru == NULL)
            return NULL;
        image_drop(lru, "evicted: too many images");
        i = (int)(lru - g.images);
    }
    im = &g.images[i];
    memset(im, 0, sizeof(*im));
    im->used = true;
    memcpy(im->digest, d, 32);
    hexof(d, im->hex);
    im->size = size;
    im->used_ms = ota_posix_mono_ms();
    cpath(p, sizeof(p), im->hex, ".part");
    im->fd = open(p, O_RDWR | O_CREAT, 0644);
    if (im->fd < 0) {
        LOG("cache: cannot open %s: %s", p, strerror(errno));
        memset(im, 0, sizeof(*im));
        im->fd = -1;
        return NULL;
    }
    return im;
}

/* On start: complete images (<hex>.img, digest checked again) and partial
 * ones (<hex>.part, continued where they end; their size comes with the
 * next offer). */
static bool check_digest(int fd, uint32_t size, const uint8_t want[32])
{
    mbedtls_sha256_context h;
    uint8_t buf[8192], got[32];
    uint32_t off = 0;
    mbedtls_sha256_init(&h);
    mbedtls_sha256_starts_ret(&h, 0);
    while (off < size) {
        ssize_t n = pread(fd, buf, size - off < sizeof(buf) ? size - off : sizeof(buf), off);
        if (n <= 0) {
            mbedtls_sha256_free(&h);
            return false;
        }
        mbedtls_sha256_update_ret(&h, buf, (size_t)n);
        off += (uint32_t)n;
    }
    mbedtls_sha256_finish_ret(&h, got);
    mbedtls_sha256_free(&h);
    return memcmp(got, want, 32) == 0;
}

static bool unhex(const char *s, uint8_t out[32])
{
    int i;
    for (i = 0; i < 64; i++) {
        char ch = s[i];
        int v = ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
        if (v < 0)
            return false;
        if (i % 2 == 0)
            out[i / 2] = (uint8_t)(v << 4);
        else
            out[i / 2] |= (uint8_t)v;
    }
    return true;
}

static void cache_load(void)
{
    DIR *d = opendir(g.cache_dir);
    struct dirent *e;
    int n = 0;
    if (d == NULL)
        return;
    while ((e = readdir(d)) != NULL && n < GW_IMAGES) {
        uint8_t dg[32];
        char p[700];
        struct stat st;
        size_t len = strlen(e->d_name);
        bool img = len == 68 && strcmp(e->d_name + 64, ".img") == 0;
        bool part = len == 69 && strcmp(e->d_name + 64, ".part") == 0;
        image_t *im = &g.images[n];
        if ((!img && !part) || !unhex(e->d_name, dg))
            continue;
        cpath(p, sizeof(p), e->d_name, "");
        memset(im, 0, sizeof(*im));
        im->fd = open(p, O_RDWR);
        if (im->fd < 0 || fstat(im->fd, &st) != 0 || st.st_size > 0xffffffffLL) {
            if (im->fd >= 0)
                close(im->fd);
            continue;
        }
        im->used = true;
        memcpy(im->digest, dg, 32);
        hexof(dg, im->hex);
        im->have = (uint32_t)st.st_size;
        im->size = img ? im->have : 0u; /* unknown until the next offer */
        if (img && !check_digest(im->fd, im->size, dg)) {
            image_drop(im, "digest mismatch on start");
            continue;
        }
        im->complete = img;
        LOG("cache: %s %s, %u bytes", im->hex, img ? "complete" : "partial", (unsigned)im->have);
        n++;
    }
    closedir(d);
}

static void fetch_request(image_t *im)
{
    ota_block_request_t r;
    uint8_t b[96];
    size_t n;
    uint32_t left = im->size - im->have, bs = g.fetch_bs, cnt = g.fetch_window;
    if (!ota_mq_connected(g.mq) || im->complete || left == 0u)
        return;
    if ((uint64_t)bs * cnt > left)
        cnt = (left + bs - 1u) / bs;
    r.digest = im->digest;
    r.offset = im->have;
    r.size = bs;
    r.count = cnt;
    r.req_id = GW_RID_BASE + (g.next_rid++ & 0x3fffffffu);
    if (ota_msg_encode_block_request(&r, b, sizeof(b), &n) != OTA_OK)
        return;
    if (ota_mq_publish(g.mq, topic_of(im->via[0] ? im->via : g.gw, "ota/get"), b, n, 0) < 0)
        return;
    im->fetching = true;
    im->rid = r.req_id;
    im->req_n = cnt;
    im->req_got = 0;
    im->req_ms = ota_posix_mono_ms();
}

static void serve_child(child_t *c);

static void image_finished(image_t *im)
{
    char from[700], to[700];
    unsigned i;
    im->fetching = false;
    if (!check_digest(im->fd, im->size, im->digest)) {
        im->refetches++;
        LOG("cache: %s digest mismatch after download (%u): fetching again", im->hex,
            (unsigned)im->refetches);
        if (ftruncate(im->fd, 0) != 0)
            LOG("cache: truncate: %s", strerror(errno));
        im->have = 0;
        if (im->refetches > 3u)
            im->failed = 2; /* unknown image, as far as children are told */
        return;
    }
    cpath(from, sizeof(from), im->hex, ".part");
    cpath(to, sizeof(to), im->hex, ".img");
    if (fsync(im->fd) != 0 || rename(from, to) != 0)
        LOG("cache: cannot keep %s: %s", im->hex, strerror(errno));
    im->complete = true;
    LOG("cache: %s complete, %u bytes", im->hex, (unsigned)im->size);
    for (i = 0; i < g.max_children; i++)
        if (g.children[i].want)
            serve_child(&g.children[i]);
}

/* A block (or block error) on the gateway's own ota/blk: true when it
 * answered one of the cache's requests. */
static bool fetch_block(const uint8_t *p, size_t n)
{
    ota_block_t b;
    int i;
    unsigned k;
    if (ota_msg_decode_block(p, n, &b) != OTA_OK || b.req_id < GW_RID_BASE)
        return false;
    for (i = 0; i < GW_IMAGES; i++) {
        image_t *im = &g.images[i];
        if (!im->used || !im->fetching || im->rid != b.req_id)
            continue;
        if (b.is_error) {
            im->fetching = false;
            if (b.error == 1 && im->via[0] == '\0') {
                /* try the topics of a child the image is offered to */
                for (k = 0; k < g.max_children; k++) {
                    child_t *c = &g.children[k];
                    if (c->state == C_UP && c->has_offer && memcmp(c->digest, im->digest, 32) == 0 &&
                        ota_mq_subscribe_id(g.mq, topic_of(c->id, "ota/blk"), 0) > 0) {
                        snprintf(im->via, sizeof(im->via), "%s", c->id);
                        LOG("cache: %s not served on the gateway's own topics: fetching on %s's",
                            im->hex, c->id);
                        fetch_request(im);
                        return true;
                    }
                }
            }
            if (b.error == 5 || b.error == 6) {
                im->retry_at_ms = ota_posix_mono_ms() + (b.retry_ms ? b.retry_ms : 1000u);
            } else {
                LOG("cache: the broker refused %s: block error %u", im->hex, b.error);
                im->failed = b.error;
                for (k = 0; k < g.max_children; k++)
                    if (g.children[k].want)
                        serve_child(&g.children[k]);
            }
            return true;
        }
        if (b.image_size != im->size) {
            LOG("cache: %s: the broker says %u bytes, the offer %u", im->hex,
                (unsigned)b.image_size, (unsigned)im->size);
            im->size = b.image_size;
        }
        im->req_got++;
        if (b.offset == im->have && b.data_len > 0u && b.offset + b.data_len <= im->size) {
            if (pwrite(im->fd, b.data, b.data_len, b.offset) != (ssize_t)b.data_len) {
                LOG("cache: write %s: %s", im->hex, strerror(errno));
                return true;
            }
            im->have += (uint32_t)b.data_len;
            im->req_ms = ota_posix_mono_ms(); /* the timeout counts from the last progress */
            for (k = 0; k < g.max_children; k++)
                if (g.children[k].want)
                    serve_child(&g.children[k]);
        }
        if (im->have == im->size)
            image_finished(im);
        else if (im->req_got >= im->req_n)
            fetch_request(im);
        return true;
    }
    return true; /* one of ours, stale */
}

static void fetch_timers(void)
{
    uint64_t now = ota_posix_mono_ms();
    int i;
    for (i = 0; i < GW_IMAGES; i++) {
        image_t *im = &g.images[i];
        if (!im->used || im->complete || im->failed || im->size == 0u || !image_wanted(im))
            continue;
        if (im->fetching && now - im->req_ms < GW_FETCH_TIMEOUT_MS)
            continue;
        if (!im->fetching && now < im->retry_at_ms)
            continue;
        fetch_request(im);
    }
}

/* ---- serving children's block requests ------------------------------- */

static void block_error(child_t *c, uint32_t rid, uint32_t off, uint8_t err, uint32_t retry,
                        const char *msg)
{
    uint8_t b[160];
    size_t n;
    if (gw_encode_block_error(rid, off, err, retry, msg, b, sizeof(b), &n) == OTA_OK)
        child_send(c, OTA_LINK_BLK, 0, b, n);
}

/* Serves as much of the child's request as the cache holds and its output
 * buffer takes; the rest as it arrives. */
static void serve_child(child_t *c)
{
    image_t *im;
    uint32_t head = 32u; /* the block's CBOR around its data, at most */
    if (!c->want || c->state != C_UP)
        return;
    if (!c->has_offer || memcmp(c->digest, c->want_digest, 32) != 0) {
        c->want = false;
        block_error(c, c->want_rid, c->want_off, 1, 0, "gateway: not offered to this child");
        return;
    }
    im = image_get(c->digest, c->size);
    if (im == NULL) {
        c->want = false;
        LOG("child %s: an image of %u bytes does not fit the cache (--cache-max-bytes %llu): "
            "refused", c->id, (unsigned)c->size, (unsigned long long)g.cache_max);
        block_error(c, c->want_rid, c->want_off, 2, 0, "gateway cache too small");
        return;
    }
    if (im->size == 0u)
        im->size = c->size;
    if (im->failed) {
        c->want = false;
        block_error(c, c->want_rid, c->want_off, im->failed, 0, "gateway: refused by the broker");
        return;
    }
    if (c->want_off >= im->size) {
        c->want = false;
        block_error(c, c->want_rid, c->want_off, 3, 0, NULL);
        return;
    }
    while (c->want_left > 0u && c->want_off < im->have) {
        uint32_t n = c->want_bs;
        size_t plen, flen;
        if (n > im->have - c->want_off)
            n = im->have - c->want_off;
        if (n + head + OTA_LINK_OVERHEAD > child_room(c))
            return; /* later, when the child has read */
        if (pread(im->fd, g.data, n, c->want_off) != (ssize_t)n) {
            c->want = false;
            return;
        }
        if (gw_encode_block(c->want_rid, c->want_off, im->size, g.data, n,
                            g.frame + OTA_LINK_HEADER, sizeof(g.frame) - OTA_LINK_OVERHEAD,
                            &plen) != OTA_OK)
            return;
        if (ota_link_seal(g.frame, sizeof(g.frame), OTA_LINK_BLK, 0, plen, &flen) != OTA_OK ||
            !child_put(c, g.frame, flen))
            return;
        im->used_ms = ota_posix_mono_ms();
        c->want_off += n;
        c->want_left--;
    }
    if (c->want_left == 0u || c->want_off >= im->size) {
        c->want = false;
        return;
    }
    /* waiting for the cache */
    if (!ota_mq_connected(g.mq)) {
        c->want = false;
        block_error(c, c->want_rid, c->want_off, 5, GW_RETRY_AFTER_MS, "gateway: broker unreachable");
        return;
    }
    if (!im->fetching && ota_posix_mono_ms() >= im->retry_at_ms)
        fetch_request(im);
}

static void on_get(child_t *c, const uint8_t *p, size_t n)
{
    ota_block_request_t r;
    uint32_t max_data;
    if (gw_decode_block_request(p, n, &r) != OTA_OK) {
        block_error(c, 0, 0, 4, 0, "gateway: bad block request");
        return;
    }
    max_data = c->max_frame - OTA_LINK_OVERHEAD - 32u;
    c->want = true;
    c->want_rid = r.req_id;
    c->want_off = r.offset;
    c->want_left = r.count > 64u ? 64u : r.count;
    c->want_bs = r.size < max_data ? r.size : max_data;
    memcpy(c->want_digest, r.digest, 32);
    serve_child(c);
}

/* ---- frames from children -------------------------------------------- */

static void on_hello(child_t *c, const uint8_t *p, size_t n)
{
    ota_link_hello_t h;
    child_t *old;
    if (ota_link_decode_hello(p, n, &h) != OTA_OK || h.version != OTA_LINK_VERSION ||
        h.max_frame < OTA_LINK_MIN_FRAME) {
        child_welcome(c, OTA_LINK_BAD_HELLO, "bad HELLO");
        return;
    }
    if (strlen(g.gw) == h.device_id_len && memcmp(g.gw, h.device_id, h.device_id_len) == 0) {
        child_welcome(c, OTA_LINK_REFUSED, "that is the gateway's own ID");
        return;
    }
    memcpy(c->id, h.device_id, h.device_id_len);
    c->id[h.device_id_len] = '\0';
    c->max_frame = h.max_frame > OTA_LINK_MAX_FRAME ? OTA_LINK_MAX_FRAME : h.max_frame;
    c->state = C_ASKING; /* child_by_id finds it from now on */
    for (old = g.children; old < g.children + g.max_children; old++)
        if (old != c && old->state != C_FREE && strcmp(old->id, c->id) == 0)
            child_close(old, "the same child connected again");
    if (subscribe_child(c, true)) {
        known_load(c); /* its last offer, until the broker sends the current one */
        return;        /* WELCOME when the SUBACK comes */
    }
    if (known_load(c)) {
        c->state = C_UP;
        LOG("child %s: relaying (broker unreachable; accepted before)", c->id);
        child_welcome(c, OTA_LINK_OK, NULL);
        return;
    }
    child_welcome(c, OTA_LINK_UNREACHABLE, "gateway: broker unreachable");
}

static void on_up(child_t *c, const ota_link_frame_t *f)
{
    unsigned k;
    if (f->code == OTA_LINK_BIRTH && f->len <= sizeof(c->birth)) {
        memcpy(c->birth, f->payload, f->len);
        c->birth_len = f->len;
    }
    if (f->id != 0u) {
        for (k = 0; k < GW_RECENT; k++) {
            if (c->seen[k].id != f->id || c->seen[k].state == 0u)
                continue;
            if (c->seen[k].state == 2u)
                child_ack(c, f->id, c->seen[k].reason);
            return; /* a repeat: answered, or waiting for the broker */
        }
        k = c->nseen++ % GW_RECENT;
        c->seen[k].id = f->id;
        c->seen[k].state = 1;
    }
    if (publish_now(c->id, f->code, f->id, f->payload, f->len)) {
        if (f->code == OTA_LINK_BIRTH)
            LOG("child %s: birth relayed", c->id);
        return;
    }
    if (f->code != OTA_LINK_HB)
        enqueue(c->id, f->code, f->id, f->payload, f->len);
}

static void on_frame(child_t *c, const ota_link_frame_t *f)
{
    uint8_t v;
    int k;
    if (c->state == C_HELLO) {
        if (f->code == OTA_LINK_HELLO)
            on_hello(c, f->payload, f->len);
        return;
    }
    if (c->state != C_UP)
        return;
    switch (f->code) {
    case OTA_LINK_BIRTH:
    case OTA_LINK_HB:
    case OTA_LINK_EV: on_up(c, f); break;
    case OTA_LINK_GET: on_get(c, f->payload, f->len); break;
    case OTA_LINK_SUB:
        if (ota_link_decode_u8(f->payload, f->len, &v) == OTA_OK && ota_mq_connected(g.mq)) {
            if (v == OTA_LINK_MANIFEST)
                subscribe_child(c, true);
            else if (v == OTA_LINK_CMD)
                subscribe_child(c, false);
        }
        break;
    case OTA_LINK_ACK:
        for (k = 0; k < 2; k++)
            if (f->id != 0u && c->down[k].id == f->id)
                c->down[k].id = 0;
        break;
    default: break;
    }
}

static void child_read(child_t *c)
{
    uint8_t buf[4096];
    ssize_t k = recv(c->fd, buf, sizeof(buf), MSG_DONTWAIT);
    size_t off = 0;
    if (k == 0 || (k < 0 && errno != EAGAIN && errno != EINTR)) {
        child_close(c, k == 0 ? "closed by the child" : strerror(errno));
        return;
    }
    while (k > 0 && c->state != C_FREE) {
        size_t used;
        ota_link_frame_t f;
        int rc = ota_link_decode(&c->dec, buf + off, (size_t)k - off, &used, &f);
        off += used;
        if (rc != 1)
            break;
        on_frame(c, &f);
    }
}

/* ---- broker messages for children ------------------------------------ */

static bool gw_message(const char *topic, const uint8_t *p, size_t n)
{
    char id[OTA_CFG_DEVICE_ID_MAX + 1];
    const char *rest = split_topic(topic, id);
    child_t *c;
    if (rest == NULL)
        return false;
    if (strcmp(id, g.gw) == 0) {
        if (strcmp(rest, "ota/blk") == 0 && fetch_block(p, n))
            return true;
        return false; /* the gateway's own agent's */
    }
    c = child_by_id(id);
    /* an offer may come before the SUBACK that welcomes the child: it is
     * kept in its slot and sent again until the child, welcomed, ACKs it */
    if (c == NULL || (c->state != C_UP && c->state != C_ASKING))
        return true;
    if (strcmp(rest, "ota/blk") == 0) {
        fetch_block(p, n); /* the cache fetching on the child's topics */
    } else if (strcmp(rest, "ota/manifest") == 0) {
        uint8_t d[32];
        uint32_t size;
        int rc = gw_offer_image(p, n, d, &size);
        if (rc == OTA_OK) {
            image_t *im = image_find(d);
            if (im != NULL)
                im->failed = 0; /* offered (again): the broker serves it now */
            if (!c->has_offer || memcmp(c->digest, d, 32) != 0 || c->size != size) {
                c->has_offer = true;
                memcpy(c->digest, d, 32);
                c->size = size;
                known_save(c);
            }
        } else if (rc == OTA_ERR_NOT_FOUND && c->has_offer) {
            c->has_offer = false;
            known_save(c);
        }
        child_down(c, 0, OTA_LINK_MANIFEST, p, n);
    } else if (strcmp(rest, "cmd") == 0) {
        child_down(c, 1, OTA_LINK_CMD, p, n);
    }
    return true;
}

static void gw_connect(void)
{
    unsigned i;
    LOG("broker connected: %u queued messages", g.qlen);
    for (i = 0; i < g.max_children; i++) {
        child_t *c = &g.children[i];
        if (c->state != C_UP)
            continue;
        subscribe_child(c, true);
        if (c->birth_len > 0u)
            publish_now(c->id, OTA_LINK_BIRTH, 0, c->birth, c->birth_len);
    }
    flush_queue();
}

static void gw_disconnect(void)
{
    int i;
    unsigned k;
    LOG("broker connection lost");
    /* PUBACKs of what was in flight will not come: the children send those
     * frames again, and will be answered then */
    for (i = 0; i < GW_INFLIGHT; i++) {
        child_t *c = g.inflight[i].mid != 0 ? child_by_id(g.inflight[i].child) : NULL;
        if (c != NULL)
            for (k = 0; k < GW_RECENT; k++)
                if (c->seen[k].id == g.inflight[i].link_id)
                    c->seen[k].state = 0;
        g.inflight[i].mid = 0;
    }
    for (i = 0; i < GW_IMAGES; i++) {
        g.images[i].fetching = false;
        g.images[i].via[0] = '\0'; /* the session's subscriptions are gone */
    }
}

/* ---- the loop ---------------------------------------------------------- */

static void accept_child(void)
{
    int fd = accept(g.lfd, NULL, NULL);
    unsigned i;
    child_t *c = NULL;
    if (fd < 0)
        return;
    for (i = 0; i < g.max_children && c == NULL; i++)
        if (g.children[i].state == C_FREE)
            c = &g.children[i];
    if (c == NULL) {
        /* no slot: say so in a WELCOME on a temporary child */
        child_t tmp;
        memset(&tmp, 0, sizeof(tmp));
        tmp.fd = fd;
        tmp.state = C_HELLO;
        tmp.out = malloc(512);
        tmp.max_frame = OTA_LINK_MIN_FRAME;
        if (tmp.out == NULL) {
            close(fd);
            return;
        }
        snprintf(tmp.id, sizeof(tmp.id), "(over --max-children)");
        {
            ota_link_welcome_t w = {OTA_LINK_BUSY, GW_RX_MAX, "gateway: too many children", 26};
            uint8_t b[96];
            size_t n, flen;
            if (ota_link_encode_welcome(&w, b, sizeof(b), &n) == OTA_OK &&
                ota_link_encode(tmp.out, 512, OTA_LINK_WELCOME, 0, b, n, &flen) == OTA_OK)
                (void)send(fd, tmp.out, flen, MSG_NOSIGNAL | MSG_DONTWAIT);
        }
        free(tmp.out);
        close(fd);
        LOG("a child was refused: --max-children %u reached", g.max_children);
        return;
    }
    memset(c, 0, sizeof(*c));
    c->out = malloc(GW_OUT_MAX);
    if (c->out == NULL) {
        close(fd);
        return;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    c->fd = fd;
    c->state = C_HELLO;
    c->since_ms = ota_posix_mono_ms();
    ota_link_decoder_init(&c->dec, c->rx, sizeof(c->rx));
}

static void child_timers(child_t *c, uint64_t now)
{
    int k;
    if ((c->state == C_HELLO || c->state == C_ASKING) && now - c->since_ms > GW_HELLO_MS) {
        if (c->state == C_ASKING && known_load(c)) {
            c->state = C_UP; /* the broker did not answer; accepted before */
            child_welcome(c, OTA_LINK_OK, NULL);
        } else {
            child_welcome(c, c->state == C_HELLO ? OTA_LINK_BAD_HELLO : OTA_LINK_UNREACHABLE,
                          "gateway: no answer in time");
        }
        return;
    }
    if (c->state != C_UP)
        return;
    for (k = 0; k < 2; k++) {
        down_slot_t *d = &c->down[k];
        if (d->id != 0u && now - d->sent_ms >= GW_RESEND_MS && d->len <= child_room(c)) {
            d->sent_ms = now;
            child_put(c, d->frame, d->len);
        }
    }
    serve_child(c);
}

static void gw_loop(struct ota_mq *mq, int timeout_ms)
{
    struct pollfd pfd[4098];
    int idx[4098];
    unsigned i, n = 0;
    int ms, k, rounds;
    uint64_t now;
    pfd[n].fd = g.lfd;
    pfd[n].events = POLLIN;
    idx[n++] = -1;
    pfd[n].fd = ota_mq_socket(mq);
    pfd[n].events = POLLIN;
    idx[n++] = -2;
    for (i = 0; i < g.max_children; i++) {
        child_t *c = &g.children[i];
        if (c->state == C_FREE)
            continue;
        pfd[n].fd = c->fd;
        pfd[n].events = (short)(POLLIN | (c->out_len > 0u ? POLLOUT : 0));
        idx[n++] = (int)i;
    }
    ms = timeout_ms;
    for (k = 0; k < GW_IMAGES; k++)
        if (g.images[k].fetching)
            ms = 10;
    if (poll(pfd, n, ms) < 0 && errno != EINTR)
        return;
    /* the broker: read every packet waiting */
    ota_mq_loop(mq, 0);
    for (rounds = 0; rounds < 256; rounds++) {
        struct pollfd one;
        one.fd = ota_mq_socket(mq);
        one.events = POLLIN;
        if (one.fd < 0 || poll(&one, 1, 0) <= 0)
            break;
        ota_mq_loop(mq, 0);
    }
    if (pfd[0].revents & POLLIN)
        accept_child();
    for (i = 2; i < n; i++) {
        child_t *c = &g.children[idx[i]];
        if (c->state == C_FREE || c->fd != pfd[i].fd)
            continue;
        if (pfd[i].revents & (POLLIN | POLLHUP | POLLERR))
            child_read(c);
    }
    now = ota_posix_mono_ms();
    for (i = 0; i < g.max_children; i++) {
        child_t *c = &g.children[i];
        if (c->state == C_FREE)
            continue;
        child_timers(c, now);
        if (c->state != C_FREE)
            child_flush(c);
    }
    fetch_timers();
    if (ota_mq_connected(mq) && now >= g.recheck_at) {
        /* ask the broker again for every child: a revoked or moved child
         * is refused even when it sends nothing */
        g.recheck_at = now + g.recheck_ms;
        for (i = 0; i < g.max_children; i++)
            if (g.children[i].state == C_UP)
                subscribe_child(&g.children[i], false);
    }
}

static int gw_start(struct ota_mq *mq, const char *id)
{
    struct sockaddr_un sa;
    unsigned i;
    if (g.listen == NULL || strncmp(g.listen, "unix:", 5) != 0 ||
        strlen(g.listen + 5) >= sizeof(sa.sun_path) || g.listen[5] == '\0') {
        fprintf(stderr, "otamq-gateway: missing or bad --listen unix:PATH\n");
        return -1;
    }
    g.mq = mq;
    snprintf(g.gw, sizeof(g.gw), "%s", id);
    if (mkdir(g.cache_dir, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "otamq-gateway: cannot create %s: %s\n", g.cache_dir, strerror(errno));
        return -1;
    }
    g.children = calloc(g.max_children, sizeof(child_t));
    g.queue = calloc(g.queue_max, sizeof(queued_t));
    if (g.children == NULL || g.queue == NULL)
        return -1;
    for (i = 0; i < g.max_children; i++)
        g.children[i].fd = -1;
    for (i = 0; i < GW_IMAGES; i++)
        g.images[i].fd = -1;
    g.next_rid = (uint32_t)ota_posix_mono_ms();
    cache_load();
    g.lfd = socket(AF_UNIX, SOCK_STREAM, 0);
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    strcpy(sa.sun_path, g.listen + 5);
    unlink(sa.sun_path);
    if (g.lfd < 0 || bind(g.lfd, (struct sockaddr *)&sa, sizeof(sa)) != 0 ||
        listen(g.lfd, 64) != 0) {
        fprintf(stderr, "otamq-gateway: listen %s: %s\n", g.listen, strerror(errno));
        return -1;
    }
    LOG("listening on %s for up to %u children; cache %s, at most %llu bytes", g.listen,
        g.max_children, g.cache_dir, (unsigned long long)g.cache_max);
    return 0;
}

static void gw_stop(void)
{
    unsigned i;
    for (i = 0; i < g.max_children; i++)
        child_close(&g.children[i], "gateway stopping");
    if (g.lfd >= 0)
        close(g.lfd);
    unlink(g.listen + 5);
}

static const ota_ext_t gateway_ext = {
    "otamq-gateway",
    gw_opts,
    "gateway (otamq-gateway; docs/GATEWAYS.md):\n"
    "  --listen unix:PATH     where children connect (required)\n"
    "  --cache-dir DIR        images by digest (default ./otamq-cache)\n"
    "  --cache-max-bytes N    bound of the cache (default 67108864)\n"
    "  --max-children N       children at once (default 32)\n"
    "  --queue N              births and events kept while the broker is\n"
    "                         unreachable (default 256; the oldest goes)\n"
    "  --fetch-block-size N   block size of the gateway's own fetches (default 4096)\n"
    "  --fetch-window N       blocks per fetch request (default 4)\n"
    "  --recheck-ms MS        ask the broker again about every child (default 60000)\n",
    gw_option,
    gw_start,
    gw_message,
    gw_connect,
    gw_disconnect,
    gw_puback,
    gw_suback,
    gw_loop,
    gw_stop,
};

const ota_ext_t *const ota_app_ext = &gateway_ext;

/* otamq-testpeer - plays the broker's OTA role for tests, through a real
 * MQTT broker: publishes an offer (retained, so the device gets it when it
 * subscribes, as otamq sends it on subscribe), answers block requests from
 * an image file, and prints what the device says, one line each:
 *   birth version=V slot=S reason=R state=T
 *   hb state=T offset=O
 *   event code=C error=E progress=P
 *   request offset=O size=S count=N id=I
 * usage: otamq-testpeer URL DEVICE OFFER IMAGE [DROP_EVERY [BLOCK_DELAY_MS]] */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mosquitto.h>
#include <mqtt_protocol.h>

#include "cbor_util.h"
#include "testkit.h"

static volatile sig_atomic_t stop;
static uint8_t *image;
static size_t image_len;
static uint8_t *offer;
static size_t offer_len;
static const char *dev;
static int drop_every, blocks, delay_ms;

static void on_sig(int s)
{
    (void)s;
    stop = 1;
}

static uint8_t *read_all(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    uint8_t *b;
    long len;
    if (f == NULL)
        return NULL;
    fseek(f, 0, SEEK_END);
    len = ftell(f);
    fseek(f, 0, SEEK_SET);
    b = malloc(len > 0 ? (size_t)len : 1u);
    if (b != NULL && fread(b, 1, (size_t)len, f) != (size_t)len)
        b = NULL;
    fclose(f);
    *n = (size_t)len;
    return b;
}

typedef struct fields {
    uint64_t u[16];
    const char *s[16];
    size_t n[16];
} fields_t;

static void decode(const uint8_t *p, size_t n, fields_t *f)
{
    ota_cbor_reader_t r;
    ota_cbor_map_t m;
    uint64_t key;
    memset(f, 0, sizeof(*f));
    ota_cbor_reader_init(&r, p, n);
    if (ota_cbor_map_begin(&m, &r) != OTA_OK)
        return;
    while (ota_cbor_map_next(&m, &key) == 1 && key < 16u) {
        ota_cbor_reader_t peek = r;
        uint8_t major;
        uint64_t arg;
        if (ota_cbor_read_head(&peek, &major, &arg) != OTA_OK)
            return;
        if (major == OTA_CBOR_UINT)
            ota_cbor_read_uint(&r, &f->u[key]);
        else if (major == OTA_CBOR_TSTR)
            ota_cbor_read_tstr(&r, &f->s[key], &f->n[key]);
        else
            ota_cbor_skip(&r);
    }
}

static void on_message(struct mosquitto *m, void *obj, const struct mosquitto_message *msg)
{
    fields_t f;
    const char *t = strrchr(msg->topic, '/');
    (void)obj;
    decode(msg->payload, (size_t)msg->payloadlen, &f);
    if (strstr(msg->topic, "/birth")) {
        printf("birth version=%.*s slot=%llu reason=%llu state=%llu\n", (int)f.n[1],
               f.s[1] ? f.s[1] : "", (unsigned long long)f.u[4], (unsigned long long)f.u[5],
               (unsigned long long)f.u[7]);
    } else if (strstr(msg->topic, "/hb")) {
        printf("hb state=%llu offset=%llu\n", (unsigned long long)f.u[6],
               (unsigned long long)f.u[7]);
    } else if (strstr(msg->topic, "/ev")) {
        printf("event code=%llu error=%llu progress=%llu detail=%.*s\n",
               (unsigned long long)f.u[1], (unsigned long long)f.u[5],
               (unsigned long long)f.u[4], (int)f.n[6], f.s[6] ? f.s[6] : "");
    } else if (t && strcmp(t, "/get") == 0) {
        uint32_t off = (uint32_t)f.u[2], bs = (uint32_t)f.u[3], i;
        char topic[160];
        static uint8_t buf[70000];
        printf("request offset=%u size=%u count=%llu id=%llu\n", off, bs,
               (unsigned long long)f.u[4], (unsigned long long)f.u[5]);
        snprintf(topic, sizeof(topic), "dm/%s/ota/blk", dev);
        for (i = 0; i < f.u[4] && off < image_len; i++) {
            size_t len = image_len - off < bs ? image_len - off : bs, n;
            blocks++;
            if (delay_ms > 0) {
                struct timespec ts = {0, (long)delay_ms * 1000000L};
                nanosleep(&ts, NULL);
            }
            if (drop_every && blocks % drop_every == 0) {
                off += (uint32_t)len;
                continue;
            }
            n = tk_block(buf, sizeof(buf), (uint32_t)f.u[5], off, (uint32_t)image_len,
                         image + off, len);
            mosquitto_publish(m, NULL, topic, (int)n, buf, 0, false);
            off += (uint32_t)len;
        }
    }
    fflush(stdout);
}

static void on_connect(struct mosquitto *m, void *obj, int rc)
{
    char topic[160];
    (void)obj;
    if (rc != 0)
        return;
    snprintf(topic, sizeof(topic), "dm/%s/#", dev);
    mosquitto_subscribe(m, NULL, topic, 1);
    snprintf(topic, sizeof(topic), "dm/%s/ota/manifest", dev);
    mosquitto_publish(m, NULL, topic, (int)offer_len, offer, 1, true);
    printf("peer ready\n");
    fflush(stdout);
}

int main(int argc, char **argv)
{
    struct mosquitto *m;
    char host[128];
    int port;
    if (argc < 5 || sscanf(argv[1], "mqtt://%127[^:]:%d", host, &port) != 2) {
        fputs("usage: otamq-testpeer mqtt://HOST:PORT DEVICE OFFER IMAGE [DROP [DELAY]]\n",
              stderr);
        return 2;
    }
    dev = argv[2];
    offer = read_all(argv[3], &offer_len);
    image = read_all(argv[4], &image_len);
    drop_every = argc > 5 ? atoi(argv[5]) : 0;
    delay_ms = argc > 6 ? atoi(argv[6]) : 0;
    if (offer == NULL || image == NULL)
        return 1;
    signal(SIGTERM, on_sig);
    signal(SIGINT, on_sig);
    mosquitto_lib_init();
    {
        char cid[128];
        snprintf(cid, sizeof(cid), "otamq-testpeer-%s", dev);
        m = mosquitto_new(cid, true, NULL);
    }
    mosquitto_connect_callback_set(m, on_connect);
    mosquitto_message_callback_set(m, on_message);
    if (mosquitto_connect(m, host, port, 30) != MOSQ_ERR_SUCCESS) {
        fprintf(stderr, "testpeer: cannot connect\n");
        return 1;
    }
    while (!stop)
        if (mosquitto_loop(m, 100, 1) != MOSQ_ERR_SUCCESS)
            mosquitto_reconnect(m);
    mosquitto_destroy(m);
    mosquitto_lib_cleanup();
    return 0;
}

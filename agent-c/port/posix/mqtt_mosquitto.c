/* mqtt_mosquitto.c - see mqtt_mosquitto.h. */
#include "mqtt_mosquitto.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mosquitto.h>
#include <mqtt_protocol.h>

#include "otamq/ota_status.h"
#include "port_posix.h"

#define MQ_QUEUE 64

typedef struct mq_item {
    int kind; /* 1 connect, 2 disconnect, 3 message, 4 PUBACK, 5 SUBACK */
    char *topic;
    uint8_t *payload;
    size_t len;
    int mid, reason; /* PUBACK */
} mq_item_t;

struct ota_mq {
    struct mosquitto *m;
    ota_mq_config_t cfg;
    char host[256];
    int port;
    bool connected;
    bool connecting;
    uint64_t next_try_ms;
    uint32_t backoff_ms;
    mq_item_t q[MQ_QUEUE];
    int qn;
};

static mq_item_t *enqueue(struct ota_mq *mq, int kind, const char *topic, const void *p, size_t n)
{
    mq_item_t *it;
    int i;
    if (mq->qn >= MQ_QUEUE) {
        if (kind == 3)
            return NULL; /* like a full receive queue: the message is lost */
        /* keep connection events and PUBACKs: drop the oldest message */
        for (i = 0; i < MQ_QUEUE - 1 && mq->q[i].kind != 3; i++)
            ;
        free(mq->q[i].topic);
        free(mq->q[i].payload);
        memmove(mq->q + i, mq->q + i + 1, sizeof(mq->q[0]) * (size_t)(MQ_QUEUE - 1 - i));
        mq->qn--;
    }
    it = &mq->q[mq->qn++];
    memset(it, 0, sizeof(*it));
    it->kind = kind;
    if (kind == 3) {
        it->topic = strdup(topic);
        it->payload = malloc(n ? n : 1u);
        if (it->topic == NULL || it->payload == NULL) {
            free(it->topic);
            free(it->payload);
            mq->qn--;
            return NULL;
        }
        memcpy(it->payload, p, n);
        it->len = n;
    }
    return it;
}

static void cb_connect(struct mosquitto *m, void *obj, int rc, int flags,
                       const mosquitto_property *props)
{
    struct ota_mq *mq = (struct ota_mq *)obj;
    (void)m;
    (void)flags;
    (void)props;
    mq->connecting = false;
    if (rc != 0) {
        if (mq->cfg.verbose)
            fprintf(stderr, "otamq-agent: connect refused: %s\n", mosquitto_reason_string(rc));
        return;
    }
    mq->connected = true;
    mq->backoff_ms = 0;
    enqueue(mq, 1, NULL, NULL, 0);
}

static void cb_disconnect(struct mosquitto *m, void *obj, int rc, const mosquitto_property *props)
{
    struct ota_mq *mq = (struct ota_mq *)obj;
    (void)m;
    (void)props;
    (void)rc;
    mq->connecting = false;
    if (mq->connected) {
        mq->connected = false;
        enqueue(mq, 2, NULL, NULL, 0);
    }
}

static void cb_message(struct mosquitto *m, void *obj, const struct mosquitto_message *msg,
                       const mosquitto_property *props)
{
    (void)m;
    (void)props;
    enqueue((struct ota_mq *)obj, 3, msg->topic, msg->payload, (size_t)msg->payloadlen);
}

/* libmosquitto 2.0 calls this for the PUBACK of a QoS 1 publish, with the
 * MQTT v5 reason code (0 on MQTT 3.1.1). */
static void cb_publish(struct mosquitto *m, void *obj, int mid, int reason,
                       const mosquitto_property *props)
{
    mq_item_t *it = enqueue((struct ota_mq *)obj, 4, NULL, NULL, 0);
    (void)m;
    (void)props;
    if (it != NULL) {
        it->mid = mid;
        it->reason = reason;
    }
}

static void cb_subscribe(struct mosquitto *m, void *obj, int mid, int count, const int *granted,
                         const mosquitto_property *props)
{
    mq_item_t *it = enqueue((struct ota_mq *)obj, 5, NULL, NULL, 0);
    (void)m;
    (void)props;
    if (it != NULL) {
        it->mid = mid;
        it->reason = count > 0 ? granted[0] : 0x80;
    }
}

static int parse_url(struct ota_mq *mq, const char *url, bool *tls)
{
    const char *hp = url, *colon;
    size_t n;
    *tls = false;
    if (strncmp(url, "mqtt://", 7) == 0 || strncmp(url, "tcp://", 6) == 0) {
        hp = strchr(url, '/') + 2;
        mq->port = 1883;
    } else if (strncmp(url, "mqtts://", 8) == 0 || strncmp(url, "ssl://", 6) == 0) {
        hp = strchr(url, '/') + 2;
        mq->port = 8883;
        *tls = true;
    } else {
        return -1;
    }
    colon = strrchr(hp, ':');
    n = colon != NULL ? (size_t)(colon - hp) : strlen(hp);
    if (n == 0u || n >= sizeof(mq->host))
        return -1;
    memcpy(mq->host, hp, n);
    mq->host[n] = '\0';
    if (colon != NULL) {
        char *end;
        long port = strtol(colon + 1, &end, 10);
        if (*end != '\0' && *end != '/')
            return -1;
        if (port <= 0 || port > 65535)
            return -1;
        mq->port = (int)port;
    }
    return 0;
}

struct ota_mq *ota_mq_new(const ota_mq_config_t *cfg)
{
    struct ota_mq *mq = calloc(1, sizeof(*mq));
    bool tls;
    if (mq == NULL)
        return NULL;
    mq->cfg = *cfg;
    if (parse_url(mq, cfg->url, &tls) != 0) {
        fprintf(stderr, "otamq-agent: bad broker URL %s (want mqtt://host:port)\n", cfg->url);
        free(mq);
        return NULL;
    }
    mosquitto_lib_init();
    mq->m = mosquitto_new(cfg->client_id, true, mq);
    if (mq->m == NULL) {
        free(mq);
        return NULL;
    }
    mosquitto_int_option(mq->m, MOSQ_OPT_PROTOCOL_VERSION,
                         cfg->v311 ? MQTT_PROTOCOL_V311 : MQTT_PROTOCOL_V5);
    mosquitto_username_pw_set(mq->m, cfg->client_id, cfg->password);
    if (tls && mosquitto_tls_set(mq->m, cfg->cafile, NULL, cfg->certfile, cfg->keyfile, NULL) !=
                   MOSQ_ERR_SUCCESS) {
        fprintf(stderr, "otamq-agent: TLS setup failed (--cafile, --cert, --key?)\n");
        mosquitto_destroy(mq->m);
        free(mq);
        return NULL;
    }
    mosquitto_connect_v5_callback_set(mq->m, cb_connect);
    mosquitto_disconnect_v5_callback_set(mq->m, cb_disconnect);
    mosquitto_message_v5_callback_set(mq->m, cb_message);
    mosquitto_publish_v5_callback_set(mq->m, cb_publish);
    mosquitto_subscribe_v5_callback_set(mq->m, cb_subscribe);
    return mq;
}

static void try_connect(struct ota_mq *mq)
{
    mosquitto_property *props = NULL;
    uint64_t now = ota_posix_mono_ms();
    int rc;
    if (mq->connected || mq->connecting || now < mq->next_try_ms)
        return;
    if (!mq->cfg.v311 && mq->cfg.max_packet != 0u)
        mosquitto_property_add_int32(&props, MQTT_PROP_MAXIMUM_PACKET_SIZE, mq->cfg.max_packet);
    rc = mosquitto_connect_bind_v5(mq->m, mq->host, mq->port, mq->cfg.keepalive_s, NULL, props);
    mosquitto_property_free_all(&props);
    if (rc == MOSQ_ERR_SUCCESS) {
        mq->connecting = true;
    } else if (mq->cfg.verbose) {
        fprintf(stderr, "otamq-agent: connect %s:%d: %s\n", mq->host, mq->port,
                mosquitto_strerror(rc));
    }
    /* backoff between attempts: 250 ms doubling to 5 s */
    mq->backoff_ms = mq->backoff_ms == 0u ? 250u : mq->backoff_ms * 2u;
    if (mq->backoff_ms > 5000u)
        mq->backoff_ms = 5000u;
    mq->next_try_ms = now + mq->backoff_ms;
}

void ota_mq_loop(struct ota_mq *mq, int timeout_ms)
{
    int i, rc;
    try_connect(mq);
    if (mq->connected || mq->connecting) {
        rc = mosquitto_loop(mq->m, timeout_ms, 1);
        if (rc != MOSQ_ERR_SUCCESS) {
            mq->connecting = false;
            if (mq->connected) {
                mq->connected = false;
                enqueue(mq, 2, NULL, NULL, 0);
            }
        }
    } else {
        struct timespec ts = {0, (long)timeout_ms * 1000000L};
        nanosleep(&ts, NULL);
    }
    for (i = 0; i < mq->qn; i++) {
        mq_item_t it = mq->q[i];
        if (it.kind == 1 && mq->cfg.on_connect)
            mq->cfg.on_connect(mq->cfg.user);
        else if (it.kind == 2 && mq->cfg.on_disconnect)
            mq->cfg.on_disconnect(mq->cfg.user);
        else if (it.kind == 3 && mq->cfg.on_message)
            mq->cfg.on_message(mq->cfg.user, it.topic, it.payload, it.len);
        else if (it.kind == 4 && mq->cfg.on_puback)
            mq->cfg.on_puback(mq->cfg.user, it.mid, it.reason);
        else if (it.kind == 5 && mq->cfg.on_suback)
            mq->cfg.on_suback(mq->cfg.user, it.mid, it.reason);
        free(it.topic);
        free(it.payload);
        mq->q[i].topic = NULL;
        mq->q[i].payload = NULL;
    }
    mq->qn = 0;
}

int ota_mq_publish(struct ota_mq *mq, const char *topic, const uint8_t *p, size_t n, int qos)
{
    int mid = 0;
    if (!mq->connected || n > 0x7fffffffu)
        return OTA_ERR_IO;
    if (mosquitto_publish_v5(mq->m, &mid, topic, (int)n, p, qos, false, NULL) != MOSQ_ERR_SUCCESS)
        return OTA_ERR_IO;
    return mid;
}

int ota_mq_subscribe(struct ota_mq *mq, const char *topic, int qos)
{
    if (!mq->connected)
        return OTA_ERR_IO;
    return mosquitto_subscribe_v5(mq->m, NULL, topic, qos, 0, NULL) == MOSQ_ERR_SUCCESS
               ? OTA_OK
               : OTA_ERR_IO;
}

int ota_mq_subscribe_id(struct ota_mq *mq, const char *topic, int qos)
{
    int mid = 0;
    if (!mq->connected ||
        mosquitto_subscribe_v5(mq->m, &mid, topic, qos, 0, NULL) != MOSQ_ERR_SUCCESS)
        return OTA_ERR_IO;
    return mid;
}

int ota_mq_socket(struct ota_mq *mq)
{
    return mq->connected || mq->connecting ? mosquitto_socket(mq->m) : -1;
}

bool ota_mq_connected(const struct ota_mq *mq)
{
    return mq->connected;
}

void ota_mq_destroy(struct ota_mq *mq)
{
    int i;
    if (mq == NULL)
        return;
    if (mq->connected)
        mosquitto_disconnect_v5(mq->m, 0, NULL);
    mosquitto_destroy(mq->m);
    mosquitto_lib_cleanup();
    for (i = 0; i < mq->qn; i++) {
        free(mq->q[i].topic);
        free(mq->q[i].payload);
    }
    free(mq);
}

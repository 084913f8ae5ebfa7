/* mqtt_mosquitto.h - the POSIX port's MQTT client on libmosquitto.
 *
 * Everything runs in the caller's thread: ota_mq_loop() runs libmosquitto's
 * network loop and hands connects, disconnects and complete messages to the
 * callbacks AFTER libmosquitto returned, never from inside its callbacks, so
 * the agent may publish, subscribe or reboot from them. */
#ifndef OTAMQ_PORT_POSIX_MQTT_H
#define OTAMQ_PORT_POSIX_MQTT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct ota_mq_config {
    const char *url;       /* mqtt://host:port or mqtts://host:port */
    const char *client_id; /* also the username */
    const char *password;  /* the device token (may be NULL) */
    const char *cafile;    /* for mqtts:// */
    const char *certfile;  /* client certificate (PEM) for mqtts://, or NULL */
    const char *keyfile;   /* its private key (PEM) */
    bool v311;             /* MQTT 3.1.1 instead of 5 */
    uint32_t max_packet;   /* v5 Maximum Packet Size announced on CONNECT */
    int keepalive_s;
    bool verbose;
    void *user;
    void (*on_connect)(void *user);
    void (*on_disconnect)(void *user);
    void (*on_message)(void *user, const char *topic, const uint8_t *payload, size_t len);
    /* PUBACK of the QoS 1 publish mid: its MQTT v5 reason code (0 on
     * MQTT 3.1.1), as libmosquitto's on_publish_v5 callback gives it. */
    void (*on_puback)(void *user, int mid, int reason);
    /* SUBACK of the subscribe mid (ota_mq_subscribe_id): the reason code
     * of its one filter (a granted QoS, or >= 0x80 refused). Optional. */
    void (*on_suback)(void *user, int mid, int reason);
} ota_mq_config_t;

struct ota_mq;

/* NULL on failure (message on stderr). Connecting happens in ota_mq_loop. */
struct ota_mq *ota_mq_new(const ota_mq_config_t *cfg);
/* Runs the network for up to timeout_ms, reconnects with backoff, then
 * delivers queued events to the callbacks. */
void ota_mq_loop(struct ota_mq *mq, int timeout_ms);
/* The message ID (>= 0; for QoS 1 the packet identifier its PUBACK names)
 * or OTA_ERR_IO (not connected / refused): nothing is queued while the
 * connection is down. */
int ota_mq_publish(struct ota_mq *mq, const char *topic, const uint8_t *p, size_t n, int qos);
/* OTA_OK or OTA_ERR_IO. */
int ota_mq_subscribe(struct ota_mq *mq, const char *topic, int qos);
/* As ota_mq_subscribe, returning the message ID on_suback will name
 * (> 0), or OTA_ERR_IO. */
int ota_mq_subscribe_id(struct ota_mq *mq, const char *topic, int qos);
/* The connection's socket to poll for reading, -1 when there is none. */
int ota_mq_socket(struct ota_mq *mq);
/* Connected (CONNACK success, not yet lost). */
bool ota_mq_connected(const struct ota_mq *mq);
void ota_mq_destroy(struct ota_mq *mq);

#endif

/* link_posix.h - the POSIX port's local-link client: the agent core's MQTT
 * functions (ota_port.h, mqtt_publish / mqtt_subscribe, PUBACKs) carried
 * over the link framing of ota_link.h to a gateway (docs/PROTOCOL.md,
 * "Local links"), on a UNIX stream socket (unix:PATH).
 *
 * Everything runs in the caller's thread: ota_lc_loop() reads the link,
 * reconnects with backoff, retransmits what the gateway has not
 * acknowledged, and calls the callbacks from there (never from a signal or
 * another thread), so they may publish, subscribe or reboot. The same
 * callbacks and return rules as mqtt_mosquitto.h. */
#ifndef OTAMQ_PORT_POSIX_LINK_H
#define OTAMQ_PORT_POSIX_LINK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct ota_lc_config {
    const char *addr;      /* unix:PATH */
    const char *topic_prefix; /* "dm" */
    const char *device_id; /* sent in HELLO; the topics are dm/{id}/... */
    uint32_t max_frame;    /* the largest frame this child takes (HELLO key 2) */
    bool verbose;
    void *user;
    void (*on_connect)(void *user);    /* WELCOME status 0 */
    void (*on_disconnect)(void *user); /* the link ended after a WELCOME */
    void (*on_message)(void *user, const char *topic, const uint8_t *payload, size_t len);
    /* ACK of the QoS 1 publish mid: the broker's PUBACK reason, passed on
     * by the gateway. */
    void (*on_puback)(void *user, int mid, int reason);
} ota_lc_config_t;

struct ota_lc;

/* NULL on failure (message on stderr). Connecting happens in ota_lc_loop. */
struct ota_lc *ota_lc_new(const ota_lc_config_t *cfg);
/* Runs the link for up to timeout_ms. */
void ota_lc_loop(struct ota_lc *lc, int timeout_ms);
/* topic must be one of the device's own (dm/{id}/birth, hb, ev, ota/get).
 * The message ID (QoS 1: 1..65535, the id its ACK names; QoS 0: 0), or
 * OTA_ERR_IO when the link is not up (after WELCOME), the topic is not one
 * the link carries, or too many QoS 1 frames wait for their ACK. */
int ota_lc_publish(struct ota_lc *lc, const char *topic, const uint8_t *p, size_t n, int qos);
/* Asks the gateway to subscribe again to dm/{id}/ota/manifest, ota/blk or
 * cmd (a SUB frame). OTA_OK or OTA_ERR_IO. */
int ota_lc_subscribe(struct ota_lc *lc, const char *topic, int qos);
void ota_lc_destroy(struct ota_lc *lc);

#endif

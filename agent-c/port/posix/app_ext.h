/* app_ext.h - what main.c (the simulated device: the agent core, the POSIX
 * port, --supervise) lets a program built on it add: otamq-gateway is
 * otamq-agent plus a relay for children on local links (gateway.c). The
 * agent binary links ext_none.c (no extension).
 *
 * Every member is called from main's one thread, never concurrently, never
 * from inside a libmosquitto callback (ota_mq delivers after it returns).
 * Members may be NULL. */
#ifndef OTAMQ_PORT_POSIX_APP_EXT_H
#define OTAMQ_PORT_POSIX_APP_EXT_H

#include <getopt.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct ota_mq;

/* Long options of an extension have codes from OTA_EXT_OPT on. */
#define OTA_EXT_OPT 1000

typedef struct ota_ext {
    const char *name;           /* program name, for messages */
    const struct option *opts;  /* extra options, ended by {0} */
    const char *usage;          /* their help lines */
    /* An extra option: 0, or -1 (bad value; message on stderr). */
    int (*option)(int code, const char *arg);
    /* The MQTT client exists, the agent not yet booted. 0, or -1 (the
     * program exits with an error). */
    int (*start)(struct ota_mq *mq, const char *device_id);
    /* A PUBLISH arrived: true when it is the extension's alone (the agent
     * does not see it). */
    bool (*on_message)(const char *topic, const uint8_t *p, size_t n);
    void (*on_connect)(void);
    void (*on_disconnect)(void);
    void (*on_puback)(int mid, int reason);
    void (*on_suback)(int mid, int reason);
    /* Replaces ota_mq_loop(mq, timeout_ms) in the main loop. */
    void (*loop)(struct ota_mq *mq, int timeout_ms);
    void (*stop)(void);
} ota_ext_t;

extern const ota_ext_t *const ota_app_ext;

#endif

/* main.c - otamq-agent: the agent on Linux, simulating an ESP32-like device
 * with A/B slots in a data directory. See README.md for flags, exit codes
 * and the simulated image header. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "app_ext.h"
#include "crypto_mbedtls.h"
#include "link_posix.h"
#include "mqtt_mosquitto.h"
#include "otamq/ota_agent.h"
#include "port_posix.h"

#define MAX_KEYS OTA_CFG_MAX_KEYS

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

typedef struct app {
    ota_posix_t px;
    ota_port_t port;
    ota_agent_t agent;
    struct ota_mq *mq;
    struct ota_lc *lc; /* --link: a child on a local link instead of MQTT */
    uint32_t watchdog_ms;
    bool image_health_failing; /* the image's own behaviour */
} app_t;

/* Log lines: info always, debug with --verbose. */
#define LOG_INFO(...) (fprintf(stderr, "otamq-agent: " __VA_ARGS__), fputc('\n', stderr))
#define LOG_DEBUG(a, ...) ((a)->px.verbose ? (void)LOG_INFO(__VA_ARGS__) : (void)0)

static const char *const state_names[] = {"idle",       "downloading", "verified",
                                          "installing", "rebooting",   "trial",
                                          "committed",  "rolled back", "failed"};
static const char *const reason_names[] = {"power-on", "software", "watchdog", "panic",
                                           "brownout", "ota-reboot", "rollback"};

static const char *state_name(ota_state_t st)
{
    return (unsigned)st <= OTA_STATE_FAILED ? state_names[st] : "?";
}

/* Normal policy decisions about an offer, worth an info line; anything
 * else (stale blocks, malformed messages) is debug. */
static bool policy_status(int rc)
{
    return rc == OTA_ERR_SIGNATURE || rc == OTA_ERR_UNKNOWN_KEY || rc == OTA_ERR_HARDWARE ||
           rc == OTA_ERR_BOOTLOADER || rc == OTA_ERR_VERSION || rc == OTA_ERR_SEQUENCE ||
           rc == OTA_ERR_SECURE_VERSION || rc == OTA_ERR_TIMEOUT || rc == OTA_ERR_COSE;
}

static void cb_connect(void *user)
{
    app_t *a = (app_t *)user;
    LOG_DEBUG(a, "connected");
    if (a->mq != NULL && ota_app_ext != NULL && ota_app_ext->on_connect != NULL)
        ota_app_ext->on_connect();
    ota_agent_on_connect(&a->agent);
}

static void cb_disconnect(void *user)
{
    app_t *a = (app_t *)user;
    LOG_DEBUG(a, "disconnected");
    if (a->mq != NULL && ota_app_ext != NULL && ota_app_ext->on_disconnect != NULL)
        ota_app_ext->on_disconnect();
    ota_agent_on_disconnect(&a->agent);
}

static void cb_message(void *user, const char *topic, const uint8_t *p, size_t n)
{
    app_t *a = (app_t *)user;
    int rc;
    const char *t = strrchr(topic, '/');
    bool offer = t != NULL && strcmp(t, "/manifest") == 0;
    if (a->mq != NULL && ota_app_ext != NULL && ota_app_ext->on_message != NULL &&
        ota_app_ext->on_message(topic, p, n))
        return;
    rc = ota_agent_on_message(&a->agent, topic, p, n);
    if (offer && policy_status(rc))
        LOG_INFO("offer refused: %s", ota_strerror(rc));
    else if (offer && rc == OTA_ERR_STATE)
        LOG_INFO("offer not taken now: an update is in state %s",
                 state_name(ota_agent_state(&a->agent)));
    else if (rc != OTA_OK)
        LOG_DEBUG(a, "%s: %s", topic, ota_strerror(rc));
}

static void cb_puback(void *user, int mid, int reason)
{
    app_t *a = (app_t *)user;
    int rc;
    if (a->mq != NULL && ota_app_ext != NULL && ota_app_ext->on_puback != NULL)
        ota_app_ext->on_puback(mid, reason);
    rc = ota_agent_on_puback(&a->agent, mid, (uint8_t)reason);
    if (rc == OTA_ERR_MSG)
        LOG_INFO("warning: the broker refused an event (PUBACK 0x%02x): dropped", reason);
    else if (rc == OTA_ERR_IO)
        LOG_INFO("the broker could not record an event now (PUBACK 0x%02x): kept, sent again later",
                 reason);
}

static void cb_suback(void *user, int mid, int reason)
{
    (void)user;
    if (ota_app_ext != NULL && ota_app_ext->on_suback != NULL)
        ota_app_ext->on_suback(mid, reason);
}

/* The port's MQTT members over the local link (--link). */
static int link_publish(void *ctx, const char *topic, const uint8_t *p, size_t n, int qos)
{
    return ota_lc_publish(((app_t *)((ota_posix_t *)ctx)->user)->lc, topic, p, n, qos);
}

static int link_subscribe(void *ctx, const char *topic, int qos)
{
    return ota_lc_subscribe(((app_t *)((ota_posix_t *)ctx)->user)->lc, topic, qos);
}

/* ---- the simulated application's configuration ------------------------ */

/* The simulated application: a configuration or feature-flag blob that
 * begins with "#fail-health" makes its health check fail while it is in
 * use, one that begins with "#restart" needs a restart to be used (README,
 * "Simulated configurations"). */
static bool blob_says(const uint8_t *b, size_t n, const char *what)
{
    size_t m = strlen(what);
    return n >= m && memcmp(b, what, m) == 0;
}

static void update_health(app_t *a)
{
    static uint8_t buf[OTA_POSIX_CFG_MAX];
    uint8_t k;
    bool bad = a->image_health_failing;
    for (k = 1; k < OTA_KINDS; k++) {
        long n = ota_posix_config(&a->px, k, buf, sizeof(buf));
        if (n > 0 && blob_says(buf, (size_t)n, "#fail-health"))
            bad = true;
    }
    a->px.health_failing = bad;
}

static void cb_config_changed(void *user, uint8_t kind)
{
    app_t *a = (app_t *)user;
    static uint8_t buf[OTA_POSIX_CFG_MAX];
    long n = ota_posix_config(&a->px, kind, buf, sizeof(buf));
    LOG_INFO("%s now in use: %ld bytes", kind == OTA_KIND_CONFIG ? "configuration" : "feature flags",
             n);
    update_health(a);
}

static bool cb_needs_restart(void *user, uint8_t kind, const uint8_t *cfg, size_t len)
{
    (void)user;
    (void)kind;
    return blob_says(cfg, len, "#restart");
}

/* A secret read from a file (trailing newline dropped); NULL on error. */
static char *read_secret(const char *path)
{
    static char buf[512];
    FILE *f = fopen(path, "r");
    size_t n;
    if (f == NULL)
        return NULL;
    n = fread(buf, 1, sizeof(buf) - 1u, f);
    fclose(f);
    while (n > 0u && (buf[n - 1u] == '\n' || buf[n - 1u] == '\r'))
        n--;
    buf[n] = '\0';
    return n > 0u ? buf : NULL;
}

static void usage(FILE *f)
{
    if (ota_app_ext != NULL)
        fprintf(f, "usage: %s --broker URL --id DEVICE --key PUB.pem [options]\n", ota_app_ext->name);
    else
        fputs("usage: otamq-agent (--broker URL | --link unix:PATH) --id DEVICE --key PUB.pem [options]\n", f);
    fputs("  --broker URL           mqtt://host:port or mqtts://host:port\n"
          "  --id ID                device ID (MQTT client ID and username)\n"
          "  --token TOKEN          device token (MQTT password; visible in ps: prefer\n"
          "                         --token-file or the environment variable OTAMQ_TOKEN)\n"
          "  --token-file FILE      read the device token from FILE\n"
          "  --data-dir DIR         simulated flash (default ./otamq-data)\n"
          "  --link unix:PATH       a child node: reach the broker through a gateway\n"
          "                         (otamq-gateway) on a local link instead of MQTT\n"
          "  --hardware HW          hardware string (default esp32-v2)\n"
          "  --key FILE             trusted manifest key, PEM (repeatable)\n"
          "  --bootloader VER       bootloader version (default 2.1.0)\n"
          "  --initial-version VER  version of the factory image (default 1.0.0)\n"
          "  --secure-version N     secure version of the factory image (default 0)\n"
          "  --utc-offset MINUTES   the device's UTC offset reported in its birth\n"
          "                         (-840 to 840, default 0)\n"
          "  --cafile FILE          CA bundle for mqtts://\n"
          "  --cert FILE, --cert-key FILE\n"
          "                         client certificate and its private key (PEM) for\n"
          "                         mqtts://: log in with a certificate of the fleet CA\n"
          "                         whose CN is the device ID (no token needed)\n"
          "  --mqtt-v3              use MQTT 3.1.1 instead of 5\n"
          "  --supervise            restart after reboots, crashes and watchdog\n"
          "                         resets, like a bootloader\n"
          "  --watchdog-ms MS       simulated watchdog timeout (default 5000)\n"
          "  --allow-downgrade      accept lower versions\n"
          "  --no-invalidate        simulate ESP-IDF < 5.5 (no\n"
          "                         esp_ota_invalidate_inactive_ota_data_slot)\n"
          "  --verbose              debug log lines too (info lines always go to stderr)\n"
          "  --version              print the agent version and exit\n"
          "  timing overrides (ms unless noted, 0 = default):\n"
          "  --heartbeat-ms --request-timeout-ms --backoff-min-ms --backoff-max-ms\n"
          "  --max-retries N --trial-timeout-ms --probation-ms --max-reboots N\n"
          "  --reboot-window-ms --max-wdt-resets N --wdt-window-ms --health-fail-ms\n"
          "  --no-broker-ms --block-size BYTES --window N\n"
          "exit codes: 0 stopped, 1 error, 20 reboot, 21 panic, 22 watchdog\n",
          f);
    if (ota_app_ext != NULL && ota_app_ext->usage != NULL)
        fputs(ota_app_ext->usage, f);
}

enum {
    O_BROKER = 256, O_ID, O_TOKEN, O_TOKEN_FILE, O_CERT, O_KEYFILE, O_DIR, O_HW, O_KEY, O_BL,
    O_INIT, O_CAFILE, O_V3, O_SUPERVISE, O_DOWNGRADE, O_VERBOSE, O_NOINVAL, O_HELP,
    O_VERSION, O_UTC, O_LINK,
    /* the unsigned numeric ones */
    O_SV, O_WDT, O_HB, O_RTO, O_BMIN, O_BMAX, O_RETRIES, O_TRIAL, O_PROB, O_MAXRB, O_RBWIN,
    O_MAXWDT, O_WDTWIN, O_HFAIL, O_NOBROKER, O_BS, O_WIN
};

static const struct option opts[] = {
    {"broker", 1, 0, O_BROKER}, {"id", 1, 0, O_ID}, {"token", 1, 0, O_TOKEN},
    {"token-file", 1, 0, O_TOKEN_FILE}, {"cert", 1, 0, O_CERT}, {"cert-key", 1, 0, O_KEYFILE},
    {"no-invalidate", 0, 0, O_NOINVAL},
    {"data-dir", 1, 0, O_DIR}, {"hardware", 1, 0, O_HW}, {"key", 1, 0, O_KEY},
    {"bootloader", 1, 0, O_BL}, {"initial-version", 1, 0, O_INIT},
    {"secure-version", 1, 0, O_SV}, {"cafile", 1, 0, O_CAFILE}, {"mqtt-v3", 0, 0, O_V3},
    {"supervise", 0, 0, O_SUPERVISE}, {"watchdog-ms", 1, 0, O_WDT},
    {"allow-downgrade", 0, 0, O_DOWNGRADE}, {"verbose", 0, 0, O_VERBOSE},
    {"heartbeat-ms", 1, 0, O_HB}, {"request-timeout-ms", 1, 0, O_RTO},
    {"backoff-min-ms", 1, 0, O_BMIN}, {"backoff-max-ms", 1, 0, O_BMAX},
    {"max-retries", 1, 0, O_RETRIES}, {"trial-timeout-ms", 1, 0, O_TRIAL},
    {"probation-ms", 1, 0, O_PROB}, {"max-reboots", 1, 0, O_MAXRB},
    {"reboot-window-ms", 1, 0, O_RBWIN}, {"max-wdt-resets", 1, 0, O_MAXWDT},
    {"wdt-window-ms", 1, 0, O_WDTWIN}, {"health-fail-ms", 1, 0, O_HFAIL},
    {"no-broker-ms", 1, 0, O_NOBROKER}, {"block-size", 1, 0, O_BS}, {"window", 1, 0, O_WIN},
    {"utc-offset", 1, 0, O_UTC},
    {"help", 0, 0, O_HELP}, {"version", 0, 0, O_VERSION}, {"link", 1, 0, O_LINK}};
#define NOPTS (sizeof(opts) / sizeof(opts[0]))

static int num(const char *s, uint32_t *out)
{
    char *end;
    unsigned long v;
    errno = 0;
    v = strtoul(s, &end, 10);
    if (errno != 0 || *end != '\0' || end == s || v > 0xffffffffUL)
        return -1;
    *out = (uint32_t)v;
    return 0;
}

/* Restarts the device process like a bootloader restarts the chip. */
static int supervise(char **argv)
{
    for (;;) {
        int status;
        pid_t pid = fork();
        if (pid < 0) {
            perror("otamq-agent: fork");
            return OTA_EXIT_ERROR;
        }
        if (pid == 0) {
            execv("/proc/self/exe", argv);
            execvp(argv[0], argv);
            perror("otamq-agent: exec");
            _exit(OTA_EXIT_ERROR);
        }
        while (waitpid(pid, &status, 0) < 0) {
            if (errno != EINTR)
                return OTA_EXIT_ERROR;
            if (stop_requested)
                kill(pid, SIGTERM);
        }
        if (stop_requested)
            return OTA_EXIT_OK;
        if (WIFEXITED(status)) {
            int code = WEXITSTATUS(status);
            if (code != OTA_EXIT_REBOOT && code != OTA_EXIT_PANIC && code != OTA_EXIT_WATCHDOG)
                return code;
        } else if (WIFSIGNALED(status) &&
                   (WTERMSIG(status) == SIGTERM || WTERMSIG(status) == SIGINT)) {
            return OTA_EXIT_OK;
        }
        /* killed by another signal: a power loss; restart too */
    }
}

int main(int argc, char **argv)
{
    static app_t app;
    static uint8_t keys[MAX_KEYS][65];
    ota_agent_config_t cfg;
    ota_mq_config_t mc;
    const char *broker = NULL, *id = NULL, *token = NULL, *dir = "./otamq-data";
    const char *hw = "esp32-v2", *bl = "2.1.0", *initv = "1.0.0", *cafile = NULL;
    const char *token_file = NULL, *certfile = NULL, *keyfile = NULL, *missing = NULL;
    const char *link = NULL;
    static struct option all_opts[NOPTS + 32];
    size_t nall = NOPTS;
    const char *keyfiles[MAX_KEYS];
    uint32_t nkeys = 0, isv = 0;
    bool v3 = false, sup = false;
    uint64_t boot_ms;
    int c, i;
    struct sigaction sa;

    memset(&cfg, 0, sizeof(cfg));
    app.watchdog_ms = 5000;
    memcpy(all_opts, opts, sizeof(opts));
    if (ota_app_ext != NULL)
        for (i = 0; ota_app_ext->opts[i].name != NULL && nall < NOPTS + 31u; i++)
            all_opts[nall++] = ota_app_ext->opts[i];
    while ((c = getopt_long(argc, argv, "", all_opts, NULL)) != -1) {
        uint32_t v = 0;
        ota_settings_t *s = &cfg.settings;
        if (c >= OTA_EXT_OPT && ota_app_ext != NULL) {
            if (ota_app_ext->option(c, optarg) != 0)
                return OTA_EXIT_ERROR;
            continue;
        }
        if (c >= O_SV && num(optarg, &v) != 0) {
            fprintf(stderr, "otamq-agent: bad number %s\n", optarg);
            return OTA_EXIT_ERROR;
        }
        switch (c) {
        case O_BROKER: broker = optarg; break;
        case O_ID: id = optarg; break;
        case O_TOKEN: token = optarg; break;
        case O_TOKEN_FILE: token_file = optarg; break;
        case O_CERT: certfile = optarg; break;
        case O_KEYFILE: keyfile = optarg; break;
        case O_NOINVAL: app.px.no_invalidate = true; break;
        case O_DIR: dir = optarg; break;
        case O_LINK: link = optarg; break;
        case O_HW: hw = optarg; break;
        case O_KEY:
            if (nkeys == MAX_KEYS) {
                fprintf(stderr, "otamq-agent: at most %d keys\n", MAX_KEYS);
                return OTA_EXIT_ERROR;
            }
            keyfiles[nkeys++] = optarg;
            break;
        case O_BL: bl = optarg; break;
        case O_INIT: initv = optarg; break;
        case O_SV: isv = v; break;
        case O_UTC: {
            char *end;
            long m;
            errno = 0;
            m = strtol(optarg, &end, 10);
            if (errno != 0 || *end != '\0' || end == optarg || m < -840 || m > 840) {
                fprintf(stderr, "otamq-agent: --utc-offset %s: want minutes from -840 to 840\n",
                        optarg);
                return OTA_EXIT_ERROR;
            }
            cfg.utc_offset_min = (int32_t)m;
            break;
        }
        case O_CAFILE: cafile = optarg; break;
        case O_V3: v3 = true; break;
        case O_SUPERVISE: sup = true; break;
        case O_WDT: app.watchdog_ms = v; break;
        case O_DOWNGRADE: s->allow_downgrade = true; break;
        case O_VERBOSE: app.px.verbose = true; break;
        case O_HB: s->heartbeat_ms = v; break;
        case O_RTO: s->request_timeout_ms = v; break;
        case O_BMIN: s->backoff_min_ms = v; break;
        case O_BMAX: s->backoff_max_ms = v; break;
        case O_RETRIES: s->max_retries = v; break;
        case O_TRIAL: s->trial_timeout_ms = v; break;
        case O_PROB: s->probation_ms = v; break;
        case O_MAXRB: s->max_reboots = v; break;
        case O_RBWIN: s->reboot_window_ms = v; break;
        case O_MAXWDT: s->max_wdt_resets = v; break;
        case O_WDTWIN: s->wdt_window_ms = v; break;
        case O_HFAIL: s->health_fail_ms = v; break;
        case O_NOBROKER: s->no_broker_ms = v; break;
        case O_BS: s->block_size = v; break;
        case O_WIN: s->window = v; break;
        case O_HELP: usage(stdout); return OTA_EXIT_OK;
        case O_VERSION: printf("otamq-agent %s\n", OTA_AGENT_VERSION); return OTA_EXIT_OK;
        default: usage(stderr); return OTA_EXIT_ERROR;
        }
    }
    if (optind != argc) {
        fprintf(stderr, "otamq-agent: unexpected argument %s\n", argv[optind]);
        usage(stderr);
        return OTA_EXIT_ERROR;
    }
    if (link != NULL && (broker != NULL || ota_app_ext != NULL)) {
        fprintf(stderr, "otamq-agent: --link replaces --broker (and a gateway has no link)\n");
        return OTA_EXIT_ERROR;
    }
    missing = broker == NULL && link == NULL ? "--broker URL"
              : id == NULL                   ? "--id DEVICE"
              : nkeys == 0u                  ? "--key PUB.pem"
                                             : NULL;
    if (missing == NULL && (certfile == NULL) != (keyfile == NULL))
        missing = certfile == NULL ? "--cert FILE (with --cert-key)" : "--cert-key FILE (with --cert)";
    if (missing != NULL) {
        fprintf(stderr, "otamq-agent: missing required flag %s\n", missing);
        usage(stderr);
        return OTA_EXIT_ERROR;
    }
    if (token_file != NULL) {
        token = read_secret(token_file);
        if (token == NULL) {
            fprintf(stderr, "otamq-agent: cannot read a token from --token-file %s\n", token_file);
            return OTA_EXIT_ERROR;
        }
    } else if (token == NULL) {
        token = getenv("OTAMQ_TOKEN");
    }
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    if (sup) {
        /* the child runs the same command line without --supervise */
        char **cargv = calloc((size_t)argc + 1u, sizeof(char *));
        char rp[600];
        int n = 0;
        if (cargv == NULL)
            return OTA_EXIT_ERROR;
        /* The supervisor is the chip: its start is a power-on. A reset
         * reason left by a device process whose power was cut (all of the
         * tree killed) after it wrote the reason, or before the next start
         * consumed it, is gone with the power, as the chip's reset reason
         * register is. */
        snprintf(rp, sizeof(rp), "%s/reset-reason", dir);
        (void)unlink(rp);
        for (i = 0; i < argc; i++)
            if (strcmp(argv[i], "--supervise") != 0)
                cargv[n++] = argv[i];
        return supervise(cargv);
    }

    for (i = 0; i < (int)nkeys; i++) {
        int rc = ota_mbedtls_load_pubkey(keyfiles[i], keys[i]);
        if (rc != OTA_OK) {
            fprintf(stderr, "otamq-agent: key %s: %s\n", keyfiles[i], ota_strerror(rc));
            return OTA_EXIT_ERROR;
        }
    }
    if (ota_posix_boot(&app.px, dir, initv, isv) != OTA_OK)
        return OTA_EXIT_ERROR;
    LOG_INFO("booted slot %d version %s (simulated behaviour %u), reset reason %s",
             app.px.running, app.px.hdr.version, app.px.hdr.behaviour,
             reason_names[app.px.reason]);

    /* the simulated firmware's behaviour before the agent gets to run */
    if (app.px.hdr.behaviour == OTA_SIM_CRASH)
        ota_posix_reset(&app.px, OTA_BOOT_PANIC, OTA_EXIT_PANIC);
    if (app.px.hdr.behaviour == OTA_SIM_HANG) {
        uint64_t end = ota_posix_mono_ms() + app.watchdog_ms;
        while (ota_posix_mono_ms() < end && !stop_requested) {
            struct timespec ts = {0, 50000000L};
            nanosleep(&ts, NULL); /* hung: nothing runs until the watchdog */
        }
        if (stop_requested)
            return OTA_EXIT_OK;
        ota_posix_reset(&app.px, OTA_BOOT_WATCHDOG, OTA_EXIT_WATCHDOG);
    }
    app.image_health_failing = app.px.hdr.behaviour == OTA_SIM_HEALTH_FAIL;
    app.px.user = &app;
    app.px.config_changed = cb_config_changed;
    app.px.needs_restart = cb_needs_restart;
    update_health(&app);

    ota_posix_port(&app.px, &app.port);
    cfg.port = &app.port;
    cfg.device_id = id;
    cfg.hardware = hw;
    cfg.bootloader_version = bl;
    cfg.fw_version = app.px.hdr.version;
    cfg.secure_version = app.px.hdr.secure_version;
    cfg.connectivity = link != NULL ? 3 : 2; /* via-gateway, ethernet */
    if (link != NULL) {
        app.port.mqtt_publish = link_publish;
        app.port.mqtt_subscribe = link_subscribe;
    }
    cfg.keys = (const uint8_t(*)[65])keys;
    cfg.nkeys = nkeys;
    if (ota_agent_init(&app.agent, &cfg) != OTA_OK) {
        fprintf(stderr, "otamq-agent: bad configuration (device ID?)\n");
        return OTA_EXIT_ERROR;
    }

    if (link != NULL) {
        ota_lc_config_t lcc;
        memset(&lcc, 0, sizeof(lcc));
        lcc.addr = link;
        lcc.topic_prefix = OTA_CFG_TOPIC_PREFIX;
        lcc.device_id = id;
        lcc.max_frame = OTA_CFG_BLOCK_SIZE + OTA_CFG_BLOCK_OVERHEAD;
        lcc.verbose = app.px.verbose;
        lcc.user = &app;
        lcc.on_connect = cb_connect;
        lcc.on_disconnect = cb_disconnect;
        lcc.on_message = cb_message;
        lcc.on_puback = cb_puback;
        app.lc = ota_lc_new(&lcc);
        if (app.lc == NULL)
            return OTA_EXIT_ERROR;
        goto boot;
    }
    memset(&mc, 0, sizeof(mc));
    mc.url = broker;
    mc.client_id = id;
    mc.password = token;
    mc.cafile = cafile;
    mc.certfile = certfile;
    mc.keyfile = keyfile;
    mc.v311 = v3;
    mc.max_packet = OTA_CFG_BLOCK_SIZE + OTA_CFG_BLOCK_OVERHEAD;
    mc.keepalive_s = 30;
    mc.verbose = app.px.verbose;
    mc.user = &app;
    mc.on_connect = cb_connect;
    mc.on_disconnect = cb_disconnect;
    mc.on_message = cb_message;
    mc.on_puback = cb_puback;
    mc.on_suback = cb_suback;
    app.mq = ota_mq_new(&mc);
    if (app.mq == NULL)
        return OTA_EXIT_ERROR;
    app.px.mq = app.mq;
    if (ota_app_ext != NULL && ota_app_ext->start != NULL && ota_app_ext->start(app.mq, id) != 0)
        return OTA_EXIT_ERROR;

boot:
    {
        int rc = ota_agent_on_boot(&app.agent);
        if (rc != OTA_OK) {
            fprintf(stderr, "otamq-agent: boot: %s\n", ota_strerror(rc));
            return OTA_EXIT_ERROR;
        }
    }
    boot_ms = ota_posix_mono_ms();
    while (!stop_requested) {
        ota_state_t before = ota_agent_state(&app.agent);
        if (app.lc != NULL)
            ota_lc_loop(app.lc, 50);
        else if (ota_app_ext != NULL && ota_app_ext->loop != NULL)
            ota_app_ext->loop(app.mq, 50);
        else
            ota_mq_loop(app.mq, 50);
        ota_agent_tick(&app.agent);
        if (ota_agent_state(&app.agent) != before)
            LOG_DEBUG(&app, "state %s -> %s", state_name(before),
                      state_name(ota_agent_state(&app.agent)));
        if (app.px.hdr.delay_s != 0u &&
            ota_posix_mono_ms() - boot_ms >= (uint64_t)app.px.hdr.delay_s * 1000u) {
            if (app.px.hdr.behaviour == OTA_SIM_CRASH_LATER)
                ota_posix_reset(&app.px, OTA_BOOT_PANIC, OTA_EXIT_PANIC);
            if (app.px.hdr.behaviour == OTA_SIM_HEALTH_FAIL_LATER && !app.image_health_failing) {
                app.image_health_failing = true;
                update_health(&app);
            }
        }
    }
    if (ota_app_ext != NULL && ota_app_ext->stop != NULL)
        ota_app_ext->stop();
    ota_mq_destroy(app.mq);
    ota_lc_destroy(app.lc);
    return OTA_EXIT_OK;
}

/* otamq-vectors OUTDIR - writes messages produced by the agent's encoder as
 * NAME.cbor (raw bytes) + NAME.json (the expected decoded value) for the Go
 * side to decode. JSON format (shared with the Go -> C vectors): an object
 * whose keys are the CBOR integer keys as strings; text strings as JSON
 * strings, integers as JSON numbers, byte strings as "h'..'" (lowercase
 * hex). The JSON is written from the same values the encoder got, not by
 * decoding the CBOR. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "otamq/ota_agent.h"

static const char *out;
static int failures;

static FILE *open_pair(const char *name, const uint8_t *cbor, size_t n)
{
    char path[1024];
    FILE *f;
    snprintf(path, sizeof(path), "%s/%s.cbor", out, name);
    f = fopen(path, "wb");
    if (f == NULL || fwrite(cbor, 1, n, f) != n || fclose(f) != 0) {
        perror(path);
        failures++;
        return NULL;
    }
    snprintf(path, sizeof(path), "%s/%s.json", out, name);
    f = fopen(path, "w");
    if (f == NULL) {
        perror(path);
        failures++;
    }
    return f;
}

static void close_json(FILE *f)
{
    if (f != NULL && (fputs("}\n", f) < 0 || fclose(f) != 0))
        failures++;
}

/* JSON string (our strings are ASCII/UTF-8 without control characters). */
static void js(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            fputc('\\', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

static void birth(const char *name, const ota_birth_t *b)
{
    uint8_t buf[256];
    size_t n;
    FILE *f;
    if (ota_msg_encode_birth(b, buf, sizeof(buf), &n) != OTA_OK || !(f = open_pair(name, buf, n))) {
        failures++;
        return;
    }
    fputs("{\"1\": ", f); js(f, b->fw_version);
    fputs(", \"2\": ", f); js(f, b->hardware);
    fputs(", \"3\": ", f); js(f, b->bootloader);
    fprintf(f, ", \"4\": %u, \"5\": %u, \"6\": %u, \"7\": %u, \"8\": ", b->running_slot,
            b->boot_reason, b->boots_since_commit, b->ota_state);
    js(f, b->agent_version);
    fprintf(f, ", \"9\": %u, \"10\": %d, \"11\": %u", b->connectivity, b->utc_offset_min,
            b->secure_version);
    if (b->guard != 0u)
        fprintf(f, ", \"12\": %llu", (unsigned long long)b->guard);
    close_json(f);
}

static void heartbeat(const char *name, const ota_heartbeat_t *h)
{
    uint8_t buf[128];
    size_t n;
    FILE *f;
    if (ota_msg_encode_heartbeat(h, buf, sizeof(buf), &n) != OTA_OK ||
        !(f = open_pair(name, buf, n))) {
        failures++;
        return;
    }
    fprintf(f, "{\"1\": %u, \"2\": %u, \"3\": %u", h->uptime_s, h->health, h->wdt_resets);
    if (h->has_free_heap)
        fprintf(f, ", \"4\": %u", h->free_heap);
    if (h->has_rssi)
        fprintf(f, ", \"5\": %d", h->rssi);
    fprintf(f, ", \"6\": %u", h->ota_state);
    if (h->has_offset)
        fprintf(f, ", \"7\": %u", h->offset);
    close_json(f);
}

static void event(const char *name, const ota_event_t *e)
{
    uint8_t buf[256];
    size_t n;
    FILE *f;
    if (ota_msg_encode_event(e, buf, sizeof(buf), &n) != OTA_OK || !(f = open_pair(name, buf, n))) {
        failures++;
        return;
    }
    fprintf(f, "{\"1\": %u", e->code);
    if (e->rollout) {
        fputs(", \"2\": ", f);
        js(f, e->rollout);
    }
    if (e->target_version) {
        fputs(", \"3\": ", f);
        js(f, e->target_version);
    }
    if (e->progress >= 0)
        fprintf(f, ", \"4\": %d", e->progress);
    if (e->error)
        fprintf(f, ", \"5\": %u", e->error);
    if (e->detail) {
        fputs(", \"6\": ", f);
        js(f, e->detail);
    }
    fprintf(f, ", \"7\": %llu", (unsigned long long)e->device_time);
    close_json(f);
}

static void request(const char *name, const ota_block_request_t *r)
{
    uint8_t buf[128];
    size_t n, i;
    FILE *f;
    if (ota_msg_encode_block_request(r, buf, sizeof(buf), &n) != OTA_OK ||
        !(f = open_pair(name, buf, n))) {
        failures++;
        return;
    }
    fputs("{\"1\": \"h'", f);
    for (i = 0; i < 32; i++)
        fprintf(f, "%02x", r->digest[i]);
    fprintf(f, "'\", \"2\": %u, \"3\": %u, \"4\": %u, \"5\": %u", r->offset, r->size, r->count,
            r->req_id);
    close_json(f);
}

int main(int argc, char **argv)
{
    uint8_t digest[32];
    size_t i;
    if (argc != 2) {
        fputs("usage: otamq-vectors OUTDIR\n", stderr);
        return 2;
    }
    out = argv[1];
    if (mkdir(out, 0755) != 0 && errno != EEXIST) {
        perror(out);
        return 1;
    }
    for (i = 0; i < 32; i++)
        digest[i] = (uint8_t)(i * 7 + 1);
    {
        ota_birth_t b = {"1.2.3", "esp32-v2", "2.1.0", 0, 5, 1, 5, "0.3.0", 0, 60, 2, 0};
        birth("birth-design-example", &b);
        ota_birth_t c = {"1.0.0", "esp32-v3", "2.0.0-rc.1", 1, 0, 0, 0, OTA_AGENT_VERSION, 2, -300, 0, 0};
        birth("birth-power-on", &c);
        /* key 12, the replay guard: a sequence number of a real release */
        ota_birth_t d = {"1.0.0+build.7", "esp32-v2", "2.1.0", 0, 6, 4, 7, "0.1.0", 3, 0, 70000,
                         1764000000123456789ull};
        birth("birth-rolled-back", &d);
    }
    {
        ota_heartbeat_t h = {3600, 7, 0, true, 120000, true, -61, 0, false, 0};
        heartbeat("heartbeat-design-example", &h);
        ota_heartbeat_t m = {5, 4, 2, false, 0, false, 0, 5, false, 0};
        heartbeat("heartbeat-minimal", &m);
        ota_heartbeat_t d = {86400u * 400u, 3, 0, true, 4000000000u, true, -120, 1, true, 1048576};
        heartbeat("heartbeat-downloading", &d);
    }
    {
        ota_event_t e1 = {OTA_EV_DOWNLOAD_COMPLETED, "r-2025-11-24", "1.2.4", 100, 0, NULL, 1764000000u, 0, 0};
        event("event-design-example", &e1);
        ota_event_t e2 = {OTA_EV_DOWNLOAD_PROGRESS, "r-1", "1.1.0", 40, 0, NULL, 0, 0, 0};
        event("event-download-progress", &e2);
        ota_event_t e3 = {OTA_EV_REJECTED, "r-9", "0.9.0", -1, OTA_E_VERSION, "downgrade", 1764000123u, 0, 0};
        event("event-rejected", &e3);
        ota_event_t e4 = {OTA_EV_ROLLBACK_COMPLETED, "r-7", "2.0.0", -1, OTA_E_HEALTH, NULL, 1764000456u, 0, 0};
        event("event-rollback-completed", &e4);
        ota_event_t e5 = {OTA_EV_CHECK_STARTED, NULL, NULL, -1, 0, NULL, 0, 0, 0};
        event("event-check-started", &e5);
        ota_event_t e6 = {OTA_EV_DOWNLOAD_FAILED, "r-é", "1.1.0", -1, OTA_E_CANCELLED,
                          "offer withdrawn \"quoted\"", 4294967296ull, 0, 0};
        event("event-download-failed", &e6);
        ota_event_t e7 = {OTA_EV_HEALTH_OK, "r-1", "1.1.0", -1, 0, NULL, 1764000999u, 0, 0};
        event("event-health-ok", &e7);
    }
    {
        ota_block_request_t r1 = {digest, 0, 4096, 4, 1};
        request("block-request-first", &r1);
        ota_block_request_t r2 = {digest, 8192, 4096, 8, 42};
        request("block-request-design-example", &r2);
        ota_block_request_t r3 = {digest, 16777216, 1024, 1, 4294967295u};
        request("block-request-resume", &r3);
    }
    return failures ? 1 : 0;
}

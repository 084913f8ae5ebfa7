/* otamq-testtool - host helper for tests and demos (not for production):
 *   keygen PUB.pem PRIV.pem [SEED]       P-256 key pair (PEM)
 *   image OUT SIZE BEHAVIOUR VERSION [DELAY_S [SECURE_VERSION]]
 *                                        simulated firmware image
 *   offer OUT PRIV.pem IMAGE ROLLOUT SEQ [MODE [SECURE_VERSION [HARDWARE [BLOCK]]]]
 *                                        signed offer for IMAGE (CBOR)
 *   free-port                            prints a free loopback TCP port
 *   wait-port PORT SECONDS               waits until 127.0.0.1:PORT accepts
 *   go-style-vectors DIR                 broker->device vectors in the Go
 *                                        side's format (checks the C checker)
 * BEHAVIOUR: healthy, crash, health-fail, hang, crash-later, health-fail-later. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "sim.h"
#include "testkit.h"

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
    if (b != NULL && fread(b, 1, (size_t)len, f) != (size_t)len) {
        free(b);
        b = NULL;
    }
    fclose(f);
    *n = (size_t)len;
    return b;
}

static int write_all(const char *path, const uint8_t *b, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (f == NULL || fwrite(b, 1, n, f) != n)
        return 1;
    return fclose(f) != 0;
}

static int behaviour(const char *s)
{
    static const char *names[] = {"healthy", "crash", "health-fail", "hang", "crash-later",
                                  "health-fail-later"};
    int i;
    for (i = 0; i < 6; i++)
        if (strcmp(s, names[i]) == 0)
            return i;
    return -1;
}

static int pair(const char *dir, const char *name, const uint8_t *b, size_t n, const char *json)
{
    char path[1024];
    FILE *f;
    snprintf(path, sizeof(path), "%s/%s.cbor", dir, name);
    if (write_all(path, b, n) != 0)
        return 1;
    snprintf(path, sizeof(path), "%s/%s.json", dir, name);
    f = fopen(path, "w");
    if (f == NULL)
        return 1;
    fputs(json, f);
    return fclose(f) != 0;
}

static void hexs(char *out, const uint8_t *b, size_t n)
{
    size_t i;
    out += sprintf(out, "h'");
    for (i = 0; i < n; i++)
        out += sprintf(out, "%02x", b[i]);
    sprintf(out, "'");
}

/* The same kinds of vectors the Go side writes, from the C test kit. */
static int go_style(const char *dir)
{
    tk_key_t k;
    tk_manifest_t m;
    uint8_t payload[512], cose[1024], buf[4096], data[4] = {0xde, 0xad, 0xbe, 0xef};
    char json[8192], kid[32], pub[160], dg[80], cs[2200];
    size_t plen, clen, n;
    int rc = 0, i;
    mkdir(dir, 0755);
    tk_keygen(&k, 77);
    memset(&m, 0, sizeof(m));
    m.seq = 17;
    m.version = "1.2.4";
    m.build = "20251124-143022";
    m.targets[0] = "esp32-v2";
    m.targets[1] = "esp32-v3";
    m.ntargets = 2;
    m.min_bootloader = "2.1.0";
    m.size = 1048576;
    for (i = 0; i < 32; i++)
        m.digest[i] = (uint8_t)i;
    m.secure_version = 2;
    plen = tk_manifest_payload(&m, payload, sizeof(payload));
    clen = tk_sign(&k, payload, plen, cose, sizeof(cose));
    hexs(kid, k.kid, 8);
    hexs(pub, k.pub, 65);
    hexs(dg, m.digest, 32);
    snprintf(json, sizeof(json),
             "{\"kid\": \"%s\", \"pub\": \"%s\", \"payload\": {\"1\": 1, \"2\": 17, "
             "\"3\": \"1.2.4\", \"4\": \"20251124-143022\", \"5\": [\"esp32-v2\", "
             "\"esp32-v3\"], \"6\": \"2.1.0\", \"7\": 1048576, \"8\": \"%s\", \"9\": 2, "
             "\"10\": 0}}\n",
             kid, pub, dg);
    rc |= pair(dir, "manifest-basic", cose, clen, json);
    hexs(cs, cose, clen);
    n = tk_offer(buf, sizeof(buf), "r-2025-11-24", cose, clen, 0, 4096, 0);
    snprintf(json, sizeof(json),
             "{\"1\": \"r-2025-11-24\", \"2\": \"%s\", \"3\": 0, \"4\": 4096, \"5\": 0}\n", cs);
    rc |= pair(dir, "offer-basic", buf, n, json);
    n = tk_offer(buf, sizeof(buf), "", NULL, 0, 0, 0, 0);
    rc |= pair(dir, "offer-cancel", buf, n, "{\"1\": \"\"}\n");
    n = tk_block(buf, sizeof(buf), 42, 8192, 1048576, data, 4);
    rc |= pair(dir, "block-design-example", buf, n,
               "{\"1\": 42, \"2\": 8192, \"3\": 1048576, \"4\": \"h'deadbeef'\"}\n");
    n = tk_block_error(buf, sizeof(buf), 42, 8192, 5, 250, "rate limited");
    rc |= pair(dir, "block-error-rate-limited", buf, n,
               "{\"1\": 42, \"2\": 8192, \"5\": 5, \"6\": 250, \"7\": \"rate limited\"}\n");
    n = tk_command(buf, sizeof(buf), 1, "r-2025-11-24", 0);
    rc |= pair(dir, "command-install", buf, n,
               "{\"1\": 1, \"2\": \"r-2025-11-24\", \"3\": 0}\n");
    cose[clen - 3] ^= 0x40;
    rc |= pair(dir, "bad-manifest-signature", cose, clen, "{\"error\": \"bad signature\"}\n");
    rc |= pair(dir, "bad-offer-indefinite", (const uint8_t *)"\xbf\x01\x60\xff", 4,
               "{\"error\": \"indefinite length\"}\n");
    rc |= pair(dir, "bad-block-duplicate-key", (const uint8_t *)"\xa2\x01\x01\x01\x02", 5,
               "{\"error\": \"duplicate key\"}\n");
    rc |= pair(dir, "bad-command-wrong-type", (const uint8_t *)"\xa1\x01\x61\x31", 4,
               "{\"error\": \"verb is text\"}\n");
    return rc;
}

static int free_port(void)
{
    struct sockaddr_in a;
    socklen_t len = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) != 0)
        return 1;
    printf("%u\n", ntohs(a.sin_port));
    close(fd);
    return 0;
}

/* Polls (no fixed sleep) until the port accepts, up to a deadline. */
static int wait_port(int port, int seconds)
{
    int i;
    for (i = 0; i < seconds * 20; i++) {
        struct sockaddr_in a;
        struct timespec ts = {0, 50000000L};
        int fd = socket(AF_INET, SOCK_STREAM, 0), ok;
        memset(&a, 0, sizeof(a));
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        a.sin_port = htons((uint16_t)port);
        ok = fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
        if (fd >= 0)
            close(fd);
        if (ok)
            return 0;
        nanosleep(&ts, NULL);
    }
    return 1;
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "free-port") == 0)
        return free_port();
    if (argc == 4 && strcmp(argv[1], "wait-port") == 0)
        return wait_port(atoi(argv[2]), atoi(argv[3]));
    if (argc == 3 && strcmp(argv[1], "go-style-vectors") == 0)
        return go_style(argv[2]);
    if (argc >= 4 && strcmp(argv[1], "keygen") == 0) {
        tk_key_t k;
        unsigned seed = argc > 4 ? (unsigned)strtoul(argv[4], NULL, 10) : 0u;
        if (seed == 0u) {
            FILE *r = fopen("/dev/urandom", "rb");
            if (r == NULL || fread(&seed, sizeof(seed), 1, r) != 1)
                return 1;
            fclose(r);
        }
        return tk_keygen(&k, seed) != 0 || tk_key_write_pem(&k, argv[2], argv[3]) != 0;
    }
    if (argc >= 6 && strcmp(argv[1], "image") == 0) {
        uint32_t size = (uint32_t)strtoul(argv[3], NULL, 10);
        int b = behaviour(argv[4]);
        uint8_t *img;
        ota_sim_header_t h;
        if (b < 0 || size < OTA_SIM_HDR_SIZE)
            return 2;
        img = malloc(size);
        if (img == NULL)
            return 1;
        tk_image(img, size, (unsigned)b, argc > 6 ? (uint16_t)atoi(argv[6]) : 0, argv[5], size);
        if (argc > 7) {
            ota_sim_header_parse(img, size, &h);
            h.secure_version = (uint32_t)strtoul(argv[7], NULL, 10);
            ota_sim_header_build(img, &h);
        }
        return write_all(argv[2], img, size);
    }
    if (argc >= 7 && strcmp(argv[1], "offer") == 0) {
        tk_key_t k;
        tk_manifest_t m;
        ota_sim_header_t h;
        size_t n, plen, clen, olen;
        uint8_t payload[1024], cose[2048], offer[4096];
        uint8_t *img = read_all(argv[4], &n);
        if (img == NULL || tk_key_read_pem(&k, argv[3]) != 0 ||
            !ota_sim_header_parse(img, n, &h))
            return 1;
        memset(&m, 0, sizeof(m));
        m.seq = strtoull(argv[6], NULL, 10);
        m.version = h.version;
        m.build = "test";
        m.targets[0] = argc > 9 ? argv[9] : "esp32-v2";
        m.ntargets = 1;
        m.min_bootloader = "2.0.0";
        m.size = (uint32_t)n;
        tk_sha256(img, n, m.digest);
        m.secure_version = argc > 8 ? (uint32_t)strtoul(argv[8], NULL, 10) : h.secure_version;
        plen = tk_manifest_payload(&m, payload, sizeof(payload));
        clen = tk_sign(&k, payload, plen, cose, sizeof(cose));
        olen = tk_offer(offer, sizeof(offer), argv[5], cose, clen,
                        argc > 7 ? (unsigned)atoi(argv[7]) : 0u,
                        argc > 10 ? (uint32_t)strtoul(argv[10], NULL, 10) : 0u, 0);
        if (plen == 0 || clen == 0 || olen == 0)
            return 1;
        return write_all(argv[2], offer, olen);
    }
    fputs("usage: otamq-testtool keygen|image|offer ... (see source header)\n", stderr);
    return 2;
}

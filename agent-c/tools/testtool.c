/* otamq-testtool - host helper for tests and demos (not for production):
 *   keygen PUB.pem PRIV.pem [SEED]       P-256 key pair (PEM)
 *   image OUT SIZE BEHAVIOUR VERSION [DELAY_S [SECURE_VERSION]]
 *                                        simulated firmware image
 *   offer OUT PRIV.pem IMAGE ROLLOUT SEQ [MODE [SECURE_VERSION [HARDWARE [BLOCK]]]]
 *                                        signed offer for IMAGE (CBOR)
 * BEHAVIOUR: healthy, crash, health-fail, hang, crash-later, health-fail-later. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

int main(int argc, char **argv)
{
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

/* mkcorpus DIR - writes the fuzzers' seed corpus (committed under
 * fuzz/corpus/; rerun only when the message formats change). */
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "otamq/ota_link.h"
#include "sim.h"
#include "testkit.h"

static const char *root;

static void put(const char *fuzzer, const char *name, const uint8_t *p, size_t n)
{
    char path[512];
    FILE *f;
    snprintf(path, sizeof(path), "%s/%s", root, fuzzer);
    mkdir(path, 0755);
    snprintf(path, sizeof(path), "%s/%s/%s", root, fuzzer, name);
    f = fopen(path, "wb");
    if (f == NULL || fwrite(p, 1, n, f) != n) {
        perror(path);
        return;
    }
    fclose(f);
}

static size_t hex(const char *s, uint8_t *out)
{
    size_t n = 0;
    unsigned v;
    while (s[0] && s[1] && sscanf(s, "%2x", &v) == 1) {
        out[n++] = (uint8_t)v;
        s += 2;
    }
    return n;
}

int main(int argc, char **argv)
{
    static const char *design[] = {
        "ab0165312e322e33026865737033322d76320365322e312e3004000505060107050865302e332e3009000a183c0b02",
        "a601190e1002070300041a0001d4c005383c0600",
        "a401182a02192000031a001000000444deadbeef",
        "a50105026c722d323032352d31312d32340365312e322e34041864071a69248100",
        "d28443a10126a10448000102030405060740582000",
        "9f01ff", "bf01f6ff", "818181818181818181818100", "fb3ff0000000000000", "c11a5f5e1000",
    };
    tk_key_t key;
    tk_manifest_t m;
    uint8_t img[4096], payload[512], cose[1024], buf[8192], b2[8192];
    size_t plen, clen, n, i;
    char name[64];

    if (argc != 2)
        return 2;
    root = argv[1];
    mkdir(root, 0755);
    tk_keygen(&key, 1); /* the fake device's and fuzz_cose's key */
    tk_image(img, sizeof(img), OTA_SIM_HEALTHY, 0, "1.1.0", 9);

    for (i = 0; i < sizeof(design) / sizeof(design[0]); i++) {
        n = hex(design[i], buf);
        snprintf(name, sizeof(name), "design-%zu", i);
        put("fuzz_cbor", name, buf, n);
    }

    memset(&m, 0, sizeof(m));
    m.seq = 1;
    m.version = "1.1.0";
    m.build = "b";
    m.targets[0] = "esp32-v2";
    m.targets[1] = "esp32-v3";
    m.ntargets = 2;
    m.min_bootloader = "2.0.0";
    m.size = sizeof(img);
    tk_sha256(img, sizeof(img), m.digest);
    plen = tk_manifest_payload(&m, payload, sizeof(payload));
    clen = tk_sign(&key, payload, plen, cose, sizeof(cose));
    put("fuzz_manifest", "payload", payload, plen);
    put("fuzz_cbor", "payload", payload, plen);
    put("fuzz_cose", "signed", cose, clen);
    put("fuzz_cbor", "cose", cose, clen);
    cose[clen - 1] ^= 1;
    put("fuzz_cose", "badsig", cose, clen);
    cose[clen - 1] ^= 1;

    buf[0] = 0; /* topic selector: offer */
    n = tk_offer(buf + 1, sizeof(buf) - 1, "r-f", cose, clen, 0, 1024, 0);
    put("fuzz_offer", "offer", buf, n + 1);
    put("fuzz_cbor", "offer", buf + 1, n);
    n = tk_offer(buf + 1, sizeof(buf) - 1, "r-f", cose, clen, 1, 0, 0);
    put("fuzz_offer", "offer-wait", buf, n + 1);
    n = tk_offer(buf + 1, sizeof(buf) - 1, "", NULL, 0, 0, 0, 0);
    put("fuzz_offer", "cancel", buf, n + 1);
    buf[0] = 1; /* command */
    for (i = 1; i <= 4; i++) {
        n = tk_command(buf + 1, sizeof(buf) - 1, (unsigned)i, "r-f", 0);
        snprintf(name, sizeof(name), "cmd-%zu", i);
        put("fuzz_offer", name, buf, n + 1);
    }

    n = tk_block(buf, sizeof(buf), 1, 0, sizeof(img), img, 1024);
    put("fuzz_block", "block-0", buf, n);
    n = tk_block(b2, sizeof(b2), 1, 0, sizeof(img), img, sizeof(img));
    put("fuzz_block", "block-all", b2, n);
    n = tk_block(buf, sizeof(buf), 1, 1024, sizeof(img), img + 1024, 1024);
    put("fuzz_block", "block-1", buf, n);
    n = tk_block_error(buf, sizeof(buf), 1, 0, 5, 250, "rate limited");
    put("fuzz_block", "error-rate", buf, n);
    put("fuzz_cbor", "block-error", buf, n);
    n = tk_block_error(buf, sizeof(buf), 1, 0, 2, 0, NULL);
    put("fuzz_block", "error-unknown", buf, n);

    /* local-link streams: frames of each kind, back to back, then the same
     * with garbage between and a flipped byte */
    {
        static uint8_t s[16384];
        size_t sn = 0, fl;
        ota_link_hello_t h = {"child-1", 7, 4288, OTA_LINK_VERSION};
        ota_link_welcome_t w = {OTA_LINK_OK, 1024, NULL, 0};
        s[sn++] = 5; /* the fuzzers' piece size */
        ota_link_encode_hello(&h, buf, sizeof(buf), &n);
        ota_link_encode(s + sn, sizeof(s) - sn, OTA_LINK_HELLO, 0, buf, n, &fl);
        sn += fl;
        n = tk_block(buf, sizeof(buf), 1, 0, sizeof(img), img, 1024);
        ota_link_encode(s + sn, sizeof(s) - sn, OTA_LINK_BLK, 0, buf, n, &fl);
        sn += fl;
        n = tk_offer(buf, sizeof(buf), "r-f", cose, clen, 0, 1024, 0);
        ota_link_encode(s + sn, sizeof(s) - sn, OTA_LINK_MANIFEST, 3, buf, n, &fl);
        sn += fl;
        n = tk_command(buf, sizeof(buf), 1, "r-f", 0);
        ota_link_encode(s + sn, sizeof(s) - sn, OTA_LINK_CMD, 4, buf, n, &fl);
        sn += fl;
        ota_link_encode_welcome(&w, buf, sizeof(buf), &n);
        ota_link_encode(s + sn, sizeof(s) - sn, OTA_LINK_WELCOME, 0, buf, n, &fl);
        sn += fl;
        ota_link_encode_u8(0, buf, sizeof(buf), &n);
        ota_link_encode(s + sn, sizeof(s) - sn, OTA_LINK_ACK, 4, buf, n, &fl);
        sn += fl;
        ota_link_encode_u8(OTA_LINK_MANIFEST, buf, sizeof(buf), &n);
        ota_link_encode(s + sn, sizeof(s) - sn, OTA_LINK_SUB, 0, buf, n, &fl);
        sn += fl;
        n = hex("a5015820000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f0219200003191000040805182a", buf);
        ota_link_encode(s + sn, sizeof(s) - sn, OTA_LINK_GET, 0, buf, n, &fl);
        sn += fl;
        put("fuzz_link_child", "stream", s, sn);
        put("fuzz_link_gw", "stream", s, sn);
        memmove(s + 40, s + 30, sn - 30);
        memset(s + 30, 0xa5, 10);
        sn += 10;
        s[sn / 2] ^= 0x10;
        put("fuzz_link_child", "damaged", s, sn);
        put("fuzz_link_gw", "damaged", s, sn);
    }
    return 0;
}

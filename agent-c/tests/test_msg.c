/* test_msg.c - wire messages (DESIGN §3/§10 examples), manifest, COSE_Sign1,
 * semver. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "cbor_util.h"
#include "crypto_mbedtls.h"
#include "testkit.h"

static size_t hex(const char *s, uint8_t *out)
{
    size_t n = 0;
    while (s[0] && s[1]) {
        unsigned v;
        if (*s == ' ') {
            s++;
            continue;
        }
        sscanf(s, "%2x", &v);
        out[n++] = (uint8_t)v;
        s += 2;
    }
    return n;
}

static void assert_hex(const uint8_t *got, size_t n, const char *want_hex)
{
    uint8_t want[512];
    size_t m = hex(want_hex, want);
    assert_int_equal(n, m);
    assert_memory_equal(got, want, m);
}

/* ---- DESIGN §10, device -> broker ----------------------------------------- */

static void test_birth_example(void **state)
{
    ota_birth_t b = {"1.2.3", "esp32-v2", "2.1.0", 0, 5, 1, 5, "0.3.0", 0, 60, 2, 0};
    uint8_t buf[256];
    size_t n;
    (void)state;
    /* no replay guard (0): DESIGN's example exactly */
    assert_int_equal(ota_msg_encode_birth(&b, buf, sizeof(buf), &n), OTA_OK);
    assert_hex(buf, n,
               "ab0165312e322e33026865737033322d76320365322e312e3004000505060107050865302e332e30"
               "09000a183c0b02");
    assert_int_equal(ota_msg_encode_birth(&b, buf, 10, &n), OTA_ERR_NOSPACE);
    /* with one, key 12 (otamq extension) after the contract's keys */
    b.guard = 17;
    assert_int_equal(ota_msg_encode_birth(&b, buf, sizeof(buf), &n), OTA_OK);
    assert_hex(buf, n,
               "ac0165312e322e33026865737033322d76320365322e312e3004000505060107050865302e332e30"
               "09000a183c0b020c11");
}

static void test_heartbeat_example(void **state)
{
    ota_heartbeat_t hb;
    uint8_t buf[64];
    size_t n;
    (void)state;
    memset(&hb, 0, sizeof(hb));
    hb.uptime_s = 3600;
    hb.health = 7;
    hb.has_free_heap = true;
    hb.free_heap = 120000;
    hb.has_rssi = true;
    hb.rssi = -61;
    assert_int_equal(ota_msg_encode_heartbeat(&hb, buf, sizeof(buf), &n), OTA_OK);
    assert_hex(buf, n, "a601190e1002070300041a0001d4c005383c0600");
}

static void test_event_example(void **state)
{
    ota_event_t ev = {5, "r-2025-11-24", "1.2.4", 100, 0, NULL, 1764000000u, 0, 0};
    uint8_t buf[128];
    size_t n;
    (void)state;
    assert_int_equal(ota_msg_encode_event(&ev, buf, sizeof(buf), &n), OTA_OK);
    assert_hex(buf, n, "a50105026c722d323032352d31312d32340365312e322e34041864071a69248100");
    /* the same strings given by length, not NUL-terminated */
    ev.rollout = "r-2025-11-24xyz";
    ev.rollout_len = 12;
    ev.target_version = "1.2.4.";
    ev.target_version_len = 5;
    assert_int_equal(ota_msg_encode_event(&ev, buf, sizeof(buf), &n), OTA_OK);
    assert_hex(buf, n, "a50105026c722d323032352d31312d32340365312e322e34041864071a69248100");
}

static void test_block_request_example(void **state)
{
    uint8_t d[32], buf[64];
    ota_block_request_t rq;
    size_t n;
    int i;
    (void)state;
    for (i = 0; i < 32; i++)
        d[i] = (uint8_t)i;
    rq.digest = d;
    rq.offset = 8192;
    rq.size = 4096;
    rq.count = 8;
    rq.req_id = 42;
    assert_int_equal(ota_msg_encode_block_request(&rq, buf, sizeof(buf), &n), OTA_OK);
    assert_hex(buf, n,
               "a5015820000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
               "021920000319100004080518 2a");
    rq.count = 0;
    assert_int_equal(ota_msg_encode_block_request(&rq, buf, sizeof(buf), &n), OTA_ERR_ARG);
}

/* ---- DESIGN §10, broker -> device ----------------------------------------- */

static void test_block_example(void **state)
{
    uint8_t b[64];
    size_t n = hex("a401182a02192000031a001000000444deadbeef", b);
    ota_block_t blk;
    (void)state;
    assert_int_equal(ota_msg_decode_block(b, n, &blk), OTA_OK);
    assert_false(blk.is_error);
    assert_int_equal(blk.req_id, 42);
    assert_int_equal(blk.offset, 8192);
    assert_int_equal(blk.image_size, 1048576);
    assert_int_equal(blk.data_len, 4);
    assert_ptr_equal(blk.data, b + n - 4); /* zero-copy */
}

static void test_block_error_example(void **state)
{
    uint8_t b[64];
    ota_block_t blk;
    ota_cbor_writer_t w;
    (void)state;
    ota_cbor_writer_init(&w, b, sizeof(b));
    ota_cbor_put_head(&w, OTA_CBOR_MAP, 5);
    ota_cbor_put_uint(&w, 1); ota_cbor_put_uint(&w, 42);
    ota_cbor_put_uint(&w, 2); ota_cbor_put_uint(&w, 8192);
    ota_cbor_put_uint(&w, 5); ota_cbor_put_uint(&w, 5);
    ota_cbor_put_uint(&w, 6); ota_cbor_put_uint(&w, 250);
    ota_cbor_put_uint(&w, 7); ota_cbor_put_cstr(&w, "rate limited");
    assert_int_equal(ota_msg_decode_block(b, w.len, &blk), OTA_OK);
    assert_true(blk.is_error);
    assert_int_equal(blk.error, 5);
    assert_int_equal(blk.retry_ms, 250);
    assert_int_equal(blk.message_len, 12);
    assert_memory_equal(blk.message, "rate limited", 12);
}

static void test_command_example(void **state)
{
    uint8_t b[64];
    ota_command_t c;
    size_t n = tk_command(b, sizeof(b), 1, "r-2025-11-24", 0);
    (void)state;
    assert_int_equal(ota_msg_decode_command(b, n, &c), OTA_OK);
    assert_int_equal(c.verb, 1);
    assert_int_equal(c.rollout_len, 12);
    assert_true(c.not_after == 0);
}

/* ---- decoder rules (§10 last paragraph) ----------------------------------- */

static int offer_hex(const char *h)
{
    uint8_t b[128];
    ota_offer_t o;
    size_t n = hex(h, b);
    return ota_msg_decode_offer(b, n, &o);
}

static void test_decoder_rules(void **state)
{
    (void)state;
    /* any order: {3: 1, 2: h'00', 1: "r"} */
    assert_int_equal(offer_hex("a30301024100016172"), OTA_OK);
    /* unknown higher key ignored, even nested */
    assert_int_equal(offer_hex("a2016009a1016178"), OTA_OK);
    /* unknown lower key (0) refused */
    assert_int_equal(offer_hex("a2016172000a"), OTA_ERR_MSG);
    /* duplicate refused */
    assert_int_equal(offer_hex("a2016172016173"), OTA_ERR_CBOR_DUP);
    /* wrong type for a known key refused */
    assert_int_equal(offer_hex("a10105"), OTA_ERR_CBOR_TYPE);
    /* indefinite refused */
    assert_int_equal(offer_hex("bf016172ff"), OTA_ERR_CBOR_INDEF);
    assert_int_equal(offer_hex("a1017f6172ff"), OTA_ERR_CBOR_INDEF);
    /* empty rollout: cancel, manifest not needed */
    assert_int_equal(offer_hex("a10160"), OTA_OK);
    /* non-empty rollout needs a manifest */
    assert_int_equal(offer_hex("a1016172"), OTA_ERR_MSG);
    /* install mode 2 refused */
    assert_int_equal(offer_hex("a30161720241000302"), OTA_ERR_MSG);
    /* key 6 (otamq extension, the broker's window) is known: a uint */
    assert_int_equal(offer_hex("a30161720241000602"), OTA_OK);
    assert_int_equal(offer_hex("a30161720241000660"), OTA_ERR_CBOR_TYPE);
    /* trailing bytes refused */
    assert_int_equal(offer_hex("a1016000"), OTA_ERR_CBOR);
    /* not a map */
    assert_int_equal(offer_hex("80"), OTA_ERR_CBOR_TYPE);
}

static int block_hex(const char *h)
{
    uint8_t b[128];
    ota_block_t o;
    size_t n = hex(h, b);
    return ota_msg_decode_block(b, n, &o);
}

static void test_block_rules(void **state)
{
    (void)state;
    assert_int_equal(block_hex("a30101020003010441aa"), OTA_ERR_CBOR); /* count 3, 4 pairs */
    assert_int_equal(block_hex("a301010200030a"), OTA_ERR_MSG);      /* no data */
    assert_int_equal(block_hex("a5010102000301044100 0501"), OTA_ERR_MSG); /* data + error */
    assert_int_equal(block_hex("a30101020005 00"), OTA_ERR_MSG);     /* error 0 */
    assert_int_equal(block_hex("a301010200051b0000000100000000"), OTA_ERR_MSG); /* > u8 */
    assert_int_equal(block_hex("a4011b00000001000000000200030a0441aa"), OTA_ERR_MSG); /* > u32 */
    assert_int_equal(block_hex("a5010102000301044100 08f6"), OTA_OK); /* unknown 8 */
}

/* ---- manifest and COSE ---------------------------------------------------- */

static tk_key_t key;
static ota_port_t port;
static ota_key_t trusted[2];

static int setup_keys(void **state)
{
    tk_key_t other;
    (void)state;
    memset(&port, 0, sizeof(port));
    port.sha256_start = ota_mbedtls_sha256_start;
    port.sha256_update = ota_mbedtls_sha256_update;
    port.sha256_finish = ota_mbedtls_sha256_finish;
    port.ecdsa_p256_verify = ota_mbedtls_ecdsa_p256_verify;
    tk_keygen(&key, 5);
    tk_keygen(&other, 6);
    memcpy(trusted[0].pub, other.pub, 65);
    ota_key_id(&port, other.pub, trusted[0].kid);
    memcpy(trusted[1].pub, key.pub, 65);
    ota_key_id(&port, key.pub, trusted[1].kid);
    assert_memory_equal(trusted[1].kid, key.kid, 8);
    return 0;
}

static size_t good_manifest(uint8_t *out, size_t cap, uint8_t *payload, size_t *plen)
{
    tk_manifest_t m;
    memset(&m, 0, sizeof(m));
    m.seq = 17;
    m.version = "1.2.4";
    m.build = "20251124-143022";
    m.targets[0] = "esp32-v2";
    m.targets[1] = "esp32-v3";
    m.ntargets = 2;
    m.min_bootloader = "2.1.0";
    m.size = 1048576;
    memset(m.digest, 0xab, 32);
    m.secure_version = 2;
    *plen = tk_manifest_payload(&m, payload, 512);
    return tk_sign(&key, payload, *plen, out, cap);
}

static void test_cose_verify(void **state)
{
    uint8_t cose[1024], payload[512];
    size_t plen, n = good_manifest(cose, sizeof(cose), payload, &plen);
    ota_cose_sign1_t s;
    ota_manifest_t m;
    (void)state;
    assert_int_equal(cose[0], 0xd2); /* tag 18 */
    assert_int_equal(ota_cose_parse(cose, n, &s), OTA_OK);
    assert_int_equal(s.protected_len, 3);
    assert_memory_equal(s.protected_hdr, "\xa1\x01\x26", 3);
    assert_int_equal(s.payload_len, plen);
    assert_int_equal(ota_cose_verify(&s, &port, trusted, 2), OTA_OK);
    assert_int_equal(ota_cose_verify(&s, &port, trusted, 1), OTA_ERR_UNKNOWN_KEY);
    assert_int_equal(ota_manifest_decode(s.payload, s.payload_len, &m), OTA_OK);
    assert_true(m.seq == 17);
    assert_int_equal(m.version_len, 5);
    assert_int_equal(m.ntargets, 2);
    assert_true(ota_manifest_has_target(&m, "esp32-v3"));
    assert_false(ota_manifest_has_target(&m, "esp32"));
    assert_int_equal(m.image_size, 1048576);
    assert_int_equal(m.secure_version, 2);
    /* any flipped byte of payload or signature breaks it */
    for (size_t i = n - 64 - plen; i < n; i += 7) {
        cose[i] ^= 0x01;
        if (ota_cose_parse(cose, n, &s) == OTA_OK)
            assert_int_not_equal(ota_cose_verify(&s, &port, trusted, 2), OTA_OK);
        cose[i] ^= 0x01;
    }
}

static void test_cose_structure(void **state)
{
    uint8_t cose[1024], payload[512], bad[1100];
    size_t plen, n = good_manifest(cose, sizeof(cose), payload, &plen);
    ota_cose_sign1_t s;
    (void)state;
    /* untagged */
    assert_int_equal(ota_cose_parse(cose + 1, n - 1, &s), OTA_ERR_COSE);
    /* tag 98 (COSE_Sign) */
    memcpy(bad, "\xd8\x62", 2);
    memcpy(bad + 2, cose + 1, n - 1);
    assert_int_equal(ota_cose_parse(bad, n + 1, &s), OTA_ERR_COSE);
    /* alg ES384 (-35 = 0x3822) in the protected header */
    {
        uint8_t p2[1200];
        ota_cbor_writer_t w;
        static const uint8_t prot[] = {0xa1, 0x01, 0x38, 0x22};
        uint8_t sig[64] = {0};
        ota_cbor_writer_init(&w, p2, sizeof(p2));
        ota_cbor_put_head(&w, OTA_CBOR_TAG, 18);
        ota_cbor_put_head(&w, OTA_CBOR_ARRAY, 4);
        ota_cbor_put_bstr(&w, prot, sizeof(prot));
        ota_cbor_put_head(&w, OTA_CBOR_MAP, 1);
        ota_cbor_put_uint(&w, 4);
        ota_cbor_put_bstr(&w, key.kid, 8);
        ota_cbor_put_bstr(&w, payload, plen);
        ota_cbor_put_bstr(&w, sig, 64);
        assert_int_equal(ota_cose_parse(p2, w.len, &s), OTA_ERR_COSE);
        /* signature of 63 bytes */
        ota_cbor_writer_init(&w, p2, sizeof(p2));
        ota_cbor_put_head(&w, OTA_CBOR_TAG, 18);
        ota_cbor_put_head(&w, OTA_CBOR_ARRAY, 4);
        ota_cbor_put_bstr(&w, (const uint8_t *)"\xa1\x01\x26", 3);
        ota_cbor_put_head(&w, OTA_CBOR_MAP, 1);
        ota_cbor_put_uint(&w, 4);
        ota_cbor_put_bstr(&w, key.kid, 8);
        ota_cbor_put_bstr(&w, payload, plen);
        ota_cbor_put_bstr(&w, sig, 63);
        assert_int_equal(ota_cose_parse(p2, w.len, &s), OTA_ERR_COSE);
        /* no key ID */
        ota_cbor_writer_init(&w, p2, sizeof(p2));
        ota_cbor_put_head(&w, OTA_CBOR_TAG, 18);
        ota_cbor_put_head(&w, OTA_CBOR_ARRAY, 4);
        ota_cbor_put_bstr(&w, (const uint8_t *)"\xa1\x01\x26", 3);
        ota_cbor_put_head(&w, OTA_CBOR_MAP, 0);
        ota_cbor_put_bstr(&w, payload, plen);
        ota_cbor_put_bstr(&w, sig, 64);
        assert_int_equal(ota_cose_parse(p2, w.len, &s), OTA_ERR_COSE);
        /* critical headers we do not understand */
        ota_cbor_writer_init(&w, p2, sizeof(p2));
        ota_cbor_put_head(&w, OTA_CBOR_TAG, 18);
        ota_cbor_put_head(&w, OTA_CBOR_ARRAY, 4);
        ota_cbor_put_bstr(&w, (const uint8_t *)"\xa2\x01\x26\x02\x81\x18\x63", 7);
        ota_cbor_put_head(&w, OTA_CBOR_MAP, 1);
        ota_cbor_put_uint(&w, 4);
        ota_cbor_put_bstr(&w, key.kid, 8);
        ota_cbor_put_bstr(&w, payload, plen);
        ota_cbor_put_bstr(&w, sig, 64);
        assert_int_equal(ota_cose_parse(p2, w.len, &s), OTA_ERR_COSE);
    }
}

/* Builds 18([bstr(prot), unprot, bstr(payload), bstr(sig)]) into out. */
static size_t cose_of(uint8_t *out, size_t cap, const char *prot_hex, const char *unprot_hex,
                      const uint8_t *payload, size_t plen, size_t siglen)
{
    uint8_t prot[64], unprot[64], sig[65] = {0};
    size_t np = hex(prot_hex, prot), nu = hex(unprot_hex, unprot);
    ota_cbor_writer_t w;
    ota_cbor_writer_init(&w, out, cap);
    ota_cbor_put_head(&w, OTA_CBOR_TAG, 18);
    ota_cbor_put_head(&w, OTA_CBOR_ARRAY, 4);
    ota_cbor_put_bstr(&w, prot, np);
    ota_cbor_put_raw(&w, unprot, nu);
    ota_cbor_put_bstr(&w, payload, plen);
    ota_cbor_put_bstr(&w, sig, siglen);
    assert_int_equal(ota_cbor_writer_status(&w), OTA_OK);
    return w.len;
}

/* The contract allows exactly one header shape: protected {1: -7},
 * unprotected {4: kid}. The broker's parser (ota/manifest) refuses every
 * other shape, and so must the agent. */
static void test_cose_header_shape(void **state)
{
    static const struct {
        const char *prot, *unprot, *why;
    } bad[] = {
        {"a201260300", "a104480102030405060708", "extra protected label {1: -7, 3: 0}"},
        {"a20126 0448 0102030405060708", "a0", "key ID in the protected bucket"},
        {"a20126 0448 0102030405060708", "a104480102030405060708", "key ID in both buckets"},
        {"a10126", "a0", "no key ID"},
        {"a10126", "a2044801020304050607080300", "extra unprotected label"},
        {"a10126", "a20300 0448 0102030405060708", "extra unprotected label first"},
        {"a10126", "a1636b6964480102030405060708", "key ID under a text label"},
        {"a10126", "a10447 01020304050607", "key ID of 7 bytes"},
        {"a10126", "a10449010203040506070809", "key ID of 9 bytes"},
        {"a10126", "a104680102030405060708", "key ID as a text string"},
        {"a10126", "a10448 0102030405060708", NULL}, /* the one good shape */
        {"a1013806", "a104480102030405060708", "alg -7 in a non-minimal head"},
        {"a1260301", "a104480102030405060708", "not alg"},
        {"", "a104480102030405060708", "protected header empty"},
        {"a0", "a104480102030405060708", "protected header {}"},
    };
    uint8_t cose[1024], payload[512];
    size_t plen, i, n;
    ota_cose_sign1_t s;
    (void)state;
    (void)good_manifest(cose, sizeof(cose), payload, &plen);
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        n = cose_of(cose, sizeof(cose), bad[i].prot, bad[i].unprot, payload, plen, 64);
        if (bad[i].why == NULL) {
            assert_int_equal(ota_cose_parse(cose, n, &s), OTA_OK);
            assert_int_equal(s.kid_len, 8);
            assert_memory_equal(s.kid, "\x01\x02\x03\x04\x05\x06\x07\x08", 8);
            assert_int_equal(s.payload_len, plen);
            assert_memory_equal(s.payload, payload, plen);
            assert_ptr_equal(s.sig, cose + n - 64);
        } else if (ota_cose_parse(cose, n, &s) == OTA_OK) {
            fail_msg("accepted: %s", bad[i].why);
        }
    }
    /* empty payload, signature of 65 bytes, a byte after the signature */
    n = cose_of(cose, sizeof(cose), "a10126", "a104480102030405060708", payload, 0, 64);
    assert_int_equal(ota_cose_parse(cose, n, &s), OTA_ERR_COSE);
    n = cose_of(cose, sizeof(cose), "a10126", "a104480102030405060708", payload, plen, 65);
    assert_int_equal(ota_cose_parse(cose, n, &s), OTA_ERR_COSE);
    n = cose_of(cose, sizeof(cose), "a10126", "a104480102030405060708", payload, plen, 64);
    cose[n] = 0;
    assert_int_not_equal(ota_cose_parse(cose, n + 1, &s), OTA_OK);
    /* truncated anywhere */
    for (i = 0; i < n; i++)
        assert_int_not_equal(ota_cose_parse(cose, i, &s), OTA_OK);
}

static void test_manifest_rules(void **state)
{
    uint8_t b[256];
    ota_manifest_t m;
    ota_cbor_writer_t w;
    uint8_t d[32] = {0};
    (void)state;
    /* minimal valid: 1,2,3,5,7,8 */
    ota_cbor_writer_init(&w, b, sizeof(b));
    ota_cbor_put_head(&w, OTA_CBOR_MAP, 7);
    ota_cbor_put_uint(&w, 8); ota_cbor_put_bstr(&w, d, 32);
    ota_cbor_put_uint(&w, 1); ota_cbor_put_uint(&w, 1);
    ota_cbor_put_uint(&w, 2); ota_cbor_put_uint(&w, 3);
    ota_cbor_put_uint(&w, 3); ota_cbor_put_cstr(&w, "1.0.1");
    ota_cbor_put_uint(&w, 5); ota_cbor_put_head(&w, OTA_CBOR_ARRAY, 1); ota_cbor_put_cstr(&w, "x");
    ota_cbor_put_uint(&w, 7); ota_cbor_put_uint(&w, 10);
    ota_cbor_put_uint(&w, 11); ota_cbor_put_head(&w, OTA_CBOR_ARRAY, 1);
    ota_cbor_put_head(&w, OTA_CBOR_ARRAY, 3); ota_cbor_put_cstr(&w, "lib");
    ota_cbor_put_cstr(&w, "1.0"); ota_cbor_put_bstr(&w, d, 4);
    assert_int_equal(ota_manifest_decode(b, w.len, &m), OTA_OK);
    assert_int_equal(m.ncomponents, 1);
    assert_null(m.min_bootloader);
    /* digest of 31 bytes */
    ota_cbor_writer_init(&w, b, sizeof(b));
    ota_cbor_put_head(&w, OTA_CBOR_MAP, 6);
    ota_cbor_put_uint(&w, 1); ota_cbor_put_uint(&w, 1);
    ota_cbor_put_uint(&w, 2); ota_cbor_put_uint(&w, 3);
    ota_cbor_put_uint(&w, 3); ota_cbor_put_cstr(&w, "1.0.1");
    ota_cbor_put_uint(&w, 5); ota_cbor_put_head(&w, OTA_CBOR_ARRAY, 1); ota_cbor_put_cstr(&w, "x");
    ota_cbor_put_uint(&w, 7); ota_cbor_put_uint(&w, 10);
    ota_cbor_put_uint(&w, 8); ota_cbor_put_bstr(&w, d, 31);
    assert_int_equal(ota_manifest_decode(b, w.len, &m), OTA_ERR_MSG);
    /* missing digest */
    ota_cbor_writer_init(&w, b, sizeof(b));
    ota_cbor_put_head(&w, OTA_CBOR_MAP, 5);
    ota_cbor_put_uint(&w, 1); ota_cbor_put_uint(&w, 1);
    ota_cbor_put_uint(&w, 2); ota_cbor_put_uint(&w, 3);
    ota_cbor_put_uint(&w, 3); ota_cbor_put_cstr(&w, "1.0.1");
    ota_cbor_put_uint(&w, 5); ota_cbor_put_head(&w, OTA_CBOR_ARRAY, 1); ota_cbor_put_cstr(&w, "x");
    ota_cbor_put_uint(&w, 7); ota_cbor_put_uint(&w, 10);
    assert_int_equal(ota_manifest_decode(b, w.len, &m), OTA_ERR_MSG);
    /* targets not text */
    ota_cbor_writer_init(&w, b, sizeof(b));
    ota_cbor_put_head(&w, OTA_CBOR_MAP, 1);
    ota_cbor_put_uint(&w, 5); ota_cbor_put_head(&w, OTA_CBOR_ARRAY, 1); ota_cbor_put_uint(&w, 1);
    assert_int_equal(ota_manifest_decode(b, w.len, &m), OTA_ERR_CBOR_TYPE);
}

static void test_semver(void **state)
{
    static const struct {
        const char *a, *b;
        int cmp;
    } t[] = {
        {"1.0.0", "1.0.0", 0},          {"1.0.1", "1.0.0", 1},
        {"1.10.0", "1.9.9", 1},         {"2.0.0", "10.0.0", -1},
        {"1.0.0-alpha", "1.0.0", -1},   {"1.0.0-alpha", "1.0.0-alpha.1", -1},
        {"1.0.0-alpha.1", "1.0.0-alpha.beta", -1}, {"1.0.0-beta.2", "1.0.0-beta.11", -1},
        {"1.0.0-rc.1", "1.0.0-beta.11", 1}, {"1.0.0+build.5", "1.0.0+other", 0},
        {"v1.2.3", "1.2.3", 0},         {"V1.2.3-rc-1", "1.2.3-rc-1", 0},
        {"1.0.0-rc.1+b-7.x", "1.0.0-rc.1", 0}, {"1.0.0+0001", "1.0.0", 0},
        {"1.0.0-a-b", "1.0.0-a", 1},    {"1.0.0-1", "1.0.0-a", -1},
        {"1.0.0-0", "1.0.0", -1},       {"1.0.0-alpha.beta", "1.0.0-beta", -1},
        {"123456789012345678901.0.0", "123456789012345678900.0.0", 1},
        {"2.0.0", "123456789012345678901.0.0", -1},
    };
    static const char *invalid[] = {"1.0", "01.0.0", "1.0.0-", "1.0.0-01", "1..0", "a.b.c",
                                    "1.0.0+", "1.0.0 ", "", "1.0.0.0", "1.0.0-a..b",
                                    "1.0.0+a..b", "-1.0.0", "1.0.0-+b", "1.0.0-a.", "1.0.0+b.",
                                    "1.0.0+b+c", "v", "1.0.0-a_b", "1.0.0-a\x01", "1.0-0.0"};
    size_t i;
    int c;
    (void)state;
    for (i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        assert_int_equal(ota_semver_cmp(t[i].a, strlen(t[i].a), t[i].b, strlen(t[i].b), &c),
                         OTA_OK);
        assert_int_equal(c, t[i].cmp);
        assert_int_equal(ota_semver_cmp(t[i].b, strlen(t[i].b), t[i].a, strlen(t[i].a), &c),
                         OTA_OK);
        assert_int_equal(c, -t[i].cmp);
    }
    for (i = 0; i < sizeof(invalid) / sizeof(invalid[0]); i++)
        assert_int_equal(ota_semver_cmp(invalid[i], strlen(invalid[i]), "1.0.0", 5, &c),
                         OTA_ERR_VERSION);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_birth_example),
        cmocka_unit_test(test_heartbeat_example),
        cmocka_unit_test(test_event_example),
        cmocka_unit_test(test_block_request_example),
        cmocka_unit_test(test_block_example),
        cmocka_unit_test(test_block_error_example),
        cmocka_unit_test(test_command_example),
        cmocka_unit_test(test_decoder_rules),
        cmocka_unit_test(test_block_rules),
        cmocka_unit_test(test_cose_verify),
        cmocka_unit_test(test_cose_structure),
        cmocka_unit_test(test_cose_header_shape),
        cmocka_unit_test(test_manifest_rules),
        cmocka_unit_test(test_semver),
    };
    return cmocka_run_group_tests_name("msg", tests, setup_keys, NULL);
}

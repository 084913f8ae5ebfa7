/* test_link.c - the local link's frames (ota_link.h): CRC, encoder,
 * incremental decoder with every split, resynchronisation after garbage,
 * dropped, flipped and duplicated bytes, the size bound, control messages. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "gw_msg.h"
#include "otamq/ota_link.h"

#define CAP 600

typedef struct got {
    uint8_t code[64];
    uint16_t id[64];
    size_t len[64];
    uint8_t first[64]; /* first payload byte */
    int n;
} got_t;

/* Feeds stream in pieces of step bytes (0: random sizes) and records the
 * frames. */
static void run(const uint8_t *stream, size_t len, size_t step, ota_link_decoder_t *d, got_t *g)
{
    size_t off = 0;
    while (off <= len) {
        size_t n = step != 0u ? step : (size_t)(rand() % 50);
        size_t used;
        ota_link_frame_t f;
        int rc;
        if (n > len - off)
            n = len - off;
        rc = ota_link_decode(d, stream + off, n, &used, &f);
        assert_true(rc == 0 || rc == 1);
        assert_true(used <= n);
        off += used;
        if (rc == 1) {
            assert_true(f.len + OTA_LINK_OVERHEAD <= d->cap);
            assert_true(g->n < 64);
            g->code[g->n] = f.code;
            g->id[g->n] = f.id;
            g->len[g->n] = f.len;
            g->first[g->n] = f.len ? f.payload[0] : 0;
            g->n++;
            continue;
        }
        assert_int_equal(used, n);
        if (off == len)
            break;
    }
}

static size_t frame(uint8_t *out, uint8_t code, uint16_t id, uint8_t fill, size_t n)
{
    uint8_t p[CAP];
    size_t flen;
    memset(p, fill, n);
    assert_int_equal(ota_link_encode(out, CAP, code, id, p, n, &flen), OTA_OK);
    return flen;
}

static void test_crc(void **state)
{
    (void)state;
    /* the CRC-32 check value, and continuation */
    assert_int_equal(ota_link_crc32(0, (const uint8_t *)"123456789", 9), 0xcbf43926u);
    assert_int_equal(ota_link_crc32(ota_link_crc32(0, (const uint8_t *)"1234", 4),
                                    (const uint8_t *)"56789", 5),
                     0xcbf43926u);
}

static void test_encode_layout(void **state)
{
    uint8_t f[32];
    size_t n;
    (void)state;
    assert_int_equal(ota_link_encode(f, sizeof(f), OTA_LINK_EV, 0x1234,
                                     (const uint8_t *)"\xa1\x01\x05", 3, &n),
                     OTA_OK);
    assert_int_equal(n, 15);
    assert_int_equal(f[0], 0xa5);
    assert_int_equal(f[1], 0x4c);
    assert_int_equal(f[2], OTA_LINK_EV);
    assert_int_equal(f[3], 0x12);
    assert_int_equal(f[4], 0x34);
    assert_int_equal(f[5], 0);
    assert_int_equal(f[6], 3);
    assert_int_equal(f[7], (uint8_t)ota_link_crc32(0, f + 2, 5));
    assert_memory_equal(f + 8, "\xa1\x01\x05", 3);
    {
        uint32_t crc = ota_link_crc32(0, f + 2, 9);
        assert_int_equal(f[11], (uint8_t)(crc >> 24));
        assert_int_equal(f[14], (uint8_t)crc);
    }
    /* bounds */
    assert_int_equal(ota_link_encode(f, 14, OTA_LINK_EV, 0, f, 3, &n), OTA_ERR_NOSPACE);
    assert_int_equal(ota_link_encode(f, 11, OTA_LINK_EV, 0, NULL, 0, &n), OTA_ERR_NOSPACE);
    assert_int_equal(ota_link_seal(f, sizeof(f), 1, 0, 0x10000, &n), OTA_ERR_ARG);
    assert_int_equal(ota_link_encode(f, sizeof(f), 1, 0, NULL, 1, &n), OTA_ERR_ARG);
}

static void test_every_split(void **state)
{
    uint8_t s[3 * CAP], buf[CAP];
    size_t n = 0, step;
    ota_link_decoder_t d;
    (void)state;
    n += frame(s + n, OTA_LINK_BIRTH, 1, 0x11, 40);
    n += frame(s + n, OTA_LINK_HB, 0, 0x22, 0);
    n += frame(s + n, OTA_LINK_BLK, 0, 0xa5, CAP - OTA_LINK_OVERHEAD); /* markers inside */
    for (step = 1; step <= n; step++) {
        got_t g = {0};
        assert_int_equal(ota_link_decoder_init(&d, buf, sizeof(buf)), OTA_OK);
        run(s, n, step, &d, &g);
        assert_int_equal(g.n, 3);
        assert_int_equal(g.code[0], OTA_LINK_BIRTH);
        assert_int_equal(g.id[0], 1);
        assert_int_equal(g.len[0], 40);
        assert_int_equal(g.first[0], 0x11);
        assert_int_equal(g.code[1], OTA_LINK_HB);
        assert_int_equal(g.len[1], 0);
        assert_int_equal(g.len[2], CAP - OTA_LINK_OVERHEAD);
        assert_int_equal(d.garbage + d.bad_header + d.bad_crc, 0);
    }
}

/* A stream of frames 0..7 (payload byte = index) with damage applied:
 * the frames the damage did not touch must all come out, in order, and no
 * damaged one. */
static void check_damage(const char *what, void (*damage)(uint8_t *s, size_t *n, size_t at))
{
    uint8_t s[8 * 64 + 64], buf[CAP];
    size_t starts[9], n = 0, i, at;
    (void)what;
    for (i = 0; i < 8; i++) {
        starts[i] = n;
        n += frame(s + n, OTA_LINK_EV, (uint16_t)(i + 1), (uint8_t)i, 20 + i);
    }
    starts[8] = n;
    for (at = 0; at < starts[8]; at++) {
        uint8_t t[sizeof(s)];
        size_t m = n, hit;
        got_t g = {0};
        ota_link_decoder_t d;
        int k = 0;
        memcpy(t, s, n);
        damage(t, &m, at);
        for (hit = 0; starts[hit + 1] <= at; hit++)
            ;
        ota_link_decoder_init(&d, buf, sizeof(buf));
        run(t, m, 0, &d, &g);
        for (i = 0; i < 8; i++) {
            if (i == hit)
                continue;
            /* undamaged frames come out in order; the damaged one never */
            assert_true(k < g.n);
            while (g.id[k] == hit + 1)
                k++;
            assert_int_equal(g.id[k], i + 1);
            assert_int_equal(g.first[k], i);
            k++;
        }
    }
}

static void flip(uint8_t *s, size_t *n, size_t at)
{
    (void)n;
    s[at] ^= (uint8_t)(1u << (at % 8));
}

static void drop(uint8_t *s, size_t *n, size_t at)
{
    memmove(s + at, s + at + 1, *n - at - 1);
    (*n)--;
}

static void dup(uint8_t *s, size_t *n, size_t at)
{
    memmove(s + at + 1, s + at, *n - at);
    (*n)++;
}

static void test_flipped(void **state)
{
    (void)state;
    check_damage("flip", flip);
}

static void test_dropped(void **state)
{
    (void)state;
    check_damage("drop", drop);
}

static void test_duplicated(void **state)
{
    (void)state;
    check_damage("dup", dup);
}

static void test_garbage_between(void **state)
{
    uint8_t s[2048], buf[CAP];
    size_t n = 0, i;
    ota_link_decoder_t d;
    got_t g = {0};
    (void)state;
    for (i = 0; i < 100; i++)
        s[n++] = (uint8_t)(i * 37u); /* includes 0xa5 bytes */
    s[n++] = OTA_LINK_MARK0;
    s[n++] = OTA_LINK_MARK1;
    s[n++] = OTA_LINK_MARK0;
    n += frame(s + n, OTA_LINK_GET, 0, 7, 30);
    s[n++] = OTA_LINK_MARK0;
    n += frame(s + n, OTA_LINK_CMD, 9, 8, 10);
    ota_link_decoder_init(&d, buf, sizeof(buf));
    run(s, n, 7, &d, &g);
    assert_int_equal(g.n, 2);
    assert_int_equal(g.code[0], OTA_LINK_GET);
    assert_int_equal(g.code[1], OTA_LINK_CMD);
    assert_true(d.garbage > 90);
}

/* A truncated frame claims more bytes than it has: the decoder swallows
 * the whole next frame while waiting for them, the CRC fails, and the next
 * frame is found in what it buffered. */
static void test_frame_inside_bad_candidate(void **state)
{
    uint8_t s[1024], buf[CAP];
    size_t n, i;
    ota_link_decoder_t d;
    got_t g = {0};
    (void)state;
    n = frame(s, OTA_LINK_BLK, 0, 1, 300);
    n = 40; /* cut */
    for (i = 0; i < 6; i++)
        n += frame(s + n, OTA_LINK_EV, (uint16_t)(5 + i), 2, 50);
    ota_link_decoder_init(&d, buf, sizeof(buf));
    run(s, n, 1, &d, &g);
    /* the frames behind the cut are inside the 312 bytes the first
     * candidate wanted: they are found once that candidate fails */
    assert_int_equal(d.bad_crc, 1);
    assert_int_equal(g.n, 6);
    for (i = 0; i < 6; i++)
        assert_int_equal(g.id[i], 5 + i);
}

/* Limit: a frame longer than the decoder's buffer is refused at its
 * header (never buffered), and the next frame is decoded. */
static void test_larger_than_cap(void **state)
{
    uint8_t s[2 * CAP], small[200], big[CAP];
    size_t n = 0, flen;
    ota_link_decoder_t d;
    got_t g = {0};
    (void)state;
    memset(big, 0x33, sizeof(big));
    /* a frame of 200 bytes into a decoder that takes 199 */
    assert_int_equal(ota_link_encode(s, sizeof(s), OTA_LINK_BLK, 0, big, 200 - OTA_LINK_OVERHEAD,
                                     &flen),
                     OTA_OK);
    n = flen;
    n += frame(s + n, OTA_LINK_HB, 0, 4, 10);
    ota_link_decoder_init(&d, small, 199);
    run(s, n, 0, &d, &g);
    assert_int_equal(g.n, 1);
    assert_int_equal(g.code[0], OTA_LINK_HB);
    assert_int_equal(d.bad_header, 1);
    /* exactly the cap is taken */
    memset(&g, 0, sizeof(g));
    ota_link_decoder_init(&d, small, 200);
    run(s, n, 0, &d, &g);
    assert_int_equal(g.n, 2);
    assert_int_equal(g.len[0], 200 - OTA_LINK_OVERHEAD);
    assert_int_equal(ota_link_decoder_init(&d, small, OTA_LINK_OVERHEAD - 1), OTA_ERR_ARG);
    assert_int_equal(ota_link_decoder_init(&d, small, OTA_LINK_MAX_FRAME + 1), OTA_ERR_ARG);
}

/* Random streams of random frames with random damage: the decoder never
 * returns a frame whose CRC does not hold (checked by re-encoding it) nor
 * reads out of bounds (ASan in make asan). */
static void test_random(void **state)
{
    uint8_t s[4096], buf[CAP];
    int round;
    (void)state;
    srand(7);
    for (round = 0; round < 300; round++) {
        size_t n = 0, off = 0;
        ota_link_decoder_t d;
        while (n < sizeof(s) - CAP) {
            int r = rand() % 10;
            if (r == 0) {
                s[n++] = (uint8_t)rand();
            } else {
                n += frame(s + n, (uint8_t)(rand() % 256), (uint16_t)rand(), (uint8_t)rand(),
                           (size_t)(rand() % 200));
                if (r == 1)
                    s[n - 1 - (size_t)(rand() % 20)] ^= (uint8_t)(1 + rand() % 255);
            }
        }
        ota_link_decoder_init(&d, buf, sizeof(buf));
        while (off < n) {
            size_t used, k = (size_t)(1 + rand() % 300);
            ota_link_frame_t f;
            uint8_t again[CAP];
            size_t flen;
            if (k > n - off)
                k = n - off;
            if (ota_link_decode(&d, s + off, k, &used, &f) == 1) {
                assert_int_equal(ota_link_encode(again, sizeof(again), f.code, f.id, f.payload,
                                                 f.len, &flen),
                                 OTA_OK);
                assert_memory_equal(again, f.payload - OTA_LINK_HEADER, flen);
            }
            off += used;
        }
    }
}

/* a string literal and its length */
#define LIT(s) (const uint8_t *)(s), (sizeof(s) - 1u)

static void test_hello_welcome(void **state)
{
    uint8_t b[256];
    size_t n;
    ota_link_hello_t h = {"child-1", 7, 4300, OTA_LINK_VERSION}, h2;
    ota_link_welcome_t w = {OTA_LINK_REFUSED, 1024, "not your child", 14}, w2;
    uint8_t v;
    (void)state;
    assert_int_equal(ota_link_encode_hello(&h, b, sizeof(b), &n), OTA_OK);
    assert_int_equal(ota_link_decode_hello(b, n, &h2), OTA_OK);
    assert_int_equal(h2.device_id_len, 7);
    assert_memory_equal(h2.device_id, "child-1", 7);
    assert_int_equal(h2.max_frame, 4300);
    assert_int_equal(h2.version, 1);
    /* trailing byte, truncation */
    b[n] = 0;
    assert_int_not_equal(ota_link_decode_hello(b, n + 1, &h2), OTA_OK);
    assert_int_not_equal(ota_link_decode_hello(b, n - 1, &h2), OTA_OK);
    /* bad IDs are refused both ways */
    h.device_id = "a/b";
    h.device_id_len = 3;
    assert_int_equal(ota_link_encode_hello(&h, b, sizeof(b), &n), OTA_ERR_ARG);
    /* {1: "a/b", 2: 600, 3: 1} */
    assert_int_equal(ota_link_decode_hello(LIT("\xa3\x01\x63" "a/b\x02\x19\x02\x58\x03\x01"), &h2),
                     OTA_ERR_MSG);
    /* missing key 2, duplicate key, key 0, unknown key skipped */
    assert_int_equal(ota_link_decode_hello(LIT("\xa2\x01\x61x\x03\x01"), &h2),
                     OTA_ERR_MSG);
    assert_int_equal(ota_link_decode_hello(LIT("\xa3\x01\x61x\x01\x61x\x03\x01"),
                                           &h2),
                     OTA_ERR_CBOR_DUP);
    assert_int_equal(ota_link_decode_hello(LIT("\xa1\x00\x01"), &h2), OTA_ERR_MSG);
    assert_int_equal(
        ota_link_decode_hello(LIT("\xa4\x01\x61x\x02\x19\x02\x58\x03\x01\x09\x80"),
                              &h2),
        OTA_OK);
    /* a text where a uint goes */
    assert_int_equal(ota_link_decode_hello(LIT("\xa3\x01\x61x\x02\x61y\x03\x01"),
                                           &h2),
                     OTA_ERR_MSG);

    assert_int_equal(ota_link_encode_welcome(&w, b, sizeof(b), &n), OTA_OK);
    assert_int_equal(ota_link_decode_welcome(b, n, &w2), OTA_OK);
    assert_int_equal(w2.status, OTA_LINK_REFUSED);
    assert_int_equal(w2.max_frame, 1024);
    assert_int_equal(w2.message_len, 14);
    assert_memory_equal(w2.message, "not your child", 14);
    w.message = NULL;
    assert_int_equal(ota_link_encode_welcome(&w, b, sizeof(b), &n), OTA_OK);
    assert_int_equal(ota_link_decode_welcome(b, n, &w2), OTA_OK);
    assert_null(w2.message);
    assert_int_equal(ota_link_encode_welcome(&w, b, 3, &n), OTA_ERR_NOSPACE);

    assert_int_equal(ota_link_encode_u8(0x87, b, sizeof(b), &n), OTA_OK);
    assert_int_equal(ota_link_decode_u8(b, n, &v), OTA_OK);
    assert_int_equal(v, 0x87);
    assert_int_equal(ota_link_decode_u8(LIT("\xa1\x01\x19\x01\x00"), &v),
                     OTA_ERR_MSG);
    assert_int_equal(ota_link_decode_u8(LIT("\xa0"), &v), OTA_ERR_MSG);
}

static void test_codes(void **state)
{
    uint8_t c;
    (void)state;
    for (c = 0; c < 0xff; c++) {
        const char *s = ota_link_suffix_of(c);
        if (s != NULL)
            assert_int_equal(ota_link_code_of(s), c);
    }
    assert_int_equal(ota_link_code_of("ota/get"), OTA_LINK_GET);
    assert_int_equal(ota_link_code_of("ota/blk"), OTA_LINK_BLK);
    assert_int_equal(ota_link_code_of("ota"), 0);
    assert_null(ota_link_suffix_of(OTA_LINK_HELLO));
    assert_null(ota_link_suffix_of(OTA_LINK_ACK));
}

/* The gateway's messages (port/posix/gw_msg.c): the block request it
 * reads from children (DESIGN's example), and the blocks and block errors
 * it answers with, read back by the core's decoder. */
static void test_gw_msg(void **state)
{
    static const uint8_t req[] = {
        0xa5, 0x01, 0x58, 0x20, 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a,
        0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19,
        0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f, 0x02, 0x19, 0x20, 0x00, 0x03, 0x19, 0x10, 0x00, 0x04,
        0x08, 0x05, 0x18, 0x2a};
    uint8_t b[128], bad[sizeof(req)];
    ota_block_request_t r;
    ota_block_t blk;
    size_t n;
    (void)state;
    assert_int_equal(gw_decode_block_request(req, sizeof(req), &r), OTA_OK);
    assert_int_equal(r.offset, 8192);
    assert_int_equal(r.size, 4096);
    assert_int_equal(r.count, 8);
    assert_int_equal(r.req_id, 42);
    assert_int_equal(r.digest[31], 0x1f);
    /* trailing byte, truncation, count 0, a 31-byte digest, a missing key */
    memcpy(b, req, sizeof(req));
    b[sizeof(req)] = 0;
    assert_int_not_equal(gw_decode_block_request(b, sizeof(req) + 1, &r), OTA_OK);
    assert_int_not_equal(gw_decode_block_request(req, sizeof(req) - 1, &r), OTA_OK);
    memcpy(bad, req, sizeof(req));
    bad[45] = 0x00; /* count 8 -> 0 */
    assert_int_equal(gw_decode_block_request(bad, sizeof(req), &r), OTA_ERR_MSG);
    memcpy(bad, req, sizeof(req));
    bad[3] = 0x1f; /* the digest's length */
    assert_int_not_equal(gw_decode_block_request(bad, sizeof(req), &r), OTA_OK);
    memcpy(bad, req, sizeof(req));
    bad[0] = 0xa4; /* four pairs: key 5 is left out, its bytes trail */
    assert_int_not_equal(gw_decode_block_request(bad, sizeof(req), &r), OTA_OK);

    assert_int_equal(gw_encode_block(42, 8192, 1u << 20, (const uint8_t *)"\xde\xad\xbe\xef", 4, b,
                                     sizeof(b), &n),
                     OTA_OK);
    assert_int_equal(ota_msg_decode_block(b, n, &blk), OTA_OK);
    assert_false(blk.is_error);
    assert_int_equal(blk.req_id, 42);
    assert_int_equal(blk.offset, 8192);
    assert_int_equal(blk.image_size, 1u << 20);
    assert_int_equal(blk.data_len, 4);
    assert_int_equal(gw_encode_block(42, 0, 8, b, 8, b + 64, 10, &n), OTA_ERR_NOSPACE);
    assert_int_equal(gw_encode_block_error(42, 8192, 5, 250, "rate limited", b, sizeof(b), &n),
                     OTA_OK);
    assert_int_equal(ota_msg_decode_block(b, n, &blk), OTA_OK);
    assert_true(blk.is_error);
    assert_int_equal(blk.error, 5);
    assert_int_equal(blk.retry_ms, 250);
    assert_int_equal(blk.message_len, 12);
    assert_int_equal(gw_encode_block_error(1, 0, 2, 0, NULL, b, sizeof(b), &n), OTA_OK);
    assert_int_equal(ota_msg_decode_block(b, n, &blk), OTA_OK);
    assert_int_equal(blk.error, 2);
    assert_null(blk.message);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crc),          cmocka_unit_test(test_encode_layout),
        cmocka_unit_test(test_every_split),  cmocka_unit_test(test_flipped),
        cmocka_unit_test(test_dropped),      cmocka_unit_test(test_duplicated),
        cmocka_unit_test(test_garbage_between), cmocka_unit_test(test_frame_inside_bad_candidate),
        cmocka_unit_test(test_larger_than_cap), cmocka_unit_test(test_random),
        cmocka_unit_test(test_hello_welcome), cmocka_unit_test(test_codes),
        cmocka_unit_test(test_gw_msg),
    };
    return cmocka_run_group_tests_name("link", tests, NULL, NULL);
}

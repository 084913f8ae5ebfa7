/* manifest.c - COSE_Sign1 ES256 parse/verify and the manifest payload. */
#include <string.h>

#include "internal.h"
#include "otamq/ota_msg.h"

#define COSE_SIGN1_TAG 18u
#define COSE_ALG_ES256 (-7)
#define COSE_HDR_ALG 1
#define COSE_HDR_CRIT 2
#define COSE_HDR_KID 4

/* Walks a COSE header map (labels are ints or text strings). Sets *alg when
 * label 1 is present, *kid and *kid_len for label 4. A critical-headers label
 * is refused: we understand no extension. */
static int parse_header(ota_cbor_reader_t *r, int64_t *alg, const uint8_t **kid, size_t *kid_len)
{
    uint64_t pairs, i, j;
    int64_t labels[OTA_CFG_CBOR_MAX_PAIRS];
    size_t nl = 0;
    int rc = ota_cbor_read_map(r, &pairs);
    if (rc != OTA_OK)
        return rc;
    if (pairs > OTA_CFG_CBOR_MAX_PAIRS)
        return OTA_ERR_COSE;
    for (i = 0; i < pairs; i++) {
        ota_cbor_reader_t peek = *r;
        uint8_t major;
        uint64_t arg;
        int64_t label;
        rc = ota_cbor_read_head(&peek, &major, &arg);
        if (rc != OTA_OK)
            return rc;
        if (major == OTA_CBOR_TSTR) {
            const char *s;
            size_t n;
            rc = ota_cbor_read_tstr(r, &s, &n);
            if (rc == OTA_OK)
                rc = ota_cbor_skip(r);
            if (rc != OTA_OK)
                return rc;
            continue;
        }
        rc = ota_cbor_read_int(r, &label);
        if (rc != OTA_OK)
            return rc == OTA_ERR_CBOR_TYPE ? OTA_ERR_COSE : rc;
        for (j = 0; j < nl; j++)
            if (labels[j] == label)
                return OTA_ERR_CBOR_DUP;
        labels[nl++] = label;
        if (label == COSE_HDR_ALG) {
            if (alg == NULL)
                return OTA_ERR_COSE; /* alg must be protected */
            rc = ota_cbor_read_int(r, alg);
        } else if (label == COSE_HDR_KID) {
            rc = ota_cbor_read_bstr(r, kid, kid_len);
        } else if (label == COSE_HDR_CRIT) {
            return OTA_ERR_COSE;
        } else {
            rc = ota_cbor_skip(r);
        }
        if (rc != OTA_OK)
            return rc == OTA_ERR_CBOR_TYPE ? OTA_ERR_COSE : rc;
    }
    return OTA_OK;
}

int ota_cose_parse(const uint8_t *buf, size_t len, ota_cose_sign1_t *s)
{
    ota_cbor_reader_t r, ph;
    uint64_t tag, n;
    int64_t alg = 0;
    const uint8_t *kid = NULL, *sig;
    size_t kid_len = 0, sig_len;
    int rc;

    if (buf == NULL || s == NULL)
        return OTA_ERR_ARG;
    memset(s, 0, sizeof(*s));
    ota_cbor_reader_init(&r, buf, len);
    if ((rc = ota_cbor_read_tag(&r, &tag)) != OTA_OK)
        return rc == OTA_ERR_CBOR_TYPE ? OTA_ERR_COSE : rc;
    if (tag != COSE_SIGN1_TAG)
        return OTA_ERR_COSE;
    if ((rc = ota_cbor_read_array(&r, &n)) != OTA_OK)
        return rc == OTA_ERR_CBOR_TYPE ? OTA_ERR_COSE : rc;
    if (n != 4u)
        return OTA_ERR_COSE;
    /* protected: bstr holding a map, alg ES256 required */
    if ((rc = ota_cbor_read_bstr(&r, &s->protected_hdr, &s->protected_len)) != OTA_OK)
        return rc == OTA_ERR_CBOR_TYPE ? OTA_ERR_COSE : rc;
    ota_cbor_reader_init(&ph, s->protected_hdr, s->protected_len);
    rc = parse_header(&ph, &alg, &kid, &kid_len);
    if (rc != OTA_OK)
        return rc == OTA_ERR_CBOR_TYPE ? OTA_ERR_COSE : rc;
    if (ph.p != ph.end)
        return OTA_ERR_CBOR;
    if (alg != COSE_ALG_ES256)
        return OTA_ERR_COSE;
    /* unprotected */
    {
        const uint8_t *ukid = NULL;
        size_t ukid_len = 0;
        rc = parse_header(&r, NULL, &ukid, &ukid_len);
        if (rc != OTA_OK)
            return rc == OTA_ERR_CBOR_TYPE ? OTA_ERR_COSE : rc;
        if (ukid != NULL) {
            if (kid != NULL)
                return OTA_ERR_COSE; /* kid in both buckets */
            kid = ukid;
            kid_len = ukid_len;
        }
    }
    if (kid == NULL)
        return OTA_ERR_COSE;
    if ((rc = ota_cbor_read_bstr(&r, &s->payload, &s->payload_len)) != OTA_OK)
        return rc == OTA_ERR_CBOR_TYPE ? OTA_ERR_COSE : rc;
    if ((rc = ota_cbor_read_bstr(&r, &sig, &sig_len)) != OTA_OK)
        return rc == OTA_ERR_CBOR_TYPE ? OTA_ERR_COSE : rc;
    if (sig_len != 64u)
        return OTA_ERR_COSE;
    if (r.p != r.end)
        return OTA_ERR_CBOR;
    s->kid = kid;
    s->kid_len = kid_len;
    s->sig = sig;
    return OTA_OK;
}

static int hash_head(const ota_port_t *port, ota_sha256_t *h, uint8_t major, uint64_t arg)
{
    uint8_t hd[9];
    return port->sha256_update(port->ctx, h, hd, ota_cbor_encode_head(hd, major, arg));
}

int ota_cose_verify(const ota_cose_sign1_t *s, const ota_port_t *port, const ota_key_t *keys,
                    size_t nkeys)
{
    static const uint8_t context[] = {'S', 'i', 'g', 'n', 'a', 't', 'u', 'r', 'e', '1'};
    const ota_key_t *key = NULL;
    ota_sha256_t h;
    uint8_t digest[32];
    size_t i;
    int rc;

    if (s == NULL || port == NULL || (keys == NULL && nkeys != 0u))
        return OTA_ERR_ARG;
    if (s->kid_len == sizeof(keys[0].kid))
        for (i = 0; i < nkeys && key == NULL; i++)
            if (memcmp(keys[i].kid, s->kid, sizeof(keys[i].kid)) == 0)
                key = &keys[i];
    if (key == NULL)
        return OTA_ERR_UNKNOWN_KEY;

    /* Sig_structure = ["Signature1", protected, external_aad h'', payload] */
    rc = port->sha256_start(port->ctx, &h);
    if (rc == OTA_OK)
        rc = hash_head(port, &h, OTA_CBOR_ARRAY, 4);
    if (rc == OTA_OK)
        rc = hash_head(port, &h, OTA_CBOR_TSTR, sizeof(context));
    if (rc == OTA_OK)
        rc = port->sha256_update(port->ctx, &h, context, sizeof(context));
    if (rc == OTA_OK)
        rc = hash_head(port, &h, OTA_CBOR_BSTR, s->protected_len);
    if (rc == OTA_OK)
        rc = port->sha256_update(port->ctx, &h, s->protected_hdr, s->protected_len);
    if (rc == OTA_OK)
        rc = hash_head(port, &h, OTA_CBOR_BSTR, 0);
    if (rc == OTA_OK)
        rc = hash_head(port, &h, OTA_CBOR_BSTR, s->payload_len);
    if (rc == OTA_OK)
        rc = port->sha256_update(port->ctx, &h, s->payload, s->payload_len);
    if (rc == OTA_OK)
        rc = port->sha256_finish(port->ctx, &h, digest);
    if (rc != OTA_OK)
        return OTA_ERR_CRYPTO;
    rc = port->ecdsa_p256_verify(port->ctx, key->pub, digest, s->sig);
    if (rc == OTA_OK || rc == OTA_ERR_SIGNATURE)
        return rc;
    return OTA_ERR_CRYPTO;
}

int ota_key_id(const ota_port_t *port, const uint8_t pub[65], uint8_t kid[8])
{
    ota_sha256_t h;
    uint8_t d[32];
    if (port == NULL || pub == NULL || kid == NULL)
        return OTA_ERR_ARG;
    if (port->sha256_start(port->ctx, &h) != OTA_OK ||
        port->sha256_update(port->ctx, &h, pub, 65) != OTA_OK ||
        port->sha256_finish(port->ctx, &h, d) != OTA_OK)
        return OTA_ERR_CRYPTO;
    memcpy(kid, d, 8);
    return OTA_OK;
}

/* ---- manifest payload -------------------------------------------------- */

static int read_targets(ota_cbor_reader_t *r, ota_manifest_t *m)
{
    uint64_t n, i;
    const uint8_t *start = r->p;
    int rc = ota_cbor_read_array(r, &n);
    if (rc != OTA_OK)
        return rc;
    if (n == 0u || n > OTA_CFG_MAX_TARGETS)
        return OTA_ERR_MSG;
    for (i = 0; i < n; i++) {
        const char *s;
        size_t len;
        rc = ota_cbor_read_tstr(r, &s, &len);
        if (rc != OTA_OK)
            return rc;
    }
    m->targets = start;
    m->targets_len = (size_t)(r->p - start);
    m->ntargets = (uint32_t)n;
    return OTA_OK;
}

static int read_components(ota_cbor_reader_t *r, ota_manifest_t *m)
{
    uint64_t n, i, k;
    int rc = ota_cbor_read_array(r, &n);
    if (rc != OTA_OK)
        return rc;
    for (i = 0; i < n; i++) {
        const char *s;
        const uint8_t *b;
        size_t len;
        rc = ota_cbor_read_array(r, &k);
        if (rc != OTA_OK)
            return rc;
        if (k != 3u)
            return OTA_ERR_MSG;
        if ((rc = ota_cbor_read_tstr(r, &s, &len)) != OTA_OK ||
            (rc = ota_cbor_read_tstr(r, &s, &len)) != OTA_OK ||
            (rc = ota_cbor_read_bstr(r, &b, &len)) != OTA_OK)
            return rc;
    }
    m->ncomponents = (uint32_t)n;
    return OTA_OK;
}

static int manifest_custom(ota_cbor_reader_t *r, uint8_t key, void *out)
{
    ota_manifest_t *m = (ota_manifest_t *)out;
    size_t n;
    int rc;
    if (key == 5)
        return read_targets(r, m);
    if (key == 11)
        return read_components(r, m);
    rc = ota_cbor_read_bstr(r, &m->digest, &n); /* key 8 */
    return rc == OTA_OK && n != 32u ? OTA_ERR_MSG : rc;
}

#define F(k, t, m) {k, t, (uint16_t)offsetof(ota_manifest_t, m), 0}
#define S(k, m, l) {k, OTA_F_TSTR, (uint16_t)offsetof(ota_manifest_t, m), \
                    (uint16_t)offsetof(ota_manifest_t, l)}

static const ota_field_t manifest_rows[] = {
    F(1, OTA_F_U32, format),        F(2, OTA_F_U64, seq),
    S(3, version, version_len),     S(4, build, build_len),
    F(5, OTA_F_CUSTOM, targets),    S(6, min_bootloader, min_bootloader_len),
    F(7, OTA_F_U32, image_size),    F(8, OTA_F_CUSTOM, digest),
    F(9, OTA_F_U32, secure_version), F(10, OTA_F_U8, kind),
    F(11, OTA_F_CUSTOM, ncomponents),
};

int ota_manifest_decode(const uint8_t *buf, size_t len, ota_manifest_t *m)
{
    uint32_t have;
    int rc;
    if (m == NULL)
        return OTA_ERR_ARG;
    memset(m, 0, sizeof(*m));
    rc = ota_decode_map(buf, len, manifest_rows, sizeof(manifest_rows) / sizeof(manifest_rows[0]),
                        11, m, manifest_custom, &have);
    if (rc != OTA_OK)
        return rc;
    /* required: format, seq, version, targets, size, digest */
    if ((have & 0x1aeu) != 0x1aeu || m->format != 1u || m->image_size == 0u)
        return OTA_ERR_MSG;
    return OTA_OK;
}

bool ota_manifest_has_target(const ota_manifest_t *m, const char *hw)
{
    ota_cbor_reader_t r;
    uint64_t n, i;
    size_t hwlen;
    if (m == NULL || hw == NULL || m->targets == NULL)
        return false;
    hwlen = strlen(hw);
    ota_cbor_reader_init(&r, m->targets, m->targets_len);
    if (ota_cbor_read_array(&r, &n) != OTA_OK)
        return false;
    for (i = 0; i < n; i++) {
        const char *s;
        size_t len;
        if (ota_cbor_read_tstr(&r, &s, &len) != OTA_OK)
            return false;
        if (len == hwlen && memcmp(s, hw, len) == 0)
            return true;
    }
    return false;
}

/* manifest.c - COSE_Sign1 ES256 parse/verify and the manifest payload. */
#include <string.h>

#include "internal.h"
#include "otamq/ota_msg.h"

/* Everything before the payload is fixed by the contract (DESIGN §4: tag
 * 18, protected header exactly {1: -7}, unprotected header exactly {4: kid})
 * and by the shortest-form heads the reader insists on anyway, so it is
 * compared as bytes: tag 18, array(4), bstr(3) {1: -7}, map(1) {4: bstr(8)}.
 * Another protected label, a key ID in the protected bucket, any other
 * unprotected label or a key ID of another length all differ here. */
static const uint8_t cose_head[] = {0xd2, 0x84, 0x43, 0xa1, 0x01, 0x26, 0xa1, 0x04, 0x48};
#define COSE_KID_LEN 8u

int ota_cose_parse(const uint8_t *buf, size_t len, ota_cose_sign1_t *s)
{
    ota_cbor_reader_t r;

    if (buf == NULL || s == NULL)
        return OTA_ERR_ARG;
    if (len < sizeof(cose_head) + COSE_KID_LEN || memcmp(buf, cose_head, sizeof(cose_head)) != 0)
        return OTA_ERR_COSE;
    ota_cbor_reader_init(&r, buf + sizeof(cose_head) + COSE_KID_LEN,
                         len - sizeof(cose_head) - COSE_KID_LEN);
    /* the payload, then exactly the signature: bstr(64) r||s, nothing after */
    if (ota_cbor_read_bstr(&r, &s->payload, &s->payload_len) != OTA_OK || s->payload_len == 0u ||
        r.end - r.p != 66 || r.p[0] != 0x58u || r.p[1] != 64u)
        return OTA_ERR_COSE;
    s->protected_hdr = buf + 3;
    s->protected_len = 3;
    s->kid = buf + sizeof(cose_head);
    s->kid_len = COSE_KID_LEN;
    s->sig = r.p + 2;
    return OTA_OK;
}

/* The SHA-256 of the n pieces p[i] of len[i] bytes, through the port.
 * OTA_OK or OTA_ERR_CRYPTO; a started hash always ends (finish or abort). */
static INLINE int sha256_of(const ota_port_t *port, const uint8_t *const p[], const size_t len[],
                     unsigned n, uint8_t digest[32])
{
    ota_sha256_t h;
    unsigned i;
    if (port->sha256_start(port->ctx, &h) != OTA_OK)
        return OTA_ERR_CRYPTO;
    for (i = 0; i < n; i++) {
        if (len[i] != 0u && port->sha256_update(port->ctx, &h, p[i], len[i]) != OTA_OK) {
            port->sha256_abort(port->ctx, &h);
            return OTA_ERR_CRYPTO;
        }
    }
    return port->sha256_finish(port->ctx, &h, digest) == OTA_OK ? OTA_OK : OTA_ERR_CRYPTO;
}

int ota_cose_verify(const ota_cose_sign1_t *s, const ota_port_t *port, const ota_key_t *keys,
                    size_t nkeys)
{
    /* Sig_structure = ["Signature1", protected, external_aad h'', payload]:
     * array(4) and the context string are fixed, each of the others is a
     * byte string: its head, then its bytes */
    static const uint8_t sig1[] = {0x84, 0x6a, 'S', 'i', 'g', 'n', 'a', 't', 'u', 'r', 'e', '1'};
    static const uint8_t empty_bstr = 0x40;
    const ota_key_t *key = NULL;
    uint8_t digest[32], prot_head[9], payload_head[9];
    const uint8_t *p[6];
    size_t len[6];
    int rc;

    if (s == NULL || port == NULL || (keys == NULL && nkeys != 0u))
        return OTA_ERR_ARG;
    if (s->kid_len == sizeof(keys[0].kid))
        for (; nkeys > 0u && key == NULL; nkeys--, keys++)
            if (memcmp(keys->kid, s->kid, sizeof(keys->kid)) == 0)
                key = keys;
    if (key == NULL)
        return OTA_ERR_UNKNOWN_KEY;

    p[0] = sig1;
    len[0] = sizeof(sig1);
    p[1] = prot_head;
    len[1] = ota_cbor_encode_head(prot_head, OTA_CBOR_BSTR, s->protected_len);
    p[2] = s->protected_hdr;
    len[2] = s->protected_len;
    p[3] = &empty_bstr;
    len[3] = 1;
    p[4] = payload_head;
    len[4] = ota_cbor_encode_head(payload_head, OTA_CBOR_BSTR, s->payload_len);
    p[5] = s->payload;
    len[5] = s->payload_len;
    rc = sha256_of(port, p, len, 6, digest);
    if (rc == OTA_OK)
        rc = port->ecdsa_p256_verify(port->ctx, key->pub, digest, s->sig);
    return rc == OTA_OK || rc == OTA_ERR_SIGNATURE ? rc : OTA_ERR_CRYPTO;
}

int ota_key_id(const ota_port_t *port, const uint8_t pub[65], uint8_t kid[8])
{
    static const size_t len = 65;
    uint8_t d[32];
    int rc;
    if (port == NULL || pub == NULL || kid == NULL)
        return OTA_ERR_ARG;
    rc = sha256_of(port, &pub, &len, 1, d);
    if (rc == OTA_OK)
        memcpy(kid, d, 8);
    return rc;
}

/* ---- manifest payload -------------------------------------------------- */

/* Key 5, target hardware: 1..OTA_CFG_MAX_TARGETS text strings, kept as the
 * raw array for ota_manifest_has_target. Key 11, components: arrays of
 * [name tstr, version tstr, digest bstr], checked and counted. */
static int manifest_custom(ota_cbor_reader_t *r, uint8_t key, void *out)
{
    /* the strings of a component; a target is one like its name */
    static const uint8_t component[] = {OTA_CBOR_TSTR, OTA_CBOR_TSTR, OTA_CBOR_BSTR};
    ota_manifest_t *m = (ota_manifest_t *)out;
    const uint8_t *start = r->p, *p;
    uint64_t n, k;
    uint32_t i, j, strs = key == 5 ? 1u : 3u;
    size_t len;
    int rc = ota_cbor_read_array(r, &n);
    if (rc == OTA_OK && key == 5 && (n == 0u || n > OTA_CFG_MAX_TARGETS))
        rc = OTA_ERR_MSG;
    for (i = 0; rc == OTA_OK && i < (uint32_t)n; i++) {
        if (strs == 3u) {
            rc = ota_cbor_read_array(r, &k);
            if (rc == OTA_OK && k != 3u)
                rc = OTA_ERR_MSG;
        }
        for (j = 0; rc == OTA_OK && j < strs; j++)
            rc = ota_cbor_read_str(r, component[j], &p, &len);
    }
    if (key == 5) {
        m->targets = start;
        m->targets_len = (size_t)(r->p - start);
        m->ntargets = (uint32_t)n;
    } else {
        m->ncomponents = (uint32_t)n;
    }
    return rc;
}

#define F(k, t, m) OTA_ROW(k, t, ota_manifest_t, m)
#define S(k, m, l) OTA_ROW2(k, OTA_F_TSTR, ota_manifest_t, m, offsetof(ota_manifest_t, l))

static const ota_field_t manifest_rows[] = {
    F(1, OTA_F_U32, format),         F(2, OTA_F_U64, seq),
    S(3, version, version_len),      S(4, build, build_len),
    F(5, OTA_F_CUSTOM, targets),     S(6, min_bootloader, min_bootloader_len),
    F(7, OTA_F_U32, image_size),     F(8, OTA_F_PDIGEST, digest),
    F(9, OTA_F_U32, secure_version), F(10, OTA_F_U8, kind),
    F(11, OTA_F_CUSTOM, ncomponents),
};

int ota_manifest_decode(const uint8_t *buf, size_t len, ota_manifest_t *m)
{
    uint32_t have;
    int rc;
    rc = ota_decode_map(buf, len, manifest_rows, sizeof(manifest_rows) / sizeof(manifest_rows[0]),
                        11, m, sizeof(*m), manifest_custom, &have);
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
    uint64_t n;
    uint32_t i;
    size_t hwlen, len;
    const uint8_t *s;
    if (m == NULL || hw == NULL || m->targets == NULL)
        return false;
    hwlen = strlen(hw);
    ota_cbor_reader_init(&r, m->targets, m->targets_len);
    if (ota_cbor_read_array(&r, &n) != OTA_OK)
        return false;
    for (i = (uint32_t)n; i > 0u; i--) { /* bounded by the bytes: fits */
        if (ota_cbor_read_str(&r, OTA_CBOR_TSTR, &s, &len) != OTA_OK)
            return false;
        if (len == hwlen && memcmp(s, hw, len) == 0)
            return true;
    }
    return false;
}

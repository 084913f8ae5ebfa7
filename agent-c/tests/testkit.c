/* testkit.c - see testkit.h. */
#include "cbor_util.h"
#include "testkit.h"

#include <stdio.h>
#include <string.h>

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/ecdsa.h>
#include <mbedtls/entropy.h>
#include <mbedtls/pk.h>
#include <mbedtls/sha256.h>

#include "sim.h"

/* Deterministic "random" source for reproducible keys and signatures. */
static int det_rng(void *p, unsigned char *out, size_t n)
{
    uint32_t *st = (uint32_t *)p;
    size_t i;
    for (i = 0; i < n; i++) {
        *st = *st * 1664525u + 1013904223u;
        out[i] = (unsigned char)(*st >> 24);
    }
    return 0;
}

void tk_sha256(const uint8_t *p, size_t n, uint8_t out[32])
{
    mbedtls_sha256_ret(p, n, out, 0);
}

static int fill_pub(tk_key_t *k, mbedtls_ecp_keypair *kp)
{
    size_t olen;
    uint8_t h[32];
    if (mbedtls_mpi_write_binary(&kp->d, k->d, 32) != 0 ||
        mbedtls_ecp_point_write_binary(&kp->grp, &kp->Q, MBEDTLS_ECP_PF_UNCOMPRESSED, &olen,
                                       k->pub, 65) != 0)
        return -1;
    tk_sha256(k->pub, 65, h);
    memcpy(k->kid, h, 8);
    return 0;
}

int tk_keygen(tk_key_t *k, unsigned seed)
{
    mbedtls_ecp_keypair kp;
    uint32_t st = seed * 2654435761u + 1u;
    int rc;
    mbedtls_ecp_keypair_init(&kp);
    rc = mbedtls_ecp_gen_key(MBEDTLS_ECP_DP_SECP256R1, &kp, det_rng, &st);
    if (rc == 0)
        rc = fill_pub(k, &kp);
    mbedtls_ecp_keypair_free(&kp);
    return rc;
}

static int to_pk(const tk_key_t *k, mbedtls_pk_context *pk)
{
    mbedtls_ecp_keypair *kp;
    mbedtls_pk_init(pk);
    if (mbedtls_pk_setup(pk, mbedtls_pk_info_from_type(MBEDTLS_PK_ECKEY)) != 0)
        return -1;
    kp = mbedtls_pk_ec(*pk);
    if (mbedtls_ecp_group_load(&kp->grp, MBEDTLS_ECP_DP_SECP256R1) != 0 ||
        mbedtls_mpi_read_binary(&kp->d, k->d, 32) != 0 ||
        mbedtls_ecp_point_read_binary(&kp->grp, &kp->Q, k->pub, 65) != 0)
        return -1;
    return 0;
}

static int write_file(const char *path, const unsigned char *s)
{
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return -1;
    fputs((const char *)s, f);
    return fclose(f);
}

int tk_key_write_pem(const tk_key_t *k, const char *pub_path, const char *priv_path)
{
    mbedtls_pk_context pk;
    unsigned char buf[1024];
    int rc = to_pk(k, &pk);
    if (rc == 0 && pub_path != NULL)
        rc = mbedtls_pk_write_pubkey_pem(&pk, buf, sizeof(buf)) == 0 ? write_file(pub_path, buf)
                                                                      : -1;
    if (rc == 0 && priv_path != NULL)
        rc = mbedtls_pk_write_key_pem(&pk, buf, sizeof(buf)) == 0 ? write_file(priv_path, buf)
                                                                   : -1;
    mbedtls_pk_free(&pk);
    return rc;
}

int tk_key_read_pem(tk_key_t *k, const char *priv_path)
{
    mbedtls_pk_context pk;
    int rc;
    mbedtls_pk_init(&pk);
    rc = mbedtls_pk_parse_keyfile(&pk, priv_path, NULL);
    if (rc == 0 && mbedtls_pk_get_type(&pk) == MBEDTLS_PK_ECKEY)
        rc = fill_pub(k, mbedtls_pk_ec(pk));
    else
        rc = -1;
    mbedtls_pk_free(&pk);
    return rc;
}

size_t tk_manifest_payload(const tk_manifest_t *m, uint8_t *buf, size_t cap)
{
    ota_cbor_writer_t w;
    int i;
    ota_cbor_writer_init(&w, buf, cap);
    ota_cbor_put_head(&w, OTA_CBOR_MAP,
                      8u + (m->build ? 1u : 0u) + (m->min_bootloader ? 1u : 0u));
    ota_cbor_put_uint(&w, 1);
    ota_cbor_put_uint(&w, 1);
    ota_cbor_put_uint(&w, 2);
    ota_cbor_put_uint(&w, m->seq);
    ota_cbor_put_uint(&w, 3);
    ota_cbor_put_cstr(&w, m->version);
    if (m->build) {
        ota_cbor_put_uint(&w, 4);
        ota_cbor_put_cstr(&w, m->build);
    }
    ota_cbor_put_uint(&w, 5);
    ota_cbor_put_head(&w, OTA_CBOR_ARRAY, (uint64_t)m->ntargets);
    for (i = 0; i < m->ntargets; i++)
        ota_cbor_put_cstr(&w, m->targets[i]);
    if (m->min_bootloader) {
        ota_cbor_put_uint(&w, 6);
        ota_cbor_put_cstr(&w, m->min_bootloader);
    }
    ota_cbor_put_uint(&w, 7);
    ota_cbor_put_uint(&w, m->size);
    ota_cbor_put_uint(&w, 8);
    ota_cbor_put_bstr(&w, m->digest, 32);
    ota_cbor_put_uint(&w, 9);
    ota_cbor_put_uint(&w, m->secure_version);
    ota_cbor_put_uint(&w, 10);
    ota_cbor_put_uint(&w, m->kind);
    return ota_cbor_writer_status(&w) == OTA_OK ? w.len : 0;
}

size_t tk_sign(const tk_key_t *k, const uint8_t *payload, size_t plen, uint8_t *out, size_t cap)
{
    static const uint8_t prot[] = {0xa1, 0x01, 0x26};
    uint8_t tbs[4096], hash[32], sig[64];
    ota_cbor_writer_t w;
    mbedtls_ecp_group grp;
    mbedtls_mpi d, r, s;
    uint32_t st = 12345u + (uint32_t)plen;
    int rc;

    ota_cbor_writer_init(&w, tbs, sizeof(tbs));
    ota_cbor_put_head(&w, OTA_CBOR_ARRAY, 4);
    ota_cbor_put_cstr(&w, "Signature1");
    ota_cbor_put_bstr(&w, prot, sizeof(prot));
    ota_cbor_put_bstr(&w, NULL, 0);
    ota_cbor_put_bstr(&w, payload, plen);
    if (ota_cbor_writer_status(&w) != OTA_OK)
        return 0;
    tk_sha256(tbs, w.len, hash);
    mbedtls_ecp_group_init(&grp);
    mbedtls_mpi_init(&d);
    mbedtls_mpi_init(&r);
    mbedtls_mpi_init(&s);
    rc = mbedtls_ecp_group_load(&grp, MBEDTLS_ECP_DP_SECP256R1);
    if (rc == 0)
        rc = mbedtls_mpi_read_binary(&d, k->d, 32);
    if (rc == 0)
        rc = mbedtls_ecdsa_sign(&grp, &r, &s, &d, hash, 32, det_rng, &st);
    if (rc == 0)
        rc = mbedtls_mpi_write_binary(&r, sig, 32);
    if (rc == 0)
        rc = mbedtls_mpi_write_binary(&s, sig + 32, 32);
    mbedtls_mpi_free(&s);
    mbedtls_mpi_free(&r);
    mbedtls_mpi_free(&d);
    mbedtls_ecp_group_free(&grp);
    if (rc != 0)
        return 0;
    ota_cbor_writer_init(&w, out, cap);
    ota_cbor_put_head(&w, OTA_CBOR_TAG, 18);
    ota_cbor_put_head(&w, OTA_CBOR_ARRAY, 4);
    ota_cbor_put_bstr(&w, prot, sizeof(prot));
    ota_cbor_put_head(&w, OTA_CBOR_MAP, 1);
    ota_cbor_put_uint(&w, 4);
    ota_cbor_put_bstr(&w, k->kid, 8);
    ota_cbor_put_bstr(&w, payload, plen);
    ota_cbor_put_bstr(&w, sig, 64);
    return ota_cbor_writer_status(&w) == OTA_OK ? w.len : 0;
}

size_t tk_offer_window(uint8_t *buf, size_t cap, const char *rollout, const uint8_t *manifest,
                       size_t mlen, unsigned mode, uint32_t block_size, uint64_t deadline,
                       uint32_t max_window)
{
    ota_cbor_writer_t w;
    ota_cbor_writer_init(&w, buf, cap);
    ota_cbor_put_head(&w, OTA_CBOR_MAP, manifest ? (max_window ? 6u : 5u) : 1u);
    ota_cbor_put_uint(&w, 1);
    ota_cbor_put_cstr(&w, rollout);
    if (manifest) {
        ota_cbor_put_uint(&w, 2);
        ota_cbor_put_bstr(&w, manifest, mlen);
        ota_cbor_put_uint(&w, 3);
        ota_cbor_put_uint(&w, mode);
        ota_cbor_put_uint(&w, 4);
        ota_cbor_put_uint(&w, block_size);
        ota_cbor_put_uint(&w, 5);
        ota_cbor_put_uint(&w, deadline);
        if (max_window) {
            ota_cbor_put_uint(&w, 6);
            ota_cbor_put_uint(&w, max_window);
        }
    }
    return ota_cbor_writer_status(&w) == OTA_OK ? w.len : 0;
}

size_t tk_offer(uint8_t *buf, size_t cap, const char *rollout, const uint8_t *manifest,
                size_t mlen, unsigned mode, uint32_t block_size, uint64_t deadline)
{
    return tk_offer_window(buf, cap, rollout, manifest, mlen, mode, block_size, deadline, 0);
}

size_t tk_block(uint8_t *buf, size_t cap, uint32_t req_id, uint32_t offset, uint32_t image_size,
                const uint8_t *data, size_t len)
{
    ota_cbor_writer_t w;
    ota_cbor_writer_init(&w, buf, cap);
    ota_cbor_put_head(&w, OTA_CBOR_MAP, 4);
    ota_cbor_put_uint(&w, 1);
    ota_cbor_put_uint(&w, req_id);
    ota_cbor_put_uint(&w, 2);
    ota_cbor_put_uint(&w, offset);
    ota_cbor_put_uint(&w, 3);
    ota_cbor_put_uint(&w, image_size);
    ota_cbor_put_uint(&w, 4);
    ota_cbor_put_bstr(&w, data, len);
    return ota_cbor_writer_status(&w) == OTA_OK ? w.len : 0;
}

size_t tk_block_error(uint8_t *buf, size_t cap, uint32_t req_id, uint32_t offset, unsigned err,
                      uint32_t retry_ms, const char *msg)
{
    ota_cbor_writer_t w;
    ota_cbor_writer_init(&w, buf, cap);
    ota_cbor_put_head(&w, OTA_CBOR_MAP, 3u + (retry_ms ? 1u : 0u) + (msg ? 1u : 0u));
    ota_cbor_put_uint(&w, 1);
    ota_cbor_put_uint(&w, req_id);
    ota_cbor_put_uint(&w, 2);
    ota_cbor_put_uint(&w, offset);
    ota_cbor_put_uint(&w, 5);
    ota_cbor_put_uint(&w, err);
    if (retry_ms) {
        ota_cbor_put_uint(&w, 6);
        ota_cbor_put_uint(&w, retry_ms);
    }
    if (msg) {
        ota_cbor_put_uint(&w, 7);
        ota_cbor_put_cstr(&w, msg);
    }
    return ota_cbor_writer_status(&w) == OTA_OK ? w.len : 0;
}

size_t tk_command(uint8_t *buf, size_t cap, unsigned verb, const char *rollout,
                  uint64_t not_after)
{
    ota_cbor_writer_t w;
    ota_cbor_writer_init(&w, buf, cap);
    ota_cbor_put_head(&w, OTA_CBOR_MAP, rollout ? 3u : 2u);
    ota_cbor_put_uint(&w, 1);
    ota_cbor_put_uint(&w, verb);
    if (rollout) {
        ota_cbor_put_uint(&w, 2);
        ota_cbor_put_cstr(&w, rollout);
    }
    ota_cbor_put_uint(&w, 3);
    ota_cbor_put_uint(&w, not_after);
    return ota_cbor_writer_status(&w) == OTA_OK ? w.len : 0;
}

void tk_image(uint8_t *buf, uint32_t size, unsigned behaviour, uint16_t delay_s,
              const char *version, unsigned seed)
{
    ota_sim_header_t h;
    uint32_t st = seed, i;
    memset(&h, 0, sizeof(h));
    h.behaviour = (uint8_t)behaviour;
    h.delay_s = delay_s;
    snprintf(h.version, sizeof(h.version), "%s", version);
    for (i = 0; i < size; i++) {
        st = st * 1103515245u + 12345u;
        buf[i] = (uint8_t)(st >> 16);
    }
    if (size >= OTA_SIM_HDR_SIZE)
        ota_sim_header_build(buf, &h);
}

/* crypto_mbedtls.c - SHA-256 and ECDSA P-256 verification with mbedTLS 2.28.
 * mbedTLS 2.28 verifies (r, s) as MPIs, so the raw COSE r||s signature is
 * split here, in the port; the core never sees an ASN.1 signature. */
#include "crypto_mbedtls.h"

#include <mbedtls/ecdsa.h>
#include <mbedtls/ecp.h>
#include <mbedtls/pk.h>
#include <mbedtls/sha256.h>

typedef char sha_ctx_fits[sizeof(mbedtls_sha256_context) <= sizeof(ota_sha256_t) ? 1 : -1];

int ota_mbedtls_sha256_start(void *ctx, ota_sha256_t *h)
{
    mbedtls_sha256_context *c = (mbedtls_sha256_context *)(void *)h->opaque;
    (void)ctx;
    mbedtls_sha256_init(c);
    return mbedtls_sha256_starts_ret(c, 0) == 0 ? OTA_OK : OTA_ERR_CRYPTO;
}

int ota_mbedtls_sha256_update(void *ctx, ota_sha256_t *h, const uint8_t *data, size_t len)
{
    (void)ctx;
    return mbedtls_sha256_update_ret((mbedtls_sha256_context *)(void *)h->opaque, data, len) == 0
               ? OTA_OK
               : OTA_ERR_CRYPTO;
}

int ota_mbedtls_sha256_finish(void *ctx, ota_sha256_t *h, uint8_t digest[32])
{
    mbedtls_sha256_context *c = (mbedtls_sha256_context *)(void *)h->opaque;
    int rc = mbedtls_sha256_finish_ret(c, digest);
    (void)ctx;
    mbedtls_sha256_free(c);
    return rc == 0 ? OTA_OK : OTA_ERR_CRYPTO;
}

void ota_mbedtls_sha256_abort(void *ctx, ota_sha256_t *h)
{
    (void)ctx;
    mbedtls_sha256_free((mbedtls_sha256_context *)(void *)h->opaque);
}

int ota_mbedtls_ecdsa_p256_verify(void *ctx, const uint8_t pub[65], const uint8_t hash[32],
                                  const uint8_t sig[64])
{
    mbedtls_ecp_group grp;
    mbedtls_ecp_point q;
    mbedtls_mpi r, s;
    int rc = OTA_ERR_CRYPTO;
    (void)ctx;
    mbedtls_ecp_group_init(&grp);
    mbedtls_ecp_point_init(&q);
    mbedtls_mpi_init(&r);
    mbedtls_mpi_init(&s);
    if (mbedtls_ecp_group_load(&grp, MBEDTLS_ECP_DP_SECP256R1) == 0 &&
        mbedtls_ecp_point_read_binary(&grp, &q, pub, 65) == 0 &&
        mbedtls_ecp_check_pubkey(&grp, &q) == 0 && mbedtls_mpi_read_binary(&r, sig, 32) == 0 &&
        mbedtls_mpi_read_binary(&s, sig + 32, 32) == 0) {
        rc = mbedtls_ecdsa_verify(&grp, hash, 32, &q, &r, &s) == 0 ? OTA_OK : OTA_ERR_SIGNATURE;
    }
    mbedtls_mpi_free(&s);
    mbedtls_mpi_free(&r);
    mbedtls_ecp_point_free(&q);
    mbedtls_ecp_group_free(&grp);
    return rc;
}

int ota_mbedtls_load_pubkey(const char *path, uint8_t pub[65])
{
    mbedtls_pk_context pk;
    size_t olen = 0;
    int rc;
    mbedtls_pk_init(&pk);
    rc = mbedtls_pk_parse_public_keyfile(&pk, path);
    if (rc == MBEDTLS_ERR_PK_FILE_IO_ERROR) {
        rc = OTA_ERR_IO;
    } else if (rc != 0 || mbedtls_pk_get_type(&pk) != MBEDTLS_PK_ECKEY ||
               mbedtls_pk_ec(pk)->grp.id != MBEDTLS_ECP_DP_SECP256R1) {
        rc = OTA_ERR_CRYPTO;
    } else {
        mbedtls_ecp_keypair *ec = mbedtls_pk_ec(pk);
        rc = mbedtls_ecp_point_write_binary(&ec->grp, &ec->Q, MBEDTLS_ECP_PF_UNCOMPRESSED, &olen,
                                            pub, 65) == 0 && olen == 65u
                 ? OTA_OK
                 : OTA_ERR_CRYPTO;
    }
    mbedtls_pk_free(&pk);
    return rc;
}

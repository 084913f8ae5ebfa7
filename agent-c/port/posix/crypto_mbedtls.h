/* crypto_mbedtls.h - the port's crypto members on mbedTLS 2.28 (host). */
#ifndef OTAMQ_PORT_POSIX_CRYPTO_MBEDTLS_H
#define OTAMQ_PORT_POSIX_CRYPTO_MBEDTLS_H

#include "otamq/ota_port.h"

int ota_mbedtls_sha256_start(void *ctx, ota_sha256_t *h);
int ota_mbedtls_sha256_update(void *ctx, ota_sha256_t *h, const uint8_t *data, size_t len);
int ota_mbedtls_sha256_finish(void *ctx, ota_sha256_t *h, uint8_t digest[32]);
void ota_mbedtls_sha256_abort(void *ctx, ota_sha256_t *h);
int ota_mbedtls_ecdsa_p256_verify(void *ctx, const uint8_t pub[65], const uint8_t hash[32],
                                  const uint8_t sig[64]);

/* Loads a PEM "PUBLIC KEY" (SubjectPublicKeyInfo, P-256) file as the
 * uncompressed point. OTA_OK, OTA_ERR_IO (unreadable), OTA_ERR_CRYPTO (not
 * a P-256 public key). */
int ota_mbedtls_load_pubkey(const char *path, uint8_t pub[65]);

#endif

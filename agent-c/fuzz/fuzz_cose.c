/* fuzz_cose - COSE_Sign1 parsing and verification (mbedTLS port crypto). */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "crypto_mbedtls.h"
#include "testkit.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static ota_port_t port;
    static ota_key_t keys[1];
    static int init;
    ota_cose_sign1_t s;
    if (!init) {
        tk_key_t k;
        tk_keygen(&k, 1);
        port.sha256_start = ota_mbedtls_sha256_start;
        port.sha256_update = ota_mbedtls_sha256_update;
        port.sha256_finish = ota_mbedtls_sha256_finish;
        port.ecdsa_p256_verify = ota_mbedtls_ecdsa_p256_verify;
        memcpy(keys[0].pub, k.pub, 65);
        memcpy(keys[0].kid, k.kid, 8);
        init = 1;
    }
    if (ota_cose_parse(data, size, &s) == OTA_OK) {
        ota_manifest_t m;
        (void)ota_cose_verify(&s, &port, keys, 1);
        (void)ota_manifest_decode(s.payload, s.payload_len, &m);
    }
    return 0;
}

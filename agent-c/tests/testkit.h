/* testkit.h - host-only helpers for tests and tools: keys, signing (mbedTLS),
 * builders for the broker's messages, simulated images. Never linked into
 * the agent. */
#ifndef OTAMQ_TESTKIT_H
#define OTAMQ_TESTKIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "otamq/ota_msg.h"

typedef struct tk_key {
    uint8_t d[32];   /* private scalar */
    uint8_t pub[65]; /* 0x04||X||Y */
    uint8_t kid[8];
} tk_key_t;

/* Deterministic key from a seed (tests) ; 0 on success. */
int tk_keygen(tk_key_t *k, unsigned seed);
/* Writes PEM files: public key (SubjectPublicKeyInfo) and private key. */
int tk_key_write_pem(const tk_key_t *k, const char *pub_path, const char *priv_path);
int tk_key_read_pem(tk_key_t *k, const char *priv_path);

typedef struct tk_manifest {
    uint64_t seq;
    const char *version;
    const char *build;          /* NULL: omitted */
    const char *targets[4];
    int ntargets;
    const char *min_bootloader; /* NULL: omitted */
    uint32_t size;
    uint8_t digest[32];
    uint32_t secure_version;
    uint8_t kind;
} tk_manifest_t;

size_t tk_manifest_payload(const tk_manifest_t *m, uint8_t *buf, size_t cap);

/* Signs payload as a tagged COSE_Sign1 ES256 ({1:-7} protected, {4:kid}). */
size_t tk_sign(const tk_key_t *k, const uint8_t *payload, size_t plen, uint8_t *out, size_t cap);

size_t tk_offer(uint8_t *buf, size_t cap, const char *rollout, const uint8_t *manifest,
                size_t mlen, unsigned mode, uint32_t block_size, uint64_t deadline);
/* An offer with key 6 (the broker's window) when max_window is not 0. */
size_t tk_offer_window(uint8_t *buf, size_t cap, const char *rollout, const uint8_t *manifest,
                       size_t mlen, unsigned mode, uint32_t block_size, uint64_t deadline,
                       uint32_t max_window);
size_t tk_block(uint8_t *buf, size_t cap, uint32_t req_id, uint32_t offset, uint32_t image_size,
                const uint8_t *data, size_t len);
size_t tk_block_error(uint8_t *buf, size_t cap, uint32_t req_id, uint32_t offset, unsigned err,
                      uint32_t retry_ms, const char *msg);
size_t tk_command(uint8_t *buf, size_t cap, unsigned verb, const char *rollout,
                  uint64_t not_after);

/* A simulated image of size bytes: header (see port/posix/sim.h) and a
 * pseudo-random body derived from seed. */
void tk_image(uint8_t *buf, uint32_t size, unsigned behaviour, uint16_t delay_s,
              const char *version, unsigned seed);

void tk_sha256(const uint8_t *p, size_t n, uint8_t out[32]);

#endif

/* SHA-256 (FIPS 180-4), streaming; used for the .subbit header and data digests. */
#ifndef SBL_SHA256_H
#define SBL_SHA256_H
#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint32_t h[8];
    uint64_t len;      /* bytes hashed so far */
    uint8_t buf[64];
    size_t fill;
} sbl_sha256;

void sbl_sha256_init(sbl_sha256 *c);
void sbl_sha256_update(sbl_sha256 *c, const void *data, size_t n);
void sbl_sha256_final(sbl_sha256 *c, uint8_t out[32]);
/* Lowercase hex of the digest of data (65 bytes with the NUL). */
void sbl_sha256_hex(const void *data, size_t n, char out[65]);
void sbl_hex32(const uint8_t d[32], char out[65]);
#endif

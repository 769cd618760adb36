/* Packed-weight linear kernels: y[M,N] = x[M,K] @ W^T (+ bias), W stored as b-bit codebook
 * indices (layout rowblock32-planes-v1, see docs/format.md) with a per-group int8 codebook.
 *
 * Numerics (identical on every path, so results are bit-identical to the NumPy reference):
 *   amax = max|x[m,:]|; xq = clamp(rint(x * (127 / amax)), -127, 127); sx = amax / 127
 *   acc  = sum_k xq[k] * lut[g][idx[n,k]]        (exact int32)
 *   y    = (float)acc * (sx * scale[g]) + bias[n] (float32, no FMA contraction)
 * Plain C on buffers: no Python or torch headers; loaded with ctypes.
 */
#ifndef SUBBIT_KERNELS_H
#define SUBBIT_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#define SUBBIT_BLOCK 32
/* Entries per group in the int8 table: 2**bits, at least 16 (one pshufb register), zero padded. */
#define SUBBIT_LUT_STRIDE(bits) ((bits) < 4 ? 16 : (1 << (bits)))

enum subbit_path { SUBBIT_AUTO = 0, SUBBIT_PORTABLE = 1, SUBBIT_AVX2 = 2, SUBBIT_AVX512 = 3 };

/* Error codes returned by subbit_packed_linear. */
#define SUBBIT_OK 0
#define SUBBIT_EARG (-1)     /* bad argument (bits, sizes, groups) */
#define SUBBIT_EPATH (-2)    /* the requested path is not supported by this CPU */
#define SUBBIT_ENOMEM (-3)

/* Everything a kernel needs about one packed weight. */
typedef struct {
    const uint8_t *packed; /* [N][row_bytes] */
    int64_t n, k, kp;      /* rows, real columns, columns padded to a multiple of 8 */
    int64_t row_bytes;     /* kp / 8 * bits */
    int64_t nfull, tail;   /* full 32-index blocks per row; indices in the short last block */
    int bits;
    int64_t groups;        /* 1 (per tensor) or n (per row) */
    const int8_t *lut;     /* [groups][SUBBIT_LUT_STRIDE(bits)], values in [-127, 127] */
    const float *scales;   /* [groups] */
    const int32_t *rowsum; /* [n]: sum over kp of lut values (padding = index 0); AVX-512 path */
    int8_t *scratch;       /* portable: a decoded row (kp + 64); AVX2/512: m permuted x rows (m*kp + 64) */
    int identity;          /* 1: packed holds int8 weights (8-bit layout), lut is the identity */
} subbit_weight;

/* The int8 table of row r (one shared table for per-tensor codebooks and int8 weights). */
static inline const int8_t *subbit_row_lut(const subbit_weight *w, int64_t r) {
    return w->lut + ((w->groups == 1 || w->identity) ? 0 : r) * SUBBIT_LUT_STRIDE(w->bits);
}

/* Bit mask of supported paths: bit p set when path p (enum above) runs on this CPU. */
int subbit_supported_paths(void);

/* The path SUBBIT_AUTO picks. */
int subbit_best_path(void);

int subbit_packed_linear(int path, const float *x, int64_t m, int64_t k, const uint8_t *packed,
                         int64_t n, int bits, const int8_t *lut, const float *scales, int64_t groups,
                         const int32_t *rowsum, const float *bias, float *y);

/* Same product for weights already expanded to int8 ([n][ceil(k/8)*8], zero padded): used for
 * 7-8 bit tensors on paths without byte permutes (expanded once at load). */
int subbit_int8_linear(int path, const float *x, int64_t m, int64_t k, const int8_t *w8, int64_t n,
                       const float *scales, int64_t groups, const int32_t *rowsum, const float *bias,
                       float *y);

/* Per-row sums of the decoded int8 weights over the padded row (index 0 in padding; VNNI path). */
int subbit_rowsums(const uint8_t *packed, int64_t n, int64_t k, int bits, const int8_t *lut,
                   int64_t groups, int32_t *out);

/* Plain read bandwidth reference: reads a buffer with wide loads and returns a checksum: the
 * sum mod 2**64 of its little-endian 64-bit words, plus the trailing (n % 8) bytes. */
uint64_t subbit_read_sum(const uint8_t *buf, int64_t nbytes);

/* --- internal: shared by the path files --------------------------------------------- */
/* Quantize one activation row (k values) into xq[kp] (zero padded); returns sx. */
float subbit_quantize_row(const float *x, int64_t k, int64_t kp, int8_t *xq);
/* Write one output: y = (float)acc * (sx * scale) + bias. */
float subbit_epilogue(int32_t acc, float sx, float scale, const float *bias, int64_t n);
/* Decode one block of len (8, 16, 24 or 32) indices (scalar). */
void subbit_decode_block(const uint8_t *blk, int bits, int len, uint8_t *idx);
/* Activations in the order of the single-plane super-block loops (bits 1, 2, 4; vec = 32 for AVX2,
 * 64 for AVX-512): xp[(s*F + t)*vec + p] = x[(s*S + p / (4b))*32 + p % (4b) + 4b*t], F = 8 / b,
 * S = vec / (4b): field t of byte p of the s-th vec-byte load is the index at that position. */
void subbit_permute_x(const uint8_t *x, int64_t nsup, int bits, int vec, uint8_t *xp);
/* Integer dot product of the short last block of a row: sum x[i] * t[idx[i]], i < len. */
int32_t subbit_tail_dot(const uint8_t *blk, int bits, int len, const int8_t *t, const int8_t *x);
int32_t subbit_tail_dot_u8(const uint8_t *blk, int bits, int len, const int8_t *t, const uint8_t *x);

void subbit_linear_portable(const subbit_weight *w, const int8_t *xq, const float *sx, int64_t m,
                            const float *bias, float *y);
void subbit_linear_avx2(const subbit_weight *w, const int8_t *xq, const float *sx, int64_t m,
                        const float *bias, float *y);
void subbit_linear_avx512(const subbit_weight *w, const int8_t *xq, const float *sx, int64_t m,
                          const float *bias, float *y);
float subbit_quantize_row_avx2(const float *x, int64_t k, int64_t kp, int8_t *xq);
uint64_t subbit_read_sum_avx2(const uint8_t *buf, int64_t nbytes);

#endif

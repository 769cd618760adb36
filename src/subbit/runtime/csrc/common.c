/* Dispatch, argument checks, activation quantization and the scalar helpers every path shares. */
#include <stdlib.h>
#include <string.h>

#include "subbit_kernels.h"

int subbit_supported_paths(void) {
    int mask = (1 << SUBBIT_PORTABLE);
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2")) mask |= (1 << SUBBIT_AVX2);
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("avx512f") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vbmi"))
        mask |= (1 << SUBBIT_AVX512);
#endif
    return mask;
}

int subbit_best_path(void) {
    int mask = subbit_supported_paths();
    if (mask & (1 << SUBBIT_AVX512)) return SUBBIT_AVX512;
    if (mask & (1 << SUBBIT_AVX2)) return SUBBIT_AVX2;
    return SUBBIT_PORTABLE;
}

/* Round half to even for |v| < 2**22 without libm or SSE4.1 (same result as rint / vroundps). */
static inline float round_even(float v) {
    const float magic = 12582912.0f; /* 1.5 * 2**23 */
    float t = v + magic; /* strict IEEE (no -ffast-math): the two roundings stay separate */
    return t - magic;
}

float subbit_quantize_row(const float *x, int64_t k, int64_t kp, int8_t *xq) {
    float amax = 0.0f;
    for (int64_t i = 0; i < k; i++) {
        float a = x[i] < 0 ? -x[i] : x[i];
        if (a > amax) amax = a;
    }
    memset(xq, 0, (size_t)kp);
    if (!(amax > 0.0f)) return 0.0f; /* all zero (or NaN): y = bias */
    float inv = 127.0f / amax;
    for (int64_t i = 0; i < k; i++) {
        float q = round_even(x[i] * inv);
        if (q > 127.0f) q = 127.0f;
        if (q < -127.0f) q = -127.0f;
        xq[i] = (int8_t)q;
    }
    return amax / 127.0f;
}

float subbit_epilogue(int32_t acc, float sx, float scale, const float *bias, int64_t n) {
    float s = sx * scale;
    float v = (float)acc * s;
    if (bias) v = v + bias[n];
    return v;
}

void subbit_decode_block(const uint8_t *blk, int bits, int len, uint8_t *idx) {
    static const int widths[9][3] = {{0}, {1}, {2}, {2, 1}, {4}, {4, 1}, {4, 2}, {4, 2, 1}, {8}};
    memset(idx, 0, (size_t)len);
    int shift = 0;
    for (int p = 0; p < 3 && widths[bits][p]; p++) {
        const int w = widths[bits][p], nb = len * w / 8, fields = 8 / w, mask = (1 << w) - 1;
        for (int j = 0; j < nb; j++) {
            unsigned v = blk[j];
            for (int t = 0; t < fields; t++, v >>= w) idx[j + nb * t] |= (uint8_t)((v & (unsigned)mask) << shift);
        }
        blk += nb;
        shift += w;
    }
}

void subbit_permute_x(const uint8_t *x, int64_t nsup, int bits, int vec, uint8_t *xp) {
    const int nb = 4 * bits, per = vec / nb, fields = 8 / bits;
    for (int64_t s = 0; s < nsup; s++)
        for (int t = 0; t < fields; t++)
            for (int p = 0; p < vec; p++)
                xp[(s * fields + t) * vec + p] = x[(s * per + p / nb) * SUBBIT_BLOCK + p % nb + nb * t];
}

int32_t subbit_tail_dot(const uint8_t *blk, int bits, int len, const int8_t *t, const int8_t *x) {
    uint8_t idx[SUBBIT_BLOCK];
    subbit_decode_block(blk, bits, len, idx);
    int32_t s = 0;
    for (int i = 0; i < len; i++) s += (int32_t)x[i] * t[idx[i]];
    return s;
}

int32_t subbit_tail_dot_u8(const uint8_t *blk, int bits, int len, const int8_t *t, const uint8_t *x) {
    uint8_t idx[SUBBIT_BLOCK];
    subbit_decode_block(blk, bits, len, idx);
    int32_t s = 0;
    for (int i = 0; i < len; i++) s += (int32_t)x[i] * t[idx[i]];
    return s;
}

static void fill_weight(subbit_weight *w, const uint8_t *packed, int64_t n, int64_t k, int bits,
                        const int8_t *lut, const float *scales, int64_t groups, const int32_t *rowsum) {
    w->packed = packed;
    w->n = n;
    w->k = k;
    w->kp = (k + 7) / 8 * 8;
    w->row_bytes = w->kp / 8 * bits;
    w->nfull = w->kp / SUBBIT_BLOCK;
    w->tail = w->kp % SUBBIT_BLOCK;
    w->bits = bits;
    w->groups = groups;
    w->lut = lut;
    w->scales = scales;
    w->rowsum = rowsum;
    w->scratch = 0;
    w->identity = 0;
}

int subbit_rowsums(const uint8_t *packed, int64_t n, int64_t k, int bits, const int8_t *lut,
                   int64_t groups, int32_t *out) {
    if (bits < 1 || bits > 8 || n < 0 || k < 0 || !(groups == 1 || groups == n)) return SUBBIT_EARG;
    subbit_weight w;
    fill_weight(&w, packed, n, k, bits, lut, 0, groups, 0);
    uint8_t idx[SUBBIT_BLOCK];
    for (int64_t r = 0; r < n; r++) {
        const int8_t *t = subbit_row_lut(&w, r);
        const uint8_t *row = packed + r * w.row_bytes;
        int32_t s = 0;
        for (int64_t b = 0; b <= w.nfull; b++) {
            int len = b < w.nfull ? SUBBIT_BLOCK : (int)w.tail;
            if (!len) break;
            subbit_decode_block(row + b * 4 * bits, bits, len, idx);
            for (int i = 0; i < len; i++) s += t[idx[i]];
        }
        out[r] = s;
    }
    return SUBBIT_OK;
}

/* One plane of a full 32-index block, width w at shift sh (constants after inlining). */
static inline __attribute__((always_inline)) void plane_full(const uint8_t *p, const int w, const int sh,
                                                             uint8_t *idx) {
    const int nb = 4 * w, fields = 8 / w;
    const unsigned mask = (1u << w) - 1;
    for (int j = 0; j < nb; j++)
        for (int t = 0; t < fields; t++) idx[j + nb * t] |= (uint8_t)(((p[j] >> (t * w)) & mask) << sh);
}

/* Decode + look up one row into int8 weights; bits is a constant in each instantiation below so
 * the plane loops unroll. The short last block goes through the generic decoder. */
static inline __attribute__((always_inline)) void decode_row_const(const uint8_t *row, const int bits,
                                                                   const subbit_weight *w, const int8_t *t,
                                                                   int8_t *out) {
    uint8_t idx[SUBBIT_BLOCK];
    for (int64_t b = 0; b < w->nfull; b++) {
        const uint8_t *blk = row + b * 4 * bits;
        for (int i = 0; i < SUBBIT_BLOCK; i++) idx[i] = 0;
        switch (bits) {
        case 1: plane_full(blk, 1, 0, idx); break;
        case 2: plane_full(blk, 2, 0, idx); break;
        case 3: plane_full(blk, 2, 0, idx); plane_full(blk + 8, 1, 2, idx); break;
        case 4: plane_full(blk, 4, 0, idx); break;
        case 5: plane_full(blk, 4, 0, idx); plane_full(blk + 16, 1, 4, idx); break;
        case 6: plane_full(blk, 4, 0, idx); plane_full(blk + 16, 2, 4, idx); break;
        case 7: plane_full(blk, 4, 0, idx); plane_full(blk + 16, 2, 4, idx); plane_full(blk + 24, 1, 6, idx); break;
        default: plane_full(blk, 8, 0, idx);
        }
        for (int i = 0; i < SUBBIT_BLOCK; i++) out[b * SUBBIT_BLOCK + i] = t[idx[i]];
    }
    if (w->tail) {
        subbit_decode_block(row + w->nfull * 4 * bits, bits, (int)w->tail, idx);
        for (int i = 0; i < w->tail; i++) out[w->nfull * SUBBIT_BLOCK + i] = t[idx[i]];
    }
}

#define DECODE_ROW(B)                                                                                \
    static void decode_row_b##B(const uint8_t *row, const subbit_weight *w, const int8_t *t, int8_t *out) { \
        decode_row_const(row, B, w, t, out);                                                         \
    }
DECODE_ROW(1)
DECODE_ROW(2)
DECODE_ROW(3)
DECODE_ROW(4)
DECODE_ROW(5)
DECODE_ROW(6)
DECODE_ROW(7)
DECODE_ROW(8)

/* Portable path: decode each row once into int8 weights, then one dot product per input row. */
void subbit_linear_portable(const subbit_weight *w, const int8_t *xq, const float *sx, int64_t m,
                            const float *bias, float *y) {
    static void (*const decoders[9])(const uint8_t *, const subbit_weight *, const int8_t *, int8_t *) = {
        0, decode_row_b1, decode_row_b2, decode_row_b3, decode_row_b4,
        decode_row_b5, decode_row_b6, decode_row_b7, decode_row_b8};
    int8_t *wrow = w->scratch;
    for (int64_t r = 0; r < w->n; r++) {
        int64_t g = w->groups == 1 ? 0 : r;
        const uint8_t *row = w->packed + r * w->row_bytes;
        if (w->identity)
            memcpy(wrow, row, (size_t)w->kp);
        else
            decoders[w->bits](row, w, subbit_row_lut(w, r), wrow);
        for (int64_t i = 0; i < m; i++) {
            const int8_t *xr = xq + i * w->kp;
            int32_t s = 0;
            for (int64_t j = 0; j < w->kp; j++) s += (int32_t)xr[j] * wrow[j];
            y[i * w->n + r] = subbit_epilogue(s, sx[i], w->scales[g], bias, r);
        }
    }
}

static uint64_t read_sum_portable(const uint8_t *buf, int64_t nbytes) {
    uint64_t s = 0;
    int64_t i = 0;
    for (; i + 8 <= nbytes; i += 8) {
        uint64_t v;
        memcpy(&v, buf + i, 8);
        s += v;
    }
    for (; i < nbytes; i++) s += buf[i];
    return s;
}

uint64_t subbit_read_sum(const uint8_t *buf, int64_t nbytes) {
    if (subbit_supported_paths() & (1 << SUBBIT_AVX2)) return subbit_read_sum_avx2(buf, nbytes);
    return read_sum_portable(buf, nbytes);
}

static int8_t identity_lut[256];

static int run_linear(int path, const float *x, int64_t m, subbit_weight *w, const float *bias, float *y) {
    if (path == SUBBIT_AUTO) path = subbit_best_path();
    if (path < SUBBIT_PORTABLE || path > SUBBIT_AVX512) return SUBBIT_EARG;
    if (!(subbit_supported_paths() & (1 << path))) return SUBBIT_EPATH;
    if (path == SUBBIT_AVX512 && !w->rowsum && w->n > 0) return SUBBIT_EARG;
    if (m == 0 || w->n == 0) return SUBBIT_OK;

    /* 64-byte aligned activation buffer, +64 so vector loads never run past it */
    size_t bytes = (size_t)(m * w->kp) + 64;
    int8_t *xq = (int8_t *)aligned_alloc(64, (bytes + 63) / 64 * 64);
    float *sx = (float *)malloc(sizeof(float) * (size_t)m);
    /* portable: one decoded row; AVX2 / AVX-512: the activation rows permuted for their block order */
    w->scratch = (int8_t *)malloc((size_t)(path == SUBBIT_PORTABLE ? 1 : m) * (size_t)w->kp + 64);
    if (!xq || !sx || !w->scratch) {
        free(xq);
        free(sx);
        free(w->scratch);
        return SUBBIT_ENOMEM;
    }
    /* the slack past the last row is read by the AVX2 tail load (times zero weights): zero it so
       the sums never touch uninitialised bytes (exact either way; clean under valgrind) */
    memset(xq + (size_t)(m * w->kp), 0, (bytes + 63) / 64 * 64 - (size_t)(m * w->kp));
    for (int64_t i = 0; i < m; i++)
        sx[i] = path >= SUBBIT_AVX2 ? subbit_quantize_row_avx2(x + i * w->k, w->k, w->kp, xq + i * w->kp)
                                    : subbit_quantize_row(x + i * w->k, w->k, w->kp, xq + i * w->kp);
    if (path == SUBBIT_AVX512)
        subbit_linear_avx512(w, xq, sx, m, bias, y);
    else if (path == SUBBIT_AVX2)
        subbit_linear_avx2(w, xq, sx, m, bias, y);
    else
        subbit_linear_portable(w, xq, sx, m, bias, y);
    free(xq);
    free(sx);
    free(w->scratch);
    w->scratch = 0;
    return SUBBIT_OK;
}

int subbit_packed_linear(int path, const float *x, int64_t m, int64_t k, const uint8_t *packed,
                         int64_t n, int bits, const int8_t *lut, const float *scales, int64_t groups,
                         const int32_t *rowsum, const float *bias, float *y) {
    if (bits < 1 || bits > 8 || m < 0 || k < 0 || n < 0 || !(groups == 1 || groups == n))
        return SUBBIT_EARG;
    subbit_weight w;
    fill_weight(&w, packed, n, k, bits, lut, scales, groups, rowsum);
    return run_linear(path, x, m, &w, bias, y);
}

int subbit_int8_linear(int path, const float *x, int64_t m, int64_t k, const int8_t *w8, int64_t n,
                       const float *scales, int64_t groups, const int32_t *rowsum, const float *bias,
                       float *y) {
    if (m < 0 || k < 0 || n < 0 || !(groups == 1 || groups == n)) return SUBBIT_EARG;
    if (identity_lut[1] != 1)
        for (int i = 0; i < 256; i++) identity_lut[i] = (int8_t)(uint8_t)i;
    subbit_weight w;
    fill_weight(&w, (const uint8_t *)w8, n, k, 8, identity_lut, scales, groups, rowsum);
    w.identity = 1;
    return run_linear(path, x, m, &w, bias, y);
}

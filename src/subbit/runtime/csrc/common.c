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

void subbit_decode_block(const uint8_t *blk, int bits, uint8_t *idx) {
    static const int widths[9][3] = {{0}, {1}, {2}, {2, 1}, {4}, {4, 1}, {4, 2}, {4, 2, 1}, {8}};
    memset(idx, 0, SUBBIT_BLOCK);
    int shift = 0;
    for (int p = 0; p < 3 && widths[bits][p]; p++) {
        int w = widths[bits][p];
        int nb = 4 * w, mask = (1 << w) - 1;
        for (int i = 0; i < SUBBIT_BLOCK; i++) {
            int j = i % nb, t = i / nb;
            idx[i] |= (uint8_t)(((blk[j] >> (t * w)) & mask) << shift);
        }
        blk += nb;
        shift += w;
    }
}

int subbit_rowsums(const uint8_t *packed, int64_t n, int64_t k, int bits, const int8_t *lut,
                   int64_t groups, int32_t *out) {
    if (bits < 1 || bits > 8 || n < 0 || k < 0 || !(groups == 1 || groups == n)) return SUBBIT_EARG;
    int64_t kp = (k + SUBBIT_BLOCK - 1) / SUBBIT_BLOCK * SUBBIT_BLOCK;
    int64_t rb = kp / SUBBIT_BLOCK * 4 * bits;
    uint8_t idx[SUBBIT_BLOCK];
    for (int64_t r = 0; r < n; r++) {
        const int8_t *t = lut + (groups == 1 ? 0 : r) * SUBBIT_LUT_STRIDE(bits);
        int32_t s = 0;
        for (int64_t b = 0; b < kp / SUBBIT_BLOCK; b++) {
            subbit_decode_block(packed + r * rb + b * 4 * bits, bits, idx);
            for (int i = 0; i < SUBBIT_BLOCK; i++) s += t[idx[i]];
        }
        out[r] = s;
    }
    return SUBBIT_OK;
}

void subbit_linear_portable(const subbit_weight *w, const int8_t *xq, const float *sx, int64_t m,
                            const float *bias, float *y) {
    uint8_t idx[SUBBIT_BLOCK];
    int8_t wv[SUBBIT_BLOCK];
    int64_t nblk = w->kp / SUBBIT_BLOCK;
    for (int64_t r = 0; r < w->n; r++) {
        int64_t g = w->groups == 1 ? 0 : r;
        const int8_t *t = w->lut + g * SUBBIT_LUT_STRIDE(w->bits);
        for (int64_t i = 0; i < m; i++) {
            const int8_t *xr = xq + i * w->kp;
            int32_t s = 0;
            for (int64_t b = 0; b < nblk; b++) {
                subbit_decode_block(w->packed + r * w->row_bytes + b * 4 * w->bits, w->bits, idx);
                for (int j = 0; j < SUBBIT_BLOCK; j++) wv[j] = t[idx[j]];
                for (int j = 0; j < SUBBIT_BLOCK; j++) s += (int32_t)xr[b * SUBBIT_BLOCK + j] * wv[j];
            }
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

int subbit_packed_linear(int path, const float *x, int64_t m, int64_t k, const uint8_t *packed,
                         int64_t n, int bits, const int8_t *lut, const float *scales, int64_t groups,
                         const int32_t *rowsum, const float *bias, float *y) {
    if (bits < 1 || bits > 8 || m < 0 || k < 0 || n < 0 || !(groups == 1 || groups == n) ||
        (groups == 0 && n != 0))
        return SUBBIT_EARG;
    if (path == SUBBIT_AUTO) path = subbit_best_path();
    if (path < SUBBIT_PORTABLE || path > SUBBIT_AVX512) return SUBBIT_EARG;
    if (!(subbit_supported_paths() & (1 << path))) return SUBBIT_EPATH;
    if (path == SUBBIT_AVX512 && !rowsum && n > 0) return SUBBIT_EARG;
    if (m == 0 || n == 0) return SUBBIT_OK;

    subbit_weight w;
    w.packed = packed;
    w.n = n;
    w.k = k;
    w.kp = (k + SUBBIT_BLOCK - 1) / SUBBIT_BLOCK * SUBBIT_BLOCK;
    w.row_bytes = w.kp / SUBBIT_BLOCK * 4 * bits;
    w.bits = bits;
    w.groups = groups;
    w.lut = lut;
    w.scales = scales;
    w.rowsum = rowsum;

    /* 64-byte aligned activation buffer, +64 so vector loads never run past it */
    size_t bytes = (size_t)(m * w.kp) + 64;
    int8_t *xq = (int8_t *)aligned_alloc(64, (bytes + 63) / 64 * 64);
    float *sx = (float *)malloc(sizeof(float) * (size_t)m);
    if (!xq || !sx) {
        free(xq);
        free(sx);
        return SUBBIT_ENOMEM;
    }
    for (int64_t i = 0; i < m; i++)
        sx[i] = path >= SUBBIT_AVX2 ? subbit_quantize_row_avx2(x + i * k, k, w.kp, xq + i * w.kp)
                                    : subbit_quantize_row(x + i * k, k, w.kp, xq + i * w.kp);

    if (path == SUBBIT_AVX512)
        subbit_linear_avx512(&w, xq, sx, m, bias, y);
    else if (path == SUBBIT_AVX2)
        subbit_linear_avx2(&w, xq, sx, m, bias, y);
    else
        subbit_linear_portable(&w, xq, sx, m, bias, y);
    free(xq);
    free(sx);
    return SUBBIT_OK;
}

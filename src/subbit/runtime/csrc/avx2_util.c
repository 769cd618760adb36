/* AVX2 helpers beside the linear kernels (avx2.c): activation quantization and the plain-read
 * reference of the bandwidth benchmark. Compiled for AVX2 via target pragmas; only called after
 * a runtime CPU check.
 */
#include <string.h>

#include "subbit_kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#pragma GCC push_options
#pragma GCC target("avx2")
#include <immintrin.h>

float subbit_quantize_row_avx2(const float *x, int64_t k, int64_t kp, int8_t *xq) {
    const __m256 signmask = _mm256_set1_ps(-0.0f);
    __m256 vmax = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= k; i += 8) vmax = _mm256_max_ps(vmax, _mm256_andnot_ps(signmask, _mm256_loadu_ps(x + i)));
    float lanes[8];
    _mm256_storeu_ps(lanes, vmax);
    float amax = 0.0f;
    for (int j = 0; j < 8; j++)
        if (lanes[j] > amax) amax = lanes[j];
    for (; i < k; i++) {
        float a = x[i] < 0 ? -x[i] : x[i];
        if (a > amax) amax = a;
    }
    memset(xq, 0, (size_t)kp);
    if (!(amax > 0.0f)) return 0.0f;
    const float inv = 127.0f / amax;
    const __m256 vinv = _mm256_set1_ps(inv), hi = _mm256_set1_ps(127.0f), lo = _mm256_set1_ps(-127.0f);
    for (i = 0; i + 32 <= k; i += 32) {
        __m256i q[4];
        for (int j = 0; j < 4; j++) {
            __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + i + 8 * j), vinv);
            v = _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            v = _mm256_min_ps(_mm256_max_ps(v, lo), hi);
            q[j] = _mm256_cvtps_epi32(v);
        }
        /* pack 4x8 int32 -> 32 int8; packs interleave 128-bit lanes, permute restores order */
        __m256i a = _mm256_packs_epi32(q[0], q[1]);
        __m256i b = _mm256_packs_epi32(q[2], q[3]);
        __m256i c = _mm256_packs_epi16(a, b);
        c = _mm256_permutevar8x32_epi32(c, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)(xq + i), c);
    }
    for (; i < k; i++) {
        float v = x[i] * inv;
        float r = (float)_mm_cvtss_f32(_mm_round_ss(_mm_setzero_ps(), _mm_set_ss(v), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        if (r > 127.0f) r = 127.0f;
        if (r < -127.0f) r = -127.0f;
        xq[i] = (int8_t)r;
    }
    return amax / 127.0f;
}

uint64_t subbit_read_sum_avx2(const uint8_t *buf, int64_t nbytes) {
    __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0;
    int64_t i = 0;
    for (; i + 128 <= nbytes; i += 128) {
        s0 = _mm256_add_epi64(s0, _mm256_loadu_si256((const __m256i *)(buf + i)));
        s1 = _mm256_add_epi64(s1, _mm256_loadu_si256((const __m256i *)(buf + i + 32)));
        s2 = _mm256_add_epi64(s2, _mm256_loadu_si256((const __m256i *)(buf + i + 64)));
        s3 = _mm256_add_epi64(s3, _mm256_loadu_si256((const __m256i *)(buf + i + 96)));
    }
    s0 = _mm256_add_epi64(_mm256_add_epi64(s0, s1), _mm256_add_epi64(s2, s3));
    uint64_t lanes[4];
    _mm256_storeu_si256((__m256i *)lanes, s0);
    uint64_t s = lanes[0] + lanes[1] + lanes[2] + lanes[3];
    for (; i + 8 <= nbytes; i += 8) {
        uint64_t v;
        memcpy(&v, buf + i, 8);
        s += v;
    }
    for (; i < nbytes; i++) s += buf[i];
    return s;
}

#pragma GCC pop_options
#else
float subbit_quantize_row_avx2(const float *x, int64_t k, int64_t kp, int8_t *xq) {
    return subbit_quantize_row(x, k, kp, xq);
}
uint64_t subbit_read_sum_avx2(const uint8_t *buf, int64_t nbytes) {
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
#endif

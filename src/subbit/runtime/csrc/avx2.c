/* AVX2 path: decode 32 b-bit indices per block in registers (vpsrlv + vpand), look them up in
 * 16-entry int8 tables with vpshufb (bits > 4: one table per high value, merged with vpblendvb),
 * and take the int8 dot product with maddubs. maddubs multiplies unsigned x signed and
 * saturates pairs at int16, so we feed it |x| and sign(x) * w: every pair sum is at most
 * 2 * 127 * 127 = 32258, exact. Four weight rows share each activation block and each decoded
 * weight vector serves two input rows. At 1, 2 and 4 bits one 32-byte load yields 32 indices per
 * field (activations permuted to match, once per call). 7-8 bit weights come here expanded to int8
 * (subbit_int8_linear, identity table). Compiled for AVX2 via target pragmas; only called after
 * a runtime CPU check.
 */
#include <string.h>

#include "subbit_kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#pragma GCC push_options
#pragma GCC target("avx2")
#include <immintrin.h>

#define AI static inline __attribute__((always_inline))

/* Software prefetch of a later group of rows (weights stream from DRAM/L3 in streaming use):
 * same distance and hint as the AVX-512 path (see avx512.c). */
#ifndef SUBBIT_PREFETCH_BYTES
#define SUBBIT_PREFETCH_BYTES 8192
#endif
#define PREFETCH(p) _mm_prefetch((const char *)(p), _MM_HINT_T1)

AI __m256i plane1(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    __m256i b = _mm256_set1_epi32((int)v);
    b = _mm256_srlv_epi32(b, _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    return _mm256_and_si256(b, _mm256_set1_epi8(0x01));
}

AI __m256i plane2(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    __m256i b = _mm256_set1_epi64x((long long)v);
    b = _mm256_srlv_epi64(b, _mm256_setr_epi64x(0, 2, 4, 6));
    return _mm256_and_si256(b, _mm256_set1_epi8(0x03));
}

AI __m256i plane4(const uint8_t *p) {
    __m256i b = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)p));
    b = _mm256_srlv_epi64(b, _mm256_setr_epi64x(0, 0, 4, 4));
    return _mm256_and_si256(b, _mm256_set1_epi8(0x0F));
}

/* Low nibble (or the whole index for bits <= 4) and the high part (bits > 4) of 32 indices. */
AI void decode_split(const uint8_t *blk, const int bits, __m256i *lo, __m256i *hi) {
    switch (bits) {
    case 1: *lo = plane1(blk); break;
    case 2: *lo = plane2(blk); break;
    case 3: *lo = _mm256_or_si256(plane2(blk), _mm256_slli_epi16(plane1(blk + 8), 2)); break;
    case 4: *lo = plane4(blk); break;
    case 5: *lo = plane4(blk); *hi = plane1(blk + 16); break;
    case 6: *lo = plane4(blk); *hi = plane2(blk + 16); break;
    case 7:
        *lo = plane4(blk);
        *hi = _mm256_or_si256(plane2(blk + 16), _mm256_slli_epi16(plane1(blk + 24), 2));
        break;
    default: { /* 8: raw bytes */
        __m256i v = _mm256_loadu_si256((const __m256i *)blk);
        *lo = _mm256_and_si256(v, _mm256_set1_epi8(0x0F));
        *hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), _mm256_set1_epi8(0x0F));
    }
    }
}

AI __m256i table16(const int8_t *t) {
    return _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)t));
}

/* 32 int8 weights of one block. */
AI __m256i lookup(const uint8_t *blk, const int bits, const int id, const int8_t *lut) {
    if (id) return _mm256_loadu_si256((const __m256i *)blk); /* already int8 weights */
    __m256i lo, hi = _mm256_setzero_si256();
    decode_split(blk, bits, &lo, &hi);
    __m256i r = _mm256_shuffle_epi8(table16(lut), lo);
    if (bits > 4) {
        for (int h = 1; h < (1 << (bits - 4)); h++) {
            __m256i v = _mm256_shuffle_epi8(table16(lut + 16 * h), lo);
            r = _mm256_blendv_epi8(r, v, _mm256_cmpeq_epi8(hi, _mm256_set1_epi8((char)h)));
        }
    }
    return r;
}

AI int32_t hsum(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(s);
}

/* Single-plane depths (1, 2, 4 bits): a 32-byte load holds S = 8 / bits whole blocks and field t
 * of every byte gives 32 indices at once, in the order subbit_permute_x gives the activations. */
AI int super_blocks(const int bits) { return (bits == 1 || bits == 2 || bits == 4) ? 8 / bits : 0; }

/* acc += int8 dot of x and w (32 lanes): maddubs(|x|, sign(x) * w) is exact (pairs <= 32258). */
AI __m256i dot32(__m256i acc, __m256i x, __m256i ax, __m256i wv) {
    __m256i p = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(wv, x));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
}

/* Indices of the short last block (len 8, 16 or 24; see subbit_decode_block), inlined so that
 * the plane widths are constants: the generic decoder cost ~100 ns per row at K = 240. */
AI void tail_indices(const uint8_t *blk, const int bits, const int len, uint8_t *idx) {
    const int w0 = bits >= 4 ? 4 : (bits >= 2 ? 2 : 1);
    const int w1 = bits == 3 ? 1 : (bits == 5 ? 1 : (bits >= 6 && bits <= 7 ? 2 : 0));
    const int w2 = bits == 7 ? 1 : 0;
    const int widths[3] = {bits == 8 ? 8 : w0, bits == 8 ? 0 : w1, w2};
    for (int i = 0; i < SUBBIT_BLOCK; i++) idx[i] = 0;
    int shift = 0;
    for (int p = 0; p < 3 && widths[p]; p++) {
        const int wd = widths[p], nb = len * wd / 8, fields = 8 / wd;
        const unsigned mask = (1u << wd) - 1u;
        for (int j = 0; j < nb; j++)
            for (int t = 0; t < fields; t++)
                idx[j + nb * t] |= (uint8_t)(((blk[j] >> (t * wd)) & mask) << shift);
        blk += nb;
        shift += wd;
    }
}

/* R weight rows (1..4) from r0 against MT activation rows (1..2) xr + i * ldx; xp: the same rows
 * permuted for the super-block loop. Each weight vector is decoded once for all MT inputs. */
AI void rows(const subbit_weight *w, const int8_t *xr, const int8_t *xp, int64_t ldx, int64_t r0,
             const int R, const int MT, const int bits, const int id, int32_t out[4][4]) {
    const int8_t *lut[4];
    const uint8_t *src[4];
    __m256i acc[4][2], wv[4];
    for (int r = 0; r < R; r++) {
        lut[r] = subbit_row_lut(w, r0 + r);
        src[r] = w->packed + (r0 + r) * w->row_bytes;
        for (int i = 0; i < MT; i++) acc[r][i] = _mm256_setzero_si256();
    }
    const int64_t nblk = w->nfull, grp = R * w->row_bytes;
    const int64_t pf = (SUBBIT_PREFETCH_BYTES + grp - 1) / grp * grp;
    int64_t b = 0;
    const int S = super_blocks(bits);
    if (S && !id) {
        const int F = 8 / bits;
        const __m256i mask = _mm256_set1_epi8((char)((1 << bits) - 1));
        const int64_t nsup = nblk / S;
        for (int64_t s = 0; s < nsup; s++) {
            __m256i v[4];
            for (int r = 0; r < R; r++) {
                if (!(s & 1)) PREFETCH(src[r] + pf + s * 32); /* one prefetch per 64-byte line */
                v[r] = _mm256_loadu_si256((const __m256i *)(src[r] + s * 32));
            }
            for (int t = 0; t < F; t++) {
                for (int r = 0; r < R; r++)
                    wv[r] = _mm256_shuffle_epi8(table16(lut[r]),
                                                _mm256_and_si256(t ? _mm256_srli_epi16(v[r], t * bits) : v[r], mask));
                for (int i = 0; i < MT; i++) {
                    __m256i x = _mm256_loadu_si256((const __m256i *)(xp + i * ldx + (s * F + t) * 32));
                    __m256i ax = _mm256_sign_epi8(x, x);
                    for (int r = 0; r < R; r++) acc[r][i] = dot32(acc[r][i], x, ax, wv[r]);
                }
            }
        }
        b = nsup * S;
    }
    for (; b < nblk; b++) {
        for (int r = 0; r < R; r++) {
            PREFETCH(src[r] + pf + b * 4 * bits);
            wv[r] = lookup(src[r] + b * 4 * bits, bits, id, lut[r]);
        }
        for (int i = 0; i < MT; i++) {
            __m256i x = _mm256_loadu_si256((const __m256i *)(xr + i * ldx + b * SUBBIT_BLOCK));
            __m256i ax = _mm256_sign_epi8(x, x);
            for (int r = 0; r < R; r++) acc[r][i] = dot32(acc[r][i], x, ax, wv[r]);
        }
    }
    if (w->tail) { /* the short last block: decoded once per row (not per input), zero padded */
        for (int r = 0; r < R; r++) {
            uint8_t idx[SUBBIT_BLOCK];
            int8_t wt[SUBBIT_BLOCK] = {0};
            tail_indices(src[r] + nblk * 4 * bits, bits, (int)w->tail, idx);
            for (int j = 0; j < w->tail; j++) wt[j] = lut[r][idx[j]];
            wv[r] = _mm256_loadu_si256((const __m256i *)wt);
        }
        for (int i = 0; i < MT; i++) { /* reads past kp stay in the buffer's slack; weights there are 0 */
            __m256i x = _mm256_loadu_si256((const __m256i *)(xr + i * ldx + nblk * SUBBIT_BLOCK));
            __m256i ax = _mm256_sign_epi8(x, x);
            for (int r = 0; r < R; r++) acc[r][i] = dot32(acc[r][i], x, ax, wv[r]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int i = 0; i < MT; i++) out[r][i] = hsum(acc[r][i]);
}

#define ROWS_AND_STORE(R, MT, B, ID)                                                                       \
    do {                                                                                                   \
        rows(w, xq + i * w->kp, xp + i * w->kp, w->kp, r, R, MT, B, ID, acc);                              \
        for (int a = 0; a < (R); a++)                                                                      \
            for (int c = 0; c < (MT); c++)                                                                 \
                y[(i + c) * w->n + r + a] = subbit_epilogue(acc[a][c], sx[i + c],                          \
                                                            w->scales[w->groups == 1 ? 0 : r + a], bias, r + a); \
    } while (0)

/* Rows in groups of 4 outside, inputs in pairs inside (a group of rows stays in L1). */
#define DEFINE_BITS(NAME, B, ID)                                                                           \
    static void NAME(const subbit_weight *w, const int8_t *xq, const float *sx, int64_t m,                 \
                     const float *bias, float *y) {                                                        \
        int32_t acc[4][4];                                                                                 \
        const int S = (ID) ? 0 : super_blocks(B);                                                          \
        int8_t *xp = w->scratch; /* m permuted activation rows */                                          \
        if (S)                                                                                             \
            for (int64_t i = 0; i < m; i++)                                                                \
                subbit_permute_x((const uint8_t *)(xq + i * w->kp), w->nfull / (S ? S : 1), B, 32,      \
                                 (uint8_t *)(xp + i * w->kp));                                    \
        int64_t r = 0, i;                                                                                  \
        for (; r + 4 <= w->n; r += 4) {                                                                    \
            for (i = 0; i + 2 <= m; i += 2) ROWS_AND_STORE(4, 2, B, ID);                                   \
            for (; i < m; i++) ROWS_AND_STORE(4, 1, B, ID);                                                \
        }                                                                                                  \
        for (; r < w->n; r++) {                                                                            \
            for (i = 0; i + 2 <= m; i += 2) ROWS_AND_STORE(1, 2, B, ID);                                   \
            for (; i < m; i++) ROWS_AND_STORE(1, 1, B, ID);                                                \
        }                                                                                                  \
    }

DEFINE_BITS(linear_b1, 1, 0)
DEFINE_BITS(linear_b2, 2, 0)
DEFINE_BITS(linear_b3, 3, 0)
DEFINE_BITS(linear_b4, 4, 0)
DEFINE_BITS(linear_b5, 5, 0)
DEFINE_BITS(linear_b6, 6, 0)
DEFINE_BITS(linear_b7, 7, 0)
DEFINE_BITS(linear_b8, 8, 0)
DEFINE_BITS(linear_int8, 8, 1)

void subbit_linear_avx2(const subbit_weight *w, const int8_t *xq, const float *sx, int64_t m,
                        const float *bias, float *y) {
    if (w->identity) {
        linear_int8(w, xq, sx, m, bias, y);
        return;
    }
    switch (w->bits) {
    case 1: linear_b1(w, xq, sx, m, bias, y); break;
    case 2: linear_b2(w, xq, sx, m, bias, y); break;
    case 3: linear_b3(w, xq, sx, m, bias, y); break;
    case 4: linear_b4(w, xq, sx, m, bias, y); break;
    case 5: linear_b5(w, xq, sx, m, bias, y); break;
    case 6: linear_b6(w, xq, sx, m, bias, y); break;
    case 7: linear_b7(w, xq, sx, m, bias, y); break;
    default: linear_b8(w, xq, sx, m, bias, y); break;
    }
}

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
void subbit_linear_avx2(const subbit_weight *w, const int8_t *xq, const float *sx, int64_t m,
                        const float *bias, float *y) {
    subbit_linear_portable(w, xq, sx, m, bias, y);
}
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

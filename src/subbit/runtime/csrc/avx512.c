/* AVX-512 path (F, BW, VL, VNNI, VBMI): same block decode as AVX2, but
 *  - the dot product is VNNI vpdpbusd on (xq + 128) as uint8 against int8 weights; the offset
 *    is removed with the precomputed row sums: sum (x + 128) w = sum x w + 128 * rowsum;
 *  - bits 5..8 look up their 32/64/128/256-entry tables with VBMI byte permutes (vpermb,
 *    vpermi2b) instead of a chain of pshufb;
 *  - two blocks (64 weights) are decoded per zmm register (an odd last block uses ymm); at 1, 2
 *    and 4 bits one 64-byte load yields 64 indices per field, with the activations permuted once
 *    per call to match;
 *  - four weight rows x up to four input rows per iteration: each decoded weight vector is used
 *    by every input of the tile.
 * Compiled through target pragmas; only called after a runtime CPU check.
 */
#include <string.h>

#include "subbit_kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#pragma GCC push_options
#pragma GCC target("avx2,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")
#include <immintrin.h>

#define AI static inline __attribute__((always_inline))

AI uint32_t ld32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}
AI uint64_t ld64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

/* ---- 256-bit: one block of 32 indices -------------------------------------------------- */
AI __m256i p1(const uint8_t *p) {
    __m256i b = _mm256_srlv_epi32(_mm256_set1_epi32((int)ld32(p)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    return _mm256_and_si256(b, _mm256_set1_epi8(0x01));
}
AI __m256i p2(const uint8_t *p) {
    __m256i b = _mm256_srlv_epi64(_mm256_set1_epi64x((long long)ld64(p)), _mm256_setr_epi64x(0, 2, 4, 6));
    return _mm256_and_si256(b, _mm256_set1_epi8(0x03));
}
AI __m256i p4(const uint8_t *p) {
    __m256i b = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)p));
    b = _mm256_srlv_epi64(b, _mm256_setr_epi64x(0, 0, 4, 4));
    return _mm256_and_si256(b, _mm256_set1_epi8(0x0F));
}

AI __m256i decode32(const uint8_t *blk, const int bits) {
    switch (bits) {
    case 1: return p1(blk);
    case 2: return p2(blk);
    case 3: return _mm256_or_si256(p2(blk), _mm256_slli_epi16(p1(blk + 8), 2));
    case 4: return p4(blk);
    case 5: return _mm256_or_si256(p4(blk), _mm256_slli_epi16(p1(blk + 16), 4));
    case 6: return _mm256_or_si256(p4(blk), _mm256_slli_epi16(p2(blk + 16), 4));
    case 7:
        return _mm256_or_si256(_mm256_or_si256(p4(blk), _mm256_slli_epi16(p2(blk + 16), 4)),
                               _mm256_slli_epi16(p1(blk + 24), 6));
    default: return _mm256_loadu_si256((const __m256i *)blk);
    }
}

/* Per-row tables, loaded once per row group. */
typedef struct {
    __m512i t0, t1, t2, t3; /* 64 entries each (bits 8 uses all four, 7 two, 5-6 one) */
} tables;

AI void load_tables(const int8_t *lut, const int bits, tables *t) {
    if (bits <= 4) {
        t->t0 = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)lut));
    } else if (bits == 5) {
        t->t0 = _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)lut));
    } else {
        t->t0 = _mm512_loadu_si512((const void *)lut);
        if (bits >= 7) t->t1 = _mm512_loadu_si512((const void *)(lut + 64));
        if (bits == 8) {
            t->t2 = _mm512_loadu_si512((const void *)(lut + 128));
            t->t3 = _mm512_loadu_si512((const void *)(lut + 192));
        }
    }
}

AI __m256i lookup32(__m256i idx, const int bits, const tables *t) {
    if (bits <= 4) return _mm256_shuffle_epi8(_mm512_castsi512_si256(t->t0), idx);
    if (bits == 5) return _mm256_permutexvar_epi8(idx, _mm512_castsi512_si256(t->t0));
    __m512i z = _mm512_castsi256_si512(idx);
    if (bits == 6) return _mm512_castsi512_si256(_mm512_permutexvar_epi8(z, t->t0));
    __m256i a = _mm512_castsi512_si256(_mm512_permutex2var_epi8(t->t0, z, t->t1));
    if (bits == 7) return a;
    __m256i b = _mm512_castsi512_si256(_mm512_permutex2var_epi8(t->t2, z, t->t3));
    return _mm256_mask_blend_epi8(_mm256_movepi8_mask(idx), a, b);
}

/* ---- 512-bit: two consecutive blocks (64 indices), bits <= 4 ---------------------------- */
AI __m512i q1(const uint8_t *p, int64_t step) {
    __m512i b = _mm512_inserti64x4(_mm512_set1_epi32((int)ld32(p)), _mm256_set1_epi32((int)ld32(p + step)), 1);
    b = _mm512_srlv_epi32(b, _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7));
    return _mm512_and_si512(b, _mm512_set1_epi8(0x01));
}
AI __m512i q2(const uint8_t *p, int64_t step) {
    __m512i b = _mm512_inserti64x4(_mm512_set1_epi64((long long)ld64(p)),
                                   _mm256_set1_epi64x((long long)ld64(p + step)), 1);
    b = _mm512_srlv_epi64(b, _mm512_setr_epi64(0, 2, 4, 6, 0, 2, 4, 6));
    return _mm512_and_si512(b, _mm512_set1_epi8(0x03));
}
AI __m512i q4(const uint8_t *p, int64_t step) {
    __m512i b;
    if (step == 16) { /* 4 bits: the two 16-byte planes are adjacent */
        __m512i v = _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)p));
        b = _mm512_shuffle_i64x2(v, v, _MM_SHUFFLE(1, 1, 0, 0));
    } else {
        b = _mm512_inserti64x4(_mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)p)),
                               _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(p + step))), 1);
    }
    b = _mm512_srlv_epi64(b, _mm512_setr_epi64(0, 0, 4, 4, 0, 0, 4, 4));
    return _mm512_and_si512(b, _mm512_set1_epi8(0x0F));
}

AI __m512i decode64(const uint8_t *blk, const int bits) {
    const int64_t step = 4 * bits;
    switch (bits) {
    case 1: return q1(blk, step);
    case 2: return q2(blk, step);
    case 3: return _mm512_or_si512(q2(blk, step), _mm512_slli_epi16(q1(blk + 8, step), 2));
    case 4: return q4(blk, step);
    case 5: return _mm512_or_si512(q4(blk, step), _mm512_slli_epi16(q1(blk + 16, step), 4));
    case 6: return _mm512_or_si512(q4(blk, step), _mm512_slli_epi16(q2(blk + 16, step), 4));
    case 7:
        return _mm512_or_si512(_mm512_or_si512(q4(blk, step), _mm512_slli_epi16(q2(blk + 16, step), 4)),
                               _mm512_slli_epi16(q1(blk + 24, step), 6));
    default: /* 8: two 32-byte blocks are adjacent */
        return _mm512_loadu_si512((const void *)blk);
    }
}

AI __m512i lookup64(__m512i idx, const int bits, const tables *t) {
    if (bits <= 4) return _mm512_shuffle_epi8(t->t0, idx);
    if (bits <= 6) return _mm512_permutexvar_epi8(idx, t->t0); /* 5 bits: low 32 entries */
    __m512i a = _mm512_permutex2var_epi8(t->t0, idx, t->t1);
    if (bits == 7) return a;
    __m512i b = _mm512_permutex2var_epi8(t->t2, idx, t->t3);
    return _mm512_mask_blend_epi8(_mm512_movepi8_mask(idx), a, b);
}

AI int32_t hsum256(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(s);
}

/* Single-plane depths (1, 2, 4 bits): one 64-byte load holds S = 16 / bits whole blocks; field t
 * of every byte (shift t * bits, mask) gives 64 indices at once. Those are not in row order, so
 * the activations are permuted once per call to match (see permute_x); per 64 weights and row
 * this costs a shift, an and, a vpshufb and a vpdpbusd. */
AI int super_blocks(const int bits) { return (bits == 1 || bits == 2 || bits == 4) ? 16 / bits : 0; }

/* R weight rows (1..4) from r0 against MT activation rows (1..4), xu + i * ldx (= xq + 128 as
 * uint8, zero-padded xq); xp: the same rows permuted for the super-block loop. Each weight vector
 * is decoded once and used for all MT inputs: out[r][i] = sum_k xq[i][k] * w[r0 + r][k]. */
AI void rows(const subbit_weight *w, const uint8_t *xu, const uint8_t *xp, int64_t ldx, int64_t r0,
             const int R, const int MT, const int bits, const int id, int32_t out[4][4]) {
    const uint8_t *src[4];
    tables tb[4];
    const int64_t bb = 4 * bits, nblk = w->nfull;
    for (int r = 0; r < R; r++) {
        if (!id) load_tables(subbit_row_lut(w, r0 + r), bits, &tb[r]);
        src[r] = w->packed + (r0 + r) * w->row_bytes;
    }
    int64_t b = 0;
    {
        __m512i acc[4][4], wv[4];
        for (int r = 0; r < R; r++)
            for (int i = 0; i < MT; i++) acc[r][i] = _mm512_setzero_si512();
        const int S = super_blocks(bits);
        if (S) {
            const int F = 8 / bits;
            const __m512i mask = _mm512_set1_epi8((char)((1 << bits) - 1));
            const int64_t nsup = nblk / S;
            for (int64_t s = 0; s < nsup; s++) {
                __m512i v[4];
                for (int r = 0; r < R; r++) v[r] = _mm512_loadu_si512((const void *)(src[r] + s * 64));
                for (int t = 0; t < F; t++) {
                    for (int r = 0; r < R; r++)
                        wv[r] = _mm512_shuffle_epi8(
                            tb[r].t0, _mm512_and_si512(t ? _mm512_srli_epi16(v[r], t * bits) : v[r], mask));
                    for (int i = 0; i < MT; i++) {
                        __m512i x = _mm512_loadu_si512((const void *)(xp + i * ldx + (s * F + t) * 64));
                        for (int r = 0; r < R; r++) acc[r][i] = _mm512_dpbusd_epi32(acc[r][i], x, wv[r]);
                    }
                }
            }
            b = nsup * S;
        }
        for (; b + 2 <= nblk; b += 2) {
            for (int r = 0; r < R; r++) {
                __m512i d = decode64(src[r] + b * bb, bits);
                wv[r] = id ? d : lookup64(d, bits, &tb[r]);
            }
            for (int i = 0; i < MT; i++) {
                __m512i x = _mm512_loadu_si512((const void *)(xu + i * ldx + b * SUBBIT_BLOCK));
                for (int r = 0; r < R; r++) acc[r][i] = _mm512_dpbusd_epi32(acc[r][i], x, wv[r]);
            }
        }
        for (int r = 0; r < R; r++)
            for (int i = 0; i < MT; i++) out[r][i] = _mm512_reduce_add_epi32(acc[r][i]);
    }
    if (b < nblk) { /* one last full block */
        for (int r = 0; r < R; r++) {
            __m256i d = decode32(src[r] + b * bb, bits);
            __m256i wr = id ? d : lookup32(d, bits, &tb[r]);
            for (int i = 0; i < MT; i++) {
                __m256i x = _mm256_loadu_si256((const __m256i *)(xu + i * ldx + b * SUBBIT_BLOCK));
                out[r][i] += hsum256(_mm256_dpbusd_epi32(_mm256_setzero_si256(), x, wr));
            }
        }
    }
    for (int r = 0; r < R; r++)
        for (int i = 0; i < MT; i++) {
            out[r][i] -= 128 * w->rowsum[r0 + r];
            if (w->tail)
                out[r][i] += subbit_tail_dot_u8(src[r] + nblk * bb, bits, (int)w->tail, subbit_row_lut(w, r0 + r),
                                                xu + i * ldx + nblk * SUBBIT_BLOCK);
        }
}

/* Rows in groups of 4 outside, inputs in groups of 4 inside: a group of packed rows stays in L1
 * while every input uses it, and each decoded weight vector serves up to 4 inputs. */
#define ROWS_AND_STORE(R, MT, B, ID)                                                                           \
    do {                                                                                                   \
        rows(w, xu + i * w->kp, xp + i * w->kp, w->kp, r, R, MT, B, ID, acc);                              \
        for (int a = 0; a < (R); a++)                                                                      \
            for (int c = 0; c < (MT); c++)                                                                 \
                y[(i + c) * w->n + r + a] = subbit_epilogue(acc[a][c], sx[i + c],                          \
                                                            w->scales[w->groups == 1 ? 0 : r + a], bias, r + a); \
    } while (0)

#define DEFINE_BITS(NAME, B, ID)                                                                           \
    static void NAME(const subbit_weight *w, const uint8_t *xu, const float *sx, int64_t m,                \
                     const float *bias, float *y) {                                                        \
        int32_t acc[4][4];                                                                                 \
        const int S = super_blocks(B);                                                                     \
        uint8_t *xp = (uint8_t *)w->scratch; /* m permuted activation rows */                              \
        if (S)                                                                                             \
            for (int64_t i = 0; i < m; i++) subbit_permute_x(xu + i * w->kp, w->nfull / (S ? S : 1), B, 64, xp + i * w->kp);    \
        int64_t r = 0, i;                                                                                  \
        for (; r + 4 <= w->n; r += 4) {                                                                    \
            for (i = 0; i + 4 <= m; i += 4) ROWS_AND_STORE(4, 4, B, ID);                                          \
            for (; i < m; i++) ROWS_AND_STORE(4, 1, B, ID);                                                       \
        }                                                                                                  \
        for (; r < w->n; r++) {                                                                            \
            for (i = 0; i + 4 <= m; i += 4) ROWS_AND_STORE(1, 4, B, ID);                                          \
            for (; i < m; i++) ROWS_AND_STORE(1, 1, B, ID);                                                       \
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

void subbit_linear_avx512(const subbit_weight *w, const int8_t *xq, const float *sx, int64_t m,
                          const float *bias, float *y) {
    /* xq -> xq + 128 as uint8, in place (the buffer is ours); flipping the sign bit does it */
    uint8_t *xu = (uint8_t *)xq;
    int64_t total = m * w->kp, i = 0;
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    for (; i + 64 <= total; i += 64)
        _mm512_storeu_si512((void *)(xu + i), _mm512_xor_si512(_mm512_loadu_si512((const void *)(xu + i)), flip));
    for (; i < total; i++) xu[i] ^= 0x80;
    if (w->identity) {
        linear_int8(w, xu, sx, m, bias, y);
        return;
    }
    switch (w->bits) {
    case 1: linear_b1(w, xu, sx, m, bias, y); break;
    case 2: linear_b2(w, xu, sx, m, bias, y); break;
    case 3: linear_b3(w, xu, sx, m, bias, y); break;
    case 4: linear_b4(w, xu, sx, m, bias, y); break;
    case 5: linear_b5(w, xu, sx, m, bias, y); break;
    case 6: linear_b6(w, xu, sx, m, bias, y); break;
    case 7: linear_b7(w, xu, sx, m, bias, y); break;
    default: linear_b8(w, xu, sx, m, bias, y); break;
    }
}

#pragma GCC pop_options
#else
void subbit_linear_avx512(const subbit_weight *w, const int8_t *xq, const float *sx, int64_t m,
                          const float *bias, float *y) {
    subbit_linear_portable(w, xq, sx, m, bias, y);
}
#endif

/* AVX2 path: decode 32 b-bit indices per block in registers (vpsrlv + vpand), look them up in
 * 16-entry int8 tables with vpshufb (bits > 4: one table per high value, merged with vpblendvb),
 * and take the int8 dot product with maddubs. maddubs multiplies unsigned x signed and
 * saturates pairs at int16, so we feed it |x| and sign(x) * w: every pair sum is at most
 * 2 * 127 * 127 = 32258, exact. Four weight rows share each activation block and each decoded
 * weight vector serves two input rows. At 1, 2 and 4 bits one 32-byte load yields 32 indices per
 * field (activations permuted to match, once per call). 7-8 bit weights come here expanded to int8
 * (subbit_int8_linear, identity table). 1-bit weights skip the table: a masked sum of the
 * activations per row (rows_b1) does the work with about half the instructions. Compiled for AVX2
 * via target pragmas; only called after a runtime CPU check. Quantization and the read reference
 * live in avx2_util.c.
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
#pragma GCC unroll 8
            for (int t = 0; t < F; t++) { /* unrolled: constant shift counts (vpsrlw imm) */
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

/* 1 bit: w = t0 + (t1 - t0) * b with b in {0, 1}, so x . w = t0 * sum(x) + (t1 - t0) * sum(x where
 * b = 1). The masked sum is one maddubs(b, x) per 32 weights (unsigned 0/1 times signed, pairs
 * <= 254, no saturation) accumulated in int16 for up to 128 blocks (|sum| <= 32512) before one
 * widening madd: 4 vector ops per 32 weights and input instead of the table path's 7. Exact
 * int64 combination, so acc is the same int32 as every other path's. Super-blocks only (S = 8
 * blocks per 32-byte load); the remaining blocks and the tail go through the table path. */
#ifndef B1_FLUSH
#define B1_FLUSH 16 /* super-blocks per int16 run: 16 * 8 = 128 blocks (tests may lower it, never raise it) */
#endif
AI void rows_b1(const subbit_weight *w, const int8_t *xp, const int32_t *xsum, int64_t ldx, int64_t r0,
                const int R, const int MT, int32_t out[4][4]) {
    const uint8_t *src[4];
    __m256i acc[4][2];
    for (int r = 0; r < R; r++) {
        src[r] = w->packed + (r0 + r) * w->row_bytes;
        for (int i = 0; i < MT; i++) acc[r][i] = _mm256_setzero_si256();
    }
    const int64_t nsup = w->nfull / 8, grp = R * w->row_bytes;
    const int64_t pf = (SUBBIT_PREFETCH_BYTES + grp - 1) / grp * grp;
    const __m256i one8 = _mm256_set1_epi8(1), one16 = _mm256_set1_epi16(1);
    for (int64_t s0 = 0; s0 < nsup; s0 += B1_FLUSH) {
        const int64_t s1 = s0 + B1_FLUSH < nsup ? s0 + B1_FLUSH : nsup;
        __m256i a16[4][2];
        for (int r = 0; r < R; r++)
            for (int i = 0; i < MT; i++) a16[r][i] = _mm256_setzero_si256();
        for (int64_t s = s0; s < s1; s++) {
            __m256i v[4];
            for (int r = 0; r < R; r++) {
                if (!(s & 1)) PREFETCH(src[r] + pf + s * 32);
                v[r] = _mm256_loadu_si256((const __m256i *)(src[r] + s * 32));
            }
#pragma GCC unroll 8
            for (int t = 0; t < 8; t++) {
                __m256i x[2];
                for (int i = 0; i < MT; i++) x[i] = _mm256_loadu_si256((const __m256i *)(xp + i * ldx + (s * 8 + t) * 32));
                for (int r = 0; r < R; r++) {
                    const __m256i b = _mm256_and_si256(t ? _mm256_srli_epi16(v[r], t) : v[r], one8);
                    for (int i = 0; i < MT; i++) a16[r][i] = _mm256_add_epi16(a16[r][i], _mm256_maddubs_epi16(b, x[i]));
                }
            }
        }
        for (int r = 0; r < R; r++)
            for (int i = 0; i < MT; i++) acc[r][i] = _mm256_add_epi32(acc[r][i], _mm256_madd_epi16(a16[r][i], one16));
    }
    for (int r = 0; r < R; r++) {
        const int8_t *lut = subbit_row_lut(w, r0 + r);
        for (int i = 0; i < MT; i++)
            out[r][i] = (int32_t)((int64_t)lut[0] * xsum[i] + (int64_t)(lut[1] - lut[0]) * hsum(acc[r][i]));
    }
}

/* The 1-bit rows: super-blocks by rows_b1, the rest (remaining blocks, tail) by the table path on
 * a view of the weight that starts after the super-blocks. */
AI void rows_1bit(const subbit_weight *w, const int8_t *xr, const int8_t *xp, const int32_t *xsum, int64_t ldx,
                  int64_t r0, const int R, const int MT, int32_t out[4][4]) {
    rows_b1(w, xp, xsum, ldx, r0, R, MT, out);
    const int64_t done = w->nfull / 8 * 8; /* blocks handled above */
    if (done == w->nfull && !w->tail) return;
    subbit_weight rest = *w;
    rest.packed = w->packed + done * 4; /* 1 bit: 4 bytes per block */
    rest.nfull = w->nfull - done;
    int32_t more[4][4];
    rows(&rest, xr + done * SUBBIT_BLOCK, xp, ldx, r0, R, MT, 1, 0, more);
    for (int r = 0; r < R; r++)
        for (int i = 0; i < MT; i++) out[r][i] += more[r][i];
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

/* 1 bit: the masked-sum loop (rows_1bit), inputs in runs of 64 so their sums fit on the stack. */
static void linear_b1(const subbit_weight *w, const int8_t *xq, const float *sx, int64_t m,
                      const float *bias, float *y) {
    int32_t acc[4][4], xs[64];
    int8_t *xp = w->scratch;
    const int64_t nsup = w->nfull / 8, span = nsup * 8 * SUBBIT_BLOCK;
    for (int64_t i = 0; i < m; i++)
        subbit_permute_x((const uint8_t *)(xq + i * w->kp), nsup, 1, 32, (uint8_t *)(xp + i * w->kp));
    for (int64_t i0 = 0; i0 < m; i0 += 64) {
        const int64_t m1 = i0 + 64 < m ? i0 + 64 : m;
        for (int64_t i = i0; i < m1; i++) {
            int32_t t = 0;
            for (int64_t j = 0; j < span; j++) t += xq[i * w->kp + j];
            xs[i - i0] = t;
        }
#define STORE_B1(R, MT)                                                                                    \
    do {                                                                                                   \
        rows_1bit(w, xq + i * w->kp, xp + i * w->kp, xs + (i - i0), w->kp, r, R, MT, acc);                 \
        for (int a = 0; a < (R); a++)                                                                      \
            for (int c = 0; c < (MT); c++)                                                                 \
                y[(i + c) * w->n + r + a] = subbit_epilogue(acc[a][c], sx[i + c],                          \
                                                            w->scales[w->groups == 1 ? 0 : r + a], bias, r + a); \
    } while (0)
        int64_t r = 0, i;
        for (; r + 4 <= w->n; r += 4) {
            for (i = i0; i + 2 <= m1; i += 2) STORE_B1(4, 2);
            for (; i < m1; i++) STORE_B1(4, 1);
        }
        for (; r < w->n; r++) {
            for (i = i0; i + 2 <= m1; i += 2) STORE_B1(1, 2);
            for (; i < m1; i++) STORE_B1(1, 1);
        }
#undef STORE_B1
    }
}
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

#pragma GCC pop_options
#else
void subbit_linear_avx2(const subbit_weight *w, const int8_t *xq, const float *sx, int64_t m,
                        const float *bias, float *y) {
    subbit_linear_portable(w, xq, sx, m, bias, y);
}
#endif

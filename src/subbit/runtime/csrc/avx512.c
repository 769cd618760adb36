/* AVX-512 path (F, BW, VL, VNNI, VBMI): same block decode as AVX2, but
 *  - the dot product is VNNI vpdpbusd on (xq + 128) as uint8 against int8 weights; the offset
 *    is removed with the precomputed row sums: sum (x + 128) w = sum x w + 128 * rowsum;
 *  - bits 5..8 look up their 32/64/128/256-entry tables with VBMI byte permutes (vpermb,
 *    vpermi2b) instead of a chain of pshufb;
 *  - two blocks (64 weights) are decoded per zmm register (an odd last block uses ymm); at 1, 2
 *    and 4 bits one 64-byte load yields 64 indices per field, with the activations permuted once
 *    per call to match;
 *  - four weight rows x up to four input rows per iteration: each decoded weight vector is used
 *    by every input of the tile (M = 2 or 3 is one tile, so the weights are decoded once);
 *  - the next group of rows is prefetched in software (weights stream from DRAM/L3 when a
 *    model is run frame by frame; this doubled the cold 4-bit matvec speed);
 *  - a row's last full block and its short tail (K not a multiple of 32, e.g. 240) go through
 *    one vector step (vpermb + vpmultishiftqb decode of the tail) instead of scalar code.
 * Compiled through target pragmas; only called after a runtime CPU check.
 */
#include <string.h>

#include "subbit_kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#pragma GCC push_options
#pragma GCC target("avx2,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")
#include <immintrin.h>

#define AI static inline __attribute__((always_inline))

/* Software prefetch of a later row group: weights are streamed once per call from DRAM/L3 in
 * streaming inference, and the hardware prefetcher alone leaves the core waiting (cold 4-bit
 * 4096x1024 matvec: 380 -> 160 us). Measured on the project machine: 4-8 KiB ahead is best
 * (1-2 KiB is 10-25% slower), into L2 (T1) 3-10% better than L1 (T0), NTA much worse.
 * Prefetching past the end of the weight is harmless (prefetches never fault). */
#ifndef SUBBIT_PREFETCH_HINT
#define SUBBIT_PREFETCH_HINT _MM_HINT_T1
#endif
#ifndef SUBBIT_PREFETCH_BYTES
#define SUBBIT_PREFETCH_BYTES 8192
#endif
#define PREFETCH(p) _mm_prefetch((const char *)(p), SUBBIT_PREFETCH_HINT)

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
    /* bits <= 4: the 2**bits entries repeated over all 64 bytes, so that vpermb (which reads
     * the low 6 bits of each index byte) and pshufb (low 4 bits) both see lut[idx & (2**bits - 1)]
     * and the super-block loop needs no mask after its shift */
    if (bits == 1) {
        t->t0 = _mm512_set1_epi16((short)(uint16_t)(ld32((const uint8_t *)lut) & 0xFFFFu));
    } else if (bits == 2) {
        t->t0 = _mm512_set1_epi32((int)ld32((const uint8_t *)lut));
    } else if (bits == 3) {
        t->t0 = _mm512_set1_epi64((long long)ld64((const uint8_t *)lut));
    } else if (bits == 4) {
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
 * the activations are permuted once per call to match (see permute_x64); per 64 weights and row
 * this costs a shift, a vpermb (on the replicated table, so no mask) and a vpdpbusd. */
AI int super_blocks(const int bits) { return (bits == 1 || bits == 2 || bits == 4) ? 16 / bits : 0; }

/* The short last block of a row (8, 16 or 24 indices): its planes are narrower than a full
 * block's (plane of width wd: nb = len * wd / 8 bytes, index j + nb * t in field t of byte j).
 * Decoded with two byte shuffles per plane: vpermb brings byte j to lane q, vpmultishiftqb takes
 * the field at bit offset t * wd of that byte. The lane maps depend only on (bits, len): built
 * once per call. Lanes >= len get weight 0, so the 32-byte activation load may read past them. */
typedef struct {
    int planes;
    int off[3], width[3], shift[3];
    __m256i perm[3], ctrl[3];
    __mmask32 load[3], lanes;
} tailctl;

static void tail_setup(const int bits, const int len, tailctl *tc) {
    static const int widths[9][3] = {{0}, {1}, {2}, {2, 1}, {4}, {4, 1}, {4, 2}, {4, 2, 1}, {8}};
    uint8_t perm[32], ctrl[32];
    int off = 0, sh = 0;
    tc->planes = 0;
    tc->lanes = len >= 32 ? 0xFFFFFFFFu : ((1u << len) - 1u);
    for (int p = 0; p < 3 && widths[bits][p]; p++) {
        const int wd = widths[bits][p], nb = len * wd / 8;
        for (int q = 0; q < 32; q++) {
            const int j = q < len ? q % nb : 0, t = q < len ? q / nb : 0;
            perm[q] = (uint8_t)j;
            ctrl[q] = (uint8_t)(8 * (q % 8) + t * wd);
        }
        tc->perm[p] = _mm256_loadu_si256((const __m256i *)perm);
        tc->ctrl[p] = _mm256_loadu_si256((const __m256i *)ctrl);
        tc->load[p] = nb >= 32 ? 0xFFFFFFFFu : ((1u << nb) - 1u);
        tc->off[p] = off;
        tc->width[p] = wd;
        tc->shift[p] = sh;
        off += nb;
        sh += wd;
        tc->planes++;
    }
}

/* int8 weights of one row's last block, zero in lanes >= len. */
AI __m256i tail_weights(const uint8_t *blk, const int bits, const int id, const tables *tb, const tailctl *tc) {
    __m256i idx = _mm256_setzero_si256();
    for (int p = 0; p < tc->planes; p++) {
        __m256i v = _mm256_maskz_loadu_epi8(tc->load[p], (const void *)(blk + tc->off[p]));
        v = _mm256_multishift_epi64_epi8(tc->ctrl[p], _mm256_permutexvar_epi8(tc->perm[p], v));
        v = _mm256_and_si256(v, _mm256_set1_epi8((char)((1 << tc->width[p]) - 1)));
        idx = _mm256_or_si256(idx, tc->shift[p] ? _mm256_slli_epi16(v, tc->shift[p]) : v);
    }
    return _mm256_maskz_mov_epi8(tc->lanes, id ? idx : lookup32(idx, bits, tb));
}

/* R weight rows (1..4) from r0 against MT activation rows (1..4), xu + i * ldx (= xq + 128 as
 * uint8, zero-padded xq); xp: the same rows permuted for the super-block loop. Each weight vector
 * is decoded once and used for all MT inputs; y[i][r0 + r] gets the finished output (epilogue). */
/* The four totals of a0..a3 (16 int32 lanes each) in one 128-bit vector: a transposing
 * reduction, about a third of the work of four separate horizontal sums. */
AI __m128i hsum4(__m512i a0, __m512i a1, __m512i a2, __m512i a3) {
    __m512i t0 = _mm512_add_epi32(_mm512_unpacklo_epi32(a0, a1), _mm512_unpackhi_epi32(a0, a1));
    __m512i t1 = _mm512_add_epi32(_mm512_unpacklo_epi32(a2, a3), _mm512_unpackhi_epi32(a2, a3));
    __m512i u = _mm512_add_epi32(_mm512_unpacklo_epi64(t0, t1), _mm512_unpackhi_epi64(t0, t1));
    __m256i h = _mm256_add_epi32(_mm512_castsi512_si256(u), _mm512_extracti64x4_epi64(u, 1));
    return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

AI void rows(const subbit_weight *w, const uint8_t *xu, const uint8_t *xp, int64_t ldx, int64_t r0,
             const int R, const int MT, const int bits, const int id, const tailctl *tc, const float *sx,
             const float *bias, float *y) {
    const uint8_t *src[4];
    tables tb[4];
    const int64_t bb = 4 * bits, nblk = w->nfull;
    /* same bytes of a later group of rows, at least SUBBIT_PREFETCH_BYTES ahead */
    const int64_t grp = R * w->row_bytes, pf = (SUBBIT_PREFETCH_BYTES + grp - 1) / grp * grp;
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
            const int64_t nsup = nblk / S;
            for (int64_t s = 0; s < nsup; s++) {
                __m512i v[4];
                for (int r = 0; r < R; r++) {
                    PREFETCH(src[r] + pf + s * 64);
                    v[r] = _mm512_loadu_si512((const void *)(src[r] + s * 64));
                }
                for (int t = 0; t < F; t++) {
                    for (int r = 0; r < R; r++)
                        wv[r] = _mm512_permutexvar_epi8(t ? _mm512_srli_epi64(v[r], t * bits) : v[r], tb[r].t0);
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
                PREFETCH(src[r] + pf + b * bb);
                __m512i d = decode64(src[r] + b * bb, bits);
                wv[r] = id ? d : lookup64(d, bits, &tb[r]);
            }
            for (int i = 0; i < MT; i++) {
                __m512i x = _mm512_loadu_si512((const void *)(xu + i * ldx + b * SUBBIT_BLOCK));
                for (int r = 0; r < R; r++) acc[r][i] = _mm512_dpbusd_epi32(acc[r][i], x, wv[r]);
            }
        }
        /* the rest of the row, at most one full block and the short tail, as one 64-lane step:
         * last full block in the low half (if any), tail in the next 32 lanes (zero if none);
         * they are adjacent in x, so one 64-byte load serves both */
        const int last = b < nblk, tail = w->tail != 0;
        if (last || tail) {
            for (int r = 0; r < R; r++) {
                __m256i lo = _mm256_setzero_si256(), hi = _mm256_setzero_si256();
                if (last) {
                    __m256i d = decode32(src[r] + b * bb, bits);
                    lo = id ? d : lookup32(d, bits, &tb[r]);
                }
                if (tail) hi = tail_weights(src[r] + nblk * bb, bits, id, &tb[r], tc);
                wv[r] = last ? _mm512_inserti64x4(_mm512_zextsi256_si512(lo), hi, 1) : _mm512_zextsi256_si512(hi);
            }
            for (int i = 0; i < MT; i++) {
                const uint8_t *xs = xu + i * ldx + b * SUBBIT_BLOCK;
                __m512i x = last ? _mm512_loadu_si512((const void *)xs)
                                 : _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)xs));
                for (int r = 0; r < R; r++) acc[r][i] = _mm512_dpbusd_epi32(acc[r][i], x, wv[r]);
            }
        }
        /* epilogue, y[i][r0 + r] = (float)(acc - 128 * rowsum) * (sx[i] * scale) + bias: for four
         * rows as 128-bit float ops, the same IEEE operations in the same order as the scalar
         * subbit_epilogue (no FMA), so results stay bit-identical */
        if (R == 4) {
            const __m128i corr = _mm_slli_epi32(_mm_loadu_si128((const __m128i *)(w->rowsum + r0)), 7);
            const __m128 sc = w->groups == 1 ? _mm_set1_ps(w->scales[0]) : _mm_loadu_ps(w->scales + r0);
            for (int i = 0; i < MT; i++) {
                __m128i tot = _mm_sub_epi32(hsum4(acc[0][i], acc[1][i], acc[2][i], acc[3][i]), corr);
                __m128 v = _mm_mul_ps(_mm_cvtepi32_ps(tot), _mm_mul_ps(_mm_set1_ps(sx[i]), sc));
                if (bias) v = _mm_add_ps(v, _mm_loadu_ps(bias + r0));
                _mm_storeu_ps(y + i * w->n + r0, v);
            }
        } else {
            for (int r = 0; r < R; r++)
                for (int i = 0; i < MT; i++) {
                    int32_t tot = _mm512_reduce_add_epi32(acc[r][i]) - 128 * w->rowsum[r0 + r];
                    y[i * w->n + r0 + r] = subbit_epilogue(tot, sx[i], w->scales[w->groups == 1 ? 0 : r0 + r],
                                                           bias, r0 + r);
                }
        }
    }
}

/* One call of rows(): R weight rows from r against the MT inputs from i, outputs stored. */
#define ROWS_AND_STORE(R, MT, B, ID) \
    rows(w, xu + i * w->kp, xp + i * w->kp, w->kp, r, R, MT, B, ID, &tc, sx + i, bias, y + i * w->n)

/* The activations in super-block order (see subbit_permute_x); bits is a constant here, so the
 * index arithmetic is shifts and masks instead of divisions. */
AI void permute_x64(const uint8_t *x, int64_t nsup, const int bits, uint8_t *xp) {
    const int nb = 4 * bits, fields = 8 / bits;
    for (int64_t s = 0; s < nsup; s++, x += 64 * fields)
        for (int t = 0; t < fields; t++, xp += 64)
            for (int p = 0; p < 64; p++) xp[p] = x[(p / nb) * SUBBIT_BLOCK + p % nb + nb * t];
}

/* A tile of MT (1..4) input rows: 4 weight rows per step, then the last n % 4 rows one by one. */
#define TILE(MT, B, ID)                                                                                    \
    do {                                                                                                   \
        for (r = 0; r + 4 <= w->n; r += 4) ROWS_AND_STORE(4, MT, B, ID);                                   \
        for (; r < w->n; r++) ROWS_AND_STORE(1, MT, B, ID);                                                \
    } while (0)

/* Input rows in tiles of 4 (the remainder as one tile of 1-3): each decoded weight vector serves
 * every input of its tile, so M = 2 or 3 decodes the weights once, not M times. */
#define DEFINE_BITS(NAME, B, ID)                                                                           \
    static void NAME(const subbit_weight *w, const uint8_t *xu, const float *sx, int64_t m,                \
                     const float *bias, float *y) {                                                        \
        const int S = super_blocks(B);                                                                     \
        uint8_t *xp = (uint8_t *)w->scratch; /* m permuted activation rows */                              \
        tailctl tc;                                                                                        \
        if (w->tail) tail_setup(B, (int)w->tail, &tc);                                                     \
        if (S)                                                                                             \
            for (int64_t i = 0; i < m; i++) permute_x64(xu + i * w->kp, w->nfull / (S ? S : 1), B, xp + i * w->kp); \
        int64_t r, i = 0;                                                                                  \
        for (; i + 4 <= m; i += 4) TILE(4, B, ID);                                                         \
        switch (m - i) {                                                                                   \
        case 3: TILE(3, B, ID); break;                                                                     \
        case 2: TILE(2, B, ID); break;                                                                     \
        case 1: TILE(1, B, ID); break;                                                                     \
        default: break;                                                                                    \
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

/* Fused forward/backward of GQ's piecewise-linear table lookup; see subbit_native.h.
 *
 * Why C: the PyTorch version needs ~10 flat passes per weight (scale, cast, gather, multiply-add,
 * and in backward a gather and two scatter_add_); here forward is one pass and backward one,
 * and nothing per weight is saved between them (the cell is recomputed from w).
 * The row loops are written once as always_inline bodies and instantiated twice: portable
 * (SSE2) and __attribute__((target("avx2,fma"))), where gcc auto-vectorises the cell
 * arithmetic and the table reads (gathers); the table-gradient scatter stays scalar. An
 * AVX-512 instance measured no faster than AVX2 (1M weights, M = 257..138k, float32
 * positions: forward 1.5 vs 1.8-2.1 ms, backward 3.2-4.7 vs 3.4-4.8 ms; gathers dominate), so
 * there is none.
 */
#include "subbit_native.h"

#include <math.h>
#include <stddef.h>
#include <string.h>

#define INLINE static inline __attribute__((always_inline))

/* Per-row constants: c = (M - 1) / 2, k = c / s (0 for a zero, negative or non-finite s: every
 * weight then sits at x = -1 and the output is s * T[0]). The position is computed in float64:
 * in float32 its rounding (an ulp of M / 2) moves t by up to 1e-5 at M = 257 and picks the
 * neighbouring cell near cell borders; in float64 the result matches a float64 evaluation of
 * the same inputs to float32 rounding, for ~0.5 ms more per 1M weights forward (1.5 -> 2.2 ms,
 * AVX2, on a loaded machine). */
typedef struct {
    double c, k, top;
    int32_t jmax;
} row_consts;

INLINE row_consts consts(float s, int64_t m) {
    row_consts r;
    r.c = 0.5 * (double)(m - 1);
    const double k = r.c / (double)s;
    r.k = (s > 0.0f && isfinite(k)) ? k : 0.0;
    r.top = (double)(m - 1);
    r.jmax = (int32_t)(m - 2);
    return r;
}

/* pos clamped to [0, M - 1] (NaN -> 0), cell j in [0, M - 2], t = pos - j in [0, 1]. */
#define CELL(wi, rc, p, j, t)                 \
    double p = (double)(wi) * (rc).k + (rc).c; \
    p = p > 0.0 ? p : 0.0;                    \
    p = p < (rc).top ? p : (rc).top;          \
    int32_t j = (int32_t)p;                   \
    j = j < (rc).jmax ? j : (rc).jmax;        \
    const float t = (float)(p - (double)j);

INLINE void forward_row(const float *restrict w, int64_t n, float s, const float *restrict tab,
                        int64_t m, float *restrict out) {
    const row_consts rc = consts(s, m);
    for (int64_t i = 0; i < n; i++) {
        CELL(w[i], rc, p, j, t)
        const float t0 = tab[j], t1 = tab[j + 1];
        out[i] = s * (t0 + t * (t1 - t0));
    }
}

/* Blocks of BLK weights: a vectorisable pass computes the cells, grad_w (into a block buffer)
 * and the grad_s terms (summed into 16 float64 lanes, so no reassociation is needed to
 * vectorise it), then a scalar loop scatters the two table-gradient weights into work[M]
 * (unscaled; s is applied after). Spreading the scatter over 4 accumulator copies (against
 * store-to-load chains when cells repeat) measured no faster at M = 257..4466, so it is plain.
 * NULL outputs are skipped. */
#define BLK 256
#define LANES 16
INLINE void backward_row(const float *restrict w, const float *restrict g, int64_t n, float s,
                         const float *restrict tab, int64_t m, float *restrict gw,
                         double *restrict gs, double *restrict work) {
    const row_consts rc = consts(s, m);
    const float cs = (float)rc.c;
    double acc[LANES] = {0};
    int32_t jj[BLK];
    float lo[BLK], hi[BLK], part[BLK], gwl[BLK];
    for (int64_t i0 = 0; i0 < n; i0 += BLK) {
        const int nb = (int)(n - i0 < BLK ? n - i0 : BLK);
        const float *restrict wb = w + i0, *restrict gb = g + i0;
        for (int l = 0; l < nb; l++) {
            CELL(wb[l], rc, p, j, t)
            const float t0 = tab[j], b = tab[j + 1] - t0;
            const float gi = gb[l];
            const float slope = fabsf(wb[l]) <= s ? b : 0.0f; /* dT/dpos; zero where clamped */
            gwl[l] = gi * (slope * cs);
            part[l] = gi * (t0 + t * b - slope * (float)(p - rc.c));
            lo[l] = gi * (1.0f - t);
            hi[l] = gi * t;
            jj[l] = j;
        }
        if (gw) memcpy(gw + i0, gwl, (size_t)nb * sizeof(float));
        if (gs) {
            int l = 0;
            for (; l + LANES <= nb; l += LANES)
                for (int q = 0; q < LANES; q++) acc[q] += (double)part[l + q];
            for (; l < nb; l++) acc[0] += (double)part[l];
        }
        if (work)
            for (int l = 0; l < nb; l++) {
                work[jj[l]] += (double)lo[l];
                work[jj[l] + 1] += (double)hi[l];
            }
    }
    if (gs) {
        double total = 0.0;
        for (int q = 0; q < LANES; q++) total += acc[q];
        *gs = total;
    }
}

INLINE int forward_all(const float *w, int64_t groups, int64_t n, const float *s,
                       const float *table, int64_t m, float *out) {
    if (!w || !s || !table || !out || groups < 0 || n < 0 || m < 2 || m > INT32_MAX)
        return SUBBIT_NATIVE_EARG;
    for (int64_t g = 0; g < groups; g++)
        forward_row(w + g * n, n, s[g], table + g * m, m, out + g * n);
    return SUBBIT_NATIVE_OK;
}

INLINE int backward_all(const float *w, const float *grad, int64_t groups, int64_t n,
                        const float *s, const float *table, int64_t m, float *grad_w,
                        float *grad_table, double *grad_s, double *work) {
    if (!w || !grad || !s || !table || groups < 0 || n < 0 || m < 2 || m > INT32_MAX ||
        (grad_table && !work))
        return SUBBIT_NATIVE_EARG;
    for (int64_t g = 0; g < groups; g++) {
        double *wk = grad_table ? work : NULL;
        if (wk) memset(wk, 0, (size_t)m * sizeof(double));
        backward_row(w + g * n, grad + g * n, n, s[g], table + g * m, m,
                     grad_w ? grad_w + g * n : NULL, grad_s ? grad_s + g : NULL, wk);
        if (grad_table) {
            float *gt = grad_table + g * m;
            const double sg = (double)s[g];
            for (int64_t k = 0; k < m; k++) gt[k] = (float)(sg * wk[k]);
        }
    }
    return SUBBIT_NATIVE_OK;
}

/* ---- per-ISA instances and dispatch ------------------------------------------------------- */
#if defined(__x86_64__) && defined(__GNUC__)
#define X86 1
#define AVX2_T __attribute__((target("avx2,fma")))
static AVX2_T int forward_avx2(const float *w, int64_t G, int64_t n, const float *s,
                               const float *t, int64_t m, float *o) {
    return forward_all(w, G, n, s, t, m, o);
}
static AVX2_T int backward_avx2(const float *w, const float *gr, int64_t G, int64_t n,
                                const float *s, const float *t, int64_t m, float *gw, float *gt,
                                double *gs, double *wk) {
    return backward_all(w, gr, G, n, s, t, m, gw, gt, gs, wk);
}
#endif

static int isa = 0;

int subbit_native_isa(void) {
    if (!isa) {
        isa = 1;
#ifdef X86
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) isa = 2;
#endif
    }
    return isa;
}

int subbit_native_set_isa(int path) {
    if (path == 0) {
        isa = 0;
        return subbit_native_isa();
    }
    const int best = (isa = 0, subbit_native_isa());
    if (path < 1 || path > best) return SUBBIT_NATIVE_EARG;
    isa = path;
    return path;
}

int subbit_gq_table_forward(const float *w, int64_t groups, int64_t n, const float *s,
                            const float *table, int64_t m, float *out) {
#ifdef X86
    switch (subbit_native_isa()) {
    case 2: return forward_avx2(w, groups, n, s, table, m, out);
    default: break;
    }
#endif
    return forward_all(w, groups, n, s, table, m, out);
}

int subbit_gq_table_backward(const float *w, const float *grad, int64_t groups, int64_t n,
                             const float *s, const float *table, int64_t m, float *grad_w,
                             float *grad_table, double *grad_s, double *work) {
#ifdef X86
    switch (subbit_native_isa()) {
    case 2: return backward_avx2(w, grad, groups, n, s, table, m, grad_w, grad_table, grad_s, work);
    default: break;
    }
#endif
    return backward_all(w, grad, groups, n, s, table, m, grad_w, grad_table, grad_s, work);
}

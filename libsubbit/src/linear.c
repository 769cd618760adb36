/* y[m][out] = x[m][in] W^T + b: packed weights through the shared kernels, float weights in
 * double accumulation (as the Python runtime's float layers, to an ulp).
 *
 * Packed weights go to the kernels' per-path entry points (subbit_linear_portable / _avx2 /
 * _avx512) on buffers allocated here, rather than through subbit_packed_linear: the AVX2 kernel
 * loads the short last block of a row as 32 bytes, which for the last activation row reaches up
 * to 24 bytes into the buffer's 64-byte slack, and multiplies them by zero weights. The result is
 * exact either way, but subbit_packed_linear leaves that slack uninitialised, so valgrind saw
 * every logit (and every branch on one) as depending on uninitialised memory. Here the slack is
 * zeroed. Apart from that this is run_linear of src/subbit/runtime/csrc/common.c, step for step
 * (same quantization, same kernels), so the sums stay bit-identical to the Python runtime's. */
#include <stdlib.h>
#include <string.h>

#include "../../src/subbit/runtime/csrc/subbit_kernels.h"
#include "internal.h"
#include "pool.h"

/* Row splits: a multiple of 16 rows per part (the kernels' 4-row groups stay whole), and only
 * for matmuls big enough (rows x columns x activation rows) that a hand-off (a few hundred ns)
 * is small beside the work. Each
 * output row is computed exactly as on one thread (integer sums, the same epilogue), so any
 * thread count gives bit-identical results. */
#define SPLIT_ROWS 16
#define SPLIT_MIN_WEIGHTS (1 << 17)

static void part_rows(int64_t n, int part, int nparts, int64_t *r0, int64_t *r1) {
    int64_t per = (n + nparts - 1) / nparts;
    per = (per + SPLIT_ROWS - 1) / SPLIT_ROWS * SPLIT_ROWS;
    *r0 = part * per < n ? part * per : n;
    *r1 = *r0 + per < n ? *r0 + per : n;
}

/* the work of a matmul is rows x columns x activation rows: a chunk of frames counts m times */
static int split_parts(const sbl_exec *ex, int64_t n, int64_t k, int64_t m) {
    int parts = ex && ex->pool ? sbl_pool_threads(ex->pool) : 1;
    if (parts > 1 && (n < 2 * SPLIT_ROWS || n * k * m < SPLIT_MIN_WEIGHTS)) parts = 1;
    return parts;
}

typedef struct {
    const subbit_weight *w; /* the whole weight; scratch unused */
    const float *bias;
    int path;
    const int8_t *xq; /* [m][kp] + zeroed slack: xq_bytes in all */
    size_t xq_bytes;
    const float *sx;
    int64_t m;
    float *y;
    int rc[SBL_MAX_THREADS];
} packed_job;

/* rows [r0, r1) of the product into their columns of y [m][n] */
static int packed_rows(const packed_job *j, int64_t r0, int64_t r1) {
    const subbit_weight *W = j->w;
    if (r1 <= r0) return 0;
    subbit_weight w = *W;
    const int64_t n = r1 - r0, m = j->m;
    const int whole = r0 == 0 && r1 == W->n;
    w.n = n;
    w.packed = W->packed + r0 * W->row_bytes;
    if (W->groups != 1) {
        w.groups = n;
        if (!W->identity) w.lut = W->lut + r0 * SUBBIT_LUT_STRIDE(W->bits); /* identity: one table for all rows */
        w.scales = W->scales + r0;
    }
    if (W->rowsum) w.rowsum = W->rowsum + r0;
    /* portable: one decoded row; AVX2 / AVX-512: the activation rows permuted for their block order */
    w.scratch = (int8_t *)calloc((size_t)(j->path == SUBBIT_PORTABLE ? 1 : m) * (size_t)w.kp + 64, 1);
    /* a part of several rows writes [m][n] then scatters; one row (or the whole) writes in place */
    float *out = whole || m == 1 ? j->y + r0 : (float *)malloc(sizeof(float) * (size_t)(m * n));
    if (!w.scratch || !out) {
        free(w.scratch);
        if (out && out != j->y + r0) free(out);
        return SUBBIT_ERR_NOMEM;
    }
    /* the AVX-512 kernel turns its activations into uint8 in place: a part of several gets a copy */
    int8_t *xq = (int8_t *)j->xq, *own = NULL;
    if (!whole) {
        own = xq = (int8_t *)aligned_alloc(64, j->xq_bytes);
        if (!own) {
            free(w.scratch);
            if (out != j->y + r0) free(out);
            return SUBBIT_ERR_NOMEM;
        }
        memcpy(own, j->xq, j->xq_bytes);
    }
    const float *bias = j->bias ? j->bias + r0 : NULL;
    if (j->path == SUBBIT_AVX512)
        subbit_linear_avx512(&w, xq, j->sx, m, bias, out);
    else if (j->path == SUBBIT_AVX2)
        subbit_linear_avx2(&w, xq, j->sx, m, bias, out);
    else
        subbit_linear_portable(&w, xq, j->sx, m, bias, out);
    free(own);
    if (out != j->y + r0) {
        for (int64_t i = 0; i < m; i++) memcpy(j->y + i * W->n + r0, out + i * n, sizeof(float) * (size_t)n);
        free(out);
    }
    free(w.scratch);
    return 0;
}

static void packed_task(void *arg, int part, int nparts) {
    packed_job *j = (packed_job *)arg;
    int64_t r0, r1;
    part_rows(j->w->n, part, nparts, &r0, &r1);
    j->rc[part] = packed_rows(j, r0, r1);
}

static int packed_apply(const sbl_packed *p, const float *bias, const sbl_exec *ex, const float *x, int64_t m,
                        float *y) {
    const int path = ex->path;
    if (path < SUBBIT_PORTABLE || path > SUBBIT_AVX512 || !(subbit_supported_paths() & (1 << path)))
        return SUBBIT_ERR_INTERNAL;
    if (path == SUBBIT_AVX512 && !p->rowsum) return SUBBIT_ERR_INTERNAL;
    if (p->n == 0) return 0;
    subbit_weight w;
    memset(&w, 0, sizeof w);
    w.packed = p->packed;
    w.n = p->n;
    w.k = p->k;
    w.kp = (p->k + 7) / 8 * 8;
    w.row_bytes = w.kp / 8 * p->bits;
    w.nfull = w.kp / SUBBIT_BLOCK;
    w.tail = w.kp % SUBBIT_BLOCK;
    w.bits = p->bits;
    w.groups = p->groups;
    w.lut = p->lut;
    w.scales = p->scales;
    w.rowsum = p->rowsum;
    w.identity = p->identity; /* 8-bit rewritten as int8 (weights.c): row_bytes == kp either way */
    /* m quantized rows + 64 bytes of slack for the vector loads, 64-byte aligned, slack zeroed */
    const size_t used = (size_t)(m * w.kp), bytes = (used + 64 + 63) / 64 * 64;
    int8_t *xq = (int8_t *)aligned_alloc(64, bytes);
    float *sx = (float *)malloc(sizeof(float) * (size_t)m);
    if (!xq || !sx) {
        free(xq);
        free(sx);
        return SUBBIT_ERR_NOMEM;
    }
    memset(xq + used, 0, bytes - used);
    for (int64_t i = 0; i < m; i++)
        sx[i] = path >= SUBBIT_AVX2 ? subbit_quantize_row_avx2(x + i * w.k, w.k, w.kp, xq + i * w.kp)
                                    : subbit_quantize_row(x + i * w.k, w.k, w.kp, xq + i * w.kp);
    packed_job j = {.w = &w, .bias = bias, .path = path, .xq = xq, .xq_bytes = bytes, .sx = sx, .m = m, .y = y};
    const int parts = split_parts(ex, w.n, w.kp, m);
    int rc = 0;
    if (parts > 1) {
        sbl_pool_run(ex->pool, packed_task, &j);
        for (int i = 0; i < parts; i++) rc = rc ? rc : j.rc[i];
    } else {
        rc = packed_rows(&j, 0, w.n);
    }
    free(xq);
    free(sx);
    return rc;
}

typedef struct {
    const sbl_linear *l;
    const float *x;
    int64_t m;
    float *y;
} float_job;

static void float_rows(const float_job *j, int64_t r0, int64_t r1) {
    const sbl_linear *l = j->l;
    for (int64_t i = 0; i < j->m; i++)
        for (int64_t o = r0; o < r1; o++) {
            const float *w = l->w + o * l->in, *xi = j->x + i * l->in;
            double acc = 0;
            for (int64_t c = 0; c < l->in; c++) acc += (double)xi[c] * (double)w[c];
            float v = (float)acc;
            if (l->bias) v = v + l->bias[o];
            j->y[i * l->out + o] = v;
        }
}

static void float_task(void *arg, int part, int nparts) {
    float_job *j = (float_job *)arg;
    int64_t r0, r1;
    part_rows(j->l->out, part, nparts, &r0, &r1);
    float_rows(j, r0, r1);
}

int sbl_linear_apply(const sbl_linear *l, const sbl_exec *ex, const float *x, int64_t m, float *y) {
    if (m == 0) return 0;
    if (l->pw) return packed_apply(l->pw, l->bias, ex, x, m, y);
    float_job j = {.l = l, .x = x, .m = m, .y = y};
    if (split_parts(ex, l->out, l->in, m) > 1)
        sbl_pool_run(ex->pool, float_task, &j);
    else
        float_rows(&j, 0, l->out);
    return 0;
}

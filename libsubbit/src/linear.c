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

static int packed_apply(const sbl_packed *p, const float *bias, int path, const float *x, int64_t m, float *y) {
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
    /* m quantized rows + 64 bytes of slack for the vector loads, 64-byte aligned, slack zeroed */
    const size_t used = (size_t)(m * w.kp), bytes = (used + 64 + 63) / 64 * 64;
    int8_t *xq = (int8_t *)aligned_alloc(64, bytes);
    float *sx = (float *)malloc(sizeof(float) * (size_t)m);
    /* portable: one decoded row; AVX2 / AVX-512: the activation rows permuted for their block order */
    w.scratch = (int8_t *)calloc((size_t)(path == SUBBIT_PORTABLE ? 1 : m) * (size_t)w.kp + 64, 1);
    if (!xq || !sx || !w.scratch) {
        free(xq);
        free(sx);
        free(w.scratch);
        return SUBBIT_ERR_NOMEM;
    }
    memset(xq + used, 0, bytes - used);
    for (int64_t i = 0; i < m; i++)
        sx[i] = path >= SUBBIT_AVX2 ? subbit_quantize_row_avx2(x + i * w.k, w.k, w.kp, xq + i * w.kp)
                                    : subbit_quantize_row(x + i * w.k, w.k, w.kp, xq + i * w.kp);
    if (path == SUBBIT_AVX512)
        subbit_linear_avx512(&w, xq, sx, m, bias, y);
    else if (path == SUBBIT_AVX2)
        subbit_linear_avx2(&w, xq, sx, m, bias, y);
    else
        subbit_linear_portable(&w, xq, sx, m, bias, y);
    free(xq);
    free(sx);
    free(w.scratch);
    return 0;
}

int sbl_linear_apply(const sbl_linear *l, int path, const float *x, int64_t m, float *y) {
    if (m == 0) return 0;
    if (l->pw) return packed_apply(l->pw, l->bias, path, x, m, y);
    for (int64_t i = 0; i < m; i++)
        for (int64_t o = 0; o < l->out; o++) {
            const float *w = l->w + o * l->in, *xi = x + i * l->in;
            double acc = 0;
            for (int64_t j = 0; j < l->in; j++) acc += (double)xi[j] * (double)w[j];
            float v = (float)acc;
            if (l->bias) v = v + l->bias[o];
            y[i * l->out + o] = v;
        }
    return 0;
}

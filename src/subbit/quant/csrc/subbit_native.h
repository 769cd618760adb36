/* Fused per-weight kernels for GQ's tabulated soft assignment (subbit.quant.soft_table).
 *
 * For group g with scale s = s[g] and table T = table[g, 0:M] on the grid linspace(-1, 1, M)
 * of x = clamp(w / s, -1, 1), with c = (M - 1) / 2:
 *   pos = clamp(w * (c / s) + c, 0, M - 1);  j = min(floor(pos), M - 2);  t = pos - j
 *   out = s * (T[j] + t * (T[j+1] - T[j]))
 * Backward, for an upstream gradient g per weight:
 *   grad_w     = g * c * (T[j+1] - T[j])               (0 where |w| > s, like torch.clamp)
 *   grad_table[j] += s g (1 - t),  grad_table[j+1] += s g t   (accumulated in float64)
 *   grad_s     = sum g (T(x) - [|w| <= s] x T'(x))     (per group, float64)
 * Single-threaded, plain C on contiguous float32 buffers (rows of N weights per group); no
 * Python or torch headers, loaded with ctypes. The ISA (portable or AVX2+FMA) is chosen once
 * from the CPU; every path gives the same results up to float rounding (FMA contraction).
 */
#ifndef SUBBIT_NATIVE_H
#define SUBBIT_NATIVE_H

#include <stdint.h>

#define SUBBIT_NATIVE_OK 0
#define SUBBIT_NATIVE_EARG (-1) /* bad sizes or a NULL required buffer */

/* 1 portable, 2 AVX2+FMA: the path the kernels below use on this CPU. */
int subbit_native_isa(void);

/* Force a path (1..2; 0 = back to the best): for tests and timings. Returns the path now in use,
 * or SUBBIT_NATIVE_EARG when this CPU cannot run it (the current path is then the best). */
int subbit_native_set_isa(int path);

/* out[G, N] = s * T(x) per weight (see above). table is [G, M], M >= 2; s is [G]. */
int subbit_gq_table_forward(const float *w, int64_t groups, int64_t n, const float *s,
                            const float *table, int64_t m, float *out);

/* Gradients of the forward for upstream grad[G, N]. Outputs may be NULL when not needed:
 * grad_w [G, N], grad_table [G, M] (overwritten), grad_s [G] float64 (overwritten).
 * work: float64 scratch of M entries, required when grad_table is not NULL. */
int subbit_gq_table_backward(const float *w, const float *grad, int64_t groups, int64_t n,
                             const float *s, const float *table, int64_t m, float *grad_w,
                             float *grad_table, double *grad_s, double *work);

#endif

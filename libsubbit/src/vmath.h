/* Vectorised elementwise math for the LSTM gates, the joiner and the Conformer (sigmoid, SiLU,
 * GLU, tanh, the softmax exp). One algorithm, written once with GCC/Clang vector extensions
 * (vmath_impl.h) and compiled three times: 4 lanes with no target flags (the portable path, also
 * any non-x86 CPU), 8 lanes for AVX2 and 16 for AVX-512, picked by the model's kernel path. Every
 * lane runs the same IEEE float32 operations (+ - * /, bit masks; no FMA, no reciprocal
 * estimates), so all three paths give bit-identical results, and so the same logits.
 *
 * Accuracy against the exact functions (libsubbit/test/vmath_check.c via
 * tests/runtime/test_libsubbit_vmath.py: every 97th float of |x| in [2**-24, 20], both signs, and a
 * uniform grid of step 1e-4 over [-20, 20]), guaranteed (measured):
 *   tanh     absolute error <= 1.2e-7 (8.4e-8), <= 3 ulp (2.4)
 *   sigmoid  absolute error <= 1.2e-7 (6.5e-8); GLU likewise times |a|
 *   SiLU     error <= 1.5e-7 max(1, |x|) (1.0e-7)
 *   exp      <= 2 ulp (1.0) on [-86, 88]; 0 below -86 (the value is < 5e-38), +inf above 88
 * Why that is enough: every activation row is quantized to int8 before a packed matmul, one step
 * being max|x| / 127 (>= 1e-3 for any row the runtime sees), so an error of 1e-7 moves an
 * activation across a rounding boundary only when it lies within 1e-7 of one: the same regime
 * as libm's tanhf against NumPy's, which the parity tests (LOGIT_TOL) already absorb. */
#ifndef SBL_VMATH_H
#define SBL_VMATH_H
#include <stdint.h>

/* y[i] = f(x[i]) for i < n; y == x (in place) is fine. path: enum subbit_path (1, 2 or 3). */
void sbl_vtanh(int path, const float *x, float *y, int64_t n);
void sbl_vsigmoid(int path, const float *x, float *y, int64_t n); /* 0.5 (1 + tanh(x / 2)) */
void sbl_vsilu(int path, const float *x, float *y, int64_t n);    /* x * sigmoid(x) */
void sbl_vexp(int path, const float *x, float *y, int64_t n);
/* y[i] = a[i] * sigmoid(b[i]) (the Conformer conv module's GLU) */
void sbl_vglu(int path, const float *a, const float *b, float *y, int64_t n);
#endif

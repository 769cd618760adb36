/* Accuracy and path agreement of libsubbit's vector math (src/vmath.h), for
 * tests/runtime/test_libsubbit_vmath.py: each function on each kernel path this CPU runs, over
 * every 97th float of a magnitude range plus a uniform grid, against the exact value (double
 * libm, rounded once to float only for the comparison). Prints one JSON object per line:
 * {"fn", "path", "n", "max_abs", "max_scaled" (error / max(1, |x|)), "max_ulp", "same_as_portable"},
 * then special values and tails. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/subbit/runtime/csrc/subbit_kernels.h"
#include "../src/vmath.h"

typedef void (*vfn)(int, const float *, float *, int64_t);
enum { TANH, SIGMOID, SILU, EXP, GLU, NFN };
static const char *const NAMES[NFN] = {"tanh", "sigmoid", "silu", "exp", "glu"};

static double exact(int fn, double x) {
    switch (fn) {
    case TANH: return tanh(x);
    case SIGMOID: return 1.0 / (1.0 + exp(-x));
    case SILU: return x / (1.0 + exp(-x));
    case EXP: return exp(x);
    default: return 0.75 / (1.0 + exp(-x)); /* glu with a = 0.75 */
    }
}

static void apply(int fn, int path, const float *x, float *y, int64_t n, float *tmp) {
    static const vfn one[] = {sbl_vtanh, sbl_vsigmoid, sbl_vsilu, sbl_vexp};
    if (fn != GLU) {
        one[fn](path, x, y, n);
        return;
    }
    for (int64_t i = 0; i < n; i++) tmp[i] = 0.75f;
    sbl_vglu(path, tmp, x, y, n);
}

static float from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* the inputs of fn: every 97th float with magnitude in [lo, hi] (both signs), and lo..hi in steps */
static int64_t inputs(int fn, float *x, int64_t cap) {
    float hi = fn == EXP ? 88.0f : 20.0f, lo_neg = fn == EXP ? -86.0f : -20.0f;
    int64_t n = 0;
    uint32_t start, end;
    memcpy(&start, &(float){5.96046448e-8f}, 4);
    memcpy(&end, &hi, 4);
    for (uint32_t u = start; u <= end && n < cap; u += 97) {
        float v = from_bits(u);
        x[n++] = v;
        if (-v >= lo_neg && n < cap) x[n++] = -v;
    }
    for (double v = lo_neg; v <= hi && n < cap; v += 1e-4) x[n++] = (float)v;
    return n;
}

int main(void) {
    const int64_t cap = 8 << 20;
    float *x = malloc(sizeof(float) * cap), *y = malloc(sizeof(float) * cap), *y0 = malloc(sizeof(float) * cap),
          *tmp = malloc(sizeof(float) * cap);
    if (!x || !y || !y0 || !tmp) return 2;
    int mask = subbit_supported_paths();
    for (int fn = 0; fn < NFN; fn++) {
        int64_t n = inputs(fn, x, cap);
        for (int path = SUBBIT_PORTABLE; path <= SUBBIT_AVX512; path++) {
            if (!(mask & (1 << path))) continue;
            apply(fn, path, x, path == SUBBIT_PORTABLE ? y0 : y, n, tmp);
            const float *out = path == SUBBIT_PORTABLE ? y0 : y;
            double max_abs = 0, max_ulp = 0, max_scaled = 0;
            for (int64_t i = 0; i < n; i++) {
                double r = exact(fn, (double)x[i]), err = fabs((double)out[i] - r);
                double ulp = r == 0 ? ldexp(1.0, -149) : ldexp(1.0, ilogb((float)r) - 23);
                if (fabs(r) < ldexp(1.0, -126)) ulp = ldexp(1.0, -149);
                if (err > max_abs) max_abs = err;
                if (err / fmax(1.0, fabs((double)x[i])) > max_scaled) max_scaled = err / fmax(1.0, fabs((double)x[i]));
                if (err / ulp > max_ulp) max_ulp = err / ulp;
            }
            int same = path == SUBBIT_PORTABLE || !memcmp(y, y0, sizeof(float) * (size_t)n);
            printf("{\"fn\": \"%s\", \"path\": %d, \"n\": %lld, \"max_abs\": %.9g, \"max_scaled\": %.9g, \"max_ulp\": %.4f, \"same_as_portable\": %s}\n",
                   NAMES[fn], path, (long long)n, max_abs, max_scaled, max_ulp, same ? "true" : "false");
        }
    }
    /* special values, and every tail length against the same values inside a whole vector */
    const float sp[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, 1e-40f, -1e-40f, 9.1f, 0.3f, 100.0f, -100.0f, 88.5f, -87.0f};
    const int nsp = (int)(sizeof sp / sizeof sp[0]);
    for (int path = SUBBIT_PORTABLE; path <= SUBBIT_AVX512; path++) {
        if (!(mask & (1 << path))) continue;
        for (int fn = 0; fn < NFN; fn++) {
            float out[16];
            apply(fn, path, sp, out, nsp, tmp);
            printf("{\"special\": \"%s\", \"path\": %d, \"out\": [", NAMES[fn], path);
            for (int i = 0; i < nsp; i++) printf("%s\"%a\"", i ? ", " : "", (double)out[i]);
            printf("]}\n");
            int tails_ok = 1;
            for (int64_t len = 1; len <= 40; len++) {
                apply(fn, path, x + 1000, y, len, tmp);
                apply(fn, SUBBIT_PORTABLE, x + 1000, y0, 64, tmp);
                tails_ok &= !memcmp(y, y0, sizeof(float) * (size_t)len);
            }
            printf("{\"tails\": \"%s\", \"path\": %d, \"ok\": %s}\n", NAMES[fn], path, tails_ok ? "true" : "false");
        }
    }
    free(x), free(y), free(y0), free(tmp);
    return 0;
}

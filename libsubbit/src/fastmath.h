/* tanh in float32 within 2 ulp of the correctly rounded value (checked over [-10, 10] in steps of
 * 5e-6), about twice as fast as glibc's tanhf: odd Taylor series to x^15 for |x| < 0.3 (the next
 * term is below 1e-12 there), 1 - 2 / (exp(2|x|) + 1) above (no cancellation: the result is
 * >= 0.29), 1 beyond 9.1. NumPy's float32 tanh is itself not correctly rounded, so neither side
 * is bit-exact; the parity tests bound the effect. */
#ifndef SBL_FASTMATH_H
#define SBL_FASTMATH_H
#include <math.h>

static inline float sbl_tanhf(float x) {
    float a = fabsf(x), r;
    if (a < 0.3f) {
        float z = x * x;
        float p = -929569.0f / 638512875.0f;
        p = p * z + 21844.0f / 6081075.0f;
        p = p * z - 1382.0f / 155925.0f;
        p = p * z + 62.0f / 2835.0f;
        p = p * z - 17.0f / 315.0f;
        p = p * z + 2.0f / 15.0f;
        p = p * z - 1.0f / 3.0f;
        r = a + a * z * p;
    } else if (a > 9.1f) {
        r = 1.0f;
    } else if (a == a) {
        float t = expf(2.0f * a);
        r = 1.0f - 2.0f / (t + 1.0f);
    } else {
        return x; /* NaN */
    }
    return x < 0 ? -r : r;
}
#endif

/* The vmath.h algorithm for one vector width: included by vmath.c once per path, with
 *   VM_LANES  lanes per vector (4, 8, 16)
 *   VM_NAME(f) the name of function f for this width
 * and the target pragma of that path around the include. No include guard on purpose.
 *
 * tanh(x), a = |x|:  a < 0.3: the odd Taylor series to x^15 (the next term is < 1e-12 there);
 *                    else 1 - 2 / (exp(2 min(a, 9.1)) + 1) (no cancellation: the result is >= 0.29;
 *                    past 9.1 it rounds to 1); the sign of x is copied back, NaN passes through.
 * exp(y):            y = k ln2 + r, k = rint(y / ln2) (ln2 split in two so k * ln2_hi is exact),
 *                    |r| <= ln2 / 2, e^r by its Taylor series to r^7 (next term < 3e-9 relative),
 *                    times 2^k added to the exponent bits. */
#include <string.h>

typedef float VM_NAME(vf) __attribute__((vector_size(4 * VM_LANES)));
typedef int32_t VM_NAME(vi) __attribute__((vector_size(4 * VM_LANES)));
#define VF VM_NAME(vf)
#define VI VM_NAME(vi)
#define SPLAT(c) ((VF){0} + (c))

/* m ? a : b, lane by lane (m: all ones or all zeros per lane, from a comparison) */
static inline VF VM_NAME(sel)(VI m, VF a, VF b) { return (VF)((m & (VI)a) | (~m & (VI)b)); }

/* e^y for y in [-86, 88] (no range checks) */
static inline VF VM_NAME(exp_core)(VF y) {
    const float magic = 12582912.0f; /* 1.5 * 2**23: adding it rounds to an integer (ties to even) */
    VF k = (y * 1.44269504088896341f + magic) - magic;
    VF r = (y - k * 0.693359375f) - k * -2.12194440e-4f; /* ln2 = 0.693359375 - 2.12194440e-4 */
    VF p = r * (1.0f / 5040.0f) + (1.0f / 720.0f);
    p = p * r + (1.0f / 120.0f);
    p = p * r + (1.0f / 24.0f);
    p = p * r + (1.0f / 6.0f);
    p = p * r + 0.5f;
    VF e = (p * (r * r) + r) + 1.0f;
    VI ki = __builtin_convertvector(k, VI);
    return (VF)((VI)e + (ki << 23));
}

static inline VF VM_NAME(exp_v)(VF y) {
    VF yc = VM_NAME(sel)(y < 88.0f, y, SPLAT(88.0f));
    yc = VM_NAME(sel)(yc > -86.0f, yc, SPLAT(-86.0f));
    VF e = VM_NAME(exp_core)(yc);
    e = VM_NAME(sel)(y < -86.0f, SPLAT(0.0f), e);
    e = VM_NAME(sel)(y > 88.0f, SPLAT(__builtin_inff()), e);
    return VM_NAME(sel)(y == y, e, y);
}

static inline VF VM_NAME(tanh_v)(VF x) {
    const VI absmask = (VI){0} + 0x7FFFFFFF;
    VF a = (VF)((VI)x & absmask), z = x * x;
    VF p = z * (-929569.0f / 638512875.0f) + (21844.0f / 6081075.0f);
    p = p * z - 1382.0f / 155925.0f;
    p = p * z + 62.0f / 2835.0f;
    p = p * z - 17.0f / 315.0f;
    p = p * z + 2.0f / 15.0f;
    p = p * z - 1.0f / 3.0f;
    VF small = a + a * z * p;
    VF ac = VM_NAME(sel)(a < 9.1f, a, SPLAT(9.1f));
    VF t = VM_NAME(exp_core)(ac + ac);
    VF large = 1.0f - 2.0f / (t + 1.0f);
    VF r = VM_NAME(sel)(a < 0.3f, small, large);
    r = (VF)((VI)r | ((VI)x & ~absmask));
    return VM_NAME(sel)(x == x, r, x);
}

static inline VF VM_NAME(sigmoid_v)(VF x) { return 0.5f * (1.0f + VM_NAME(tanh_v)(0.5f * x)); }
static inline VF VM_NAME(silu_v)(VF x) { return x * VM_NAME(sigmoid_v)(x); }

/* y[0..n) = f(x[0..n)): whole vectors, then the tail through a zero-padded vector */
#define VM_MAP(fn, body)                                                                         \
    static void VM_NAME(fn)(const float *x, float *y, int64_t n) {                              \
        int64_t i = 0;                                                                           \
        VF v;                                                                                    \
        for (; i + VM_LANES <= n; i += VM_LANES) {                                               \
            memcpy(&v, x + i, sizeof v);                                                         \
            v = body(v);                                                                         \
            memcpy(y + i, &v, sizeof v);                                                         \
        }                                                                                        \
        if (i < n) {                                                                             \
            float buf[VM_LANES] = {0};                                                           \
            memcpy(buf, x + i, sizeof(float) * (size_t)(n - i));                                 \
            memcpy(&v, buf, sizeof v);                                                           \
            v = body(v);                                                                         \
            memcpy(buf, &v, sizeof v);                                                           \
            memcpy(y + i, buf, sizeof(float) * (size_t)(n - i));                                 \
        }                                                                                        \
    }
VM_MAP(tanh, VM_NAME(tanh_v))
VM_MAP(sigmoid, VM_NAME(sigmoid_v))
VM_MAP(silu, VM_NAME(silu_v))
VM_MAP(exp, VM_NAME(exp_v))
#undef VM_MAP

static void VM_NAME(glu)(const float *a, const float *b, float *y, int64_t n) {
    int64_t i = 0;
    VF va, vb;
    for (; i + VM_LANES <= n; i += VM_LANES) {
        memcpy(&va, a + i, sizeof va);
        memcpy(&vb, b + i, sizeof vb);
        va = va * VM_NAME(sigmoid_v)(vb);
        memcpy(y + i, &va, sizeof va);
    }
    if (i < n) {
        float ba[VM_LANES] = {0}, bb[VM_LANES] = {0};
        memcpy(ba, a + i, sizeof(float) * (size_t)(n - i));
        memcpy(bb, b + i, sizeof(float) * (size_t)(n - i));
        memcpy(&va, ba, sizeof va);
        memcpy(&vb, bb, sizeof vb);
        va = va * VM_NAME(sigmoid_v)(vb);
        memcpy(ba, &va, sizeof va);
        memcpy(y + i, ba, sizeof(float) * (size_t)(n - i));
    }
}

#undef VF
#undef VI
#undef SPLAT

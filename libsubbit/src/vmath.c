/* vmath.h: the three instantiations of vmath_impl.h and the dispatch on the kernel path. The
 * x86 ones are compiled through target pragmas (as the shared kernels are) and only called when
 * the model's path is AVX2 / AVX-512, which api.c picks from the CPU at load. */
#include "vmath.h"

#include "../../src/subbit/runtime/csrc/subbit_kernels.h"

#define VM_LANES 4
#define VM_NAME(f) sbl_vm_##f##_portable
#include "vmath_impl.h"
#undef VM_LANES
#undef VM_NAME

#if defined(__x86_64__) || defined(__i386__)
#define SBL_VM_X86 1
#pragma GCC push_options
#pragma GCC target("avx2")
#define VM_LANES 8
#define VM_NAME(f) sbl_vm_##f##_avx2
#include "vmath_impl.h"
#undef VM_LANES
#undef VM_NAME
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,avx512f")
#define VM_LANES 16
#define VM_NAME(f) sbl_vm_##f##_avx512
#include "vmath_impl.h"
#undef VM_LANES
#undef VM_NAME
#pragma GCC pop_options
#endif

#ifdef SBL_VM_X86
#define VM_DISPATCH(fn, ...)                                                                     \
    do {                                                                                         \
        if (path == SUBBIT_AVX512) sbl_vm_##fn##_avx512(__VA_ARGS__);                            \
        else if (path == SUBBIT_AVX2) sbl_vm_##fn##_avx2(__VA_ARGS__);                           \
        else sbl_vm_##fn##_portable(__VA_ARGS__);                                                \
    } while (0)
#else
#define VM_DISPATCH(fn, ...) ((void)path, sbl_vm_##fn##_portable(__VA_ARGS__))
#endif

void sbl_vtanh(int path, const float *x, float *y, int64_t n) { VM_DISPATCH(tanh, x, y, n); }
void sbl_vsigmoid(int path, const float *x, float *y, int64_t n) { VM_DISPATCH(sigmoid, x, y, n); }
void sbl_vsilu(int path, const float *x, float *y, int64_t n) { VM_DISPATCH(silu, x, y, n); }
void sbl_vexp(int path, const float *x, float *y, int64_t n) { VM_DISPATCH(exp, x, y, n); }
void sbl_vglu(int path, const float *a, const float *b, float *y, int64_t n) { VM_DISPATCH(glu, a, b, y, n); }

"""Build hook for the package's C code: plain C on buffers, loaded with ctypes.

No PyTorch or Python headers are used by the C code; the libraries are built as extensions
only so that ``pip install`` compiles them. If one is missing at run time its caller falls back
to the NumPy / PyTorch reference (and says so).
"""

from pathlib import Path

from setuptools import Extension, setup

KERNELS = Path("src/subbit/runtime/csrc")
# the flags of the packed-weight kernels since they were first built here
KERNEL_FLAGS = ["-O3", "-std=c11", "-fno-strict-aliasing"]
# libsubbit/Makefile's flags (its own code at -O2, the shared kernels at -O3: one -O3 here, which
# changes no float result without -ffast-math): -ffp-contract=off keeps a*b+c two roundings, as
# NumPy computes it, for parity with the Python runtime; only the API is exported. The AVX2 /
# AVX-512 kernels are compiled through target pragmas and chosen at run time, so no -march.
LIBSUBBIT_FLAGS = ["-O3", "-std=c11", "-pthread", "-fvisibility=hidden", "-ffp-contract=off", "-fno-strict-aliasing"]


def _sources(*folders: Path) -> list[str]:
    return [str(p) for folder in folders for p in sorted(folder.glob("*.c"))]


ext_modules = [
    # packed-weight inference kernels (subbit.runtime.kernels)
    Extension("subbit.runtime._kernels", sources=_sources(KERNELS), extra_compile_args=KERNEL_FLAGS),
    # fused GQ training helpers (subbit.quant.native)
    Extension("subbit.quant._native", sources=_sources(Path("src/subbit/quant/csrc")), extra_compile_args=KERNEL_FLAGS),
    # libsubbit, the C streaming runtime with the kernels compiled in (subbit.runtime.native)
    Extension("subbit.runtime._libsubbit", sources=_sources(Path("libsubbit/src"), KERNELS),
              include_dirs=["libsubbit/include", str(KERNELS)], extra_compile_args=LIBSUBBIT_FLAGS,
              extra_link_args=["-pthread"], libraries=["m"]),
]
ext_modules = [e for e in ext_modules if e.sources]

setup(ext_modules=ext_modules)

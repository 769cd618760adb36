"""Build hook for the packed-weight kernels: plain C on buffers, loaded with ctypes.

No PyTorch or Python headers are used by the C code; the library is built as an extension
only so that ``pip install`` compiles it. If it is missing at run time the runtime falls back
to the NumPy reference (and says so).
"""

from pathlib import Path

from setuptools import Extension, setup

CSRC = Path("src/subbit/runtime/csrc")
sources = sorted(str(p) for p in CSRC.glob("*.c"))

ext_modules = []
if sources:
    ext_modules.append(
        Extension(
            "subbit.runtime._kernels",
            sources=sources,
            extra_compile_args=["-O3", "-std=c11", "-fno-strict-aliasing"],
        )
    )

setup(ext_modules=ext_modules)

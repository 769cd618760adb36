"""Build hook for the packed-weight kernels: plain C on buffers, loaded with ctypes.

No PyTorch or Python headers are used by the C code; the library is built as an extension
only so that ``pip install`` compiles it. If it is missing at run time the runtime falls back
to the NumPy reference (and says so).
"""

from pathlib import Path

from setuptools import Extension, setup

# (extension name, folder of its C sources)
LIBRARIES = [
    ("subbit.runtime._kernels", Path("src/subbit/runtime/csrc")),  # packed-weight inference kernels
    ("subbit.quant._native", Path("src/subbit/quant/csrc")),  # fused GQ training helpers
]

ext_modules = []
for name, folder in LIBRARIES:
    sources = sorted(str(p) for p in folder.glob("*.c"))
    if sources:
        ext_modules.append(
            Extension(
                name,
                sources=sources,
                extra_compile_args=["-O3", "-std=c11", "-fno-strict-aliasing"],
            )
        )

setup(ext_modules=ext_modules)

"""Imports point downwards: every ``import`` of every module under src/subbit (module level and
inside functions, parsed with ``ast``) against the layering rules of docs/architecture.md."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "subbit"

# importer package -> subbit packages it must never import
FORBIDDEN = {
    "subbit.quant": ("subbit.asr", "subbit.export", "subbit.runtime", "subbit.bench", "subbit.experiments",
                     "subbit.commands"),
    "subbit.runtime": ("subbit.asr",),
    "subbit.export": ("subbit.asr",),
}  # fmt: skip
# (importing module, imported module) pairs that break a rule today and are tracked elsewhere
KNOWN_EXCEPTIONS: set[tuple[str, str]] = set()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, source: str | None = None) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path`` (or in ``source`` as if it were
    that file); ``from a import b`` yields both ``a`` and ``a.b`` (b may be a submodule), relative
    imports are resolved."""
    tree = ast.parse(path.read_text() if source is None else source, filename=str(path))
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((node.lineno, mod))
            out += [(node.lineno, f"{mod}.{a.name}") for a in node.names if a.name != "*"]
    return out


def _under(mod: str, pkg: str) -> bool:
    return mod == pkg or mod.startswith(pkg + ".")


MODULES = sorted(PKG.rglob("*.py"))


def test_the_parser_sees_function_level_and_relative_imports() -> None:
    mods = [m for _, m in _imports(PKG / "runtime" / "session.py", "def f():\n    from subbit.asr import x")]
    assert "subbit.asr" in mods and "subbit.asr.x" in mods  # imported inside a function
    rel = [m for _, m in _imports(PKG / "asr" / "models" / "rnnt.py")]
    assert "subbit.asr.models.transducer" in rel
    assert len(MODULES) > 40


def _violations(path: Path, source: str | None = None) -> list[str]:
    bad = []
    importer = _module_name(path)
    for line, mod in _imports(path, source):
        where = f"{path.relative_to(SRC)}:{line}: {importer} imports {mod}"
        if _under(importer, "subbit.sizes"):
            top = mod.partition(".")[0]
            if top not in ("numpy", "__future__") and top not in sys.stdlib_module_names:
                bad.append(where + " (subbit.sizes may import only numpy and the standard library)")
            continue
        if _under(importer, "subbit.clib"):  # loaded by both quant and runtime: below everything
            if mod.partition(".")[0] not in sys.stdlib_module_names and mod != "__future__":
                bad.append(where + " (subbit.clib may import only the standard library)")
            continue
        for pkg, banned in FORBIDDEN.items():
            if _under(importer, pkg) and any(_under(mod, b) for b in banned):
                if not any(importer == i and _under(mod, m) for i, m in KNOWN_EXCEPTIONS):
                    bad.append(where)
    return bad


def test_imports_point_downwards() -> None:
    bad = [v for path in MODULES for v in _violations(path)]
    assert not bad, "layering broken:\n" + "\n".join(bad)


def test_known_exceptions_are_still_needed() -> None:
    """An exception that no longer occurs must be removed from KNOWN_EXCEPTIONS (not kept as a hole)."""
    seen = {(_module_name(p), m) for p in MODULES for _, m in _imports(p)}
    stale = KNOWN_EXCEPTIONS - seen
    assert not stale, f"remove fixed exceptions from KNOWN_EXCEPTIONS: {sorted(stale)}"


@pytest.mark.parametrize(("module", "src"), [
    ("quant/api.py", "from subbit.export.manifest import find_affine"),
    ("quant/api.py", "def f():\n    import subbit.runtime.kernels"),
    ("quant/baselines/x.py", "def f():\n    from subbit import asr"),
    ("quant/gq.py", "from ..commands import report"),
    ("sizes.py", "import torch"),
    ("sizes.py", "def f():\n    from subbit.export import bitpack"),
    ("clib.py", "import numpy as np"),
    ("clib.py", "def f():\n    from subbit.quant import native"),
    ("export/container.py", "from subbit.asr.tokenizer import Tokenizer"),
    ("runtime/session.py", "from subbit.asr.checkpoint import load_run"),
    ("runtime/session.py", "def f():\n    from subbit.asr.tokenizer import Tokenizer"),  # no exception left
])  # fmt: skip
def test_upward_imports_are_caught(module: str, src: str) -> None:
    assert _violations(PKG / module, src)


@pytest.mark.parametrize(("module", "src"), [
    ("quant/api.py", "from subbit import sizes"),
    ("sizes.py", "import math\nfrom collections.abc import Sequence\nimport numpy as np"),
    ("clib.py", "from __future__ import annotations\nimport ctypes\nfrom pathlib import Path"),
    ("export/container.py", "def f():\n    from subbit.quant import quantized_tensors"),
])  # fmt: skip
def test_downward_imports_pass(module: str, src: str) -> None:
    assert not _violations(PKG / module, src)

"""subbit.clib: both compiled libraries are found and opened by one loader, which falls back
(None, one warning) when the file is missing or lacks a function."""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

import pytest

import subbit.runtime.kernels as kernels
from subbit.clib import library_file, open_library

log = logging.getLogger("subbit.test_clib")


def test_the_built_kernels_are_found_and_opened() -> None:
    path = library_file(Path(kernels.__file__).parent, "_kernels")
    if path is None:
        pytest.skip("runtime/_kernels library not built")
    lib = open_library(path, kernels.SIGNATURES, log, missing="-", broken="-")
    assert lib is not None and lib.subbit_read_sum.restype is ctypes.c_uint64
    assert library_file(Path(kernels.__file__).parent, "_no_such_library") is None


def test_a_missing_file_or_function_gives_none_and_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=log.name):
        assert open_library(None, {}, log, missing="not built", broken="-") is None
        path = library_file(Path(kernels.__file__).parent, "_kernels")
        if path is not None:
            sig = {"subbit_no_such_function": ([], ctypes.c_int)}
            assert open_library(path, sig, log, missing="-", broken="%s unusable (%s)") is None
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == "not built"
    if path is not None:
        assert messages[1].startswith(f"{path} unusable (") and "subbit_no_such_function" in messages[1]

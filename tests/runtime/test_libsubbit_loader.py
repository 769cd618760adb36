"""libsubbit's loader refuses what the Python loader refuses, check by check.

Each test crafts a file that ``subbit.export.container`` / ``subbit.runtime`` refuse (re-sealed,
so only the field check can refuse it, not a checksum), and requires the C loader to refuse it
with the right status and a message naming the field; a near miss on the accepted side of the
same check must load in both (so the check is not just refusing everything).
"""

from __future__ import annotations

import copy
import ctypes
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from subbit.export.container import parse_container, seal_header
from subbit.export.manifest import PACKING

from .test_libsubbit import FORMAT, LIMIT, OK, VERSION, CModel, _python_refuses, char_model, lib, reseal  # noqa: F401
from .test_session import audio

_DTYPES = {"float32": "F32", "float16": "F16", "uint8": "U8", "int64": "I64", "int32": "I32", "bool": "BOOL"}


def craft(manifest: dict[str, Any], arrays: dict[str, np.ndarray]) -> bytes:
    """A sealed 1.2 file holding ``arrays`` with ``manifest`` (its data_sha256 recomputed): any
    tensor set can be written, including ones the writer refuses."""
    entries, chunks, off = {}, [], 0
    for name, arr in arrays.items():
        raw = np.ascontiguousarray(arr).tobytes()
        entries[name] = {"dtype": _DTYPES[arr.dtype.name], "shape": list(arr.shape), "data_offsets": [off, off + len(raw)]}
        chunks.append(raw)
        off += len(raw)
    data = b"".join(chunks)
    m = {**manifest, "data_sha256": hashlib.sha256(data).hexdigest()}
    return seal_header({"__metadata__": {"subbit": json.dumps(m, sort_keys=True)}, **entries}) + data


def verdicts(lib: ctypes.CDLL, blob: bytes, tmp: Path) -> tuple[CModel, bool]:
    return CModel(lib, blob=blob), _python_refuses(blob, tmp)


def assert_both_refuse(lib: ctypes.CDLL, blob: bytes, tmp: Path, code: int, needle: str) -> None:
    c, py_refuses = verdicts(lib, blob, tmp)
    assert py_refuses, "the Python loader accepts it: the test's file is not the case it means"
    assert c.rc == code and needle in c.err, f"C: rc {c.rc}, {c.err!r} (expected {code}, {needle!r})"
    assert not c.ptr


def assert_both_load(lib: ctypes.CDLL, blob: bytes, tmp: Path) -> None:
    c, py_refuses = verdicts(lib, blob, tmp)
    assert not py_refuses and c.rc == OK, c.err


def test_the_good_file_loads_in_both(lib: ctypes.CDLL, char_model: Path, tmp_path: Path) -> None:
    assert_both_load(lib, char_model.read_bytes(), tmp_path)
    assert_both_load(lib, reseal(char_model.read_bytes(), lambda h, m: None), tmp_path)  # reseal itself is neutral


@pytest.mark.parametrize("value", [3, None, ["subbit"], {"who": "x"}, True])
def test_created_by_must_be_a_string(lib: ctypes.CDLL, char_model: Path, tmp_path: Path, value: Any) -> None:
    blob = char_model.read_bytes()
    assert_both_refuse(lib, reseal(blob, lambda h, m: m.update(created_by=value)), tmp_path, FORMAT, "manifest.created_by")
    assert_both_load(lib, reseal(blob, lambda h, m: m.update(created_by="someone else")), tmp_path)
    assert_both_load(lib, reseal(blob, lambda h, m: m.pop("created_by")), tmp_path)  # optional


def _with_1d_quantized(blob: bytes, granularity: str, groups: int) -> bytes:
    """The file plus a 1-D 4-bit quantized tensor ``extra.w`` [64], consistent in every other way."""
    manifest, arrays = parse_container(blob)
    manifest, arrays = copy.deepcopy(manifest), dict(arrays)
    arrays["extra.w.idx"] = np.zeros((1, 32), np.uint8)  # one row of 64 indices at 4 bits
    arrays["extra.w.codebook"] = np.tile(np.linspace(-1, 1, 16, dtype=np.float32), (groups, 1))
    manifest["quantized"]["extra.w"] = {
        "bits": 4, "shape": [64], "groups": groups, "granularity": granularity, "method": "gq", "packing": PACKING,
        "mu": None, "count": 64, "codebook_dtype": "F32", "codebook": "table"}  # fmt: skip
    return craft(manifest, arrays)


def test_channel_granularity_on_a_1d_tensor_is_refused_by_the_manifest_check(lib: ctypes.CDLL, char_model: Path,
                                                                              tmp_path: Path) -> None:  # fmt: skip
    """groups == shape[0] holds (64 codebooks for 64 weights), so only the 1-D rule refuses it."""
    blob = char_model.read_bytes()
    assert_both_refuse(lib, _with_1d_quantized(blob, "channel", 64), tmp_path, FORMAT, "'channel' needs a weight of 2 or more")
    # the same tensor with 'tensor' granularity passes the container checks in both and is refused
    # later, by the runtime, as a tensor the RNN-T does not use (not by the 1-D rule)
    c, py_refuses = verdicts(lib, _with_1d_quantized(blob, "tensor", 1), tmp_path)
    assert py_refuses and c.rc == FORMAT and "does not use" in c.err and "extra.w" in c.err, c.err


def _features(**kw: Any) -> Any:
    feats = {"kind": "logmel", "sample_rate": 16000, "n_fft": 400, "hop_length": 160, "n_mels": 80, **kw}
    return lambda h, m: m.update(extra={"features": feats})


@pytest.mark.parametrize("n_fft,hop", [(8192, 1), (8192, 511), (400, 24), (32, 1)])
def test_frames_overlapping_more_than_16_fold_are_refused(lib: ctypes.CDLL, char_model: Path, tmp_path: Path, n_fft: int,
                                                          hop: int) -> None:  # fmt: skip
    blob = reseal(char_model.read_bytes(), _features(n_fft=n_fft, hop_length=hop))
    assert_both_refuse(lib, blob, tmp_path, LIMIT, "extra.features.hop_length")


@pytest.mark.parametrize("n_fft,hop", [(8192, 512), (400, 25), (16, 1)])
def test_the_overlap_limit_itself_loads_and_streams(lib: ctypes.CDLL, char_model: Path, tmp_path: Path, n_fft: int,
                                                    hop: int) -> None:  # fmt: skip
    blob = reseal(char_model.read_bytes(), _features(n_fft=n_fft, hop_length=hop))
    assert_both_load(lib, blob, tmp_path)
    s = CModel(lib, blob=blob).session()
    s.stream(audio(0.3), 1000)  # streams without error at the largest overlap allowed


def test_a_schema_minor_beyond_int64_is_a_newer_version(lib: ctypes.CDLL, char_model: Path, tmp_path: Path) -> None:
    """Python's integers are unbounded, so 10**30 is a (far) newer minor version, not a bad field."""
    blob = char_model.read_bytes()
    assert_both_refuse(lib, reseal(blob, lambda h, m: m.update(schema_minor=10**30)), tmp_path, VERSION, "schema_minor")
    assert_both_refuse(lib, reseal(blob, lambda h, m: m.update(schema_minor=-(10**30))), tmp_path, FORMAT, "schema_minor")


# -- every field, values of every JSON type: the same verdict ---------------------------------------
_VALUES: list[Any] = [None, True, 0, 1, -1, 2.5, "", "x", [], [1], {}, {"a": 1}, 10**20]
_TOP = ["format", "schema_version", "schema_minor", "created_by", "arch", "quantized", "float", "tokenizer", "runtime",
        "extra", "data_sha256"]  # fmt: skip
_QUANT = ["bits", "shape", "groups", "granularity", "method", "packing", "mu", "count", "codebook_dtype", "codebook",
          "zero_index"]  # fmt: skip
_FEATURES = ["kind", "sample_rate", "n_fft", "hop_length", "n_mels", "mean", "std"]


def _sweep() -> list[tuple[str, str, Any]]:
    cases = [("top", k, v) for k in _TOP for v in _VALUES]
    cases += [("quantized", k, v) for k in _QUANT for v in _VALUES if not (k == "mu" and v == 10**20)]
    return cases + [("features", k, v) for k in _FEATURES for v in _VALUES]


def _edit(where: str, key: str, value: Any) -> Any:
    def mutate(_h: dict[str, Any], m: dict[str, Any]) -> None:
        if where == "top":
            m[key] = value
        elif where == "quantized":
            m["quantized"]["joiner.out.weight"][key] = value
        else:
            _features(**{key: value})(_h, m)

    return mutate


def test_every_manifest_field_with_every_json_type_gets_the_same_verdict(lib: ctypes.CDLL, char_model: Path,
                                                                          tmp_path: Path) -> None:  # fmt: skip
    """(A Python int too large for a float in ``mu`` is left out: the Python loader raises
    OverflowError there instead of SubbitFormatError; libsubbit refuses it with FORMAT.)"""
    blob = char_model.read_bytes()
    disagree, refused = [], 0
    for where, key, value in _sweep():
        bad = reseal(blob, _edit(where, key, value))
        c, py_refuses = verdicts(lib, bad, tmp_path)
        refused += py_refuses
        if (c.rc == OK) == py_refuses:
            disagree.append((where, key, value, c.rc, c.err[:80]))
    assert not disagree, f"C and Python disagree on {disagree}"
    assert 0.5 * len(_sweep()) < refused < len(_sweep()) - 15  # both verdicts are represented (20 load)

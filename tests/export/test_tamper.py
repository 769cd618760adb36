"""Format 1.2: the header (tensor table + manifest) is covered by ``header_sha256``; older files
load with a warning; the loader stats the file and reads only the header before checking it."""

from __future__ import annotations

import json
import os
import struct
import threading
import time
import tracemalloc
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from subbit.export import reader
from subbit.export.bitpack import PackedTensor
from subbit.export.container import _safetensors_bytes, parse_container, read_container, seal_header, write_packed
from subbit.export.manifest import HEADER_PREFIX, SCHEMA_MINOR, SubbitFormatError, SubbitLegacyWarning, affine_table


def _tensors() -> tuple[dict[str, PackedTensor], dict[str, tuple[str, np.ndarray]]]:
    rng = np.random.default_rng(1)
    a = PackedTensor.from_indices(rng.integers(0, 8, (4, 12)), rng.normal(size=(1, 8)), 3)
    grid = affine_table(np.array([0.5, 0.25], np.float32), 8, 16)
    u = PackedTensor.from_indices(rng.integers(0, 16, (2, 10)), grid, 4, granularity="channel", method="uniform")
    floats = {"bias": ("F32", rng.normal(size=4).astype(np.float32)), "gain": ("F32", np.ones(4, np.float32))}
    return {"a": a, "u": u}, floats


@pytest.fixture(scope="module")
def blob(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("t") / "t.subbit"
    packed, floats = _tensors()
    extra = {"features": {"kind": "logmel", "n_fft": 400, "mean": [0.0] * 4}}
    write_packed(path, packed, floats, arch={"arch": "t", "stack": 3}, tokenizer_bytes=b"tok", extra=extra)
    return path.read_bytes()


def _split(blob: bytes) -> tuple[dict[str, Any], dict[str, Any], bytes]:
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8 : 8 + n])
    return header, json.loads(header["__metadata__"]["subbit"]), blob[8 + n :]


def test_a_new_file_is_format_1_2_and_opens_with_its_digest(blob: bytes) -> None:
    assert blob[8:].startswith(HEADER_PREFIX)
    manifest, _ = parse_container(blob)
    assert manifest["schema_minor"] == SCHEMA_MINOR == 2


def test_every_single_byte_change_in_the_header_is_refused(blob: bytes) -> None:
    """Flip one bit (and, separately, set the byte to a space) at every position of the length
    bytes + header: tensor table, manifest, padding, the digest itself."""
    n = 8 + struct.unpack("<Q", blob[:8])[0]
    accepted = []
    for pos in range(n):
        for new in (blob[pos] ^ 0x01, blob[pos] ^ 0x20, 0x20):
            if new == blob[pos]:
                continue
            bad = bytearray(blob)
            bad[pos] = new
            try:
                parse_container(bytes(bad))
            except SubbitFormatError:
                continue
            accepted.append(pos)
    assert not accepted, f"accepted changes at header bytes {accepted[:10]}"


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m["quantized"]["u"].update(zero_index=7),
        lambda m: m["arch"].update(stack=0),
        lambda m: m["extra"]["features"].update(n_fft=4_000_000),
        lambda m: m["quantized"]["a"].update(mu=5.0),
        lambda m: m.update(schema_minor=1),
    ],
)
def test_a_manifest_edit_without_a_new_digest_is_refused_naming_the_digest(blob: bytes, edit: Any) -> None:
    header, manifest, data = _split(blob)
    edit(manifest)
    header["__metadata__"]["subbit"] = json.dumps(manifest, separators=(",", ":"))
    # keep the old digest: the header now says something else than what was sealed
    old = blob[8 + len(HEADER_PREFIX) : 8 + len(HEADER_PREFIX) + 64].decode()
    head = bytearray(seal_header(header))
    head[8 + len(HEADER_PREFIX) : 8 + len(HEADER_PREFIX) + 64] = old.encode()
    with pytest.raises(SubbitFormatError, match="header_sha256 does not match"):
        parse_container(bytes(head) + data)


def test_swapping_two_tensors_of_the_same_shape_is_refused(blob: bytes) -> None:
    """The data sha256 alone cannot see this: same bytes, other meaning."""
    header, _, data = _split(blob)
    header["bias"]["data_offsets"], header["gain"]["data_offsets"] = header["gain"]["data_offsets"], header["bias"]["data_offsets"]
    digest = blob[8 + len(HEADER_PREFIX) : 8 + len(HEADER_PREFIX) + 64]
    head = bytearray(seal_header(header))
    head[8 + len(HEADER_PREFIX) : 8 + len(HEADER_PREFIX) + 64] = digest
    with pytest.raises(SubbitFormatError, match="header_sha256"):
        parse_container(bytes(head) + data)


def _legacy(blob: bytes, minor: int | None) -> bytes:
    _, manifest, _ = _split(blob)
    _, arrays = parse_container(blob)
    if minor is None:
        manifest.pop("schema_minor")
    else:
        manifest["schema_minor"] = minor
    dtypes = {k: "U8" if k.endswith(".idx") or k == "__tokenizer__" else "F32" for k in arrays}

    def meta(sha: str) -> dict[str, str]:
        return {"subbit": json.dumps({**manifest, "data_sha256": sha})}

    return _safetensors_bytes({k: (dtypes[k], v) for k, v in arrays.items()}, meta, digest=False)[0]


def test_a_1_1_file_loads_with_a_warning_naming_its_version(blob: bytes) -> None:
    with pytest.warns(SubbitLegacyWarning, match=r"format 1\.1 file.*re-export"):
        manifest, arrays = parse_container(_legacy(blob, 1))
    assert manifest["schema_minor"] == 1 and "u.codebook_step" in arrays


def test_a_1_2_file_without_its_digest_is_refused(blob: bytes) -> None:
    with pytest.raises(SubbitFormatError, match=r"format 1\.2 file without __metadata__.header_sha256"):
        parse_container(_legacy(blob, 2))


def test_a_1_0_file_with_an_affine_codebook_is_refused(blob: bytes) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SubbitLegacyWarning)
        with pytest.raises(SubbitFormatError, match=r"quantized\['u'\]\.codebook: an 'affine' codebook needs schema 1\.1"):
            parse_container(_legacy(blob, None))


def test_a_digest_not_opening_the_header_is_refused(blob: bytes) -> None:
    header, _, data = _split(blob)
    meta = header.pop("__metadata__")
    h = json.dumps({**header, "__metadata__": meta}).encode()
    h += b" " * (-len(h) % 8)
    with pytest.raises(SubbitFormatError, match="header_sha256 must open the header"):
        parse_container(struct.pack("<Q", len(h)) + h + data)


def test_a_mu_list_of_the_wrong_length_is_refused(blob: bytes) -> None:
    header, manifest, data = _split(blob)
    manifest["quantized"]["u"]["mu"] = [1.0, 2.0, 3.0]
    header["__metadata__"]["subbit"] = json.dumps(manifest)
    with pytest.raises(SubbitFormatError, match=r"quantized\['u'\]\.mu: a list of mu needs one value per group \(2\)"):
        parse_container(seal_header(header) + data)


@pytest.mark.parametrize("shape", [(), (5, 0)])
def test_the_writer_refuses_what_the_loader_would_refuse(tmp_path: Path, shape: tuple[int, ...]) -> None:
    pt = PackedTensor(3, shape, np.zeros((1, 0), np.uint8), np.zeros((1, 8), np.float32), 1)
    with pytest.raises(ValueError, match="non-empty shape"):
        write_packed(tmp_path / "z.subbit", {"w": pt}, {}, arch={})
    assert not (tmp_path / "z.subbit").exists()


# -- the file itself ---------------------------------------------------------------------------
def test_a_fifo_is_refused_quickly_without_opening_it(tmp_path: Path) -> None:
    fifo = tmp_path / "m.subbit"
    os.mkfifo(fifo)
    result: list[BaseException] = []

    def load() -> None:
        try:
            read_container(fifo)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            result.append(exc)

    t = threading.Thread(target=load, daemon=True)
    start = time.monotonic()
    t.start()
    t.join(5.0)
    if t.is_alive():  # unblock the reader so the test run does not hang
        with open(fifo, "wb"):
            pass
        pytest.fail("read_container blocked on a FIFO")
    assert time.monotonic() - start < 2.0
    assert isinstance(result[0], SubbitFormatError) and "a FIFO, not a regular .subbit file" in str(result[0])


def test_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SubbitFormatError, match="a directory, not a regular"):
        read_container(tmp_path)


def test_a_missing_file_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_container(tmp_path / "nope.subbit")


def test_a_file_over_the_size_limit_is_refused_before_reading(tmp_path: Path, blob: bytes,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    p = tmp_path / "big.subbit"
    p.write_bytes(blob)
    monkeypatch.setattr(reader, "MAX_FILE", len(blob) - 1)
    with pytest.raises(SubbitFormatError, match="limit"):
        read_container(p)


def test_a_huge_sparse_file_is_refused_after_reading_only_its_header(tmp_path: Path, blob: bytes) -> None:
    """1 GiB on disk (sparse): a bad header is refused with next to no memory and time."""
    header, manifest, _ = _split(blob)
    head = seal_header(header)
    p = tmp_path / "huge.subbit"
    with open(p, "wb") as f:
        f.write(head)
        f.truncate(1 << 30)  # tensors cover less than the data section
    tracemalloc.start()
    start = time.monotonic()
    try:
        with pytest.raises(SubbitFormatError, match="tensors cover"):
            read_container(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20 and time.monotonic() - start < 2.0
    with open(p, "r+b") as f:  # a header length beyond the file
        f.write(struct.pack("<Q", 1 << 40))
    with pytest.raises(SubbitFormatError, match="header length"):
        read_container(p)


def test_a_read_file_is_what_the_bytes_parse_to(tmp_path: Path, blob: bytes) -> None:
    p = tmp_path / "ok.subbit"
    p.write_bytes(blob)
    m1, a1 = read_container(p)
    m2, a2 = parse_container(blob)
    assert m1 == m2 and a1.keys() == a2.keys()
    for k in a1:
        assert a1[k].dtype == a2[k].dtype and np.array_equal(a1[k], a2[k])
        assert a1[k].flags.writeable and a1[k].flags.aligned

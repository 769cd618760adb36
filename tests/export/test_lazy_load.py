"""read_container maps the data section instead of reading it: loading a large file costs
memory for the header and what the checks touch, not the file size; the arrays are the same
as when the bytes are parsed in memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from subbit.export import reader
from subbit.export.bitpack import pack_rows
from subbit.export.container import load_packed, parse_container, read_container
from subbit.export.manifest import SubbitFormatError
from subbit.testing.dummies import large_subbit_file
from subbit.testing.memory import load_memory


def test_a_large_file_loads_in_a_small_multiple_of_its_header(tmp_path: Path) -> None:
    path = tmp_path / "big.subbit"
    size = large_subbit_file(path, 48)
    r = load_memory(path, "read_container")  # in a fresh interpreter: its peak is the load's own
    grown = r["peak_growth_bytes"]
    # reading the file whole would add its 48 MiB; mapping it adds the header (a few KiB), the
    # 1 MiB hash buffer, the float tensor's finite check (50 KB) and a few code pages
    assert size > 48 << 20 and grown < 8 << 20, (grown, size)
    # the mapped pages of the packed indices are not resident just because the file was loaded
    assert r["anon_growth_bytes"] < 8 << 20
    assert r["tensors"] == 6  # idx + codebook of layer0.weight and small, layer0.bias, the tokenizer


def test_mapped_arrays_equal_parsed_bytes_and_stay_writable_without_touching_the_file(tmp_path: Path) -> None:
    path = tmp_path / "m.subbit"
    large_subbit_file(path, 1)
    blob = path.read_bytes()
    m1, a1 = read_container(path)
    m2, a2 = parse_container(blob)
    assert m1 == m2 and a1.keys() == a2.keys()
    for name in a1:
        assert a1[name].dtype == a2[name].dtype and np.array_equal(a1[name], a2[name])
    a1["layer0.weight.idx"][0, 0] ^= 0xFF  # copy-on-write: this process's copy changes, the file does not
    assert path.read_bytes() == blob
    assert np.array_equal(load_packed(path).packed["layer0.weight"].packed, a2["layer0.weight.idx"])


def test_the_digest_streams_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A chunk much smaller than the data section gives the same verdicts."""
    path = tmp_path / "c.subbit"
    large_subbit_file(path, 1)
    monkeypatch.setattr(reader, "HASH_CHUNK", 4096 + 7)
    read_container(path)
    raw = bytearray(path.read_bytes())
    raw[-100] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(SubbitFormatError, match="data section sha256"):
        read_container(path)


@pytest.mark.parametrize("k", [1, 7, 8, 13, 31, 32, 33, 40, 63, 64, 65, 100])
@pytest.mark.parametrize("bits", [1, 3, 4, 5, 7, 8])
def test_the_tail_only_padding_check_agrees_with_the_full_decode(bits: int, k: int) -> None:
    rng = np.random.default_rng(bits * 1000 + k)
    packed = pack_rows(rng.integers(0, 1 << bits, (3, k)), bits)
    assert reader._padding_is_zero(packed, bits, k)
    kp = -(-k // 8) * 8
    if kp == k:
        return
    for pos in range(k, kp):  # set one padding index to 1 in row 1: the check must see it
        idx = np.zeros((3, kp), np.int64)
        idx[1, pos] = 1
        assert not reader._padding_is_zero(pack_rows(idx, bits), bits, k)

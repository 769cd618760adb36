"""One definition of size: ``subbit.sizes``, the written ``.subbit`` file, ``subbit export``'s summary,
``subbit report`` (of the file and of the run) and the experiment/bench counters agree to the byte."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import subbit.quant as q
from subbit import cli, sizes
from subbit.export import export_model
from subbit.export.bitpack import matrix_rows, pack_rows, row_bytes
from subbit.export.manifest import CODEBOOK_SUFFIX, IDX_SUFFIX, STEP_SUFFIX, TOKENIZER_TENSOR
from subbit.testing.dummies import dummy_net, dummy_run

torch.set_num_threads(1)


# -- the formulas on their own -------------------------------------------------------------------
def test_index_bytes_are_the_packed_layout() -> None:
    for bits in range(1, 9):
        for k in range(0, 70):
            assert sizes.row_index_bytes(k, bits) == row_bytes(k, bits), (k, bits)
    rng = np.random.default_rng(0)
    for shape in [(5, 3), (7, 20), (4, 36), (3, 16, 3), (1, 8), (9,)]:
        for bits in (1, 2, 3, 4, 7, 8):
            n, k = matrix_rows(shape)
            idx = rng.integers(0, 1 << bits, size=(n, k))
            assert sizes.index_bytes(shape, bits) == pack_rows(idx, bits).nbytes, (shape, bits)
    # rows are padded to 8 indices: a [7, 20] weight at 3 bits is 7 * 3 * 3 = 63 B, the bound 53 B
    assert sizes.index_bytes((7, 20), 3) == 63 and sizes.ideal_index_bytes(140, 3) == 53


def test_codebook_and_twin_bytes() -> None:
    assert sizes.table_bytes(3, 4) == sizes.codebook_bytes(3, 4, "table") == 3 * 16 * 4
    assert sizes.affine_bytes(3) == sizes.codebook_bytes(3, 4, "affine") == 12
    with pytest.raises(ValueError):
        sizes.codebook_bytes(1, 4, "offset+step")
    assert sizes.int8_twin_bytes((10, 6)) == 60 + 40  # one fp32 scale per output channel
    assert sizes.int8_twin_bytes((10, 6)) == sizes.int8_bytes(60, 10)
    assert sizes.int8_bytes(60, 1, sizes.TORCH_AO_QPARAM_BYTES) == 72
    assert sizes.fp32_bytes(7) == sizes.float_bytes(7) == sizes.float_bytes(7, "F32") == 28
    assert sizes.float_bytes(7, "F16") == sizes.float_bytes(7, 2) == sizes.float_bytes(7, np.float16) == 14
    assert sizes.float_bytes(3, "I64") == 24 and sizes.float_bytes(3, "BOOL") == 3


def test_find_affine_is_one_function_with_the_exact_rule() -> None:
    import subbit.export
    import subbit.export.container
    import subbit.export.manifest

    assert subbit.export.find_affine is subbit.export.manifest.find_affine is sizes.find_affine
    assert subbit.export.container.find_affine is sizes.find_affine
    assert subbit.export.affine_table is sizes.affine_table
    grid = sizes.affine_table(np.array([0.5, 0.25], np.float32), 2, 4)
    assert sizes.codebook_kind(grid) == "affine"
    bent = grid.copy()
    bent[0, 3] = np.nextafter(bent[0, 3], np.float32(2))  # one ulp off: no tolerance, stays a table
    assert sizes.codebook_kind(bent) == "table"


# -- a real model, exported ----------------------------------------------------------------------
def make_net() -> nn.Module:
    """Rows of 20, 36 and 48 indices: 20 and 36 are padded in the file, so layout != bound."""
    return dummy_net(("emb", nn.Embedding(30, 20)), ("lstm", nn.LSTM(20, 36, batch_first=True)),
                     ("conv", nn.Conv1d(36, 8, 6)), ("out", nn.Linear(8, 30)), seed=None)  # fmt: skip


def converted(spec: dict[str, Any]) -> nn.Module:
    torch.manual_seed(0)
    m = make_net()
    q.prepare(m, q.QuantConfig.from_dict({"default": spec}))
    return q.convert(m).eval()


def data_sections(path: Path) -> tuple[int, dict[str, tuple[str, list[int], int]]]:
    """(header bytes, {tensor: (dtype, shape, data bytes)}) read straight from the file."""
    blob = path.read_bytes()
    (hlen,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + hlen])
    header.pop("__metadata__")
    out = {n: (e["dtype"], e["shape"], e["data_offsets"][1] - e["data_offsets"][0]) for n, e in header.items()}
    assert 8 + hlen + sum(v[2] for v in out.values()) == len(blob)
    return 8 + hlen, out


def expected_quantized(model: nn.Module) -> dict[str, tuple[int, int, str, tuple[int, ...]]]:
    """Per quantized tensor, from subbit.sizes and the quantizer alone (no file):
    (stored bytes, ideal bytes, codebook kind, shape)."""
    out = {}
    with torch.no_grad():
        for qt in q.quantized_tensors(model):
            qz = qt.quantizer
            _, cb = qz.encode(qt.latent)
            kind = sizes.codebook_kind(cb.float().numpy())
            shape = tuple(qt.latent.shape)
            out[qt.name] = (sizes.quantized_bytes(shape, qz.bits, qz.num_groups, kind),
                            sizes.ideal_quantized_bytes(math.prod(shape), qz.bits, qz.num_groups, kind), kind, shape)
    return out


SPECS = [{"method": "gq", "bits": b, "granularity": g} for b in (1, 2, 4, 8) for g in ("tensor", "channel")]
SPECS += [{"method": "uniform", "bits": 8, "granularity": "channel"},  # affine codebooks
          {"method": "uniform", "bits": 4, "granularity": "tensor"}]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s['method']}{s['bits']}-{s['granularity']}")
def test_sizes_file_summary_and_report_agree(spec: dict[str, Any], tmp_path: Path) -> None:
    from subbit.commands.report import report_subbit
    from subbit.experiments.compare import deploy_bytes

    model = converted(spec)
    want = expected_quantized(model)
    if spec["method"] == "uniform" and spec["bits"] == 8:
        assert {w[2] for w in want.values()} == {"affine"}
    if spec["method"] == "gq":
        assert {w[2] for w in want.values()} == {"table"}
    path = tmp_path / "m.subbit"
    tok = b"tokenizer bytes"
    summary = export_model(model, path, arch={}, tokenizer_bytes=tok)
    header, sections = data_sections(path)
    rows = {t.name: t for t in summary.tensors}
    fp32_twin = int8_twin = 0
    for name, (stored, ideal, kind, shape) in want.items():
        cb = sections[name + (STEP_SUFFIX if kind == "affine" else CODEBOOK_SUFFIX)]
        assert sections[name + IDX_SUFFIX][2] == sizes.index_bytes(shape, spec["bits"])
        assert cb[2] == sizes.codebook_bytes(1 if spec["granularity"] == "tensor" else shape[0], spec["bits"], kind)
        assert sections[name + IDX_SUFFIX][2] + cb[2] == stored == rows[name].stored, name
        assert rows[name].theory == ideal and rows[name].codebook == kind
        assert rows[name].int8 == sizes.int8_twin_bytes(shape) and rows[name].fp32 == sizes.fp32_bytes(math.prod(shape))
        fp32_twin += sizes.fp32_bytes(math.prod(shape))
        int8_twin += sizes.int8_twin_bytes(shape)
    floats = {n: p for n, p in model.named_parameters() if ".subbit_quant." not in f".{n}"}
    assert set(floats) | {TOKENIZER_TENSOR} == {n for n in sections if not n.endswith((IDX_SUFFIX, CODEBOOK_SUFFIX,
                                                                                        STEP_SUFFIX))}  # fmt: skip
    for name, p in floats.items():
        assert sections[name][2] == sizes.float_bytes(p.numel(), "F32") == rows[name].stored
        fp32_twin += sizes.fp32_bytes(p.numel())
        int8_twin += sizes.fp32_bytes(p.numel())
    assert sections[TOKENIZER_TENSOR][2] == len(tok)
    assert summary.header_bytes == header and summary.file_bytes == path.stat().st_size
    assert summary.fp32_bytes == fp32_twin + len(tok) and summary.int8_bytes == int8_twin + len(tok)

    # the quantizer report: the lower bound of the indices + the codebook the file holds
    rep = q.report(model)
    for r in rep.rows:
        assert r.packed_bytes == want[r.name][1] == q.packed_bytes(
            next(qt.quantizer for qt in q.quantized_tensors(model) if qt.name == r.name),
            next(qt.latent for qt in q.quantized_tensors(model) if qt.name == r.name))
    # the experiments' deployed size: the file's payload without header and tokenizer
    assert deploy_bytes(model) == sum(w[0] for w in want.values()) + sum(4 * p.numel() for p in floats.values())
    assert deploy_bytes(model) == path.stat().st_size - header - len(tok)

    # subbit report of the file, through the CLI's JSON
    js = tmp_path / "r.json"
    assert cli.main(["report", str(path), "--json", str(js)]) == 0
    got = json.loads(js.read_text())
    assert got == json.loads(json.dumps(report_subbit(path)))
    for t in got["tensors"]:
        assert t["bytes"] == rows[t["name"]].stored, t["name"]
    tot = got["totals"]
    assert tot["total_bytes"] == summary.file_bytes and tot["payload_bytes"] == summary.file_bytes - header
    assert tot["quantized_bytes"] == summary.quantized_bytes == sum(w[0] for w in want.values())
    assert tot["fp32_bytes"] == summary.fp32_bytes and tot["int8_bytes"] == summary.int8_bytes


def test_fp16_floats_do_not_move_the_twins(tmp_path: Path) -> None:
    from subbit.commands.report import report_subbit

    model = converted({"method": "gq", "bits": 2, "granularity": "tensor"})
    a = export_model(model, tmp_path / "a.subbit", arch={})
    b = export_model(model, tmp_path / "b.subbit", arch={}, fp16_float_tensors=True)
    _, sections = data_sections(tmp_path / "b.subbit")
    for name, p in model.named_parameters():
        if ".subbit_quant." not in f".{name}":
            assert sections[name][:1] == ("F16",) and sections[name][2] == sizes.float_bytes(p.numel(), "F16")
    assert (a.fp32_bytes, a.int8_bytes) == (b.fp32_bytes, b.int8_bytes)
    ra, rb = report_subbit(tmp_path / "a.subbit")["totals"], report_subbit(tmp_path / "b.subbit")["totals"]
    assert (ra["fp32_bytes"], ra["int8_bytes"]) == (rb["fp32_bytes"], rb["int8_bytes"]) == (a.fp32_bytes, a.int8_bytes)


# -- a run: subbit export and subbit report of the run and of the file ---------------------------
def test_cli_export_and_report_agree_with_sizes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    quant = {"default": {"method": "gq", "bits": 4, "granularity": "tensor"},
             "rules": {"encoder.lstms.0.weight_ih_l0": {"method": "gq", "bits": 1, "granularity": "channel"},
                       "encoder.lstms.0.weight_hh_l0": {"method": "gq", "bits": 2, "granularity": "tensor"},
                       "encoder.lstms.1.weight_ih_l0": {"method": "gq", "bits": 8, "granularity": "channel"},
                       "joiner.out.weight": {"method": "uniform", "bits": 8, "granularity": "channel"},
                       "joiner.enc_proj.weight": {"method": "uniform", "bits": 4, "granularity": "tensor"}}}
    model = dummy_run(tmp_path / "run", "rnnt", quant)
    want = expected_quantized(model)
    assert {w[2] for w in want.values()} == {"table", "affine"}
    out, ej, fj, rj = (tmp_path / n for n in ("m.subbit", "e.json", "f.json", "r.json"))
    assert cli.main(["export", str(tmp_path / "run"), "--out", str(out), "--json", str(ej)]) == 0
    assert cli.main(["report", str(out), "--json", str(fj)]) == 0
    assert cli.main(["report", str(tmp_path / "run"), "--json", str(rj)]) == 0
    capsys.readouterr()
    exp, rfile, rrun = (json.loads(p.read_text()) for p in (ej, fj, rj))
    header, sections = data_sections(out)
    ex_rows = {t["name"]: t for t in exp["tensors"]}
    file_rows = {t["name"]: t for t in rfile["tensors"]}
    run_rows = {t["name"]: t for t in rrun["tensors"]}
    for name, (stored, ideal, kind, shape) in want.items():
        in_file = sum(sections[name + s][2] for s in (IDX_SUFFIX, CODEBOOK_SUFFIX, STEP_SUFFIX) if name + s in sections)
        assert in_file == stored == ex_rows[name]["stored"] == file_rows[name]["bytes"], name
        assert ideal == ex_rows[name]["theory"] == run_rows[name]["bytes"], name
        assert ex_rows[name]["codebook"] == kind
    floats = [t for t in rrun["tensors"] if t["kind"] == "float"]
    for t in floats:
        assert sections[t["name"]][2] == t["bytes"] == file_rows[t["name"]]["bytes"] == ex_rows[t["name"]]["stored"]
    tok = sections[TOKENIZER_TENSOR][2]
    assert exp["file_bytes"] == rfile["totals"]["total_bytes"] == out.stat().st_size
    assert exp["header_bytes"] == header == rfile["totals"]["total_bytes"] - rfile["totals"]["payload_bytes"]
    int8 = sum(sizes.int8_twin_bytes(w[3]) for w in want.values()) + sum(sizes.fp32_bytes(t["numel"]) for t in floats)
    fp32 = sum(sizes.fp32_bytes(math.prod(w[3])) for w in want.values()) + sum(sizes.fp32_bytes(t["numel"])
                                                                             for t in floats)  # fmt: skip
    assert exp["int8_bytes"] == rfile["totals"]["int8_bytes"] == rrun["totals"]["int8_bytes"] + tok == int8 + tok
    assert exp["fp32_bytes"] == rfile["totals"]["fp32_bytes"] == rrun["totals"]["fp32_bytes"] + tok == fp32 + tok
    assert exp["theory_bytes"] == sum(w[1] for w in want.values()) + sum(t["bytes"] for t in floats) + tok + header

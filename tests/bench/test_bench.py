"""Benchmark plumbing on tiny presets: adapters agree with offline decoding, rows carry the contract keys."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from subbit import cli
from subbit.asr.decode import greedy_search
from subbit.asr.models import build_model
from subbit.bench import ROW_KEYS, BenchOptions, check_targets, export_gq
from subbit.bench import memory
from subbit.bench.int8_baselines import (
    OrtStreamingModel,
    TorchStreamingModel,
    export_onnx_int8,
    ort_available,
    ort_weight_bytes,
    torch_int8_streaming_model,
    torch_weight_bytes,
)
from subbit.bench.latency import VariantSpec, percentile, run_variant, synth_audio, time_stream
from subbit.export.container import export_model, load_packed
from subbit.quant import QuantConfig, convert, prepare
from subbit.runtime.frontend import StreamingLogMel
from subbit.runtime.session import StreamingSession

torch.set_num_threads(1)
needs_ort = pytest.mark.skipif(not ort_available(), reason="onnxruntime/onnx not installed")


def tiny(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    m = build_model(arch, "tiny", vocab_size=12).eval()
    with torch.no_grad():
        m.joiner.out.weight.mul_(3.0)
        m.joiner.out.bias[0] += 1.0 if arch == "conformer" else 0.3
    return m


def stream_tokens(model: object, wave: np.ndarray, piece: int = 1111) -> list[int]:
    s = StreamingSession(model)
    for i in range(0, wave.size, piece):
        s.accept_audio(wave[i : i + piece])
    return s.finalize_tokens()


def offline(model: torch.nn.Module, wave: np.ndarray) -> list[int]:
    x = torch.from_numpy(StreamingLogMel().frames(wave))[None]
    with torch.no_grad():
        enc, lens = model.encoder(x, torch.tensor([x.shape[1]]))
        return greedy_search(model, enc, lens)[0]


def test_percentile_and_time_stream_with_a_fake_session() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert np.isnan(percentile([], 90))

    class Fake:
        def __init__(self) -> None:
            self.calls = 0

        def reset(self) -> None:
            self.calls = 0

        def accept_audio(self, x: np.ndarray) -> str:
            self.calls += 1
            return ""

        def finalize_tokens(self) -> list[int]:
            return [1, 2]

    t = time_stream(Fake(), np.zeros(1000, np.float32), 300, repeats=2)
    assert len(t.chunk_ms) == 8 and len(t.upl_ms) == 2 and t.tokens == 2
    s = t.summary()
    assert s["n_chunks"] == 4 and s["p90_ms"] >= s["p50_ms"] >= 0 and s["rtf"] > 0


@pytest.mark.parametrize("arch", ["rnnt", "conformer"])
def test_torch_adapter_equals_offline_greedy(arch: str) -> None:
    m = tiny(arch)
    wave = synth_audio(1.5, seed=2)
    expected = offline(m, wave)
    assert expected
    assert stream_tokens(TorchStreamingModel(m), wave) == expected


@needs_ort
@pytest.mark.parametrize("arch", ["rnnt", "conformer"])
def test_onnx_streaming_graphs_match_torch(arch: str, tmp_path: Path) -> None:
    """fp32 ORT graphs (state in/out, fixed-size Conformer cache + mask) decode like torch;
    the int8 graphs run and are smaller."""
    m = tiny(arch)
    wave = synth_audio(1.5, seed=2)
    export_onnx_int8(m, tmp_path / "fp32", quantize=False)
    assert stream_tokens(OrtStreamingModel(tmp_path / "fp32"), wave) == offline(m, wave)
    export_onnx_int8(m, tmp_path / "int8")
    assert isinstance(stream_tokens(OrtStreamingModel(tmp_path / "int8"), wave), list)
    assert ort_weight_bytes(tmp_path / "int8") < 0.6 * ort_weight_bytes(tmp_path / "fp32")


def test_torch_ao_int8_adapter_streams_and_counts_bytes() -> None:
    m = tiny("rnnt")
    fp32, int8 = torch_weight_bytes(m), torch_weight_bytes(m, int8=True)
    mats = [p for mod in m.modules() if isinstance(mod, (torch.nn.Linear, torch.nn.LSTM))
            for n, p in mod.named_parameters(recurse=False) if n.startswith("weight")]
    assert fp32 - int8 == sum(3 * p.numel() - 12 for p in mats)  # 4 -> 1 byte (+ scale, zero point)
    tokens = stream_tokens(torch_int8_streaming_model(m), synth_audio(1.0))
    assert all(0 < t < 12 for t in tokens)


def test_bench_export_equals_prepare_convert(tmp_path: Path) -> None:
    """The benchmark's shortcut (fresh GQ quantizer + encode per weight) writes the same model
    as prepare(default GQ rule) + convert + export."""
    m = tiny("conformer")
    export_gq(m, 3, tmp_path / "fast.subbit")
    prepare(m, QuantConfig.from_dict({"default": {"method": "gq", "bits": 3}}))
    convert(m)
    export_model(m, tmp_path / "slow.subbit", arch=m.config)
    a, b = load_packed(tmp_path / "fast.subbit"), load_packed(tmp_path / "slow.subbit")
    assert a.packed.keys() == b.packed.keys() and a.floats.keys() == b.floats.keys()
    for k in a.packed:
        np.testing.assert_array_equal(a.packed[k].packed, b.packed[k].packed)
        np.testing.assert_allclose(a.packed[k].codebook, b.packed[k].codebook, rtol=1e-6)
    for k in a.floats:
        np.testing.assert_array_equal(a.floats[k], b.floats[k])


def test_run_variant_row_has_contract_keys(tmp_path: Path) -> None:
    path = tmp_path / "m.subbit"
    export_gq(tiny("rnnt"), 4, path)
    row = run_variant(VariantSpec("subbit-4bit", "subbit", 4, 1, 0.5, str(path), repeats=1, warmup_s=0.2))
    assert set(ROW_KEYS) <= set(row)
    assert row["weight_bytes"] > 0 and row["peak_rss_bytes"] > 0 and row["p90_ms"] >= row["p50_ms"] > 0
    assert row["n_chunks"] == int(np.ceil(0.5 * 16000 / (row["chunk_ms"] * 16)))


def test_check_targets_compares_against_int8() -> None:
    rows = [
        {"name": "int8-torch.ao", "method": "torch-int8", "bits": 8, "threads": 1, "p90_ms": 10.0, "weight_bytes": 1000},
        {"name": "subbit-4bit", "method": "subbit", "bits": 4, "threads": 1, "p90_ms": 4.0, "weight_bytes": 520},
        {"name": "subbit-2bit", "method": "subbit", "bits": 2, "threads": 1, "p90_ms": 4.0, "weight_bytes": 300},
    ]
    t = {(x["target"].split(" <=")[0], x["target"].split(" x ")[-1]): x["met"] for x in check_targets(rows, "paper-rnnt")}
    assert t[("weight_bytes 4-bit", "torch-int8")] is True  # 520 <= 530
    assert t[("weight_bytes 2-bit", "torch-int8")] is False  # 300 > 280
    assert t[("p90 4-bit", "best int8 (int8-torch.ao)")] is True


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="preset"):
        BenchOptions(preset="huge")
    with pytest.raises(ValueError, match="bits"):
        BenchOptions(bits=(9,))
    with pytest.raises(ValueError, match="baselines"):
        BenchOptions(baselines=("tflite",))


def test_peak_rss_reset() -> None:
    if not memory.reset_peak_rss():
        pytest.skip("/proc/self/clear_refs not writable here")
    import mmap

    before = memory.hwm_bytes()
    # fresh pages from the kernel: a NumPy array could reuse heap memory that earlier tests
    # freed but glibc kept resident, which would not raise RSS at all
    buf = mmap.mmap(-1, 20_000_000)
    for off in range(0, len(buf), mmap.PAGESIZE):
        buf[off] = 1  # touch every page: 20 MB resident
    assert memory.hwm_bytes() >= before + 15_000_000
    buf.close()
    assert memory.reset_peak_rss()
    assert memory.hwm_bytes() <= memory.current_rss_bytes() + (1 << 20)


@pytest.mark.slow
def test_cli_bench_writes_json_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, png = tmp_path / "b.json", tmp_path / "b.png"
    rc = cli.main(["bench", "--preset", "tiny-conformer", "--quick", "--bits", "4", "--baselines", "fp32",
                   "--seconds", "1", "--no-matvec", "--no-progress", "--json", str(out), "--plot", str(png)])
    assert rc == 0
    result = json.loads(out.read_text())
    assert {"cpu", "flags", "cores", "torch", "numpy", "onnxruntime"} <= set(result["machine"])
    from subbit.runtime import native

    # the C runtime's rows come by default wherever the library loads, with the same row keys
    c_rows = ["libsubbit-4bit"] if native.available() else []
    assert [r["name"] for r in result["rows"]] == ["fp32-torch", "subbit-4bit", *c_rows]
    for r in result["rows"]:
        assert set(ROW_KEYS) <= set(r)
    assert result["rows"][1]["torch_imported"] is False  # the packed runtime runs without torch
    assert png.stat().st_size > 1000
    assert "subbit-4bit" in capsys.readouterr().out


def test_cli_bench_no_libsubbit_drops_the_c_rows(tmp_path: Path) -> None:
    out = tmp_path / "b.json"
    rc = cli.main(["bench", "--preset", "tiny-conformer", "--quick", "--bits", "4", "--baselines", "fp32",
                   "--seconds", "1", "--no-matvec", "--no-progress", "--no-libsubbit", "--json", str(out)])
    assert rc == 0
    assert [r["name"] for r in json.loads(out.read_text())["rows"]] == ["fp32-torch", "subbit-4bit"]


def test_scheduled_decoding_does_equal_work(tmp_path: Path) -> None:
    """The benchmark's fixed-rate decoding: one (non-blank) token every N encoder frames,
    whatever the weights, so every variant runs the predictor equally often."""
    from subbit.bench.latency import scheduled_session_class
    from subbit.runtime.models import PackedTransducer

    path = tmp_path / "m.subbit"
    export_gq(tiny("conformer"), 4, path)
    model = PackedTransducer.from_file(path)
    s = scheduled_session_class()(model, 2, model.vocab_size)
    wave = synth_audio(1.0)
    s.accept_audio(wave)
    tokens = s.finalize_tokens()
    assert s.frame > 4 and len(tokens) == (s.frame + 1) // 2
    assert all(0 < t < model.vocab_size for t in tokens)
    v = model.vocab_size
    want = [1 + (f * 7919) % (v - 1) for f in range(0, s.frame, 2)]
    assert tokens == [t if t != model.blank else 1 + t % (v - 1) for t in want]


def test_merge_rounds_takes_medians_and_max_rss() -> None:
    from subbit.bench import merge_rounds

    rows = [{"name": "a", "p50_ms": p, "p90_ms": 2 * p, "upl_ms": p, "rtf": p / 10, "peak_rss_bytes": p * 100,
             "stream_peak_rss_bytes": None} for p in (3.0, 1.0, 2.0)]
    m = merge_rounds(rows)
    assert m["p50_ms"] == 2.0 and m["p90_ms"] == 4.0 and m["p50_ms_rounds"] == [3.0, 1.0, 2.0]
    assert m["peak_rss_bytes"] == 300.0 and m["stream_peak_rss_bytes"] is None and m["rounds"] == 3


def test_the_onnxruntime_adapter_imports_no_torch() -> None:
    """The ORT variant's memory figure must be onnxruntime's alone: its adapter and the latency
    harness load without torch (the exporter, which needs torch, is a separate module)."""
    import subprocess
    import sys

    code = "import sys, subbit.bench.onnx_int8, subbit.bench.latency; sys.exit(int('torch' in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0

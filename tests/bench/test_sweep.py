"""``subbit bench --sweep``: cache sizes from a fake sysfs, widths in the intended bands, the JSON's
keys, ratios that follow from the stored rows, libsubbit rows, and refused input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from subbit import cli
from subbit.asr.models import build_model
from subbit.bench import ROW_KEYS, export_gq
from subbit.bench.caches import DEFAULT_CACHES, parse_size, read_cache_sizes
from subbit.bench.latency import VariantSpec, run_variant
from subbit.bench.sweep import (
    SweepOptions,
    band_of,
    band_targets,
    choose_points,
    int8_weight_bytes,
    point_ratios,
    scaled_overrides,
    sweep_targets,
)
from subbit.bench.torch_int8 import torch_weight_bytes
from subbit.runtime import native

needs_lib = pytest.mark.skipif(not native.available(), reason="libsubbit not built")


def fake_sysfs(root: Path, caches: dict[str, tuple[int, str, str]]) -> Path:
    """``root/index{i}/{level,type,size,shared_cpu_list}`` as Linux lays them out."""
    for i, (level, kind, size) in enumerate(caches.values()):
        d = root / f"index{i}"
        d.mkdir(parents=True)
        (d / "level").write_text(f"{level}\n")
        (d / "type").write_text(f"{kind}\n")
        (d / "size").write_text(f"{size}\n")
        (d / "shared_cpu_list").write_text("0\n")
    return root


TINY = {"L1d": (1, "Data", "16K"), "L1i": (1, "Instruction", "16K"), "L2": (2, "Unified", "64K"),
        "L3": (3, "Unified", "256K")}  # fmt: skip


def test_parse_size() -> None:
    assert parse_size("48K") == 48 << 10 and parse_size("2048K\n") == 2 << 20
    assert parse_size("32M") == 32 << 20 and parse_size("512") == 512 and parse_size("1KiB") == 1024
    for bad in ("", "K", "-4K", "0K", "12Q", "1.5M"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_read_cache_sizes_from_a_fake_sysfs(tmp_path: Path) -> None:
    c = read_cache_sizes(fake_sysfs(tmp_path / "cache", TINY))
    assert (c["L1d"], c["L1i"], c["L2"], c["L3"]) == (16 << 10, 16 << 10, 64 << 10, 256 << 10)
    assert c["source"] == "sysfs" and c["note"] == "" and c["shared_cpu_list"]["L3"] == "0"


def test_read_cache_sizes_falls_back_and_says_so(tmp_path: Path) -> None:
    c = read_cache_sizes(tmp_path / "missing")
    assert c["source"] == "default" and c["L2"] == DEFAULT_CACHES["L2"] and c["L3"] == DEFAULT_CACHES["L3"]
    assert "not readable" in c["note"]
    # an L2 only (a CPU without L3) and one unreadable entry: L3 defaulted, named in the note
    root = fake_sysfs(tmp_path / "part", {"L2": (2, "Unified", "1024K"), "bad": (3, "Unified", "lots")})
    c = read_cache_sizes(root)
    assert c["L2"] == 1 << 20 and c["L3"] == DEFAULT_CACHES["L3"] and c["source"] == "sysfs+default"
    assert "L3" in c["note"] and "index1" in c["note"]


def test_the_meta_count_is_the_built_models() -> None:
    ov = scaled_overrides("paper-rnnt", 40)
    assert ov["enc_hidden"] == 40 and all(v % 8 == 0 and v >= 8 for v in ov.values())
    torch.manual_seed(0)
    m = build_model("rnnt", "paper", vocab_size=256, **ov)
    assert int8_weight_bytes("paper-rnnt", 40) == torch_weight_bytes(m, int8=True)
    assert scaled_overrides("paper-conformer", 64)["d_model"] == 64


@pytest.mark.parametrize("preset,caches", [
    ("paper-rnnt", {"L2": 64 << 10, "L3": 256 << 10}),
    ("paper-rnnt", {"L2": 1 << 20, "L3": 32 << 20}),
    ("paper-conformer", {"L2": 2 << 20, "L3": 32 << 20}),
])  # fmt: skip
def test_widths_land_in_their_bands(preset: str, caches: dict[str, int]) -> None:
    points = choose_points(SweepOptions(preset=preset, max_weight_mb=1e4), caches)
    assert [p["intended_band"] for p in points] == ["L2", "L3", "beyond L3"]
    for p in points:
        assert p["int8_bytes_estimate"] == int8_weight_bytes(preset, p["width"])
        assert band_of(p["int8_bytes_estimate"], caches) == p["band"] == p["intended_band"], p
        assert p["in_intended_band"] and p["notes"] == []
    widths = [p["width"] for p in points]
    assert widths == sorted(widths) and len(set(widths)) == 3
    t = band_targets(caches)
    assert t["L2"] < caches["L2"] < t["L3"] <= caches["L3"] < t["beyond L3"]


def test_the_cap_keeps_the_last_point_inside_l3_and_says_so() -> None:
    caches = {"L2": 1 << 20, "L3": 480 << 20}
    points = choose_points(SweepOptions(max_weight_mb=40), caches)
    last = points[-1]
    assert last["intended_band"] == "beyond L3" and last["band"] == "L3" and last["beyond_l3"] is False
    assert last["int8_bytes_estimate"] <= 40e6 and not last["in_intended_band"]
    assert "not beyond L3" in last["notes"][0] and "--max-weight-mb" in last["notes"][0]
    # a cap low enough that the L3 and beyond-L3 bands meet at one width: measured once, said so
    merged = choose_points(SweepOptions(max_weight_mb=3), caches)
    assert [p["intended_band"] for p in merged] == ["L2", "L3"]
    assert "beyond L3" in merged[-1]["notes"][0] and "not beyond L3" in merged[-1]["notes"][0]


def test_ratios_come_from_the_rows() -> None:
    rows = [{"name": "int8-torch.ao", "method": "torch-int8", "bits": 8, "p50_ms": 2.0, "p90_ms": 4.0,
             "weight_bytes": 1000},
            {"name": "int8-onnxruntime", "method": "ort-int8", "bits": 8, "p50_ms": 1.5, "p90_ms": 3.0,
             "weight_bytes": 900},
            {"name": "libsubbit-2bit", "method": "libsubbit", "bits": 2, "p50_ms": 0.5, "p90_ms": 0.9,
             "weight_bytes": 270}]  # fmt: skip
    (q,) = point_ratios(rows)
    assert q["best_int8"] == "int8-onnxruntime"  # lowest p90
    assert q["time_ratio_p90"] == pytest.approx(0.3) and q["time_ratio_p50"] == pytest.approx(1 / 3)
    assert q["byte_ratio"] == pytest.approx(0.3) and q["nominal_byte_ratio"] == 0.25
    assert q["per_baseline"]["int8-torch.ao"]["time_ratio_p90"] == pytest.approx(0.225)
    (t,) = sweep_targets([{"width": 8, "band": "beyond L3", "beyond_l3": True, "ratios": [q]}])
    assert t["met"] and t["applies"] and t["relative"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="int8"):
        point_ratios(rows[2:])


@needs_lib
def test_libsubbit_variant_streams_the_python_sessions_chunks(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = tmp_path / "m.subbit"
    export_gq(build_model("rnnt", "tiny", vocab_size=12).eval(), 4, path)
    common = dict(threads=1, seconds=0.5, path=str(path), repeats=1, warmup_s=0.2, extra={"token_every": 0})
    c = run_variant(VariantSpec("libsubbit-4bit", "libsubbit", 4, **common))
    py = run_variant(VariantSpec("subbit-4bit", "subbit", 4, **{**common, "extra": {"token_every": 0}}))
    assert set(ROW_KEYS) <= set(c) and c["backend"] == "c" and py["backend"] == "c"
    assert c["chunk_ms"] == py["chunk_ms"] and c["n_chunks"] == py["n_chunks"] and c["tokens"] == py["tokens"]
    assert c["weight_bytes"] > 0 and c["kernel_path"] in ("portable", "avx2", "avx512")
    with pytest.raises(ValueError, match="greedily"):
        run_variant(VariantSpec("x", "libsubbit", 4, **{**common, "extra": {"token_every": 3}}))
    two = run_variant(VariantSpec("libsubbit-4bit", "libsubbit", 4, **{**common, "threads": 2}))
    assert two["threads"] == 2 and two["tokens"] == c["tokens"]  # worker threads: the same decoding


@needs_lib
@pytest.mark.slow
def test_cli_sweep_on_a_fake_sysfs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Tiny caches put the three points at tiny widths: a real (seconds-long) run end to end."""
    sysfs = fake_sysfs(tmp_path / "cache", TINY)
    out, png = tmp_path / "s.json", tmp_path / "s.png"
    rc = cli.main(["bench", "--sweep", "--cache-dir", str(sysfs), "--bits", "2,8", "--seconds", "0.4",
                   "--repeats", "1", "--rounds", "1", "--baselines", "torch-int8", "--no-progress",
                   "--json", str(out), "--plot", str(png)])
    assert rc == 0
    r = json.loads(out.read_text())
    assert {"kind", "arch", "machine", "commit", "command", "caches", "options", "points", "targets"} <= set(r)
    assert r["kind"] == "size-sweep" and r["arch"] == "rnnt" and r["commit"]
    assert r["caches"]["L2"] == 64 << 10 and r["caches"]["L3"] == 256 << 10 and r["caches"]["source"] == "sysfs"
    assert {"cpu", "cores", "kernels"} <= set(r["machine"])
    assert [p["band"] for p in r["points"]] == ["L2", "L3", "beyond L3"]
    for p in r["points"]:
        assert [x["name"] for x in p["rows"]] == ["int8-torch.ao", "libsubbit-2bit", "libsubbit-8bit"]
        assert all(set(ROW_KEYS) <= set(x) for x in p["rows"])
        assert p["tokens"] == [0]  # the blank bias: every variant did the same decoding work
        rows = {x["name"]: x for x in p["rows"]}
        assert p["int8_bytes"] == rows["int8-torch.ao"]["weight_bytes"] == p["int8_bytes_estimate"]
        for q in p["ratios"]:  # recomputed from the stored rows
            lib, ref = rows[q["name"]], rows[q["best_int8"]]
            assert lib["backend"] == "c" and lib["torch_imported"] is False  # the C runtime ran alone
            assert q["time_ratio_p50"] == pytest.approx(lib["p50_ms"] / ref["p50_ms"])
            assert q["time_ratio_p90"] == pytest.approx(lib["p90_ms"] / ref["p90_ms"])
            assert q["byte_ratio"] == pytest.approx(lib["weight_bytes"] / ref["weight_bytes"])
    assert np.isfinite([t["relative"] for t in r["targets"]]).all()
    assert png.stat().st_size > 1000
    text = capsys.readouterr().out
    assert "t p90" in text and "beyond L3" in text and f"wrote {out}" in text


@pytest.mark.parametrize("argv,msg", [
    (["--bits", "0"], "bits"),
    (["--bits", "2,9"], "bits"),
    (["--bits", "4,4"], "repeated"),
    (["--widths", "12"], "multiple of 8"),
    (["--baselines", "fp32"], "baselines"),
    (["--baselines", "none"], "baselines"),
    (["--threads", "2"], "--threads"),
    (["--token-every", "3"], "--token-every"),
    (["--model", "conformer", "--preset", "paper-rnnt"], "--model"),
    (["--preset", "tiny-rnnt", "--rounds", "0"], "rounds"),
])  # fmt: skip
def test_sweep_refuses_bad_input(argv: list[str], msg: str) -> None:
    with pytest.raises(SystemExit, match=msg):
        cli.main(["bench", "--sweep", "--no-progress", *argv])


@pytest.mark.parametrize("argv", [["--sweep", "--bits", "a"], ["--sweep", "--max-weight-mb", "-1"],
                                  ["--sweep", "--max-weight-mb", "x"], ["--max-weight-mb", "10"],
                                  ["--widths", "64"]])  # fmt: skip
def test_bad_flags_exit(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", *argv])
    assert exc.value.code != 0


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="preset"):
        SweepOptions(preset="paper-bifocal")
    with pytest.raises(ValueError, match="max_weight_mb"):
        SweepOptions(max_weight_mb=0)
    with pytest.raises(ValueError, match="bits"):
        SweepOptions(bits=())
    with pytest.raises(ValueError, match="multiple of 32"):
        SweepOptions(preset="paper-conformer", widths=(48,))

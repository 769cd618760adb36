"""asr.checkpoint directly: file names, atomic writes, safe loading, config.json checks, run lookup,
feature settings round trip, and the cleanup of interrupted writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

import subbit.runs
from subbit.asr import checkpoint as ck
from subbit.asr.checkpoint import (
    RunPaths,
    atomic_torch_save,
    atomic_write_json,
    features_config,
    frontend_from_config,
    load_checkpoint,
    model_state_from,
    read_run_config,
    run_dir_of,
    write_run_config,
)
from subbit.asr.features import LogMel


class NotAllowed:
    """A class a checkpoint must not be able to make us instantiate."""


def _run(tmp_path: Path) -> RunPaths:
    paths = RunPaths(tmp_path / "run")
    write_run_config(paths, model_config={"arch": "rnnt"}, tokenizer_kind="char", vocab_size=5, quant=None,
                     train_args={"lr": 1e-3}, data_dir=str(tmp_path))  # fmt: skip
    return paths


def test_run_paths_spell_every_file_once(tmp_path: Path) -> None:
    p = RunPaths(tmp_path)
    assert p.config == tmp_path / "config.json" and p.last == tmp_path / "checkpoints" / "last.pt"
    assert p.good.parent == p.best.parent == p.checkpoints and p.periodic(7).name == "step-00000007.pt"
    assert p.final.name == "final.pt" and p.log.name == "log.csv" and p.tokenizer.name == "tokenizer.model"


def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "x.pt"
    atomic_torch_save({"a": torch.ones(2)}, path)

    class Boom:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_torch_save({"a": Boom()}, path)
    assert torch.equal(load_checkpoint(path)["a"], torch.ones(2))
    assert sorted(os.listdir(tmp_path)) == ["x.pt"]


def test_load_checkpoint_unpickles_nothing_and_names_the_file(tmp_path: Path) -> None:
    evil = tmp_path / "evil.pt"
    torch.save({"x": NotAllowed()}, evil)
    with pytest.raises(ValueError, match="evil.pt: cannot read checkpoint"):
        load_checkpoint(evil)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pt"):
        load_checkpoint(garbage)
    listed = tmp_path / "list.pt"
    torch.save([1, 2], listed)
    with pytest.raises(ValueError, match="expected a dict, got list"):
        load_checkpoint(listed)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "nope.pt")


def test_model_state_from_a_checkpoint_or_a_bare_state_dict(tmp_path: Path) -> None:
    sd = torch.nn.Linear(2, 2).state_dict()
    torch.save({"model": sd, "step": 3}, tmp_path / "ck.pt")
    torch.save(sd, tmp_path / "sd.pt")
    for name in ("ck.pt", "sd.pt"):
        got = model_state_from(tmp_path / name)
        assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in sd)
    torch.save({"model": {"w": 1}}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="does not hold a model state dict"):
        model_state_from(tmp_path / "bad.pt")


def test_read_run_config_errors_name_the_file_and_field(tmp_path: Path) -> None:
    paths = _run(tmp_path)
    assert read_run_config(paths.root)["train_args"] == {"lr": 1e-3}
    cfg = json.loads(paths.config.read_text())
    for broken, match in [({k: v for k, v in cfg.items() if k != "quant"}, r"missing field\(s\) \['quant'\]"),
                          ({**cfg, "schema_version": 9}, "schema_version 9"),
                          ({**cfg, "model": []}, "'model' must be an object")]:  # fmt: skip
        atomic_write_json(paths.config, broken)
        with pytest.raises(ValueError, match=match):
            read_run_config(paths.root)
    paths.config.write_text("{oops")
    with pytest.raises(ValueError, match="config.json: invalid JSON at line 1"):
        read_run_config(paths.root)
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        read_run_config(tmp_path / "elsewhere")


def test_run_dir_of_finds_the_run_from_its_files(tmp_path: Path) -> None:
    paths = _run(tmp_path)
    for p in (paths.root, paths.final, paths.last):
        assert run_dir_of(p) == paths.root
    with pytest.raises(FileNotFoundError, match="not a subbit run"):
        run_dir_of(tmp_path / "x" / "y.pt")


def test_features_round_trip_through_config(tmp_path: Path) -> None:
    fe = LogMel(n_mels=20)
    fe.set_stats(torch.linspace(-1, 1, 20), torch.linspace(0.5, 2, 20))
    back = frontend_from_config({"features": json.loads(json.dumps(features_config(fe)))})
    assert (back.n_mels, back.n_fft, back.hop_length, back.sample_rate) == (20, fe.n_fft, fe.hop_length,
                                                                            fe.sample_rate)  # fmt: skip
    x = torch.randn(1, 4000)
    torch.testing.assert_close(back(x), fe(x))
    assert isinstance(frontend_from_config({}), LogMel)
    with pytest.raises(ValueError, match="features.kind"):
        frontend_from_config({"features": {"kind": "mfcc"}})


def test_clean_partial_writes_removes_only_temp_files(tmp_path: Path) -> None:
    paths = RunPaths(tmp_path)
    atomic_torch_save({"step": 1}, paths.last)
    tmp = paths.checkpoints / ".step-00000004.pt.x1.tmp"
    tmp.write_bytes(b"half")
    assert paths.clean_partial_writes() == [tmp]
    assert sorted(p.name for p in paths.checkpoints.iterdir()) == ["last.pt"]


def test_load_run_old_import_path_is_the_new_function() -> None:
    assert ck.load_run is subbit.runs.load_run and ck.LoadedRun is subbit.runs.LoadedRun
    with pytest.raises(AttributeError):
        ck.no_such_name  # noqa: B018

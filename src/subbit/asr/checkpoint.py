"""The training run directory's files: names, atomic writes, checkpoints and config.json.

Rebuilding a model from a run (``load_run``) is one level up, in :mod:`subbit.runs`.

A run directory holds everything needed to rebuild, resume or evaluate a model::

    RUN/config.json          model config, tokenizer kind, quant config (or null), train args,
                             feature settings with the train set's global mean/std
    RUN/tokenizer.model      Tokenizer.save
    RUN/checkpoints/last.pt  full training state (model, optimizer, schedules, RNG, data position)
    RUN/checkpoints/best.pt  same, at the best dev WER (when --eval-every is used)
    RUN/final.pt             the finished model's state dict (after subbit.quant.convert for QAT)
    RUN/log.csv              one row per step

Every file is written to a temporary name in the same directory and then ``os.replace``d, so a
run killed at any moment leaves either the old or the new file, never half of one. Nothing is
ever unpickled: checkpoints are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import torch

from subbit.asr.features import LogMel
from subbit.quant.modules import refresh

SCHEMA_VERSION = 1
CONFIG_KEYS = ("schema_version", "model", "tokenizer", "quant", "train_args", "data")


class _File:
    """A path below the run directory: one line per file name instead of a property each."""

    def __init__(self, *parts: str, doc: str = "") -> None:
        self.parts = parts
        self.__doc__ = doc or "RUN/" + "/".join(parts)

    @overload
    def __get__(self, paths: None, owner: type | None = None) -> _File: ...
    @overload
    def __get__(self, paths: RunPaths, owner: type | None = None) -> Path: ...
    def __get__(self, paths: RunPaths | None, owner: type | None = None) -> Path | _File:
        return self if paths is None else paths.root.joinpath(*self.parts)


@dataclass(frozen=True)
class RunPaths:
    """Names of the files in a run directory (one place, so nobody spells them twice)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    config = _File("config.json")
    tokenizer = _File("tokenizer.model")
    checkpoints = _File("checkpoints")
    last = _File("checkpoints", "last.pt")
    best = _File("checkpoints", "best.pt")
    good = _File("checkpoints", "good.pt", doc="The last checkpoint written while the loss was healthy "
                                                "(kept by the divergence guard).")
    final = _File("final.pt")
    log = _File("log.csv")
    eval_log = _File("eval.csv")

    def periodic(self, step: int) -> Path:
        return self.checkpoints / f"step-{step:08d}.pt"

    def clean_partial_writes(self) -> list[Path]:
        """Remove the temporary files of writes a kill interrupted (``.NAME.*.tmp``); the removed paths."""
        if not self.checkpoints.is_dir():
            return []
        gone = [p for p in self.checkpoints.glob(".*.tmp") if p.is_file()]
        for p in gone:
            p.unlink(missing_ok=True)
        return gone


def _atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temp file in the same directory, then rename over ``path``."""
    _atomic_write(Path(path), lambda fh: torch.save(obj, fh))


def atomic_write_text(path: str | Path, text: str) -> None:
    _atomic_write(Path(path), lambda fh: fh.write(text), mode="w")


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint or state dict without unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # corrupt, truncated or not a torch file
        raise ValueError(f"{path}: cannot read checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict, got {type(obj).__name__}")
    return obj


def write_run_config(
    paths: RunPaths,
    *,
    model_config: dict[str, Any],
    tokenizer_kind: str,
    vocab_size: int,
    quant: dict[str, Any] | None,
    train_args: dict[str, Any],
    data_dir: str,
    features: dict[str, Any] | None = None,
) -> dict[str, Any]:
    config = {
        "schema_version": SCHEMA_VERSION,
        "model": model_config,
        "tokenizer": {"kind": tokenizer_kind, "vocab_size": int(vocab_size)},
        "quant": quant,
        "train_args": train_args,
        "data": data_dir,
        "features": features,
    }
    atomic_write_json(paths.config, config)
    return config


def read_json_object(path: Path, hint: str = "") -> dict[str, Any]:
    """A JSON file that must hold an object; errors name the file and the line, then ``hint``."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}{hint}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object{hint}")
    return data


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """Load and check ``RUN/config.json`` (errors name the file and the field)."""
    path = RunPaths(Path(run_dir)).config
    if not path.is_file():
        raise FileNotFoundError(f"not a run directory (no config.json): {run_dir}")
    config = read_json_object(path)
    missing = [k for k in CONFIG_KEYS if k not in config]
    if missing:
        raise ValueError(f"{path}: missing field(s) {missing}")
    if config["schema_version"] != SCHEMA_VERSION:
        raise ValueError(
            f"{path}: schema_version {config['schema_version']!r} is not supported (expected {SCHEMA_VERSION})"
        )
    if not isinstance(config["model"], dict):
        raise ValueError(f"{path}: field 'model' must be an object")
    return config


def run_dir_of(path: str | Path) -> Path:
    """The run directory a path belongs to: RUN, RUN/final.pt or RUN/checkpoints/x.pt."""
    path = Path(path)
    for cand in (path, path.parent, path.parent.parent):
        if (cand / "config.json").is_file():
            return cand
    raise FileNotFoundError(f"{path}: no config.json in it or its parents (not a subbit run)")


def model_state_from(path: Path) -> dict[str, torch.Tensor]:
    """The model state dict stored in a checkpoint (``{"model": ...}``) or a bare state dict."""
    obj = load_checkpoint(path)
    state = obj.get("model", obj)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: does not hold a model state dict")
    return state


def features_config(frontend: Any) -> dict[str, Any]:
    """The log-mel frontend's settings and global mean/std, as stored in config.json."""
    return {
        "kind": "logmel",
        "sample_rate": int(frontend.sample_rate),
        "n_fft": int(frontend.n_fft),
        "hop_length": int(frontend.hop_length),
        "n_mels": int(frontend.n_mels),
        "mean": [float(x) for x in frontend.mean],
        "std": [float(x) for x in frontend.std],
    }


def frontend_from_config(config: dict[str, Any]) -> LogMel:
    """The LogMel frontend a run was trained with (global normalisation included).

    Runs without a ``features`` entry used the default LogMel without normalisation.
    """
    feats = config.get("features")
    if not feats:
        return LogMel()
    if feats.get("kind") != "logmel":
        raise ValueError(f"config.json: features.kind {feats.get('kind')!r} is not supported (expected 'logmel')")
    fe = LogMel(sample_rate=feats["sample_rate"], n_fft=feats["n_fft"], hop_length=feats["hop_length"],
                n_mels=feats["n_mels"])
    fe.set_stats(torch.tensor(feats["mean"]), torch.tensor(feats["std"]))
    return fe


def sync_quantized_weights(model: torch.nn.Module) -> None:
    """Recompute the plain-tensor weights that quantized modules compute with.

    ``Module.to(device)`` moves parameters and buffers but not those derived tensors; code that
    reads them before the next forward (e.g. a predictor's ``init_state`` taking the embedding's
    device) would otherwise see the old device or pre-``load_state_dict`` values.
    """
    with torch.no_grad():
        for module in model.modules():
            refresh(module)


def __getattr__(name: str) -> Any:
    """``load_run`` and ``LoadedRun`` moved to :mod:`subbit.runs`; the old path still works."""
    if name in ("load_run", "LoadedRun"):
        # lazy: subbit.runs imports this module (an import at the top would be a cycle)
        import subbit.runs

        return getattr(subbit.runs, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

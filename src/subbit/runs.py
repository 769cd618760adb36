"""Run-level operations: load a run, write a run directory, export a run.

A *run* is the directory ``subbit train`` writes (file names in
:class:`subbit.asr.checkpoint.RunPaths`). Everything after training starts here: ``eval``,
``export``, ``report``, ``demo``, ``compare`` and ``study`` rebuild the model with
:func:`load_run`; ``export`` and the demo write the ``.subbit`` file with :func:`export_run`;
post-training quantization and tests write a finished run with :func:`write_run`.

This module sits above ``subbit.asr`` and ``subbit.export`` and below ``commands`` and
``experiments``, so neither the CLI nor the experiments carry their own copy.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import subbit.quant as sq
from subbit.asr.checkpoint import (
    RunPaths,
    atomic_torch_save,
    frontend_from_config,
    model_state_from,
    read_run_config,
    sync_quantized_weights,
    write_run_config,
)
from subbit.asr.features import LogMel
from subbit.asr.models import build_from_config
from subbit.asr.tokenizer import Tokenizer
from subbit.export import ExportSummary, export_model, load_packed
from subbit.quant.base import WeightQuantizer

log = logging.getLogger(__name__)

WHICH = ("final", "last", "best")


@dataclass
class LoadedRun:
    """A model rebuilt from a run directory, ready for eval, export or benchmarking."""

    model: torch.nn.Module
    config: dict[str, Any]
    tokenizer: Tokenizer
    quantized: bool
    converted: bool
    run_dir: Path
    which: str
    frontend: LogMel | None = None


def build_run_model(config: dict[str, Any]) -> torch.nn.Module:
    """The (fp32 or quant-prepared) model described by a *run* config (``RUN/config.json``),
    untrained. The model part alone is built by :func:`subbit.asr.models.build_from_config`."""
    model = build_from_config(config["model"])
    if config.get("quant"):
        model = sq.prepare(model, sq.QuantConfig.from_dict(config["quant"]))
    return model


def _all_converted(model: torch.nn.Module) -> bool:
    qs = [m for m in model.modules() if isinstance(m, WeightQuantizer)]
    return bool(qs) and all(bool(q.converted) for q in qs)


def load_run(run_dir: str | Path, which: str = "final", map_location: str = "cpu") -> LoadedRun:
    """Rebuild a run's model from its config and load its weights.

    ``which``: "final" (RUN/final.pt: the finished, converted model), "last" or "best"
    (the model in that training checkpoint; for QAT runs still soft, not converted).
    """
    if which not in WHICH:
        raise ValueError(f"which must be 'final', 'last' or 'best', got {which!r}")
    paths = RunPaths(Path(run_dir))
    config = read_run_config(paths.root)
    weights = {"final": paths.final, "last": paths.last, "best": paths.best}[which]
    if not weights.is_file():
        hint = " (training not finished? try which='last')" if which == "final" else ""
        raise FileNotFoundError(f"{weights} not found{hint}")
    model = build_run_model(config)
    model.load_state_dict(model_state_from(weights), strict=True)
    model.to(map_location)
    quantized = bool(config.get("quant"))
    if quantized:
        sync_quantized_weights(model)
    model.eval()
    if not paths.tokenizer.is_file():
        raise FileNotFoundError(f"{paths.tokenizer} not found")
    tokenizer = Tokenizer.load(paths.tokenizer)
    converted = quantized and _all_converted(model)
    return LoadedRun(model, config, tokenizer, quantized, converted, paths.root, which, frontend_from_config(config))


def write_run(
    run_dir: str | Path,
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    *,
    quant: dict[str, Any] | None,
    train_args: dict[str, Any],
    data_dir: str,
    features: dict[str, Any] | None = None,
    model_config: dict[str, Any] | None = None,
) -> RunPaths:
    """A finished run directory for a model that did not come out of ``subbit train`` (PTQ, tests):
    ``config.json``, ``tokenizer.model``, ``final.pt`` and, for a quantized model, the report.

    ``model_config`` defaults to ``model.config``; ``quant`` is the config ``model`` was prepared with.
    """
    paths = RunPaths(Path(run_dir))
    paths.root.mkdir(parents=True, exist_ok=True)
    cfg = model_config if model_config is not None else getattr(model, "config", None)
    if not isinstance(cfg, dict):
        raise ValueError("write_run: the model has no .config dict; pass model_config")
    write_run_config(paths, model_config=cfg, tokenizer_kind=str(tokenizer.kind), vocab_size=tokenizer.vocab_size,
                     quant=quant, train_args=train_args, data_dir=data_dir, features=features)  # fmt: skip
    tokenizer.save(paths.tokenizer)
    if quant:
        (paths.root / "quant_report.txt").write_text(str(sq.report(model)) + "\n")
    atomic_torch_save(model.state_dict(), paths.final)
    return paths


def export_loaded(loaded: LoadedRun, out: str | Path, *, fp16: bool = False,
                  extra: dict[str, Any] | None = None) -> ExportSummary:
    """Write a loaded run's model as a ``.subbit`` file and read it back through the validating loader.

    ``extra`` is merged over the manifest's default extras (the run's features and quant config).
    """
    manifest_extra = {"features": loaded.config.get("features"), "quant": loaded.config.get("quant"),
                      **(extra or {})}  # fmt: skip
    return export_with_extra(loaded, out, extra=manifest_extra, fp16=fp16)


def export_with_extra(loaded: LoadedRun, out: str | Path, *, extra: dict[str, Any],
                      fp16: bool = False) -> ExportSummary:
    """:func:`export_loaded` with exactly ``extra`` as the manifest's extras, no defaults merged in.

    ``compare`` writes ``{"recipe", "features"}`` only, so a re-exported recipe's file keeps the
    size its committed study cell recorded.
    """
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"--out: {out} is a directory; give a file name, e.g. {out / 'model.subbit'}")
    model = loaded.model
    arch = getattr(model, "config", None)
    arch = dict(arch) if isinstance(arch, dict) else dict(loaded.config.get("model", {}))
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = export_model(
        model, out, arch=arch, tokenizer_bytes=loaded.tokenizer.to_bytes(), fp16_float_tensors=fp16,
        extra=extra, tokenizer_kind=str(getattr(loaded.tokenizer, "kind", "bytes")),
    )  # fmt: skip
    load_packed(out)  # read it back before saying it is done
    return summary


def export_run(run: str | Path, out: str | Path, which: str = "final", fp16: bool = False) -> ExportSummary:
    """Export a run's model to ``out`` (``subbit export``, ``subbit demo``); returns the exporter's summary."""
    if Path(out).is_dir():  # before loading the run: the mistake is cheap to report
        raise ValueError(f"--out: {out} is a directory; give a file name, e.g. {Path(out) / 'model.subbit'}")
    loaded = load_run(run, which=which)
    if not loaded.quantized:
        log.warning("%s is an fp32 run: every tensor is stored in float (nothing to pack)", run)
    elif not loaded.converted:
        log.warning("%s (%s) is not converted: exporting the hard assignment of a soft model", run, which)
    return export_loaded(loaded, out, fp16=fp16, extra={"source": {"run": str(Path(run).resolve()), "which": which}})


__all__ = ["WHICH", "LoadedRun", "build_run_model", "export_loaded", "export_run", "export_with_extra", "load_run",
           "write_run"]

"""Run recipes against one fp32 model with one budget, and tabulate WER against packed size.

Layout of an output directory (shared by ``subbit compare`` and every ``--ablation``)::

    OUT/fp32-base/            the fp32 run, when none is given (--fp32-run)
    OUT/fp32-init.subbit      that fp32 model exported (the file-size reference)
    OUT/runs/<recipe>/        one run per recipe (+ compare.json fingerprint, model.subbit)
    OUT/results/<recipe>.json one result per recipe, written as soon as it is known
    OUT/<name>.json|.md|*.png the table of this invocation (name: results or ablation-<x>)

Resumable at every level: a finished recipe (its result file holds every split asked for) is
skipped; a finished run whose evaluation was cut short is only evaluated; a run killed while
training is resumed from its last checkpoint. A run directory made with different settings
(recipe config, budget, data, init, seed) is refused rather than silently reused.

This module runs the recipes; the settings are :mod:`compare_config`, the run bookkeeping
:mod:`compare_runs`, the sizes :mod:`compare_sizes` and the tables and plots :mod:`compare_table`.
Their public names are re-exported here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

import subbit.quant as sq
from subbit.asr.checkpoint import RunPaths, read_run_config
from subbit.asr.data import read_manifest
from subbit.asr.evaluate import evaluate
from subbit.asr.train import TrainConfig, TrainingDiverged, TrainResult, train
from subbit.experiments.compare_config import FP32_BASE, REFERENCE, ROW_KEYS, CompareConfig, CompareResult
from subbit.experiments.compare_runs import (
    check_fingerprint,
    clear_partial,
    fingerprint,
    init_identity,
    read_json,
    run_log_totals,
    weights_of,
    write_json,
)
from subbit.experiments.compare_sizes import deploy_bytes, export_size, theory_sizes
from subbit.experiments.compare_table import format_row_line, mark_lossless, markdown_table, write_outputs
from subbit.experiments.recipes import Recipe, quantizable_names
from subbit.runs import LoadedRun, load_run, write_run

# the names study_plan reads result files with
_read_json, _write_json = read_json, write_json

log = logging.getLogger(__name__)


# -- fp32 base ---------------------------------------------------------------------------------
def ensure_fp32(cfg: CompareConfig) -> Path:
    """The fp32 run every recipe starts from: given, already in OUT, or trained (resumed) now."""
    if cfg.fp32_run:
        run = Path(cfg.fp32_run)
        config = read_run_config(run)
        if config.get("quant"):
            raise ValueError(f"--fp32-run: {run} is a quantized run; give an fp32 run")
        weights_of(run)
        if not RunPaths(run).final.is_file():
            log.warning("%s has no final.pt yet: starting from checkpoints/last.pt", run)
        return run
    run = cfg.root / FP32_BASE
    paths = RunPaths(run)
    if paths.final.is_file():
        log.info("fp32 base: reusing %s", run)
        return run
    resume = paths.last.is_file()
    if not resume and cfg.fp32_minutes is None and cfg.fp32_steps is None:
        raise ValueError("no fp32 model: give --fp32-run RUN, or --fp32-minutes M / --fp32-steps N to train one")
    if cfg.data is None:
        raise ValueError("--data is required to train the fp32 base model")
    if resume:  # the stored train_args win; the budget given here is a placeholder
        tc = TrainConfig(data=cfg.data, out=str(run), steps=1, resume=True, threads=cfg.threads, device=cfg.device,
                         progress=cfg.progress)
    else:
        tc = TrainConfig(
            data=cfg.data, out=str(run), model=cfg.model, preset=cfg.preset, minutes=cfg.fp32_minutes,
            steps=cfg.fp32_steps, batch_size=cfg.batch_size or 16, seed=cfg.seed,
            augment=True if cfg.augment is None else cfg.augment,
            tokenizer=cfg.tokenizer, vocab_size=cfg.vocab_size, ckpt_every=cfg.ckpt_every, threads=cfg.threads,
            device=cfg.device, progress=cfg.progress,
        )
    if not resume:
        clear_partial(run)
    log.info("fp32 base: %s %s", "resuming" if resume else "training", run)
    _train(tc)
    return run


def _train(tc: TrainConfig) -> TrainResult:
    """The one call that trains (tests replace it to count or stop training)."""
    return train(tc)


# -- one recipe --------------------------------------------------------------------------------
def _run_ptq(recipe: Recipe, init: Path, run: Path) -> None:
    """Prepare + convert without training, saved as a run directory (so eval/export/report work)."""
    loaded = load_run(init, which=weights_of(init))
    model = loaded.model
    qc = recipe.quant_config(quantizable_names(model))
    sq.prepare(model, qc)
    sq.convert(model)
    run.mkdir(parents=True, exist_ok=True)
    args = dict(loaded.config.get("train_args") or {})
    args.update({"out": str(run), "init": str(init), "quant": str(run / "quant.json"), "ptq": True})
    qc.save(run / "quant.json")
    write_run(run, model, loaded.tokenizer, quant=qc.to_dict(), train_args=args,
              data_dir=str(loaded.config.get("data", "")), features=loaded.config.get("features"),
              model_config=loaded.config["model"])  # fmt: skip


def _train_recipe(recipe: Recipe, cfg: CompareConfig, init: Path, run: Path) -> str:
    """Train (or resume) one recipe's run; returns "done" or "diverged"."""
    paths = RunPaths(run)
    if paths.final.is_file():
        return "done"
    resume = paths.last.is_file()
    quant_path = None
    if recipe.quantized:
        quant_path = run / "quant.json"
        if not resume:
            names = quantizable_names(load_run(init, which=weights_of(init)).model)
            run.mkdir(parents=True, exist_ok=True)
            recipe.quant_config(names).save(quant_path)
    else:
        run.mkdir(parents=True, exist_ok=True)
    if not resume:
        clear_partial(run)
    tc = TrainConfig(
        data=cfg.data or "", out=str(run), minutes=cfg.minutes, steps=cfg.steps,
        model=cfg.model, preset=cfg.preset,  # the warm start builds the model; these name it in logs and config
        quant=str(quant_path) if quant_path else None, init=None if resume else str(init), resume=resume,
        batch_size=cfg.batch_size, lr=cfg.lr, warmup_steps=cfg.warmup_steps, seed=cfg.seed, augment=cfg.augment,
        ckpt_every=cfg.ckpt_every, threads=cfg.threads, device=cfg.device, progress=cfg.progress,
        eval_every=cfg.curve_every, eval_limit=cfg.curve_limit,
        **recipe.schedule,
    )
    try:
        result = _train(tc)
    except TrainingDiverged as exc:
        log.error("%s diverged: %s", recipe.name, exc)
        return "diverged"
    if not paths.final.is_file():
        raise RuntimeError(f"{run}: training stopped at step {getattr(result, 'steps', '?')} before the end "
                           f"({getattr(result, 'stopped', '?')}); run the same command again to resume")
    return "done"


def _evaluate(model: torch.nn.Module, loaded: LoadedRun, cfg: CompareConfig, data: Path,
              split: str) -> dict[str, Any]:
    res = evaluate(model, loaded.tokenizer, read_manifest(data / f"{split}.jsonl"), limit=cfg.eval_limit,
                   device=cfg.device, split=split, progress=cfg.progress, frontend=loaded.frontend)
    # per-utterance counts, so a study can put paired bootstrap intervals on any two rows
    return {"wer": res.wer, "utterances": len(res.utts), "ref_words": res.ref_words, "limit": cfg.eval_limit,
            "utt_ids": [u.id for u in res.utts], "utt_errors": [u.errors for u in res.utts],
            "utt_words": [u.ref_words for u in res.utts]}


def evaluate_recipe(name: str, method: str, run: Path, cfg: CompareConfig, data: Path, fp: dict[str, Any],
                    result_path: Path, fp32_bytes: int, fp32_file: int | None, subbit_path: Path | None,
                    status: str = "done") -> dict[str, Any]:
    """Evaluate the missing splits, measure sizes, and write the recipe's result file."""
    stored = read_json(result_path) or {}
    evals: dict[str, Any] = dict(stored.get("eval") or {})
    row = dict(stored.get("row") or {})
    todo = [s for s in cfg.splits if (evals.get(s) or {}).get("limit", "x") != cfg.eval_limit]
    need_size = "size_theory_bytes" not in row or (subbit_path is not None and row.get("size_file_bytes") is None
                                                   and cfg.export)
    if status == "done" and (todo or need_size):
        loaded = load_run(run, which="final" if name != REFERENCE else weights_of(run), map_location=cfg.device)
        model = loaded.model
        for split in todo:
            log.info("%s: evaluating %s", name, split)
            evals[split] = _evaluate(model, loaded, cfg, data, split)
            write_json(result_path, {"fingerprint": fp, "eval": evals, "row": row})
        if need_size:
            bits, theory, tensors = theory_sizes(model)
            file_bytes = None
            if subbit_path is not None and cfg.export:
                file_bytes = (subbit_path.stat().st_size if subbit_path.is_file()
                              else export_size(loaded, subbit_path, name))
            row.update({"bits": bits, "size_theory_bytes": theory, "size_file_bytes": file_bytes,
                        "size_deploy_bytes": deploy_bytes(model), "tensors": tensors})
    steps, minutes = run_log_totals(run) if name != REFERENCE else (0, 0.0)
    theory, file_bytes = row.get("size_theory_bytes"), row.get("size_file_bytes")
    use_file = file_bytes is not None and fp32_file is not None
    size = file_bytes if use_file else theory
    ref = fp32_file if use_file else fp32_bytes
    row.update({
        "recipe": name, "method": method, "status": status, "run": str(run),
        "wer": {s: (evals[s]["wer"] if s in evals else None) for s in cfg.splits},
        "size_bytes": size, "fp32_bytes": ref,
        "size_vs_fp32": (size / ref) if (size and ref) else None,
        "deploy_vs_fp32": (row["size_deploy_bytes"] / fp32_bytes) if row.get("size_deploy_bytes") else None,
        "train_minutes": round(minutes, 3), "steps": steps,
    })
    row.setdefault("bits", None)
    write_json(result_path, {"fingerprint": fp, "eval": evals, "row": row})
    return row


# -- the whole comparison ------------------------------------------------------------------------
def _check_data(cfg: CompareConfig, fp32: Path) -> Path:
    data = Path(cfg.data) if cfg.data else Path(read_run_config(fp32)["data"])
    if not (data / "train.jsonl").is_file():
        raise FileNotFoundError(f"--data: no train.jsonl in {data}")
    missing = [s for s in cfg.splits if not (data / f"{s}.jsonl").is_file()]
    if missing:
        raise FileNotFoundError(f"--split: no manifest {data / (missing[0] + '.jsonl')}")
    return data


def _inherit_train_settings(cfg: CompareConfig, fp32: Path) -> None:
    """Fine-tune with the fp32 run's batch size and augmentation unless told otherwise."""
    stored = read_run_config(fp32).get("train_args") or {}
    if cfg.batch_size is None:
        cfg.batch_size = int(stored.get("batch_size") or 16)
    if cfg.augment is None:
        cfg.augment = bool(stored.get("augment", True))
    log.info("fine-tuning every recipe with batch size %d, augmentation %s", cfg.batch_size,
             "on" if cfg.augment else "off")


def run_compare(cfg: CompareConfig, recipes: Sequence[Recipe], name: str = "results",
                kind: str = "compare") -> CompareResult:
    """Train/evaluate every recipe (skipping finished ones) and write ``OUT/<name>.{json,md,png}``.

    ``kind="ablation"`` draws a WER bar chart per variant instead of WER vs size.
    """
    if not recipes:
        raise ValueError("--recipes: nothing to run")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    root = cfg.root
    root.mkdir(parents=True, exist_ok=True)
    if cfg.data is not None:  # fail on a missing split before any training starts
        _check_data(cfg, Path(cfg.data))
    fp32 = ensure_fp32(cfg)
    data = _check_data(cfg, fp32)
    if cfg.data is None:
        cfg.data = str(data)
    _inherit_train_settings(cfg, fp32)

    # fp32 reference: parameter bytes, the exported file, WER without fine-tuning
    results_dir = root / "results"
    results_dir.mkdir(exist_ok=True)
    init_id = init_identity(fp32)
    ref_fp = {"init": init_id, "data": str(data.resolve())}
    ref_path = results_dir / f"{REFERENCE}.json"
    check_fingerprint(ref_path, ref_fp, f"{ref_path}")
    init = load_run(fp32, which=weights_of(fp32))
    fp32_bytes = 4 * sum(p.numel() for p in init.model.parameters())
    ref_file = root / f"{REFERENCE}.subbit"
    fp32_file = None
    if cfg.export:
        fp32_file = ref_file.stat().st_size if ref_file.is_file() else export_size(init, ref_file, REFERENCE)
    del init
    rows = [evaluate_recipe(REFERENCE, "fp32", fp32, cfg, data, ref_fp, ref_path, fp32_bytes, fp32_file, ref_file)]

    bar = tqdm(recipes, desc=kind, unit="recipe", disable=not cfg.progress)
    for i, recipe in enumerate(bar):
        bar.set_postfix(recipe=recipe.name)
        run = root / "runs" / recipe.name
        fp = fingerprint(recipe, cfg, init_id)
        result_path = results_dir / f"{recipe.name}.json"
        check_fingerprint(run / "compare.json", fp, f"run {run}")
        check_fingerprint(result_path, fp, f"result {result_path}")
        stored = (read_json(result_path) or {}).get("row") or {}
        status = stored.get("status", "done")
        if status != "diverged":
            tag = f"[{i + 1}/{len(recipes)}] {recipe.name}"
            if not (run / "final.pt").is_file():
                log.info("%s: %s", tag, "post-training quantization" if not recipe.train else "training")
                run.mkdir(parents=True, exist_ok=True)
                write_json(run / "compare.json", {"fingerprint": fp, "recipe": recipe.to_dict()})
                if recipe.train:
                    status = _train_recipe(recipe, cfg, fp32, run)
                else:
                    _run_ptq(recipe, fp32, run)
            else:
                log.info("%s: trained already (%s)", tag, run)
        row = evaluate_recipe(recipe.name, recipe.method, run, cfg, data, fp, result_path, fp32_bytes, fp32_file,
                              run / "model.subbit", status)
        rows.append(row)
        bar.write(format_row_line(row, cfg.splits))
    bar.close()
    files = write_outputs(cfg, rows, name, kind)
    return CompareResult(rows, files)


__all__ = [
    "FP32_BASE", "REFERENCE", "ROW_KEYS", "CompareConfig", "CompareResult", "check_fingerprint", "deploy_bytes",
    "ensure_fp32", "evaluate_recipe", "fingerprint", "format_row_line", "init_identity", "mark_lossless",
    "markdown_table", "run_compare", "theory_sizes", "write_outputs",
]

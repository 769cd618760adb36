"""``subbit study``: the paper's claims on one corpus, with seeds and confidence intervals.

The study is a set of *cells*: (architecture, recipe, fine-tuning seed). Each cell is trained
and evaluated by :func:`subbit.experiments.compare.run_compare` (from one fp32 base per
architecture, with one step budget for every recipe) and then reduced to a small JSON file
under ``OUT/cells/`` holding the row and the per-utterance error counts. Those files are all the
report needs: commit them, and a fresh machine resumes from them and trains only the cells it
lacks (checkpoints live in ``--work``, outside git). Budgets are in steps, not minutes, so a cell
means the same experiment on any machine; a cell's fingerprint names everything it depends on.

Rows pool their seeds (:mod:`subbit.experiments.stats`): WER means over seeds, 95% intervals
from a paired bootstrap over utterances, and the held-out WER difference to the fp32 control
(the fp32 model fine-tuned for the same steps, same seeds). "Lossless" is decided by the upper
end of that interval. Claims are then checked against the rows and marked reproduced / not
reproduced / not run, with the evidence.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from subbit.experiments import stats, study_locks, study_tuning
from subbit.experiments.compare import REFERENCE, CompareConfig, init_identity, run_compare
from subbit.experiments.recipes import Recipe
from subbit.experiments.study_claims import bifocal_claim, evaluate_claims  # noqa: F401 (public)
from subbit.experiments.study_plan import (  # noqa: F401 (the study's public names live on here)
    ARCHS, AUTO_BITS, CELL_SCHEMA, FP32_RECIPE, METHOD_VERSIONS, OPEN_SPLIT, SECTIONS, SPLITS, Cell, StudyConfig,
    _cell_path, _git_commit, _read, _write, cell_fingerprint, corpus_identity, eval_splits, machine, plan,
    study_recipes,
)
from subbit.experiments.study_report import report_markdown, write_curves, write_plots
from subbit.experiments.study_rows import active_base, build_rows, still_improving  # noqa: F401 (public)

log = logging.getLogger(__name__)


# -- training the cells ----------------------------------------------------------------------------
def ensure_corpus(cfg: StudyConfig) -> Path:
    """The corpus the study runs on: --data, else the dummy corpus (quick) or the quick TTS corpus."""
    if cfg.data:
        data = Path(cfg.data)
        if not (data / "train.jsonl").is_file():
            raise FileNotFoundError(f"--data: no train.jsonl in {data}")
        return data
    if cfg.quick:
        from subbit.testing.dummies import make_dummy_corpus

        data = cfg.work_dir / "corpus-dummy"
        if not (data / "test_heldout.jsonl").is_file():
            make_dummy_corpus(data, n_train=16, n_eval=24)
        return data
    from subbit.asr.corpus import BuildOptions, build_corpus

    data = cfg.work_dir / "corpus"
    build_corpus(data, BuildOptions.create(quick=True, seed=0), progress=cfg.progress)
    return data


def ensure_fp32_base(cfg: StudyConfig, arch: str, data: Path) -> Path:
    """One fp32 base per architecture, seeded and step-budgeted (so reproducible), resumable."""
    from subbit.asr.checkpoint import RunPaths
    from subbit.asr.train import TrainConfig, train

    run = cfg.work_dir / arch / "fp32-base"
    paths = RunPaths(run)
    if paths.final.is_file():
        return run
    resume = paths.last.is_file()
    log.info("study: %s fp32 base %s (%d steps)", "resuming" if resume else "training", run, cfg.fp32_steps)
    recipe = dict(FP32_RECIPE)
    if cfg.quick:
        recipe["batch_size"] = cfg.batch_size
    tc = TrainConfig(data=str(data), out=str(run), model=arch, preset=cfg.preset, steps=cfg.fp32_steps, seed=0,
                     resume=resume, threads=cfg.threads, progress=cfg.progress,
                     warmup_steps=min(200, max(1, cfg.fp32_steps // 10)), **recipe)
    train(tc)
    return run


#: samples per accept_audio call when streaming a file: 100 ms of 16 kHz audio, as a device feeds it
STREAM_CHUNK = 1600


def stream_utterances(subbit_file: Any, utts: Sequence[Any]) -> tuple[list[str], list[float], float, int]:
    """Stream utterances through the packed runtime (a .subbit path or a loaded PackedTransducer) in 100 ms
    chunks: (hypotheses, ms per chunk, audio seconds, resident weight bytes). Study, demo and eval share it."""
    import numpy as np

    from subbit.asr.data import load_audio
    from subbit.runtime import PackedTransducer, StreamingSession

    model = subbit_file if isinstance(subbit_file, PackedTransducer) else PackedTransducer.from_file(subbit_file)
    session = StreamingSession(model)
    hyps, chunk_ms, audio_s = [], [], 0.0
    for utt in utts:
        audio = load_audio(utt.audio).astype(np.float32)
        audio_s += len(audio) / 16000
        session.reset()
        wake_end = getattr(utt, "wake_end", None)
        if wake_end is not None and session.takes_wake_end:
            session.set_wake_end(wake_end)  # a bifocal model: the keyword spotter's output, as on a device
        for start in range(0, len(audio), STREAM_CHUNK):
            t = time.perf_counter()
            session.accept_audio(audio[start : start + STREAM_CHUNK])
            chunk_ms.append(1e3 * (time.perf_counter() - t))
        hyps.append(session.finalize())
    return hyps, chunk_ms, audio_s, int(model.weight_bytes)


def runtime_wer(subbit_file: Path, data: Path, split: str, limit: int | None) -> dict[str, Any]:
    """Stream a split through the packed runtime in 100 ms chunks: what is served, scored."""
    from subbit.asr.data import read_manifest
    from subbit.asr.evaluate import score

    utts = read_manifest(data / f"{split}.jsonl")
    if limit is not None:
        utts = utts[:limit]
    import numpy as np

    hyps, chunk_ms, audio_s, weight_bytes = stream_utterances(subbit_file, utts)
    rows = score([u.id for u in utts], [u.text for u in utts], hyps)
    errors, words = sum(r.errors for r in rows), sum(r.ref_words for r in rows)
    # latency of one cell, measured while it ran: comparable between cells only as a hint (the load
    # of the machine varies); the paper's latency claim is decided side by side by `subbit bench`
    return {"wer": errors / max(1, words), "utterances": len(utts), "ref_words": words, "limit": limit,
            "utt_ids": [r.id for r in rows], "utt_errors": [r.errors for r in rows],
            "weight_bytes": weight_bytes, "p50_ms": float(np.percentile(chunk_ms, 50)) if chunk_ms else None,
            "p90_ms": float(np.percentile(chunk_ms, 90)) if chunk_ms else None, "audio_s": audio_s}


Todo = tuple[Recipe, dict[str, Any], Path]  # recipe, fingerprint, cell file


def _schedule(cfg: StudyConfig, arch: str, cells: list[Cell], corpus: str) -> list[tuple[int, float, list[Todo]]]:
    """Cells still to run, in the order that makes a stopped study most useful: first every seed
    of the cells a claim rests on (multi-seed cells), then the one-seed cells; consecutive cells
    of one (seed, lr) are grouped so they share a compare run."""
    todo: list[tuple[int, int, int, float, Todo]] = []
    for order, cell in enumerate(cells):
        for seed in cell.seeds:
            fp = cell_fingerprint(cfg, arch, cell.recipe, seed, corpus, cell.lr)
            path = _cell_path(cfg, arch, cell.recipe.name, seed)
            stored = _read(path)
            if stored is not None and stored.get("fingerprint") == fp:
                continue
            priority = 0 if len(cell.seeds) > 1 else 1
            todo.append((priority, seed, order, fp["finetune"]["lr"], (cell.recipe, fp, path)))
    todo.sort(key=lambda t: (t[0], t[1], t[3], t[2]))
    groups: list[tuple[int, float, list[Todo]]] = []
    for _, seed, _, lr, item in todo:
        if groups and groups[-1][:2] == (seed, lr):
            groups[-1][2].append(item)
        else:
            groups.append((seed, lr, [item]))
    return groups


def _compare_config(cfg: StudyConfig, arch: str, data: Path, fp32: Path, seed: int, lr: float,
                    splits: tuple[str, ...]) -> CompareConfig:
    """One compare workspace per (seed, lr, splits): compare refuses to mix settings in one folder."""
    name = f"seed-{seed}" + ("" if lr == cfg.lr else f"-lr{lr:g}") + ("" if splits[:2] == SPLITS else "-" + "-".join(splits))
    return CompareConfig(out=str(cfg.work_dir / arch / name), data=str(data), model=arch,
                         preset=cfg.preset, fp32_run=str(fp32), steps=cfg.steps, splits=splits, lr=lr,
                         warmup_steps=cfg.warmup_steps, batch_size=cfg.batch_size, seed=seed, augment=False,
                         eval_limit=cfg.eval_limit, threads=cfg.threads, progress=cfg.progress, export=True,
                         ckpt_every=max(10, cfg.steps // 4), curve_every=curve_interval(cfg))


def curve_interval(cfg: StudyConfig) -> int:
    if cfg.curve_every is not None:
        return cfg.curve_every
    return max(1, cfg.steps // (2 if cfg.quick else 5))


def read_curve(run: Path) -> list[list[float]]:
    """``[[step, dev WER], ...]`` from a run's eval.csv (empty when it has none)."""
    import csv

    f = Path(run) / "eval.csv"
    if not f.is_file():
        return []
    with f.open(newline="") as fh:
        return [[int(r["step"]), float(r["dev_wer"])] for r in csv.DictReader(fh)]


def base_identity(fp32: Path) -> dict[str, str]:
    """Which fp32 base a cell was fine-tuned from. A base retrained on another CPU is not bit-identical
    (floating point differs), so rows and claims only pair cells made from one base."""
    return {"sha256": init_identity(fp32)["sha256"][:16], "machine": machine()}


def run_cells(cfg: StudyConfig, arch: str, cells: list[Cell], data: Path, corpus: str) -> None:
    """Train and evaluate every cell of ``arch`` that has no valid cell file yet."""
    fp32 = base = None
    for seed, lr, todo in _schedule(cfg, arch, cells, corpus):
        if fp32 is None:
            fp32 = ensure_fp32_base(cfg, arch, data)
            base = base_identity(fp32)
        cc = _compare_config(cfg, arch, data, fp32, seed, lr, eval_splits(data))
        log.info("study: %s seed %d lr %g: %d cell(s) to run: %s", arch, seed, lr, len(todo),
                 ", ".join(r.name for r, _, _ in todo))
        for recipe, fp, path in todo:  # one compare call per cell: its file is written as soon as it is done
            if (_read(path) or {}).get("fingerprint") == fp or not study_locks.claim(path):  # another worker's
                log.info("study: %s: done or being run by another worker, skipped", path.name)
                continue
            try:
                rows = {row["recipe"]: row for row in run_compare(cc, [recipe], name="results").rows}
                _write_cell(cfg, cc, recipe, fp, rows, data, path, base or {}, splits=tuple(cc.splits))
            finally:
                study_locks.release(path)


def _alloc_path(cfg: StudyConfig, arch: str, bits: int) -> Path:
    return cfg.root / "alloc" / f"{arch}-avg{bits}.json"


def auto_recipes(cfg: StudyConfig, arch: str) -> dict[str, Recipe]:
    """GQ recipes from the automatic allocations written by :func:`ensure_allocations` (committed
    with the cells, so a fresh machine rebuilds the same recipes without the fp32 base)."""
    out = {}
    for b in AUTO_BITS:
        d = _read(_alloc_path(cfg, arch, b))
        if d and d.get("rules"):
            out[f"gq-auto{b}"] = Recipe(f"gq-auto{b}", "gq", f"GQ with the automatic bit allocation of `subbit allocate` "
                                        f"at {b} bits per weight on average (dev-loss sensitivity, exact DP)", quant=d["rules"])
    return out


def ensure_allocations(cfg: StudyConfig, arch: str, data: Path) -> None:
    """Measure the fp32 base's per-kernel sensitivity once (cached next to the base) and solve the
    allocation at each of ``AUTO_BITS``."""
    from subbit.asr.sensitivity import allocate_rules_for_run

    todo = [b for b in AUTO_BITS if not _alloc_path(cfg, arch, b).is_file()]
    if not todo:
        return
    fp32 = ensure_fp32_base(cfg, arch, data)
    for b in todo:
        log.info("study: %s automatic allocation at %d bits on average", arch, b)
        rules = allocate_rules_for_run(fp32, data, avg_bits=float(b), spec={"method": "gq", "granularity": "tensor"},
                                       progress=cfg.progress)
        _write(_alloc_path(cfg, arch, b), {"avg_bits": b, "base": base_identity(fp32), "rules": rules,
                                            "measure": "dev-loss increase, GQ mu-law grid per kernel (subbit.asr.sensitivity)"})


def _tune_path(cfg: StudyConfig, arch: str, key: str) -> Path:
    return cfg.root / "cells" / arch / "tune" / f"{key}-s0.json"


def _tune_fingerprint(cfg: StudyConfig, arch: str, tc: study_tuning.TuneCell, corpus: str) -> dict[str, Any]:
    return {**cell_fingerprint(cfg, arch, tc.recipe, 0, corpus, tc.lr), "tune": {"knob": tc.knob, "split": study_tuning.TUNE_SPLIT}}


def tune_families(only: tuple[str, ...] | None) -> set[str]:
    """The families named as ``tune:FAMILY`` in ``--only`` (a worker's share of the dev search)."""
    return {o.removeprefix("tune:") for o in only or () if o.startswith("tune:")}


def run_tuning(cfg: StudyConfig, arch: str, data: Path, corpus: str,
               families: set[str] | None = None) -> None:
    """The dev search (lr per family, S8BQAT lam), seed 0, before any test cell uses its result.
    ``families``: only these families' points (``s8bqat-lam`` names the lam grid alone)."""
    fp32 = base = None
    splits = (study_tuning.TUNE_SPLIT,)
    for tc in study_tuning.tune_cells(cfg.quick, cfg.lr):
        if families and tc.family not in families and f"{tc.family}-{tc.knob}" not in families:
            continue
        path = _tune_path(cfg, arch, tc.key)
        fp = _tune_fingerprint(cfg, arch, tc, corpus)
        stored = _read(path)
        if stored is not None and stored.get("fingerprint") == fp:
            continue
        if fp32 is None:
            fp32 = ensure_fp32_base(cfg, arch, data)
            base = base_identity(fp32)
        cc = _compare_config(cfg, arch, data, fp32, 0, tc.lr, splits)
        if tc.knob == "lam":  # another lam is another experiment: its own workspace
            cc.out = f"{cc.out}-lam{tc.value:g}"
        log.info("study: %s tuning %s (%s %g) on %s", arch, tc.recipe.name, tc.knob, tc.value, splits[0])
        result = run_compare(cc, [tc.recipe], name="results")
        _write_cell(cfg, cc, tc.recipe, fp, {row["recipe"]: row for row in result.rows}, data, path, base or {},
                    splits=splits)


def tuning_decisions(cfg: StudyConfig, arch: str, corpus: str) -> tuple[dict[str, Any], list[str]]:
    """What the dev search chose for ``arch`` (defaults where it has not finished), and its table."""
    cells = study_tuning.tune_cells(cfg.quick, cfg.lr)
    dev: dict[str, float | None] = {}
    for tc in cells:
        c = _read(_tune_path(cfg, arch, tc.key))
        ok = c is not None and c.get("fingerprint") == _tune_fingerprint(cfg, arch, tc, corpus)
        ev = ((c or {}).get("eval") or {}).get(study_tuning.TUNE_SPLIT) if ok else None
        dev[tc.key] = None if ev is None else ev.get("wer")
    decided = study_tuning.decisions(cells, dev, cfg.lr)
    return decided, study_tuning.markdown(cells, dev, decided)


def apply_tuning(cells: list[Cell], decided: dict[str, Any]) -> list[Cell]:
    """Cells with the lr of their family and S8BQAT's lam as chosen on dev."""
    out = []
    for cell in cells:
        fam = study_tuning.family(cell.recipe)
        choice = decided["lr"].get(fam) if fam else None
        recipe = cell.recipe
        if recipe.method == "s8bqat":
            recipe = study_tuning.with_lam(recipe, decided["lam"].value)
        out.append(replace(cell, recipe=recipe, lr=None if choice is None else choice.value))
    return out


def _write_cell(cfg: StudyConfig, cc: CompareConfig, recipe: Recipe, fp: dict[str, Any],
                rows: dict[str, dict[str, Any]], data: Path, path: Path, base: dict[str, str],
                splits: tuple[str, ...] = SPLITS) -> None:
    row = rows.get(recipe.name)
    if row is None:
        return
    stored = _read(cfg_root_results(cc) / f"{recipe.name}.json") or {}
    evals = stored.get("eval") or {}
    serve = None
    subbit_file = Path(row["run"]) / "model.subbit"
    if splits[:2] == SPLITS and "serve" in cfg.sections and row.get("status") == "done" and subbit_file.is_file():
        limit = cfg.runtime_limit if cfg.eval_limit is None else min(cfg.eval_limit, cfg.runtime_limit or cfg.eval_limit)
        serve = runtime_wer(subbit_file, data, "test_heldout", limit)
    keep = {k: row.get(k) for k in ("method", "bits", "size_bytes", "fp32_bytes", "size_vs_fp32",
                                    "size_deploy_bytes", "size_file_bytes", "size_theory_bytes",
                                    "train_minutes", "steps", "status")}
    ref_row = rows.get(REFERENCE, {})
    _write(path, {
        "fingerprint": fp, "row": keep, "eval": {s: evals.get(s) for s in splits},
        "serve": serve, "fp32_init_wer": ref_row.get("wer"), "base": base, "curve": read_curve(Path(row["run"])),
    })


def cfg_root_results(cc: CompareConfig) -> Path:
    """Where compare keeps its per-recipe result files (with the per-utterance scores)."""
    return Path(cc.out) / "results"


@dataclass
class StudyResult:
    rows: list[dict[str, Any]]
    claims: list[dict[str, str]]
    files: dict[str, Path] = field(default_factory=dict)


def run_study(cfg: StudyConfig) -> StudyResult:
    """Run (or resume) every cell, then write OUT/results.json, OUT/report.md and plots."""
    import torch

    t0 = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    cfg.root.mkdir(parents=True, exist_ok=True)
    if cfg.report_only and not cfg.data and not cfg.quick:
        raise ValueError("--report-only needs --data (the corpus the cells were scored on)")
    data = Path(cfg.data) if cfg.report_only and cfg.data else ensure_corpus(cfg)
    corpus = corpus_identity(data)
    all_rows: list[dict[str, Any]] = []
    heldout: dict[tuple[str, str], stats.Scored] = {}
    missing: list[str] = []
    tuning: dict[str, list[str]] = {}
    for arch in cfg.archs:
        if "bit-allocation" in cfg.sections and not cfg.quick and not cfg.report_only and arch != "bifocal" \
                and (not cfg.only or any(n.startswith("gq-auto") for n in cfg.only)):
            ensure_allocations(cfg, arch, data)
        cells, miss = plan(arch, cfg.quick, cfg.seeds, cfg.sections, auto_recipes(cfg, arch))
        missing += [f"{arch}:{m}" for m in miss]
        if "tuning" in cfg.sections:
            families = tune_families(cfg.only)
            if not cfg.report_only and (not cfg.only or families):
                run_tuning(cfg, arch, data, corpus, families)
            decided, tuning[arch] = tuning_decisions(cfg, arch, corpus)
            cells = apply_tuning(cells, decided)
        if not cfg.report_only:
            chosen = [c for c in cells if not cfg.only or c.recipe.name in cfg.only]
            run_cells(cfg, arch, chosen, data, corpus)
        all_rows += build_rows(cfg, arch, cells, corpus, heldout)
    claims = evaluate_claims(all_rows, cfg, heldout)
    if cfg.quick:  # a smoke run decides nothing: say so next to every verdict
        for c in claims:
            c["evidence"] = "[quick toy run: not evidence] " + c["evidence"]
    meta = {"command": cfg.command or "subbit study", "commit": _git_commit(), "machine": machine(),
            "corpus": str(data), "corpus_id": corpus, "wall_minutes": (time.perf_counter() - t0) / 60,
            "fp32_steps": cfg.fp32_steps, "steps": cfg.steps, "lr": cfg.lr, "archs": list(cfg.archs),
            "missing": missing, "quick": cfg.quick, "report_only": cfg.report_only, "tuning": tuning,
            "cells": sum(len(r.get("seeds", [])) for r in all_rows),
            "cells_planned": sum(len(r.get("seeds_planned", [])) for r in all_rows)}
    results = {"meta": meta, "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
               "rows": all_rows, "claims": claims}
    files = {"results": cfg.root / "results.json", "report": cfg.root / "report.md"}
    _write(files["results"], results)
    files["report"].write_text(report_markdown(all_rows, claims, meta))
    for p in write_plots(all_rows, cfg.root, cfg.archs) + write_curves(all_rows, cfg.root, cfg.archs):
        files[p.stem] = p
    return StudyResult(all_rows, claims, files)

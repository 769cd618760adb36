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
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from subbit.experiments.recipes import Recipe, quantizable_names

log = logging.getLogger(__name__)

FP32_BASE = "fp32-base"
REFERENCE = "fp32-init"  # the row of the fp32 model every recipe starts from (no fine-tuning)
ROW_KEYS = ("recipe", "method", "bits", "wer", "size_bytes", "size_theory_bytes", "size_file_bytes", "fp32_bytes",
            "size_vs_fp32", "size_deploy_bytes", "deploy_vs_fp32", "train_minutes", "steps", "status")


@dataclass
class CompareConfig:
    """Everything a comparison needs; the budget is the same for every recipe."""

    out: str
    data: str | None = None
    model: str = "rnnt"
    preset: str = "small"
    fp32_run: str | None = None
    fp32_minutes: float | None = None
    fp32_steps: int | None = None
    minutes: float | None = None
    steps: int | None = None
    splits: tuple[str, ...] = ("test_seen", "test_heldout")
    lr: float = 5e-4
    warmup_steps: int = 50
    batch_size: int | None = None  # None: the fp32 run's (16 for a new one)
    seed: int = 0
    augment: bool | None = None  # None: the fp32 run's (True for a new one)
    tokenizer: str = "bpe"
    vocab_size: int = 128
    eval_limit: int | None = None
    ckpt_every: int = 100
    threads: int | None = None
    device: str = "cpu"
    progress: bool = True
    export: bool = True
    command: str = ""
    #: dev WER every N fine-tuning steps (0 = never), for convergence curves; evaluation changes no
    #: training state, so it is not part of a run's fingerprint
    curve_every: int = 0
    curve_limit: int = 100

    def __post_init__(self) -> None:
        if (self.minutes is None) == (self.steps is None):
            raise ValueError("give exactly one budget per recipe: --minutes or --steps")
        if self.minutes is not None and not self.minutes > 0:
            raise ValueError(f"--minutes: must be > 0, got {self.minutes}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"--steps: must be >= 1, got {self.steps}")
        if self.fp32_run is not None and (self.fp32_minutes is not None or self.fp32_steps is not None):
            raise ValueError("--fp32-run excludes --fp32-minutes/--fp32-steps (the fp32 model is given)")
        if self.fp32_minutes is not None and self.fp32_steps is not None:
            raise ValueError("give at most one of --fp32-minutes and --fp32-steps")
        if not self.splits:
            raise ValueError("--split: give at least one split")
        if self.eval_limit is not None and self.eval_limit < 1:
            raise ValueError(f"--eval-limit: must be >= 1, got {self.eval_limit}")

    @property
    def root(self) -> Path:
        return Path(self.out)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["splits"] = list(self.splits)
        return d


@dataclass
class CompareResult:
    rows: list[dict[str, Any]]
    files: dict[str, Path] = field(default_factory=dict)


# -- small helpers -----------------------------------------------------------------------------
def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: invalid JSON at line {exc.lineno} ({exc.msg}); delete it to redo") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object; delete it to redo")
    return data


def _write_json(path: Path, data: Any) -> None:
    from subbit.asr.checkpoint import atomic_write_json

    atomic_write_json(path, data)


def _weights_of(run: Path) -> str:
    from subbit.asr.checkpoint import RunPaths

    paths = RunPaths(run)
    if paths.final.is_file():
        return "final"
    if paths.last.is_file():
        return "last"
    raise FileNotFoundError(f"{run}: no final.pt nor checkpoints/last.pt (is the run trained?)")


def init_identity(run: Path) -> dict[str, Any]:
    """Which fp32 weights a comparison starts from: path, file and content hash. A run that is
    retrained (or still training) changes the hash, so results from two different starting points
    are never mixed in one table."""
    import hashlib

    from subbit.asr.checkpoint import RunPaths

    which = _weights_of(run)
    paths = RunPaths(run)
    f = paths.final if which == "final" else paths.last
    h = hashlib.sha256()
    with f.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return {"run": str(Path(run).resolve()), "weights": which, "sha256": h.hexdigest()}


def _run_log_totals(run: Path) -> tuple[int, float]:
    """(steps, minutes) of a run, from the last row of its log.csv."""
    from subbit.asr.checkpoint import RunPaths

    path = RunPaths(run).log
    if not path.is_file():
        return 0, 0.0
    from subbit.asr.train import read_log

    rows = read_log(path)
    if not rows:
        return 0, 0.0
    return int(rows[-1]["step"]), float(rows[-1]["wall_time"]) / 60.0


# -- fp32 base ---------------------------------------------------------------------------------
def ensure_fp32(cfg: CompareConfig) -> Path:
    """The fp32 run every recipe starts from: given, already in OUT, or trained (resumed) now."""
    from subbit.asr.checkpoint import RunPaths, read_run_config

    if cfg.fp32_run:
        run = Path(cfg.fp32_run)
        config = read_run_config(run)
        if config.get("quant"):
            raise ValueError(f"--fp32-run: {run} is a quantized run; give an fp32 run")
        _weights_of(run)
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
    from subbit.asr.train import TrainConfig

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
        _clear_partial(run)
    log.info("fp32 base: %s %s", "resuming" if resume else "training", run)
    _train(tc)
    return run


def _clear_partial(run: Path) -> None:
    """A run killed before its first checkpoint: drop its logs so the restart does not append."""
    from subbit.asr.checkpoint import RunPaths

    paths = RunPaths(run)
    for f in (paths.log, paths.eval_log):
        if f.is_file():
            f.unlink()


def _train(tc: Any) -> Any:
    from subbit.asr.train import train

    return train(tc)


# -- one recipe --------------------------------------------------------------------------------
def fingerprint(recipe: Recipe, cfg: CompareConfig, init: dict[str, Any]) -> dict[str, Any]:
    """What makes two runs of a recipe the same experiment (the description does not);
    ``init`` is :func:`init_identity` of the fp32 run."""
    r = recipe.to_dict()
    r.pop("description")
    return {
        "recipe": r,
        "init": init,
        "data": str(Path(cfg.data).resolve()) if cfg.data else None,
        "budget": {"minutes": cfg.minutes, "steps": cfg.steps} if recipe.train else None,
        "train": {"lr": cfg.lr, "warmup_steps": cfg.warmup_steps, "batch_size": cfg.batch_size, "seed": cfg.seed,
                  "augment": cfg.augment} if recipe.train else None,
    }


def _check_fingerprint(path: Path, fp: dict[str, Any], what: str) -> None:
    stored = _read_json(path)
    if stored is None:
        return
    old = stored.get("fingerprint")
    if old != fp:
        keys = sorted(k for k in set(fp) | set(old or {}) if (old or {}).get(k) != fp.get(k))
        raise ValueError(
            f"{what} was made with other settings (differs in: {', '.join(keys)}; see {path}); "
            f"use another --out or delete it"
        )


def _run_ptq(recipe: Recipe, init: Path, run: Path) -> None:
    """Prepare + convert without training, saved as a run directory (so eval/export/report work)."""
    import subbit.quant as sq
    from subbit.asr.checkpoint import RunPaths, atomic_torch_save, write_run_config
    from subbit.runs import load_run

    loaded = load_run(init, which=_weights_of(init))
    model = loaded.model
    qc = recipe.quant_config(quantizable_names(model))
    sq.prepare(model, qc)
    sq.convert(model)
    paths = RunPaths(run)
    paths.root.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(RunPaths(init).tokenizer, paths.tokenizer)
    args = dict(loaded.config.get("train_args") or {})
    args.update({"out": str(run), "init": str(init), "quant": str(run / "quant.json"), "ptq": True})
    qc.save(run / "quant.json")
    write_run_config(
        paths, model_config=loaded.config["model"], tokenizer_kind=loaded.config["tokenizer"]["kind"],
        vocab_size=int(loaded.config["tokenizer"]["vocab_size"]), quant=qc.to_dict(), train_args=args,
        data_dir=str(loaded.config.get("data", "")), features=loaded.config.get("features"),
    )
    (run / "quant_report.txt").write_text(str(sq.report(model)) + "\n")
    atomic_torch_save(model.state_dict(), paths.final)


def _train_recipe(recipe: Recipe, cfg: CompareConfig, init: Path, run: Path) -> str:
    """Train (or resume) one recipe's run; returns "done" or "diverged"."""
    from subbit.asr.checkpoint import RunPaths
    from subbit.runs import load_run
    from subbit.asr.train import TrainConfig, TrainingDiverged

    paths = RunPaths(run)
    if paths.final.is_file():
        return "done"
    resume = paths.last.is_file()
    quant_path = None
    if recipe.quantized:
        quant_path = run / "quant.json"
        if not resume:
            names = quantizable_names(load_run(init, which=_weights_of(init)).model)
            run.mkdir(parents=True, exist_ok=True)
            recipe.quant_config(names).save(quant_path)
    else:
        run.mkdir(parents=True, exist_ok=True)
    if not resume:
        _clear_partial(run)
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


def _export(model: torch.nn.Module, loaded: Any, path: Path, recipe: str) -> int | None:
    """Write the model as a .subbit file; its size in bytes (None if the exporter refuses it)."""
    try:
        from subbit.export import export_model, load_packed
    except ImportError:  # pragma: no cover - exporter not installed
        return None
    arch = getattr(model, "config", None)
    arch = dict(arch) if isinstance(arch, dict) else dict(loaded.config.get("model", {}))
    try:
        summary = export_model(model, path, arch=arch, tokenizer_bytes=loaded.tokenizer.to_bytes(),
                               extra={"recipe": recipe, "features": loaded.config.get("features")},
                               tokenizer_kind=str(getattr(loaded.tokenizer, "kind", "bytes")))
        load_packed(path)
    except (ValueError, RuntimeError, NotImplementedError) as exc:
        log.warning("%s: export failed (%s); using the theoretical size", recipe, exc)
        return None
    return int(summary.file_bytes)


def _sizes(model: torch.nn.Module) -> tuple[float, int, list[dict[str, Any]]]:
    """(mean bits per quantized weight, theoretical packed bytes, per-tensor report rows).

    Theoretical: :func:`subbit.quant.report` bytes (``ceil(N * b / 8)`` indices + the codebooks the
    file stores, :mod:`subbit.sizes`) + float parameters."""
    import subbit.quant as sq
    from subbit import sizes

    if not sq.is_prepared(model):
        return 32.0, sizes.fp32_bytes(sum(p.numel() for p in model.parameters())), []
    rep = sq.report(model)
    n = sum(r.numel for r in rep.rows)
    bits = sum(r.bits * r.numel for r in rep.rows) / n if n else 32.0
    return bits, rep.quantized_bytes + rep.float_bytes, rep.to_dict()["rows"]


def deploy_bytes(model: torch.nn.Module) -> int:
    """Packed indices + codebooks + float parameters, as a ``.subbit`` file stores them.

    Every count is :mod:`subbit.sizes`: indices in the file's row layout
    (:func:`~subbit.sizes.index_bytes`), a codebook that is bit-exactly evenly spaced
    (:func:`~subbit.sizes.find_affine`: uniform QAT and PTQ grids) as one fp32 step per group,
    any other as its ``2**bits`` fp32 entries per group. This is what an int8/intN deployment of a
    uniform method costs, which a table of fp32 codebooks overstates (256 fp32 entries per output
    channel at 8 bits). Header and tokenizer are not counted.
    """
    import subbit.quant as sq
    from subbit import sizes

    if not sq.is_prepared(model):
        return sizes.fp32_bytes(sum(p.numel() for p in model.parameters()))
    total = sq.report(model).float_bytes
    with torch.no_grad():
        for qt in sq.quantized_tensors(model):
            q = qt.quantizer
            _, cb = q.encode(qt.latent.detach())
            cb_np = cb.detach().to(torch.float32).cpu().numpy()
            total += sizes.quantized_bytes(tuple(qt.latent.shape), q.bits, cb_np.shape[0], sizes.codebook_kind(cb_np))
    return total


def _evaluate(model: torch.nn.Module, loaded: Any, cfg: CompareConfig, data: Path, split: str) -> dict[str, Any]:
    from subbit.asr.data import read_manifest
    from subbit.asr.evaluate import evaluate

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
    from subbit.runs import load_run

    stored = _read_json(result_path) or {}
    evals: dict[str, Any] = dict(stored.get("eval") or {})
    row = dict(stored.get("row") or {})
    todo = [s for s in cfg.splits if (evals.get(s) or {}).get("limit", "x") != cfg.eval_limit]
    need_size = "size_theory_bytes" not in row or (subbit_path is not None and row.get("size_file_bytes") is None
                                                   and cfg.export)
    if status == "done" and (todo or need_size):
        loaded = load_run(run, which="final" if name != REFERENCE else _weights_of(run), map_location=cfg.device)
        model = loaded.model
        for split in todo:
            log.info("%s: evaluating %s", name, split)
            evals[split] = _evaluate(model, loaded, cfg, data, split)
            _write_json(result_path, {"fingerprint": fp, "eval": evals, "row": row})
        if need_size:
            bits, theory, tensors = _sizes(model)
            file_bytes = None
            if subbit_path is not None and cfg.export:
                file_bytes = (subbit_path.stat().st_size if subbit_path.is_file()
                              else _export(model.cpu(), loaded, subbit_path, name))
            row.update({"bits": bits, "size_theory_bytes": theory, "size_file_bytes": file_bytes,
                        "size_deploy_bytes": deploy_bytes(model), "tensors": tensors})
    steps, minutes = _run_log_totals(run) if name != REFERENCE else (0, 0.0)
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
    _write_json(result_path, {"fingerprint": fp, "eval": evals, "row": row})
    return row


# -- the whole comparison ------------------------------------------------------------------------
def _check_data(cfg: CompareConfig, fp32: Path) -> Path:
    from subbit.asr.checkpoint import read_run_config

    data = Path(cfg.data) if cfg.data else Path(read_run_config(fp32)["data"])
    if not (data / "train.jsonl").is_file():
        raise FileNotFoundError(f"--data: no train.jsonl in {data}")
    missing = [s for s in cfg.splits if not (data / f"{s}.jsonl").is_file()]
    if missing:
        raise FileNotFoundError(f"--split: no manifest {data / (missing[0] + '.jsonl')}")
    return data


def _inherit_train_settings(cfg: CompareConfig, fp32: Path) -> None:
    """Fine-tune with the fp32 run's batch size and augmentation unless told otherwise."""
    from subbit.asr.checkpoint import read_run_config

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
    from tqdm import tqdm

    from subbit.runs import load_run

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
    _check_fingerprint(ref_path, ref_fp, f"{ref_path}")
    init = load_run(fp32, which=_weights_of(fp32))
    fp32_bytes = 4 * sum(p.numel() for p in init.model.parameters())
    ref_file = root / f"{REFERENCE}.subbit"
    fp32_file = None
    if cfg.export:
        fp32_file = ref_file.stat().st_size if ref_file.is_file() else _export(init.model, init, ref_file, REFERENCE)
    del init
    rows = [evaluate_recipe(REFERENCE, "fp32", fp32, cfg, data, ref_fp, ref_path, fp32_bytes, fp32_file, ref_file)]

    bar = tqdm(recipes, desc=kind, unit="recipe", disable=not cfg.progress)
    for i, recipe in enumerate(bar):
        bar.set_postfix(recipe=recipe.name)
        run = root / "runs" / recipe.name
        fp = fingerprint(recipe, cfg, init_id)
        result_path = results_dir / f"{recipe.name}.json"
        _check_fingerprint(run / "compare.json", fp, f"run {run}")
        _check_fingerprint(result_path, fp, f"result {result_path}")
        stored = (_read_json(result_path) or {}).get("row") or {}
        status = stored.get("status", "done")
        if status != "diverged":
            tag = f"[{i + 1}/{len(recipes)}] {recipe.name}"
            if not (run / "final.pt").is_file():
                log.info("%s: %s", tag, "post-training quantization" if not recipe.train else "training")
                run.mkdir(parents=True, exist_ok=True)
                _write_json(run / "compare.json", {"fingerprint": fp, "recipe": recipe.to_dict()})
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


# -- outputs -------------------------------------------------------------------------------------
def _pct(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def format_row_line(row: dict[str, Any], splits: Sequence[str]) -> str:
    wers = ", ".join(f"{s} {_pct(row['wer'].get(s))}%" for s in splits)
    size = row.get("size_bytes")
    return (f"{row['recipe']}: {row['status']}; WER {wers}; {row.get('bits') or 0:.2f} bits; "
            f"{(size or 0) / 1024:.1f} KiB ({(row.get('size_vs_fp32') or 0):.3f} of fp32); "
            f"{row['steps']} steps in {row['train_minutes']:.1f} min")


def mark_lossless(rows: Sequence[dict[str, Any]], splits: Sequence[str]) -> str | None:
    """Set ``row["lossless"][split]``: WER within max(2% relative, 0.2 absolute) of the fp32 row
    trained with the same budget (``fp32``; else ``fp32-init``), the yardstick of gq-method.md.
    Returns the reference recipe's name (None when there is none)."""
    ref = next((r for r in rows if r["recipe"] == "fp32" and r.get("status") == "done"), None)
    ref = ref or next((r for r in rows if r["recipe"] == REFERENCE), None)
    for r in rows:
        r["lossless"] = {}
        for s in splits:
            w, w0 = r["wer"].get(s), (ref or {}).get("wer", {}).get(s)
            r["lossless"][s] = None if w is None or w0 is None else bool(w <= w0 + max(0.02 * w0, 0.002) + 1e-12)
    return None if ref is None else ref["recipe"]


def markdown_table(rows: Sequence[dict[str, Any]], splits: Sequence[str]) -> str:
    """results.md: one line per recipe; WER in %, sizes in KiB and as a fraction of fp32."""
    head = ["recipe", "method", "bits", *[f"WER {s} %" for s in splits], "size KiB", "vs fp32", "deploy KiB",
            "deploy vs fp32", "lossless", "train min", "steps"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]

    def kib(x: Any) -> str:
        return "-" if x is None else f"{x / 1024:.1f}"

    def frac(x: Any) -> str:
        return "-" if x is None else f"{x:.3f}"

    for r in rows:
        cells = [
            r["recipe"] + ("" if r.get("status", "done") == "done" else f" ({r['status']})"), r["method"],
            "-" if r.get("bits") is None else f"{r['bits']:.2f}",
            *[_pct(r["wer"].get(s)) for s in splits],
            kib(r.get("size_bytes")), frac(r.get("size_vs_fp32")),
            kib(r.get("size_deploy_bytes")), frac(r.get("deploy_vs_fp32")),
            "/".join({True: "yes", False: "no", None: "-"}[(r.get("lossless") or {}).get(s)] for s in splits),
            f"{r['train_minutes']:.1f}", str(r["steps"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_outputs(cfg: CompareConfig, rows: list[dict[str, Any]], name: str, kind: str) -> dict[str, Path]:
    from subbit.experiments import plots

    root = cfg.root
    ref = mark_lossless(rows, cfg.splits)
    slim = [{k: v for k, v in r.items() if k != "tensors"} for r in rows]
    doc = {"name": name, "kind": kind, "command": cfg.command, "settings": cfg.to_dict(), "splits": list(cfg.splits),
           "rows": slim}
    files = {"json": root / f"{name}.json", "md": root / f"{name}.md"}
    _write_json(files["json"], doc)
    md = f"# {name}\n\n"
    if cfg.command:
        md += f"Command: `{cfg.command}`\n\n"
    md += markdown_table(slim, cfg.splits)
    md += ("\nsize: the .subbit file when the exporter wrote one (vs the fp32 model's .subbit), else "
           "packed bits + codebooks + float tensors from the quant report (vs 4 bytes per parameter). "
           "deploy: packed indices + smallest exact codebook (evenly spaced rows as offset+step) + float "
           "tensors, vs 4 bytes per parameter; the plots use it. bits: mean over quantized weights. "
           f"lossless (per split): WER within max(2% relative, 0.2 absolute) of {ref}. "
           f"{REFERENCE}: the fp32 model every recipe starts from, without fine-tuning.\n")
    files["md"].write_text(md)
    if kind == "ablation":
        files["png"] = plots.plot_ablation(slim, cfg.splits, root / f"{name}.png", title=name)
    else:
        for s in cfg.splits:
            files[f"png_{s}"] = plots.plot_wer_vs_size(slim, s, root / f"{name}_wer_vs_size_{s}.png",
                                                       title=f"{name}: WER vs size ({s})")
    return files

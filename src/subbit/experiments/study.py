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

import hashlib
import json
import logging
import math
import platform
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from subbit.experiments import stats, study_tuning
from subbit.experiments.ablations import ablation_recipes
from subbit.experiments.compare import REFERENCE, CompareConfig, _read_json, _write_json, init_identity, run_compare
from subbit.experiments.recipes import ENC_RECURRENT, RECIPES, TOKEN_EDGES, Recipe

log = logging.getLogger(__name__)

ARCHS = ("rnnt", "conformer", "bifocal")
SECTIONS = ("baselines", "bit-allocation", "quant-frequency", "centroids", "bifocal", "serve", "tuning")
SPLITS = ("test_seen", "test_heldout")
#: open (fortune) sentences the training text cannot teach: scored and reported apart when the
#: corpus has them (the full corpus does; --quick has none)
OPEN_SPLIT = "test_open"


def eval_splits(data: Path) -> tuple[str, ...]:
    return SPLITS + ((OPEN_SPLIT,) if (Path(data) / f"{OPEN_SPLIT}.jsonl").is_file() else ())
CELL_SCHEMA = 1

#: the fp32 recipe that converges in a few CPU minutes on the embedded corpus (see the demo's
#: measurements in commands/demo.py): many small updates, char tokens, no augmentation
FP32_RECIPE: dict[str, Any] = {"tokenizer": "char", "sortagrad_epochs": 1, "batch_size": 8, "lr": 3e-3,
                               "augment": False}


# -- recipes the study adds around the shared ones ---------------------------------------------------
def _gq(bits: int, **options: Any) -> dict[str, Any]:
    return {"default": {"method": "gq", "bits": bits, "granularity": "tensor", "options": dict(options)}}


def study_recipes() -> dict[str, Recipe]:
    """Variants only the study needs: frozen centroids, more mu values, T_q = 1000, allocations."""
    gq4 = RECIPES["gq4"]
    out: dict[str, Recipe] = {}
    out["gq4-fixed"] = gq4.variant("gq4-fixed", "GQ 4-bit with centroids frozen at their mu-law initialisation",
                                   quant=_gq(4, learn_centroids=False))
    for mu in (0, 25, 100, 255):
        out[f"gq4-mu{mu}"] = gq4.variant(f"gq4-mu{mu}", f"GQ 4-bit, mu={mu}", quant=_gq(4, mu=float(mu)))
    out["gq4-mu-learn"] = gq4.variant("gq4-mu-learn", "GQ 4-bit, learnable mu (init 5)", quant=_gq(4, learn_mu=True))
    for mode in ("project", "forward"):
        out[f"gq4-tq1000-{mode}"] = gq4.variant(f"gq4-tq1000-{mode}", f"GQ 4-bit, T_q=1000 ({mode})",
                                                schedule={"quant_every": 1000, "quant_mode": mode})
    # <= 3 bits on average with 1-bit kernels: the recurrent kernels of the encoder carry half
    # the RNN-T's weights and are damped by the gates; the token-facing tensors keep 4 bits
    out["gq3-hh1"] = Recipe("gq3-hh1", "gq", "GQ 3-bit, encoder recurrent kernels at 1 bit, token edges at 4",
                            _gq(3), param_rules=((ENC_RECURRENT, {"bits": 1}), (TOKEN_EDGES, {"bits": 4})))
    conf = [("gq4-attn2", r"encoder\..*\.attn\.(q|k|v|out)\.weight", "attention projections"),
            ("gq4-ff2", r"encoder\..*\.ff[12]\.lin[12]\.weight", "feed-forward modules"),
            ("gq4-conv2", r"encoder\..*\.conv\.(pw1|pw2|dw)\.weight", "convolution modules")]
    for name, pattern, what in conf:
        out[name] = gq4.variant(name, f"GQ bit allocation: Conformer {what} at 2 bits, rest 4",
                                param_rules=((pattern, {"bits": 2}),))
    out["gq3-ff1"] = Recipe("gq3-ff1", "gq", "GQ 3-bit, Conformer feed-forward at 1 bit, token edges at 4", _gq(3),
                            param_rules=((r"encoder\..*\.ff[12]\.lin[12]\.weight", {"bits": 1}),
                                         (TOKEN_EDGES, {"bits": 4})))
    return out


@dataclass(frozen=True)
class Cell:
    """One recipe of one architecture, with the seeds it runs and the sections it serves."""

    recipe: Recipe
    seeds: tuple[int, ...]
    sections: tuple[str, ...]
    lr: float | None = None  # fine-tuning lr (None = the study's --lr); set by the dev search


def _lookup(name: str, extra: dict[str, Recipe]) -> Recipe | None:
    if name in extra:
        return extra[name]
    if name in RECIPES:
        return RECIPES[name]
    for ab in ("quant-frequency", "bit-allocation", "mu"):
        for r in ablation_recipes(ab):
            if r.name == name:
                return r
    return None


#: average bit depths of the automatic allocation cells (issue 11's experiment)
AUTO_BITS = (2, 3, 4)


def plan(arch: str, quick: bool, seeds: int = 3, sections: Sequence[str] = SECTIONS,
         auto: dict[str, Recipe] | None = None) -> tuple[list[Cell], list[str]]:
    """The cells of one architecture, and the recipes skipped because they are not defined.
    ``auto``: the automatic-allocation recipes of this architecture's base (:func:`auto_recipes`);
    without them those cells are listed as not defined yet."""
    extra = {**study_recipes(), **(auto or {})}
    multi = tuple(range(max(1, seeds)))
    if quick:
        multi = tuple(range(min(2, max(1, seeds))))
    one = (0,)
    wanted: list[tuple[str, tuple[int, ...], str]] = []
    if quick and arch == "bifocal":
        wanted += [(n, multi if n != "gq5" else one, "bifocal") for n in ("fp32", "qat8", "gq5")]
    elif quick:
        wanted += [("fp32", multi, "baselines"), ("qat8", multi, "baselines"), ("gq4", multi, "baselines"),
                   ("gq2", one, "baselines"), ("ptq4-uniform", one, "baselines"), ("dkm4", one, "baselines"),
                   ("gq4-fixed", one, "centroids"), ("gq4-tq10-project", one, "quant-frequency"),
                   ("gq3-hh1" if arch == "rnnt" else "gq3-ff1", one, "bit-allocation")]
    elif arch == "bifocal":  # the paper's deployment claim: 5-bit GQ vs its 8-bit QAT twin
        wanted += [(n, multi, "bifocal") for n in ("fp32", "qat8", "gq5", "gq4")]
    else:
        claim_cells = {"fp32", "qat8", "lsq8", "lsq4", "s8bqat4", "dkm4", "gq5", "gq4", "gq3", "gq3-hh1", "gq3-ff1"}
        base = ["fp32", "qat8", "lsq8", "lsq5", "lsq4", "lsq3", "lsq2", "s8bqat5", "s8bqat4", "s8bqat3",
                "dkm4", "dkm3", "dkm2", "ptq4-uniform", "ptq4-kmeans", "ptq3-uniform", "ptq3-kmeans",
                "gq8", "gq5", "gq4", "gq3", "gq2", "gq5-channel", "gq4-channel", "gq3-channel"]
        wanted += [(n, multi if n in claim_cells else one, "baselines") for n in base]
        # GQ's central claim (learned vs fixed centroids) before the finer ablations
        wanted += [(n, one, "centroids") for n in ("gq4-fixed", "gq4-mu0", "gq4-mu25", "gq4-mu100", "gq4-mu255",
                                                  "gq4-mu-learn")]
        if arch == "rnnt":
            alloc = ["gq4-hh2", "gq4-hh1", "gq4-ih2", "gq4-enc2", "gq4-pred2", "gq4-joiner2", "gq4-edges8", "gq3-hh1"]
        else:
            alloc = ["gq4-attn2", "gq4-ff2", "gq4-conv2", "gq4-pred2", "gq4-joiner2", "gq4-edges8", "gq3-ff1"]
        wanted += [(n, multi if n in claim_cells else one, "bit-allocation") for n in alloc]
        # automatic allocation (`subbit allocate`) vs uniform GQ at the same average bits
        wanted += [(f"gq-auto{b}", multi, "bit-allocation") for b in AUTO_BITS]
        tq = [f"gq4-tq{t}-{m}" for m in ("project", "forward") for t in (1, 10, 100, 1000)]
        wanted += [(n, one, "quant-frequency") for n in tq if n != "gq4-tq1-forward"]
    cells: dict[str, Cell] = {}
    missing: list[str] = []
    for name, sds, section in wanted:
        if section not in sections and not (name == "fp32") and not (arch == "bifocal" and "bifocal" in sections):
            continue
        recipe = _lookup(name, extra)
        if recipe is None:
            missing.append(name)
            continue
        old = cells.get(name)
        if old is None:
            cells[name] = Cell(recipe, sds, (section,))
        else:
            cells[name] = Cell(recipe, tuple(sorted(set(old.seeds) | set(sds))), old.sections + (section,))
    # every quantized row is compared with the fp32 control, and gq4 anchors each ablation
    for name in ("fp32", "gq4"):
        if name in cells:
            continue
        recipe = _lookup(name, extra)
        if recipe is not None:
            cells[name] = Cell(recipe, multi, ("baselines",))
    return list(cells.values()), missing


# -- configuration -------------------------------------------------------------------------------
@dataclass
class StudyConfig:
    out: str
    work: str | None = None  # checkpoints; default OUT/work (keep it out of git)
    data: str | None = None
    quick: bool = False
    archs: tuple[str, ...] = ARCHS
    sections: tuple[str, ...] = SECTIONS
    seeds: int = 3
    preset: str = "small"
    fp32_steps: int = 3000
    steps: int = 600
    lr: float = 5e-4
    warmup_steps: int = 50
    batch_size: int = 8
    eval_limit: int | None = None
    runtime_limit: int | None = 300
    curve_every: int | None = None  # dev WER every N fine-tune steps; None = steps // 5 (quick: steps // 2)
    report_only: bool = False  # rows and claims from the cell files there are; train nothing
    only: tuple[str, ...] = ()  # run only these recipes' cells (a second worker, or a rerun)
    threads: int | None = None
    progress: bool = True
    command: str = ""

    def __post_init__(self) -> None:
        unknown = sorted(set(self.archs) - set(ARCHS))
        if unknown or not self.archs:
            raise ValueError(f"--archs: expected some of {ARCHS}, got {list(self.archs)}")
        bad = sorted(set(self.sections) - set(SECTIONS))
        if bad or not self.sections:
            raise ValueError(f"--sections: expected some of {SECTIONS}, got {list(self.sections)}")
        for name in ("seeds", "fp32_steps", "steps", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"--{name.replace('_', '-')}: must be a positive integer, got {v!r}")
        if self.curve_every is not None and (isinstance(self.curve_every, bool) or not isinstance(self.curve_every, int)
                                             or self.curve_every < 0):
            raise ValueError(f"--curve-every: must be an integer >= 0, got {self.curve_every!r}")
        for name in ("eval_limit", "runtime_limit"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ValueError(f"--{name.replace('_', '-')}: must be a positive integer, got {v!r}")
        if not self.lr > 0:
            raise ValueError(f"--lr: must be > 0, got {self.lr}")

    @classmethod
    def quick_defaults(cls, out: str, **kw: Any) -> StudyConfig:
        """Toy size for CI: tiny models, a few steps, the dummy corpus unless --data is given."""
        args: dict[str, Any] = dict(out=out, quick=True, preset="tiny", seeds=2, fp32_steps=300, steps=20,
                                    batch_size=4, warmup_steps=2, eval_limit=None, runtime_limit=None)
        args.update({k: v for k, v in kw.items() if v is not None})
        return cls(**args)

    @property
    def root(self) -> Path:
        return Path(self.out)

    @property
    def work_dir(self) -> Path:
        return Path(self.work) if self.work else self.root / "work"


# -- small helpers -------------------------------------------------------------------------------
def _read(path: Path) -> dict[str, Any] | None:
    return _read_json(path)


def _write(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_json(path, data)


def corpus_identity(data: Path) -> str:
    """Hash of the manifests (texts, ids, durations): a cell is only valid on the same corpus."""
    h = hashlib.sha256()
    for split in ("train", "dev", *SPLITS, OPEN_SPLIT):
        f = data / f"{split}.jsonl"
        if f.is_file():
            h.update(split.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


#: methods whose implementation changed after cells were first recorded (a cell made with the
#: older code is redone): DKM v2 backpropagates through every weight at raw tau 1e-4; S8BQAT v2
#: applies lam per weight (a sum, not a per-tensor mean)
METHOD_VERSIONS = {"dkm": 2, "s8bqat": 2}


def cell_fingerprint(cfg: StudyConfig, arch: str, recipe: Recipe, seed: int, corpus: str,
                     lr: float | None = None) -> dict[str, Any]:
    r = recipe.to_dict()
    r.pop("description")
    extra = {"method_version": METHOD_VERSIONS[recipe.method]} if recipe.method in METHOD_VERSIONS else {}
    return {**extra,
        "schema": CELL_SCHEMA, "arch": arch, "preset": cfg.preset, "recipe": r, "seed": seed, "corpus": corpus,
        "fp32": {"steps": cfg.fp32_steps, "seed": 0, **FP32_RECIPE},
        "finetune": {"steps": cfg.steps, "lr": cfg.lr if lr is None else lr, "warmup_steps": cfg.warmup_steps, "batch_size": cfg.batch_size},
        "eval_limit": cfg.eval_limit,
    }


def _cell_path(cfg: StudyConfig, arch: str, name: str, seed: int) -> Path:
    return cfg.root / "cells" / arch / f"{name}-s{seed}.json"


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True, cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


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


def stream_utterances(subbit_file: Path, utts: Sequence[Any]) -> tuple[list[str], list[float], float, int]:
    """Stream utterances through the packed runtime in 100 ms chunks: (hypotheses, ms per chunk,
    audio seconds, resident weight bytes). Shared by the study and the demo."""
    import numpy as np

    from subbit.asr.data import load_audio
    from subbit.runtime import PackedTransducer, StreamingSession

    model = PackedTransducer.from_file(subbit_file)
    session = StreamingSession(model)
    hyps, chunk_ms, audio_s = [], [], 0.0
    for utt in utts:
        audio = load_audio(utt.audio).astype(np.float32)
        audio_s += len(audio) / 16000
        session.reset()
        wake_end = getattr(utt, "wake_end", None)
        if wake_end is not None and "small_until" in (session.enc_state if isinstance(session.enc_state, dict) else {}):
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


def still_improving(curve: Sequence[Sequence[float]]) -> bool | None:
    """Was the last dev WER better than every earlier one by more than the lossless margin?
    (True: the step cap stopped a fine-tune that had not converged.)"""
    if len(curve) < 2:
        return None
    last, before = curve[-1][1], min(w for _, w in curve[:-1])
    return last < before - max(0.02 * before, 0.002)


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
            result = run_compare(cc, [recipe], name="results")
            rows = {row["recipe"]: row for row in result.rows}
            _write_cell(cfg, cc, recipe, fp, rows, data, path, base or {}, splits=tuple(cc.splits))


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


def run_tuning(cfg: StudyConfig, arch: str, data: Path, corpus: str) -> None:
    """The dev search (lr per family, S8BQAT lam), seed 0, before any test cell uses its result."""
    fp32 = base = None
    splits = (study_tuning.TUNE_SPLIT,)
    for tc in study_tuning.tune_cells(cfg.quick, cfg.lr):
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


# -- from cells to rows ---------------------------------------------------------------------------
def _scored(cells: list[dict[str, Any]], split: str) -> stats.Scored | None:
    evs = [(c.get("eval") or {}).get(split) for c in cells]
    if not evs or any(e is None or "utt_errors" not in e for e in evs):
        return None
    ids = evs[0]["utt_ids"]
    if any(e["utt_ids"] != ids for e in evs):
        raise ValueError(f"cells of one row were scored on different {split} utterances")
    return stats.Scored.from_seeds([e["utt_errors"] for e in evs], evs[0]["utt_words"])


def _pair(a: stats.Scored | None, b: stats.Scored | None) -> tuple[stats.Scored, stats.Scored] | None:
    if a is None or b is None or a.words.shape != b.words.shape:
        return None
    return a, b


def build_rows(cfg: StudyConfig, arch: str, cells: list[Cell], corpus: str,
               heldout: dict[tuple[str, str], stats.Scored] | None = None) -> list[dict[str, Any]]:
    """One row per recipe of ``arch``: means over seeds, intervals, delta to fp32, lossless.
    Only cell files made with exactly these settings count (a stale cell is never mixed in);
    each row's held-out scores go into ``heldout[(arch, name)]`` for the claims' paired tests."""
    loaded: dict[str, list[dict[str, Any]]] = {}
    for cell in cells:
        got = []
        for s in cell.seeds:
            c = _read(_cell_path(cfg, arch, cell.recipe.name, s))
            if c is not None and c.get("fingerprint") == cell_fingerprint(cfg, arch, cell.recipe, s, corpus, cell.lr):
                got.append(c)
        loaded[cell.recipe.name] = got
    active = active_base(loaded)
    other_base = {name: sum(_base_key(c) != active for c in cs) for name, cs in loaded.items()}
    loaded = {name: [c for c in cs if _base_key(c) == active] for name, cs in loaded.items()}
    ctrl = {s: _scored(loaded.get("fp32", []), s) for s in SPLITS}
    has_open = any((c.get("eval") or {}).get(OPEN_SPLIT) for cs in loaded.values() for c in cs)
    rows = []
    for cell in cells:
        cs = loaded[cell.recipe.name]
        name = cell.recipe.name
        row: dict[str, Any] = {"name": name, "arch": arch, "method": cell.recipe.method, "sections": list(cell.sections),
                               "description": cell.recipe.description, "seeds": [c["fingerprint"]["seed"] for c in cs],
                               "seeds_planned": list(cell.seeds),
                               "lr": cfg.lr if cell.lr is None else cell.lr, "fp32_base": active,
                               "cells_on_other_bases": other_base.get(name, 0)}
        if not cs:
            row.update({"status": "not run", "bits_avg": None, "size_bytes": None, "wer_seen": None, "wer_heldout": None,
                        "wer_heldout_ci": None, "delta_vs_fp32_ci": None, "lossless": None})
            rows.append(row)
            continue
        first = cs[0]["row"]
        row["status"] = "diverged" if any(c["row"].get("status") == "diverged" for c in cs) else "done"
        row["bits_avg"] = 32.0 if cell.recipe.method == "fp32" else first.get("bits")
        row["size_bytes"] = first.get("size_bytes")
        row["fp32_bytes"] = first.get("fp32_bytes")
        row["size_vs_fp32"] = first.get("size_vs_fp32")
        # equal bytes, not equal bits: every stored byte (indices, codebooks, float tensors) per weight
        row["bits_per_weight"] = None if not row["size_vs_fp32"] else 32.0 * row["size_vs_fp32"]
        curve = next((c.get("curve") for c in cs if c.get("curve")), None)  # the first seed that has one
        row["dev_curve"] = curve
        row["still_improving"] = None if not curve else still_improving(curve)
        row["steps"] = first.get("steps")
        row["train_minutes"] = round(sum(float(c["row"].get("train_minutes") or 0) for c in cs), 2)
        if has_open:  # reported apart: no claim rests on sentences the training text cannot teach
            so = _scored(cs, OPEN_SPLIT)
            row["wer_open"] = None if so is None else so.wer
            row["wer_open_ci"] = None if so is None else list(stats.wer_ci(so))
        for split, key in (("test_seen", "seen"), ("test_heldout", "heldout")):
            sc = _scored(cs, split)
            if split == "test_heldout" and sc is not None and heldout is not None:
                heldout[(arch, name)] = sc
            row[f"wer_{key}"] = None if sc is None else sc.wer
            row[f"wer_{key}_ci"] = None if sc is None else list(stats.wer_ci(sc))
            pair = _pair(sc, ctrl[split])
            if pair is None:
                row[f"delta_{key}_vs_fp32_ci"] = None
            else:
                row[f"delta_{key}_vs_fp32_ci"] = list(stats.delta_ci(*pair))
        row["delta_vs_fp32_ci"] = row.pop("delta_heldout_vs_fp32_ci")
        ref = ctrl["test_heldout"]
        row["lossless"] = (None if row["delta_vs_fp32_ci"] is None or ref is None
                           else stats.is_lossless(tuple(row["delta_vs_fp32_ci"]), ref.wer))
        serves = [c.get("serve") for c in cs if c.get("serve")]
        if serves:
            for key in ("weight_bytes", "p90_ms"):
                vals = [s[key] for s in serves if s.get(key) is not None]
                row[f"runtime_{key}"] = (sum(vals) / len(vals)) if vals else None
            row["runtime_wer_heldout"] = sum(s["wer"] for s in serves) / len(serves)
            row["runtime_utterances"] = serves[0]["utterances"]
            # the same model in PyTorch on the same utterances
            evs = [(c.get("eval") or {}).get("test_heldout") or {} for c in cs]
            n = serves[0]["utterances"]
            torch_errors = [sum(e.get("utt_errors", [])[:n]) for e in evs]
            words = sum((evs[0].get("utt_words") or [])[:n])
            row["torch_wer_heldout_same_utts"] = (sum(torch_errors) / len(torch_errors) / words) if words else None
        rows.append(row)
    return rows


def _base_key(cell: dict[str, Any]) -> str:
    """Cells written before bases were recorded came from one base (the one study run that made them)."""
    return (cell.get("base") or {}).get("sha256") or "unrecorded"


def active_base(loaded: dict[str, list[dict[str, Any]]]) -> str | None:
    """The fp32 base the rows are built on: the one with the most fp32-control cells (then the most
    cells of any recipe); cells from other bases are counted in the row, never pooled."""
    from collections import Counter

    ctrl = Counter(_base_key(c) for c in loaded.get("fp32", []))
    every = Counter(_base_key(c) for cs in loaded.values() for c in cs)
    if not every:
        return None
    return max(every, key=lambda b: (ctrl.get(b, 0), every[b], b))


# -- claims -----------------------------------------------------------------------------------------
def _fmt_ci(ci: Sequence[float] | None) -> str:
    return "-" if ci is None else f"[{100 * ci[0]:+.2f}, {100 * ci[1]:+.2f}]"


def _by(rows: list[dict[str, Any]], arch: str, name: str) -> dict[str, Any] | None:
    for r in rows:
        if r["arch"] == arch and r["name"] == name and r.get("status") == "done" and r.get("wer_heldout") is not None:
            return r
    return None


def _claim(claim: str, verdict: str, evidence: str) -> dict[str, str]:
    return {"claim": claim, "verdict": verdict, "evidence": evidence}


def evaluate_claims(rows: list[dict[str, Any]], cfg: StudyConfig,
                    heldout: dict[tuple[str, str], stats.Scored]) -> list[dict[str, str]]:
    claims = []
    # 1. lossless 5-bit RNN-T (and 4-bit, our target)
    for bits in (5, 4):
        r = _by(rows, "rnnt", f"gq{bits}")
        text = f"GQ {bits}-bit RNN-T is lossless vs fp32 (upper 95% bound of the WER increase within max(2% rel, 0.2 abs))"
        if r is None or r.get("lossless") is None:
            claims.append(_claim(text, "not run", "no finished rnnt gq%d row with a fp32 control" % bits))
        else:
            claims.append(_claim(text, "reproduced" if r["lossless"] else "not reproduced",
                                 f"held-out WER {100 * r['wer_heldout']:.2f}%, delta vs fp32 {_fmt_ci(r['delta_vs_fp32_ci'])} "
                                 f"points over seeds {r['seeds']}"))
    # 2. lossless sub-5-bit Conformer > 6x smaller than fp32
    text = "A lossless sub-5-bit Conformer more than 6x smaller than fp32"
    conf = [r for r in rows if r["arch"] == "conformer" and r["method"] == "gq" and r.get("status") == "done"
            and r.get("bits_avg") is not None and r["bits_avg"] < 5 and r.get("lossless") is not None]
    if not conf:
        claims.append(_claim(text, "not run", "no finished Conformer GQ rows below 5 bits with a fp32 control"))
    else:
        ok = [r for r in conf if r["lossless"] and r.get("size_vs_fp32") and 1 / r["size_vs_fp32"] > 6]
        best = ok[0] if ok else min(conf, key=lambda r: r["delta_vs_fp32_ci"][1])
        ratio = (1 / best["size_vs_fp32"]) if best.get("size_vs_fp32") else float("nan")
        claims.append(_claim(text, "reproduced" if ok else "not reproduced",
                             f"{best['name']}: {best['bits_avg']:.2f} bits avg, {ratio:.1f}x smaller, delta "
                             f"{_fmt_ci(best['delta_vs_fp32_ci'])}"))
    # 3. some RNN-T layers at 1 bit without loss
    text = "Some RNN-T kernels quantized to 1 bit without loss"
    one = [r for r in (_by(rows, "rnnt", n) for n in ("gq3-hh1", "gq4-hh1")) if r is not None and r.get("lossless") is not None]
    if not one:
        claims.append(_claim(text, "not run", "no finished 1-bit allocation row for the RNN-T"))
    else:
        ok = [r for r in one if r["lossless"]]
        r = ok[0] if ok else one[0]
        claims.append(_claim(text, "reproduced" if ok else "not reproduced",
                             f"{r['name']} ({r['bits_avg']:.2f} bits avg): delta {_fmt_ci(r['delta_vs_fp32_ci'])}"))
    # 4. GQ at or below every other method at each depth <= 4 (bifocal has its own claim, below)
    compared = [a for a in cfg.archs if a != "bifocal"]
    for arch in compared:
        for bits in (4, 3, 2):
            g = _by(rows, arch, f"gq{bits}")
            text = f"{arch}: GQ {bits}-bit WER at or below every other {bits}-bit method"
            others = [r for r in rows if r["arch"] == arch and r.get("status") == "done" and r["name"] != f"gq{bits}"
                      and r["method"] != "gq" and r.get("bits_avg") is not None and round(r["bits_avg"]) == bits
                      and r.get("wer_heldout") is not None]
            if g is None or not others:
                claims.append(_claim(text, "not run", "GQ or competitor rows missing at this depth"))
                continue
            worse, better, tied = [], [], []
            lowest = all(g["wer_heldout"] <= o["wer_heldout"] for o in others)
            for o in others:
                d = _paired_delta(heldout, arch, g["name"], o["name"])
                if d is None:
                    continue
                (better if d[1] < 0 else worse if d[0] > 0 else tied).append(f"{o['name']} {_fmt_ci(d)}")
            # "at or below": no competitor significantly better, and GQ's mean the lowest
            verdict = ("not run" if not (better or tied or worse)
                       else "reproduced" if lowest and not worse else "not reproduced")
            claims.append(_claim(text, verdict, "GQ minus competitor, held-out WER points: significantly lower vs "
                                 + (", ".join(better) or "none") + "; within noise vs " + (", ".join(tied) or "none")
                                 + "; significantly higher vs " + (", ".join(worse) or "none")))
    # 5. learned beat fixed centroids
    for arch in compared:
        text = f"{arch}: learnable centroids beat centroids frozen at the mu-law init (GQ 4-bit)"
        d = _paired_delta(heldout, arch, "gq4", "gq4-fixed")
        if d is None:
            claims.append(_claim(text, "not run", "gq4 or gq4-fixed missing"))
        else:
            claims.append(_claim(text, "reproduced" if d[1] < 0 else "not reproduced",
                                 f"gq4 minus gq4-fixed held-out WER {_fmt_ci(d)} points"))
    claims.append(bifocal_claim(rows))
    return claims


#: the paper's deployment result for its 5-bit Bifocal RNN-T against the 8-bit QAT model
PAPER_MEMORY_CHANGE, PAPER_LATENCY_CHANGE = -0.3073, -0.3175


def bifocal_claim(rows: list[dict[str, Any]]) -> dict[str, str]:
    """5-bit GQ Bifocal vs its 8-bit QAT twin: accuracy by the interval, memory as the model's
    deployed bytes (the file's weights: the packed runtime also keeps a float copy of each codebook
    and kernel tables, which per-channel 8-bit pays most for, so its resident bytes would flatter
    GQ), latency as p90 per 100 ms chunk measured while each cell ran."""
    text = "5-bit Bifocal RNN-T vs 8-bit QAT: -30.73% memory and -31.75% latency without loss"
    g, q = _by(rows, "bifocal", "gq5"), _by(rows, "bifocal", "qat8")
    if g is None or q is None or not g.get("size_bytes") or not q.get("size_bytes") or not q.get("runtime_p90_ms"):
        return _claim(text, "not run", "no finished bifocal gq5 and qat8 rows served by the packed runtime")
    mem = g["size_bytes"] / q["size_bytes"] - 1
    lat = (g["runtime_p90_ms"] / q["runtime_p90_ms"] - 1) if g.get("runtime_p90_ms") and q.get("runtime_p90_ms") else None
    lossless = g.get("lossless")
    ok = lossless is True and mem <= PAPER_MEMORY_CHANGE and lat is not None and lat <= PAPER_LATENCY_CHANGE
    lat_txt = "-" if lat is None else f"{100 * lat:+.1f}%"
    return _claim(text, "reproduced" if ok else "not reproduced",
                  f"model bytes {100 * mem:+.1f}%, p90 chunk latency {lat_txt} (per-cell timing, machine load "
                  f"varies; `subbit bench` times them side by side), gq5 delta vs fp32 {_fmt_ci(g.get('delta_vs_fp32_ci'))}"
                  f", lossless: {lossless}")


def _paired_delta(heldout: dict[tuple[str, str], stats.Scored], arch: str, a: str, b: str) -> tuple[float, float] | None:
    """Paired interval of WER(a) - WER(b) on held-out (each pooled over its seeds)."""
    pair = _pair(heldout.get((arch, a)), heldout.get((arch, b)))
    return None if pair is None else stats.delta_ci(*pair)


# -- outputs ----------------------------------------------------------------------------------------
def _pct(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def report_markdown(rows: list[dict[str, Any]], claims: list[dict[str, str]], meta: dict[str, Any]) -> str:
    lines = ["# subbit study", "",
             f"- command: `{meta['command']}`", f"- commit: {meta['commit']}", f"- machine: {meta['machine']}",
             f"- corpus: {meta['corpus']} ({meta['corpus_id']})", f"- wall time of this invocation: {meta['wall_minutes']:.1f} min",
             f"- budgets: fp32 {meta['fp32_steps']} steps, every fine-tune {meta['steps']} steps (lr {meta['lr']})",
             f"- cells finished: {meta['cells']} of {meta['cells_planned']} planned (rows without seeds are not run yet)",
             "- WER in %, 95% intervals from a paired bootstrap over utterances (2000 resamples); delta = held-out WER "
             "minus the fp32 control's (fp32 fine-tuned for the same steps and seeds), in points; lossless = upper "
             "bound of delta within max(2% relative, 0.2 absolute).", ""]
    lines += ["## Claims", "", "| claim | verdict | evidence |", "|---|---|---|"]
    lines += [f"| {c['claim']} | {c['verdict']} | {c['evidence']} |" for c in claims]
    for arch in meta["archs"]:
        for section in SECTIONS:
            sec = [r for r in rows if r["arch"] == arch and section in r.get("sections", [])]
            if not sec:
                continue
            lines += ["", f"## {arch}: {section}", "",
                      "| recipe | bits avg | bits/weight all-in | size KiB | x smaller | seeds | WER seen | WER held-out [95% CI] | delta vs fp32 [95% CI] | lossless | runtime WER |",
                      "|---|---|---|---|---|---|---|---|---|---|---|"]
            for r in sorted(sec, key=lambda r: -(r.get("bits_avg") or 0)):
                size = r.get("size_bytes")
                ratio = (1 / r["size_vs_fp32"]) if r.get("size_vs_fp32") else None
                ci = r.get("wer_heldout_ci")
                held = "-" if r.get("wer_heldout") is None else f"{_pct(r['wer_heldout'])} [{_pct(ci[0])}, {_pct(ci[1])}]"
                bits = "-" if r.get("bits_avg") is None else f"{r['bits_avg']:.2f}"
                kib = "-" if not size else f"{size / 1024:.1f}"
                smaller = "-" if ratio is None else f"{ratio:.2f}"
                lossless = "-" if r.get("lossless") is None else ("yes" if r["lossless"] else "no")
                bpw = "-" if r.get("bits_per_weight") is None else f"{r['bits_per_weight']:.2f}"
                lines.append(f"| {r['name']} | {bits} | {bpw} | {kib} | {smaller} | {len(r.get('seeds', []))} | "
                             f"{_pct(r.get('wer_seen'))} | {held} | {_fmt_ci(r.get('delta_vs_fp32_ci'))} | "
                             f"{lossless} | {_pct(r.get('runtime_wer_heldout'))} |")
    served = [(abs(r["runtime_wer_heldout"] - r["torch_wer_heldout_same_utts"]), r) for r in rows
              if r.get("runtime_wer_heldout") is not None and r.get("torch_wer_heldout_same_utts") is not None]
    if served:
        gap, worst = max(served, key=lambda t: t[0])
        lines += ["", "## What you train is what you serve", "",
                  f"Each row's exported file streamed through the packed runtime (100 ms chunks, int8 activations) "
                  f"vs the converted PyTorch model on the same held-out utterances: {len(served)} rows, largest WER "
                  f"gap {100 * gap:.2f} points ({worst['arch']}:{worst['name']}), mean gap "
                  f"{100 * sum(g for g, _ in served) / len(served):.2f} points."]
    improving = [f"{r['arch']}:{r['name']}" for r in rows if r.get("still_improving")]
    if any(r.get("dev_curve") for r in rows):
        lines += ["", "## Convergence", "",
                  "Dev WER every few fine-tuning steps (curves-ARCH.png). Still improving at the step cap "
                  "(last point better than every earlier one by more than the lossless margin): "
                  + (", ".join(improving) or "none") + "."]
    for arch, table in (meta.get("tuning") or {}).items():
        lines += ["", f"## {arch}: tuning on dev (seed 0; the choice applies to the family's test cells)", "", *table]
    if meta.get("missing"):
        lines += ["", "Recipes planned but not defined yet (skipped): " + ", ".join(meta["missing"])]
    return "\n".join(lines) + "\n"


def write_plots(rows: list[dict[str, Any]], out: Path, archs: Sequence[str]) -> list[Path]:
    """WER (held-out) vs size per architecture, with the 95% interval as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for arch in archs:
        pts = [r for r in rows if r["arch"] == arch and r.get("wer_heldout") is not None and r.get("size_bytes")]
        if not pts:
            continue
        fig, ax = plt.subplots(figsize=(7, 4.5))
        methods = sorted({r["method"] for r in pts})
        for m in methods:
            ms = [r for r in pts if r["method"] == m]
            x = [r["size_bytes"] / 1024 for r in ms]
            y = [100 * r["wer_heldout"] for r in ms]
            err = [[100 * (r["wer_heldout"] - r["wer_heldout_ci"][0]) for r in ms],
                   [100 * (r["wer_heldout_ci"][1] - r["wer_heldout"]) for r in ms]]
            ax.errorbar(x, y, yerr=err, fmt="o", capsize=3, label=m)
            for r, xi, yi in zip(ms, x, y):
                ax.annotate(r["name"], (xi, yi), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel("model size (KiB, log scale)")
        ax.set_ylabel("held-out WER (%) with 95% CI")
        ax.set_title(f"subbit study: {arch}, WER vs size")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        p = out / f"pareto-{arch}.png"
        fig.savefig(p, dpi=120)
        plt.close(fig)
        paths.append(p)
    return paths


def write_curves(rows: list[dict[str, Any]], out: Path, archs: Sequence[str]) -> list[Path]:
    """Dev WER against fine-tuning step per recipe (one seed): did the step cap cut training short?"""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for arch in archs:
        rs = [r for r in rows if r["arch"] == arch and r.get("dev_curve")]
        if not rs:
            continue
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for r in rs:
            steps, wers = zip(*r["dev_curve"])
            ax.plot(steps, [100 * w for w in wers], marker=".", linewidth=1, label=r["name"])
        ax.set_xlabel("fine-tuning step")
        ax.set_ylabel("dev WER (%)")
        ax.set_title(f"subbit study: {arch}, dev WER during fine-tuning")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
        fig.tight_layout()
        p = out / f"curves-{arch}.png"
        fig.savefig(p, dpi=120)
        plt.close(fig)
        paths.append(p)
    return paths


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
            if not cfg.report_only and not cfg.only:
                run_tuning(cfg, arch, data, corpus)
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

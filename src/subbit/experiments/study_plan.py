"""What the study runs: its recipes, cells, configuration and the fingerprint that makes a cell
file valid (shared by the runners, the rows and the report; see :mod:`subbit.experiments.study`)."""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from subbit.experiments.ablations import ablation_recipes
from subbit.experiments.compare import _read_json, _write_json
from subbit.experiments.recipes import ENC_RECURRENT, RECIPES, TOKEN_EDGES, Recipe

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


#: per-tensor latent gradient norm of the ``-lclip`` recipes (issue 12 item 7). Measured on the
#: study's RNN-T (small, data/full, 3 batches of 8): at tau_rel 1 the 11 latents' norms are
#: 0.2-2.9 (median 1.3) at 4 bits and 0.4-4.3 (median 1.7) at 2 bits; by tau_rel 0.005 they grow
#: 10x (4 bits) and 50-150x (2 bits). 1.0 barely binds at the start (as the global clip 5.0,
#: which the total 5.4 just exceeds there) and bounds every tensor once the anneal grows it;
#: all 11 together stay within sqrt(11) = 3.3, under the global 5.0 left to the other parameters.
#: (The centroids' gradients grow too, 10 -> 250 at 2 bits, and stay in that global clip.)
LATENT_CLIP = 1.0


def study_recipes() -> dict[str, Recipe]:
    """Variants only the study needs: frozen centroids, more mu values, T_q = 1000, the split
    gradient clip, allocations."""
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
    for bits in (4, 2):
        name = f"gq{bits}-lclip"
        out[name] = RECIPES[f"gq{bits}"].variant(
            name, f"GQ {bits}-bit, each latent's gradient clipped to {LATENT_CLIP:g} on its own (split clip)",
            schedule={**RECIPES[f"gq{bits}"].schedule, "latent_clip": LATENT_CLIP})
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


#: one-seed ablations the claim checker named "lossless, indicative only" on the EPYC run, given
#: every seed so the claim can be decided; chosen *after* seeing seed 0, so quote seeds 1-2 alone too
FOLLOW_UP: dict[str, set[str]] = {"conformer": {"gq4-mu25"}}


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
        # every cell a claim rests on gets every seed: gq4-fixed decides learned vs fixed centroids
        claim_cells = {"fp32", "qat8", "lsq8", "lsq4", "s8bqat4", "dkm4", "gq5", "gq4", "gq3", "gq3-hh1", "gq3-ff1",
                       "gq4-fixed"} | FOLLOW_UP.get(arch, set())
        base = ["fp32", "qat8", "lsq8", "lsq5", "lsq4", "lsq3", "lsq2", "s8bqat5", "s8bqat4", "s8bqat3",
                "dkm4", "dkm3", "dkm2", "ptq4-uniform", "ptq4-kmeans", "ptq3-uniform", "ptq3-kmeans",
                "gq8", "gq5", "gq4", "gq3", "gq2", "gq5-channel", "gq4-channel", "gq3-channel"]
        wanted += [(n, multi if n in claim_cells else one, "baselines") for n in base]
        # GQ's central claim (learned vs fixed centroids) before the finer ablations
        wanted += [(n, multi if n in claim_cells else one, "centroids")
                   for n in ("gq4-fixed", "gq4-mu0", "gq4-mu25", "gq4-mu100", "gq4-mu255", "gq4-mu-learn")]
        if arch == "rnnt":
            alloc = ["gq4-hh2", "gq4-hh1", "gq4-ih2", "gq4-enc2", "gq4-pred2", "gq4-joiner2", "gq4-edges8", "gq3-hh1"]
        else:
            alloc = ["gq4-attn2", "gq4-ff2", "gq4-conv2", "gq4-pred2", "gq4-joiner2", "gq4-edges8", "gq3-ff1"]
        wanted += [(n, multi if n in claim_cells else one, "bit-allocation") for n in alloc]
        # automatic allocation (`subbit allocate`) vs uniform GQ at the same average bits
        wanted += [(f"gq-auto{b}", multi, "bit-allocation") for b in AUTO_BITS]
        tq = [f"gq4-tq{t}-{m}" for m in ("project", "forward") for t in (1, 10, 100, 1000)]
        wanted += [(n, one, "quant-frequency") for n in tq if n != "gq4-tq1-forward"]
        if arch == "rnnt":  # the split gradient clip (latents per tensor) vs gq4/gq2 at the same seeds
            # gq2 at every seed too: the 2-bit pair needs its control at the same seeds
            wanted += [(n, multi, "quant-frequency") for n in ("gq4-lclip", "gq2-lclip", "gq2")]
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
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"



"""Bookkeeping of a comparison's run directories: which weights, which settings, how long.

A run or result made with other settings than asked for is refused (``check_fingerprint``)
rather than silently reused; ``init_identity`` hashes the fp32 weights every recipe starts
from, so results from two different starting points are never mixed in one table.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from subbit.asr.checkpoint import RunPaths, atomic_write_json, read_json_object
from subbit.asr.train import read_log
from subbit.experiments.compare_config import CompareConfig
from subbit.experiments.recipes import Recipe


def read_json(path: Path) -> dict[str, Any] | None:
    """A result or fingerprint file (None when there is none yet)."""
    if not path.is_file():
        return None
    return read_json_object(path, "; delete it to redo")


def write_json(path: Path, data: Any) -> None:
    atomic_write_json(path, data)


def weights_of(run: Path) -> str:
    """The weights a run has: "final" when finished, else "last" (a run still training)."""
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
    which = weights_of(run)
    paths = RunPaths(run)
    f = paths.final if which == "final" else paths.last
    h = hashlib.sha256()
    with f.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return {"run": str(Path(run).resolve()), "weights": which, "sha256": h.hexdigest()}


def run_log_totals(run: Path) -> tuple[int, float]:
    """(steps, minutes) of a run, from the last row of its log.csv."""
    path = RunPaths(run).log
    if not path.is_file():
        return 0, 0.0
    rows = read_log(path)
    if not rows:
        return 0, 0.0
    return int(rows[-1]["step"]), float(rows[-1]["wall_time"]) / 60.0


def clear_partial(run: Path) -> None:
    """A run killed before its first checkpoint: drop its logs so the restart does not append."""
    paths = RunPaths(run)
    for f in (paths.log, paths.eval_log):
        if f.is_file():
            f.unlink()


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


def check_fingerprint(path: Path, fp: dict[str, Any], what: str) -> None:
    """Refuse ``path`` when it was written for another fingerprint (naming the keys that differ)."""
    stored = read_json(path)
    if stored is None:
        return
    old = stored.get("fingerprint")
    if old != fp:
        keys = sorted(k for k in set(fp) | set(old or {}) if (old or {}).get(k) != fp.get(k))
        raise ValueError(
            f"{what} was made with other settings (differs in: {', '.join(keys)}; see {path}); "
            f"use another --out or delete it"
        )

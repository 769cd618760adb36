"""The divergence guard: stop on a NaN/inf loss or gradient, or on a loss that explodes, keep the last
healthy checkpoint and say the exact command that recovers.

*Exploding* is judged on the loss per target token (so long and short batches compare): the
median of the last ``WINDOW`` steps above ``EXPLODE_FACTOR`` times the lowest such median seen so far
(at least 1 nat per token, so a nearly converged run is not stopped by noise). A checkpoint is
*healthy* when that median and each of the last ``LATEST`` losses are within ``HEALTHY_FACTOR`` of
the lowest; each healthy ``last.pt`` is
also kept as ``checkpoints/good.pt`` (a hard link: no second write). On divergence ``last.pt`` is
replaced by ``good.pt``, so ``subbit train --out RUN --resume --lr LOWER`` starts from it; a resume
that diverges again does the same, so the good checkpoint is never overwritten by a worse one.
"""

from __future__ import annotations

import math
import os
import shlex
import shutil
import statistics
from collections import deque
from pathlib import Path
from typing import Any

from subbit.asr.checkpoint import RunPaths, load_checkpoint
from subbit.asr.recipes import default_recipe
from subbit.asr.training.config import TrainConfig, TrainingDiverged

WINDOW = 10
EXPLODE_FACTOR = 10.0
HEALTHY_FACTOR = 3.0
#: a checkpoint is healthy only if these last steps are within HEALTHY_FACTOR as well
LATEST = 3
#: nats per token below which a loss level is not used as the reference (noise near convergence)
MIN_LEVEL = 1.0


class LossGuard:
    """Tracks the per-token loss; ``exploding`` and ``healthy`` as defined in the module docstring."""

    def __init__(self) -> None:
        self.recent: deque[float] = deque(maxlen=WINDOW)
        self.floor = math.inf

    def update(self, per_token_loss: float) -> None:
        self.recent.append(float(per_token_loss))
        if len(self.recent) == WINDOW:
            self.floor = min(self.floor, self.level)

    @property
    def level(self) -> float:
        return statistics.median(self.recent) if self.recent else math.nan

    def _ref(self) -> float:
        return max(self.floor, MIN_LEVEL)

    @property
    def exploding(self) -> bool:
        return len(self.recent) == WINDOW and self.level > EXPLODE_FACTOR * self._ref()

    @property
    def proven(self) -> bool:
        """A full window of healthy steps: weights worth saving when there is no checkpoint yet."""
        return len(self.recent) == WINDOW and self.healthy

    @property
    def healthy(self) -> bool:
        if not self.recent:
            return True
        if not all(math.isfinite(x) for x in self.recent):
            return False
        if len(self.recent) < WINDOW:
            return True
        # the median (the level) and the latest steps too: a rise shows in them first
        latest = list(self.recent)[-LATEST:]
        return max(self.level, *latest) <= HEALTHY_FACTOR * self._ref()

    def state_dict(self) -> dict[str, Any]:
        return {"recent": list(self.recent), "floor": self.floor}

    def load_state_dict(self, d: dict[str, Any] | None) -> None:
        if not d:  # checkpoints written before the guard existed
            return
        self.recent = deque((float(x) for x in d["recent"]), maxlen=WINDOW)
        self.floor = float(d["floor"])


def _link_over(src: Path, dst: Path) -> None:
    """``dst`` := ``src``, atomically: a hard link (no second write), or a copy where links fail."""
    if dst.is_file() and os.path.samefile(src, dst):
        return  # a rename between two links of one file would do nothing and leave the temp behind
    tmp = dst.with_name(f".{dst.name}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def keep_good(paths: RunPaths) -> None:
    """``good.pt`` := the ``last.pt`` just written."""
    _link_over(paths.last, paths.good)


def restore_good(paths: RunPaths) -> int | None:
    """Put the last healthy checkpoint back as ``last.pt``; its step, or None when there is none."""
    if not paths.good.is_file():
        return None
    step = int(load_checkpoint(paths.good)["step"])
    _link_over(paths.good, paths.last)
    return step


def resume_command(paths: RunPaths, lr: float) -> list[str]:
    """``subbit train --out RUN --resume --lr LR``: continue from ``last.pt`` at another peak lr."""
    return ["subbit", "train", "--out", str(paths.root), "--resume", "--lr", f"{lr:g}"]


def restart_command(paths: RunPaths, cfg: TrainConfig, lr: float) -> list[str]:
    """The command that starts the run again from scratch (or from its ``--init``) at ``lr``."""
    budget = ["--steps", str(cfg.steps)] if cfg.steps else ["--minutes", f"{cfg.minutes:g}"]
    cmd = ["subbit", "train", "--data", str(Path(cfg.data).resolve()), "--out", str(paths.root.resolve()),
           "--lr", f"{lr:g}", *budget, "--batch-size", str(cfg.batch_size), "--warmup-steps", str(cfg.warmup_steps),
           "--augment" if cfg.augment else "--no-augment", "--sortagrad", str(cfg.sortagrad_epochs),
           "--seed", str(cfg.seed), "--ctc-weight", f"{cfg.ctc_weight:g}"]  # fmt: skip
    if cfg.max_frames:
        cmd += ["--max-frames", str(cfg.max_frames)]
    if cfg.init:
        cmd += ["--init", str(cfg.init)]
    else:
        cmd += ["--model", cfg.model, "--preset", cfg.preset, "--tokenizer", cfg.tokenizer]
        cmd += ["--vocab-size", str(cfg.vocab_size)] if cfg.tokenizer == "bpe" else []
    if cfg.quant:
        cmd += ["--quant", str(cfg.quant)]
    return cmd


def recovery_lr(cfg: TrainConfig) -> float:
    """A tenth of the lr that diverged, and at most the default recipe's (an lr of 1e3 gets 3e-3, not 100)."""
    return min(cfg.lr / 10, float(default_recipe(cfg.model, cfg.minutes, cfg.steps)["lr"]))


def divergence_message(what: str, step: int, loss: float, paths: RunPaths, cfg: TrainConfig,
                       kept_step: int | None, saved_now: bool) -> str:  # fmt: skip
    """The error text: what happened, which checkpoint was kept, and the command that recovers."""
    lr = recovery_lr(cfg)
    head = f"{what} at step {step} (loss={loss}); stopped. "
    if kept_step is not None or saved_now:
        at = kept_step if kept_step is not None else step - 1
        where = f"The last good checkpoint is {paths.last} (step {at}). "
        cmd = resume_command(paths, lr)
        how = "Resume it at a lower lr"
    else:
        where = f"No good checkpoint was kept in {paths.root} (it diverged before one was written). "
        cmd = restart_command(paths, cfg, lr)
        how = "Start the run again at a lower lr"
    return (f"{head}{where}{how}: {shlex.join(cmd)} "
            f"(if it diverges again, check the data or lower --lr further)")


def diverged(what: str, step: int, loss: float, paths: RunPaths, cfg: TrainConfig, *, main: bool,
             weights_finite: bool, proven: bool, save_last: Any) -> TrainingDiverged:  # fmt: skip
    """Keep the last healthy checkpoint and build the error to raise.

    ``save_last()`` writes the current weights as ``last.pt``; it is called only when no
    checkpoint exists yet, the weights are finite, the stop is a NaN (the weights are then those
    of the step before, which had a finite loss) and the guard saw a full window of healthy
    steps (``proven``). Otherwise nothing is kept and the message gives the command that starts
    the run again.
    """
    kept = restore_good(paths) if main else None
    saved = False
    if main and kept is None and not paths.last.is_file() and weights_finite and proven \
            and what.startswith("non-finite"):
        save_last()
        saved = True
    elif main and kept is None and paths.last.is_file():
        kept = int(load_checkpoint(paths.last)["step"])
    return TrainingDiverged(divergence_message(what, step, loss, paths, cfg, kept, saved))


def per_token(loss: float, batch: int, tokens: int, loss_norm: str) -> float:
    """The loss per target token (+1 final blank per utterance), whatever the loss normalisation."""
    if loss_norm == "token":
        return loss
    return loss * batch / max(1, tokens + batch)

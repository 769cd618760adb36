"""The training state a checkpoint holds: written atomically, restored exactly.

A checkpoint restores model, optimizer, lr schedule, GQ schedule, guard, Python/NumPy/torch RNG
states and the data position (epoch, batch index), so the next step's loss is identical to an
uninterrupted run's. Only rank 0 writes.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import subbit.quant as sq
from subbit.asr.checkpoint import atomic_torch_save
from subbit.asr.training.batches import rng_state, set_rng_state
from subbit.asr.training.guard import LossGuard
from subbit.asr.training.log import truncate_log
from subbit.asr.training.setup import Session, quantizers

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """Where training stands; the loop advances it, ``save`` writes it, ``restore`` reads it back."""

    step: int = 0
    total: int | None = None  # None while a time budget is being calibrated
    elapsed_before: float = 0.0  # training seconds of earlier sessions
    gq_start: int = 0  # the step the GQ anneal starts at (after calibration)
    best_wer: float = math.inf
    gq: sq.GQScheduler | None = None
    guard: LossGuard = field(default_factory=LossGuard)
    t_start: float = field(default_factory=time.perf_counter)  # this session's start
    session_steps: int = 0

    def elapsed(self) -> float:
        return self.elapsed_before + (time.perf_counter() - self.t_start)


def make_gq(s: Session, total_steps: int, start: int) -> sq.GQScheduler:
    cfg = s.cfg
    return sq.GQScheduler(s.model, total_steps=max(1, total_steps - start), tau_start=cfg.tau_start,
                          tau_end=cfg.tau_end, anneal=cfg.anneal, anneal_end=cfg.anneal_end,
                          quant_every=cfg.quant_every, quant_mode=cfg.quant_mode)  # fmt: skip


def save(s: Session, st: TrainState, path: Path) -> None:
    atomic_torch_save(
        {
            "schema_version": 1,
            "step": st.step,
            "total_steps": st.total,
            "elapsed": st.elapsed(),
            "model": s.model.state_dict(),
            "optimizer": s.optimizer.state_dict(),
            "lr_schedule": s.lr_sched.state_dict(),
            "gq": st.gq.state_dict() if st.gq is not None else None,
            "gq_start": st.gq_start,
            "best_wer": st.best_wer,
            "guard": st.guard.state_dict(),
            "rng": rng_state(),
            "data": s.stream.state_dict(),
            "world_size": s.dist.world,
        },
        path,
    )


def restore(s: Session) -> TrainState:
    """The state to start from: step 0, or the resumed checkpoint's (with ``--lr``/``--steps`` applied).

    Also tidies the run directory: temporary files of interrupted writes are removed, and the CSV
    log is cut to the step training restarts from (rows after it will be written again).
    """
    st = TrainState(total=s.cfg.steps)
    ckpt = s.ckpt
    if s.dist.main:
        for p in s.paths.clean_partial_writes():
            log.warning("removed %s (a checkpoint write interrupted by a kill)", p)
    if ckpt is not None:
        s.model.load_state_dict(ckpt["model"])
        s.optimizer.load_state_dict(ckpt["optimizer"])
        s.lr_sched.load_state_dict(ckpt["lr_schedule"])
        st.total = ckpt["total_steps"]
        st.step, st.elapsed_before = int(ckpt["step"]), float(ckpt["elapsed"])
        st.gq_start, st.best_wer = int(ckpt["gq_start"]), float(ckpt["best_wer"])
        st.guard.load_state_dict(ckpt.get("guard"))
        s.stream.load_state_dict(ckpt["data"])
        if "lr" in s.overrides:
            s.lr_sched.peak = float(s.cfg.lr)
        if "steps" in s.overrides:
            st.total = _extend(s, st, int(s.cfg.steps))
        log.info("resumed %s at step %d (%.1f min trained)", s.paths.root, st.step, st.elapsed_before / 60)
    if s.dist.main:
        truncate_log(s.paths.log, st.step)
    if s.cfg.quant:
        if st.total is not None:
            st.gq = make_gq(s, st.total, st.gq_start)
            if ckpt is not None and ckpt.get("gq") is not None:
                st.gq.load_state_dict(ckpt["gq"])
                if "steps" in s.overrides:
                    st.gq.set_total_steps(max(1, st.total - st.gq_start))
        else:
            for q in quantizers(s.model):
                q.set_tau(s.cfg.tau_start)
    if ckpt is not None:
        set_rng_state(ckpt["rng"])  # last: nothing above may consume random numbers after this
        s.ckpt = None
    return st


def _extend(s: Session, st: TrainState, steps: int) -> int:
    """``--resume --steps N``: the lr cosine goes on from where it is and ends at step N."""
    if steps <= st.step:
        raise ValueError(f"--steps {steps}: the run is already at step {st.step}; give more steps to extend it")
    s.lr_sched.set_total(steps, st.step)
    return steps


def complete_periodic(s: Session, st: TrainState) -> None:
    """A kill during ``step-N.pt`` leaves it missing while ``last.pt`` (written just before) is at step N:
    the state now *is* step N's, so write it."""
    cfg = s.cfg
    if s.dist.main and cfg.keep_every and st.step and st.step % cfg.keep_every == 0:
        path = s.paths.periodic(st.step)
        if not path.is_file():
            save(s, st, path)
            log.warning("wrote %s (its write had been interrupted)", path)

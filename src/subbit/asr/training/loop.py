"""``train``: build -> restore -> loop of ``train_step`` -> save. One loop for fp32 and every method.

With a quantization config the model is ``subbit.quant.prepare``d, a ``GQScheduler`` is stepped
after every optimizer step and ``subbit.quant.regularization(model)`` is added to the loss (zero
except for S8BQAT). Everything else (AdamW, warmup + cosine lr, gradient clipping, checkpoints,
resume, DDP) is shared, so fp32 and QAT runs differ only in what the config says.

Time budget (``minutes``): see :mod:`subbit.asr.training.budget`. A correction re-bases the lr
cosine and the GQ anneal (``LRSchedule.set_total``, ``GQScheduler.set_total_steps``): both go on
from where they are and still end at the new total, so tau never rises again. The GQ scheduler
covers the steps after calibration (``gq_start``), during which quantizers sit at ``tau_start``.
With ``steps`` there is no calibration and the schedules cover all steps.

Auxiliary CTC (``ctc_weight``, default 0.3): a fresh model gets a linear CTC head on its encoder
and the loss ``rnnt + ctc_weight * ctc``. From scratch, RNN-T alone first learns a text-only
predictor and ignores the audio for minutes; CTC forces the encoder to align at once. The head
is training-only: checkpoints keep it (resume), final.pt and config.json's model do not.

DDP (torchrun) shards each epoch's bucketed batch list across ranks (``batches[rank::world]``,
truncated to a multiple of the world size); only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

import subbit.quant as sq
from subbit.asr.checkpoint import atomic_torch_save, atomic_write_json, read_run_config
from subbit.asr.data import read_manifest
from subbit.asr.evaluate import evaluate
from subbit.asr.training.budget import StepBudget
from subbit.asr.training.config import TrainConfig, TrainResult
from subbit.asr.training.guard import EXPLODE_FACTOR, WINDOW, diverged, keep_good, per_token
from subbit.asr.training.log import TrainLog
from subbit.asr.training.setup import Session, setup
from subbit.asr.training.state import TrainState, complete_periodic, make_gq, restore, save
from subbit.quant.api import is_prepared, quantizer_enabled

log = logging.getLogger(__name__)

LossHook = Callable[[int, torch.Tensor], torch.Tensor]


@dataclass
class StepStats:
    """What one optimizer step measured (all ranks averaged)."""

    loss: float
    lr: float
    grad_norm: float
    audio_sec: float
    seconds: float


def train_step(s: Session, st: TrainState, batch: dict[str, Any], loss_hook: LossHook | None, t0: float) -> StepStats:
    """One optimizer step; raises :class:`TrainingDiverged` on a NaN/inf loss or gradient, or an
    exploding loss, after keeping the last healthy checkpoint."""
    cfg, dist, model, device = s.cfg, s.dist, s.model, s.dist.device
    feats = batch["feats"].to(device, non_blocking=True)
    feat_lens = batch["feat_lens"].to(device)
    targets = batch["targets"].to(device)
    target_lens = batch["target_lens"].to(device)
    # bifocal RNN-T: the batch's per-frame pathway choice (wake word = small pathway), only to
    # encoders that take one (docs/models.md, section 3b); others get exactly the old call
    bifocal = "pathway_mask" in batch and getattr(model.encoder, "accepts_pathway_mask", False)
    loss = s.ddp_model(feats, feat_lens, targets, target_lens,
                       **({"pathway_mask": batch["pathway_mask"].to(device)} if bifocal else {}))
    if cfg.quant:
        loss = loss + sq.regularization(model)
    if loss_hook is not None:
        loss = loss_hook(st.step + 1, loss)
    lr = s.lr_sched(st.step)
    for group in s.optimizer.param_groups:
        group["lr"] = lr
    s.optimizer.zero_grad(set_to_none=True)
    bad = torch.tensor([0.0 if torch.isfinite(loss).item() else 1.0], device=device)
    dist.all_reduce_(bad, "max")
    grad_norm = torch.tensor(float("nan"))
    if bad.item() == 0:
        loss.backward()
        grad_norm = clip_gradients(model, cfg.grad_clip, cfg.latent_clip)
        bad += 0.0 if torch.isfinite(grad_norm).item() else 1.0
        dist.all_reduce_(bad, "max")
    if bad.item() > 0:
        what = "non-finite loss" if not torch.isfinite(loss).item() else "non-finite gradient"
        _stop(s, st, what, loss.item())
    stats = torch.tensor([loss.item(), float(feat_lens.sum().item()), float(target_lens.sum().item())], device=device)
    dist.all_reduce_(stats)
    mean_loss = stats[0].item() / dist.world
    loss_norm = str(getattr(model, "config", {}).get("loss_norm", "utterance"))
    st.guard.update(per_token(mean_loss, feats.size(0) * dist.world, int(stats[2].item()), loss_norm))
    if st.guard.exploding:
        _stop(s, st, f"exploding loss (per-token median of the last {WINDOW} steps {st.guard.level:.4g} > "
              f"{EXPLODE_FACTOR:g}x its lowest {st.guard.floor:.4g})",
              mean_loss)
    s.optimizer.step()
    if st.gq is not None:
        st.gq.step()
    st.step += 1
    st.session_steps += 1
    dt = time.perf_counter() - t0
    return StepStats(mean_loss, lr, float(grad_norm.item()), stats[1].item() * s.frame_sec, dt)


def clip_gradients(model: nn.Module, grad_clip: float, latent_clip: float | None = None) -> torch.Tensor:
    """Clip the step's gradients in place; returns the L2 norm of all of them before clipping.

    Default (``latent_clip`` None): one global norm ``grad_clip`` over every parameter. With
    ``latent_clip``: each quantized latent weight's gradient is clipped to it on its own
    (:func:`subbit.quant.clip_latent_grad_norm_`) and ``grad_clip`` bounds the other parameters
    only, so the latents' growth late in GQ's anneal no longer shrinks every other step."""
    if latent_clip is None:
        return torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    latent_norm = sq.clip_latent_grad_norm_(model, latent_clip)
    latents = {id(qt.latent) for qt in sq.quantized_tensors(model)}
    others = [p for p in model.parameters() if id(p) not in latents]
    other_norm = torch.nn.utils.clip_grad_norm_(others, grad_clip)
    return torch.linalg.vector_norm(torch.stack([latent_norm.to(other_norm), other_norm]))


def _stop(s: Session, st: TrainState, what: str, loss: float) -> None:
    finite = all(torch.isfinite(p).all().item() for p in s.model.parameters())
    raise diverged(what, st.step + 1, loss, s.paths, s.cfg, main=s.dist.main, weights_finite=finite,
                   proven=st.guard.proven, save_last=lambda: save(s, st, s.paths.last))  # fmt: skip


def _apply_total(s: Session, st: TrainState, budget: StepBudget, new_total: int) -> None:
    """A time-budget estimate: the first sets the run length, later ones re-base the schedules."""
    first = st.total is None
    total = s.dist.broadcast_int(new_total)
    if first:
        st.total = total
        s.lr_sched.total = total
        # as with --steps, the warmup takes at most 10% of the run
        s.lr_sched.warmup = min(s.lr_sched.warmup, max(st.step, total // 10))
        log.info("time budget %.1f min: %.3f s/step -> about %d steps in all", s.cfg.minutes, budget.sec_per_step,
                 total)
        if s.cfg.quant:
            st.gq_start = st.step
            st.gq = make_gq(s, total, st.gq_start)
    else:
        s.lr_sched.set_total(total, st.step)
        if st.gq is not None:
            st.gq.set_total_steps(max(1, total - st.gq_start))
        st.total = s.lr_sched.total


def _current_tau(gq: Any, cfg: TrainConfig) -> float:
    if not cfg.quant:
        return float("nan")
    if gq is None:
        return cfg.tau_start
    return float(getattr(gq, "tau", float("nan")))


def _checkpoint(s: Session, st: TrainState) -> None:
    """The periodic writes of one step: best.pt after a dev eval, last.pt (+ good.pt), step-N.pt."""
    cfg, paths = s.cfg, s.paths
    if cfg.eval_every and st.step % cfg.eval_every == 0 and (st.total is None or st.step < st.total):
        wer = dev_eval(s, st.step)
        if wer is not None and wer < st.best_wer:
            st.best_wer = wer
            if s.dist.main:
                save(s, st, paths.best)
        s.ddp_model.train()
    if s.dist.main and cfg.ckpt_every and st.step % cfg.ckpt_every == 0:
        save_last(s, st)
    if s.dist.main and cfg.keep_every and st.step % cfg.keep_every == 0:
        save(s, st, paths.periodic(st.step))


def save_last(s: Session, st: TrainState) -> None:
    save(s, st, s.paths.last)
    if st.guard.healthy:
        keep_good(s.paths)


def _finished(s: Session) -> TrainResult | None:
    """A resumed run that already ended: nothing to do (``--steps`` more than it has extends it)."""
    if not s.cfg.resume or not s.paths.final.is_file() or s.ckpt is None or "steps" in s.overrides:
        return None
    ckpt = s.ckpt
    step, total, elapsed = int(ckpt["step"]), ckpt["total_steps"], float(ckpt["elapsed"])
    timed_out = s.cfg.minutes is not None and elapsed >= s.cfg.minutes * 60
    if not (total is not None and step >= total) and not timed_out:
        return None
    log.info("%s: finished at step %d/%s; nothing to do (resume with --steps N > %d to train further)",
             s.paths.root, step, total, step)
    return TrainResult(s.paths.root, step, int(total or step), elapsed, float("nan"), 0.0, "finished",
                       len(s.skipped))  # fmt: skip


def train(cfg: TrainConfig, loss_hook: LossHook | None = None, *,
          overrides: dict[str, Any] | None = None) -> TrainResult:  # fmt: skip
    """Train (or resume) the run in ``cfg.out``; returns when the budget is spent.

    ``overrides`` (with ``cfg.resume``): stored options to change, ``{"lr": ..., "steps": ...}``.
    ``loss_hook(step, loss) -> loss`` lets tests inject faults (e.g. a NaN) at a given step.
    Raises :class:`TrainingDiverged` on a non-finite loss or gradient, or an exploding loss.
    """
    s = setup(cfg, overrides)
    done = _finished(s)
    if done is not None:
        return done
    st = restore(s)
    complete_periodic(s, st)
    cfg = s.cfg
    budget = StepBudget(cfg.minutes, calib_steps=cfg.calib_steps, reestimate_every=cfg.reestimate_every,
                        quant=bool(cfg.quant), world=s.dist.world)  # fmt: skip
    csv_log = TrainLog(s.paths.log if s.dist.main else None)
    if s.dist.main:
        log.info("training %s/%s (%.2fM params%s) on %s x%d, %d train utterances", cfg.model, cfg.preset,
                 sum(p.numel() for p in s.model.parameters()) / 1e6, ", quantized" if cfg.quant else "",
                 s.dist.device, s.dist.world, s.n_train)  # fmt: skip
    st.t_start = time.perf_counter()
    last_loss, speeds, stopped = float("nan"), [], "done"
    bar = tqdm(total=st.total, initial=st.step, desc="train", unit="step", disable=not (s.dist.main and cfg.progress))
    s.ddp_model.train()
    try:
        while st.total is None or st.step < st.total:
            if cfg.stop_after is not None and st.session_steps >= cfg.stop_after:
                stopped = "stop_after"
                break
            t0 = time.perf_counter()
            r = train_step(s, st, next(s.stream), loss_hook, t0)
            last_loss, speed = r.loss, r.audio_sec / r.seconds
            speeds.append(speed)
            tau = _current_tau(st.gq, cfg)
            elapsed = st.elapsed()
            csv_log.row(step=st.step, epoch=s.stream.epoch, loss=last_loss, lr=r.lr, tau=tau, grad_norm=r.grad_norm,
                        speed=speed, elapsed=elapsed)  # fmt: skip
            bar.update(1)
            bar.set_postfix(loss=f"{last_loss:.3f}", lr=f"{r.lr:.2e}", tau=f"{tau:.2g}", xRT=f"{speed:.0f}")
            new_total = budget.update(step=st.step, session_steps=st.session_steps, total=st.total, elapsed=elapsed,
                                      audio_sec=r.audio_sec, mean_batch=s.stream.mean_batch_seconds())  # fmt: skip
            if new_total is not None:
                _apply_total(s, st, budget, new_total)
                bar.total = st.total
            if budget.active and not cfg.quant and st.total is not None:
                out_of_time = torch.tensor([1.0 if budget.out_of_time(elapsed) else 0.0], device=s.dist.device)
                if s.dist.all_reduce_(out_of_time, "max").item() > 0:
                    stopped = "time" if st.step < st.total else "done"
                    break
            _checkpoint(s, st)
    finally:
        bar.close()
        csv_log.close()

    elapsed = st.elapsed()
    if s.dist.main:
        save_last(s, st)
        if stopped != "stop_after":
            write_final(s)
    s.dist.barrier()
    mean_speed = float(np.mean(speeds[2:] if len(speeds) > 4 else speeds)) if speeds else 0.0
    if s.dist.main:
        log.info(
            "stopped (%s) at step %d/%s after %.1f min; last loss %.4f; %.0f audio s per s; %d utterances skipped%s",
            stopped, st.step, st.total, elapsed / 60, last_loss, mean_speed, len(s.skipped),
            f" ({s.paths.root / 'skipped.tsv'})" if s.skipped else "",
        )
    return TrainResult(s.paths.root, st.step, int(st.total or st.step), elapsed, last_loss, mean_speed, stopped,
                       len(s.skipped))  # fmt: skip


def dev_eval(s: Session, step: int) -> float | None:
    """Greedy WER on the first ``eval_limit`` dev utterances (rank 0; others wait)."""
    wer = None
    dev = s.data_dir / "dev.jsonl"
    if s.dist.main and dev.is_file():
        utts = read_manifest(dev)
        if utts:
            # quant_mode="forward" switches the quantizer off between T_q steps: the dev WER (and
            # best.pt) must come from the quantized model all the same
            on = quantizer_enabled(s.model) if is_prepared(s.model) else contextlib.nullcontext()
            with on:
                res = evaluate(s.model, s.tokenizer, utts, limit=s.cfg.eval_limit, device=s.dist.device, split="dev",
                               frontend=s.frontend)  # fmt: skip
            wer = res.wer
            new = not s.paths.eval_log.is_file()
            with s.paths.eval_log.open("a", newline="") as fh:
                w = csv.writer(fh)
                if new:
                    w.writerow(["step", "dev_wer", "utterances"])
                w.writerow([step, f"{wer:.5f}", len(res.utts)])
            log.info("step %d: dev WER %.2f%% (%d utts)", step, 100 * wer, len(res.utts))
    s.dist.barrier()
    return wer


def write_final(s: Session) -> None:
    """RUN/final.pt: the deployable state dict (converted to hard weights for QAT runs).

    A CTC head is training-only: it is left out of final.pt and of config.json's model config,
    so evaluation, export and the runtime see the plain transducer. Checkpoints keep it (resume).
    """
    model, paths = s.model, s.paths
    if s.cfg.quant:  # on the prepared model itself (a QAT run from scratch also lists the CTC head)
        sq.convert(model)
        (paths.root / "quant_report.txt").write_text(str(sq.report(model)) + "\n")
    if getattr(model, "ctc_head", None) is not None and hasattr(model, "without_ctc"):
        model = model.without_ctc()
        config = read_run_config(paths.root)
        config["model"] = model.config
        atomic_write_json(paths.config, config)
    atomic_torch_save(model.state_dict(), paths.final)

"""The training loop's public names, kept at their old import path.

The code lives in :mod:`subbit.asr.training` (one job per module): ``config`` (TrainConfig,
TrainResult, TrainingDiverged), ``schedule`` (LRSchedule), ``dist`` (Dist, init_distributed),
``batches`` (BatchStream, rng_state, set_rng_state, seed_everything), ``budget`` (StepBudget),
``log`` (LOG_FIELDS, read_log), ``guard`` (LossGuard), ``setup``, ``state`` and ``loop``
(train, train_step).
"""

from __future__ import annotations

from subbit.asr.training.batches import BatchStream, rng_state, seed_everything, set_rng_state
from subbit.asr.training.budget import RATE_WINDOW, StepBudget
from subbit.asr.training.config import (
    PRESETS,
    RESUME_OVERRIDES,
    SESSION_FIELDS,
    TrainConfig,
    TrainingDiverged,
    TrainResult,
)
from subbit.asr.training.dist import Dist, init_distributed
from subbit.asr.training.guard import LossGuard
from subbit.asr.training.log import LOG_FIELDS, read_log
from subbit.asr.training.loop import train, train_step
from subbit.asr.training.schedule import LRSchedule
from subbit.asr.models.presets import ARCHS

__all__ = [
    "ARCHS", "LOG_FIELDS", "PRESETS", "RATE_WINDOW", "RESUME_OVERRIDES", "SESSION_FIELDS", "BatchStream", "Dist",
    "LRSchedule", "LossGuard", "StepBudget", "TrainConfig", "TrainResult", "TrainingDiverged", "init_distributed",
    "read_log", "rng_state", "seed_everything", "set_rng_state", "train", "train_step",
]

"""``TrainConfig``: every option of ``subbit train``, validated once, stored as ``train_args``."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from subbit.asr.models.presets import ARCHS, PRESETS as MODEL_PRESETS

#: preset names (the same for every architecture)
PRESETS = tuple(next(iter(MODEL_PRESETS.values())))
#: options that may differ when resuming (they do not change the result)
SESSION_FIELDS = ("resume", "stop_after", "progress", "device", "threads", "eval_limit", "num_workers")
#: options a resume may change on purpose (``--lr`` after a divergence, ``--steps`` to extend a run)
RESUME_OVERRIDES = ("lr", "steps")


def _positive(default: int | None = None) -> Any:
    """A field that must be a positive integer, or None (unset); checked in ``__post_init__``."""
    return field(default=default, metadata={"check": "positive"})


def _count(default: int) -> Any:
    """A field that must be an integer >= 0 (0 usually means "never"); checked in ``__post_init__``."""
    return field(default=default, metadata={"check": "count"})


class TrainingDiverged(RuntimeError):
    """The loss or gradient became NaN/inf, or the loss exploded; the last good checkpoint was kept."""


@dataclass
class TrainConfig:
    """Every option of ``subbit train`` (stored in RUN/config.json as ``train_args``)."""

    data: str
    out: str
    model: str = "rnnt"
    preset: str = "small"
    minutes: float | None = None
    steps: int | None = _positive()
    quant: str | None = None
    init: str | None = None
    resume: bool = False
    batch_size: int = _positive(16)
    max_frames: int | None = _positive()
    lr: float = 2e-3
    weight_decay: float = 1e-2
    warmup_steps: int = _count(200)
    final_lr_ratio: float = 0.05
    grad_clip: float = 5.0
    #: clip each quantized latent weight's gradient to this L2 norm on its own, and ``grad_clip``
    #: the other parameters only (None: one global clip over all, the default; RESULTS.md 1.7)
    latent_clip: float | None = None
    tokenizer: str = "bpe"
    vocab_size: int = 128
    device: str = "cpu"
    seed: int = 0
    augment: bool = True
    sortagrad_epochs: int = _count(0)
    num_workers: int = _count(0)
    eval_every: int = _count(0)
    eval_limit: int = 200
    ckpt_every: int = _count(200)
    keep_every: int = _count(0)
    calib_steps: int = _count(20)
    reestimate_every: int = 50  # QAT with a time budget: correct the total every N steps
    tau_start: float = 1.0
    tau_end: float = 1e-3
    anneal: str = "exp"
    anneal_end: float = 0.85
    quant_every: int = _count(0)
    quant_mode: str = "project"
    threads: int | None = _positive()
    stop_after: int | None = _positive()
    progress: bool = True
    model_overrides: dict[str, Any] = field(default_factory=dict)
    #: weight of the auxiliary CTC loss on the encoder (0 = off); training-only, see loop.write_final.
    #: On data/quick (4 min, char, no augmentation) 0.3 took test_seen WER from 93% to 51%.
    ctc_weight: float = 0.3

    def __post_init__(self) -> None:
        if self.model not in ARCHS:
            raise ValueError(f"model: expected one of {ARCHS}, got {self.model!r}")
        if self.preset not in PRESETS:
            raise ValueError(f"preset: expected one of {PRESETS}, got {self.preset!r}")
        if (self.minutes is None) == (self.steps is None):
            raise ValueError("give exactly one of minutes (time budget) or steps")
        if self.minutes is not None and not (self.minutes > 0 and math.isfinite(self.minutes)):
            raise ValueError(f"--minutes: must be a finite number > 0, got {self.minutes}")
        for f in fields(self):
            v, check = getattr(self, f.name), f.metadata.get("check")
            if check == "positive" and v is not None and (not isinstance(v, int) or v < 1):
                raise ValueError(f"{f.name}: must be a positive integer, got {v!r}")
            if check == "count" and (not isinstance(v, int) or v < 0):
                raise ValueError(f"{f.name}: must be an integer >= 0, got {v!r}")
        if isinstance(self.reestimate_every, bool) or not isinstance(self.reestimate_every, int) \
                or self.reestimate_every < 1:
            raise ValueError(f"reestimate_every: must be a positive integer, got {self.reestimate_every!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"--lr: must be a finite number > 0, got {self.lr}")
        if not self.grad_clip > 0:
            raise ValueError(f"grad_clip: must be > 0, got {self.grad_clip}")
        if self.latent_clip is not None and (isinstance(self.latent_clip, bool) or not isinstance(
                self.latent_clip, (int, float)) or not (self.latent_clip > 0 and math.isfinite(self.latent_clip))):
            raise ValueError(f"latent_clip: must be a finite number > 0 or None, got {self.latent_clip!r}")
        if not 0 <= self.final_lr_ratio <= 1:
            raise ValueError(f"final_lr_ratio: must be in [0, 1], got {self.final_lr_ratio}")
        if self.tokenizer not in ("bpe", "char"):
            raise ValueError(f"tokenizer: expected 'bpe' or 'char', got {self.tokenizer!r}")
        if isinstance(self.ctc_weight, bool) or not isinstance(self.ctc_weight, (int, float)) \
                or not 0 <= self.ctc_weight < 1:
            raise ValueError(f"ctc_weight: must be a number in [0, 1), got {self.ctc_weight!r}")
        if self.vocab_size < 2:
            raise ValueError(f"vocab_size: must be >= 2, got {self.vocab_size}")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"device: expected 'cpu' or 'cuda[:N]', got {self.device!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"train_args: unknown field(s) {unknown}")
        return cls(**d)


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    total_steps: int
    elapsed: float
    last_loss: float
    audio_sec_per_sec: float
    stopped: str  # "done", "time", "stop_after", "finished" (resumed a finished run: nothing to do)
    skipped: int = 0  # train utterances left out (listed in RUN/skipped.tsv)

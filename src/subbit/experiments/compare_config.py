"""What one comparison is given (``CompareConfig``) and gives back (``CompareResult``).

The fine-tuning options mirror :class:`subbit.asr.train.TrainConfig`'s names (``compare``
copies them into one per recipe) but not its defaults: recipes fine-tune from a trained fp32
model, so the learning rate and warm-up are smaller.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

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
    # the fp32 base: given, or trained with one of these budgets
    fp32_run: str | None = None
    fp32_minutes: float | None = None
    fp32_steps: int | None = None
    # every recipe's budget: exactly one of the two
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

"""One training loop for fp32 and every quantization method.

With a quantization config the model is ``subbit.quant.prepare``d, a ``GQScheduler`` is stepped
after every optimizer step and ``subbit.quant.regularization(model)`` is added to the loss (zero
except for S8BQAT). Everything else (AdamW, warmup + cosine lr, gradient clipping, checkpoints,
resume, DDP) is shared, so fp32 and QAT runs differ only in what the config says.

Time budget (``minutes``): the first ``calib_steps`` steps are timed and the total number of
steps is set from their speed, ``total = steps_done + remaining_time / sec_per_step * safety``,
where ``sec_per_step`` is the time of an average batch at the audio throughput of the last
``RATE_WINDOW`` steps (batches differ in length, and with ``sortagrad_epochs`` the first ones
are the shortest). The estimate is then corrected as training goes, because the shared
machine's load changes and steps get slower: an fp32 run every step (and it stops when the time
is up), a QAT run every ``reestimate_every`` steps (and it always runs to its current total,
because the temperature anneal must finish and the last ~15% must train the deployed hard
weights; its safety factor, 0.9, absorbs speed noise between corrections). A correction
re-bases the lr cosine and the GQ anneal (``LRSchedule.set_total``,
``GQScheduler.set_total_steps``): both go on from where they are and still end at the new
total, so tau never rises again. The GQ scheduler covers the steps after calibration
(``gq_start``), during which quantizers sit at ``tau_start``. With ``steps`` there is no
calibration and the schedules cover all steps.

Auxiliary CTC (``ctc_weight``, default 0.3): a fresh model gets a linear CTC head on its encoder
and the loss ``rnnt + ctc_weight * ctc``. From scratch, RNN-T alone first learns a text-only
predictor and ignores the audio for minutes; CTC forces the encoder to align at once. The head
is training-only: checkpoints keep it (resume), final.pt and config.json's model do not.

Resume restores model, optimizer, lr schedule, GQ schedule, Python/NumPy/torch RNG states and
the data position (epoch, batch index), so the next step's loss is identical to an
uninterrupted run's. DDP (torchrun) shards each epoch's bucketed batch list across ranks
(``batches[rank::world]``, truncated to a multiple of the world size); only rank 0 writes.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import random
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from subbit.asr.checkpoint import (
    RunPaths,
    features_config,
    frontend_from_config,
    atomic_torch_save,
    load_checkpoint,
    model_state_from,
    read_run_config,
    run_dir_of,
    sync_quantized_weights,
    write_run_config,
)

log = logging.getLogger(__name__)

ARCHS = ("rnnt", "conformer", "bifocal")
PRESETS = ("tiny", "small", "paper")
#: steps whose measured speed sets the time-budget estimate (recent load, not the start's)
RATE_WINDOW = 50
LOG_FIELDS = ("step", "epoch", "loss", "lr", "tau", "grad_norm", "audio_sec_per_sec", "wall_time")
#: options that may differ when resuming (they do not change the result)
SESSION_FIELDS = ("resume", "stop_after", "progress", "device", "threads", "eval_limit", "num_workers")


class TrainingDiverged(RuntimeError):
    """The loss or gradient became NaN/inf; the last good checkpoint was kept."""


@dataclass
class TrainConfig:
    """Every option of ``subbit train`` (stored in RUN/config.json as ``train_args``)."""

    data: str
    out: str
    model: str = "rnnt"
    preset: str = "small"
    minutes: float | None = None
    steps: int | None = None
    quant: str | None = None
    init: str | None = None
    resume: bool = False
    batch_size: int = 16
    max_frames: int | None = None
    lr: float = 2e-3
    weight_decay: float = 1e-2
    warmup_steps: int = 200
    final_lr_ratio: float = 0.05
    grad_clip: float = 5.0
    tokenizer: str = "bpe"
    vocab_size: int = 128
    device: str = "cpu"
    seed: int = 0
    augment: bool = True
    sortagrad_epochs: int = 0
    num_workers: int = 0
    eval_every: int = 0
    eval_limit: int = 200
    ckpt_every: int = 200
    keep_every: int = 0
    calib_steps: int = 20
    reestimate_every: int = 50  # QAT with a time budget: correct the total every N steps
    tau_start: float = 1.0
    tau_end: float = 1e-3
    anneal: str = "exp"
    anneal_end: float = 0.85
    quant_every: int = 0
    quant_mode: str = "project"
    threads: int | None = None
    stop_after: int | None = None
    progress: bool = True
    model_overrides: dict[str, Any] = field(default_factory=dict)
    #: weight of the auxiliary CTC loss on the encoder (0 = off); training-only, see _write_final.
    #: On data/quick (4 min, char, no augmentation) 0.3 took test_seen WER from 93% to 51%.
    ctc_weight: float = 0.3

    def __post_init__(self) -> None:
        if self.model not in ARCHS:
            raise ValueError(f"model: expected one of {ARCHS}, got {self.model!r}")
        if self.preset not in PRESETS:
            raise ValueError(f"preset: expected one of {PRESETS}, got {self.preset!r}")
        if (self.minutes is None) == (self.steps is None):
            raise ValueError("give exactly one of minutes (time budget) or steps")
        if self.minutes is not None and not self.minutes > 0:
            raise ValueError(f"minutes: must be > 0, got {self.minutes}")
        for name in ("steps", "batch_size", "stop_after", "max_frames", "threads"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ValueError(f"{name}: must be a positive integer, got {v!r}")
        for name in ("sortagrad_epochs", "num_workers", "eval_every", "ckpt_every", "keep_every", "quant_every", "warmup_steps", "calib_steps"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 0:
                raise ValueError(f"{name}: must be an integer >= 0, got {v!r}")
        if isinstance(self.reestimate_every, bool) or not isinstance(self.reestimate_every, int) or self.reestimate_every < 1:
            raise ValueError(f"reestimate_every: must be a positive integer, got {self.reestimate_every!r}")
        if not self.lr > 0:
            raise ValueError(f"lr: must be > 0, got {self.lr}")
        if not self.grad_clip > 0:
            raise ValueError(f"grad_clip: must be > 0, got {self.grad_clip}")
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
class LRSchedule:
    """Linear warmup to ``peak`` then cosine to ``peak * final_ratio`` at ``total`` steps.

    ``total=None`` (time budget still being calibrated) holds the peak after warmup.
    """

    peak: float
    warmup: int
    total: int | None = None
    final_ratio: float = 0.05
    # where the last set_total re-based the cosine (a new total never raises the lr again)
    rebase_step: int = 0
    rebase_progress: float = 0.0

    def progress(self, step: int) -> float:
        if self.total is None:
            return 0.0
        s0 = max(self.warmup, self.rebase_step)
        p0 = self.rebase_progress if self.rebase_step >= self.warmup else 0.0
        return min(1.0, max(0.0, p0 + (1.0 - p0) * (step - s0) / max(1, self.total - s0)))

    def set_total(self, total: int, step: int) -> None:
        """A new run length at ``step``: the cosine goes on from where it is to the new end."""
        if self.total is not None and step > self.warmup:
            self.rebase_progress, self.rebase_step = self.progress(step), step
        self.total = max(int(total), step + 1)

    def __call__(self, step: int) -> float:
        if self.warmup and step < self.warmup:
            return self.peak * (step + 1) / self.warmup
        if self.total is None:
            return self.peak
        p = self.progress(step)
        return self.peak * (self.final_ratio + (1 - self.final_ratio) * 0.5 * (1 + math.cos(math.pi * p)))

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, d: dict[str, Any]) -> None:
        known = set(asdict(self))
        for k, v in d.items():
            if k not in known:
                raise ValueError(f"lr schedule state: unknown key {k!r}")
            setattr(self, k, v)


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    total_steps: int
    elapsed: float
    last_loss: float
    audio_sec_per_sec: float
    stopped: str  # "done", "time", "stop_after"
    skipped: int = 0  # train utterances left out (listed in RUN/skipped.tsv)


# -- distributed -------------------------------------------------------------------------------
@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    def all_reduce_(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        if self.enabled:
            import torch.distributed as td

            td.all_reduce(t, op=td.ReduceOp.MAX if op == "max" else td.ReduceOp.SUM)
        return t

    def broadcast_int(self, value: int) -> int:
        if not self.enabled:
            return value
        import torch.distributed as td

        t = torch.tensor([value], dtype=torch.int64, device=self.device)
        td.broadcast(t, 0)
        return int(t.item())

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as td

            td.barrier()


def init_distributed(device: str) -> Dist:
    """Join the torchrun process group when WORLD_SIZE > 1 (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError("device: cuda requested but torch.cuda.is_available() is False")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        # under torchrun each rank takes the GPU of its local rank; alone, the one asked for
        dev = torch.device(f"cuda:{local}" if world > 1 or device == "cuda" else device)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if world > 1:
        import torch.distributed as td

        if not td.is_initialized():
            td.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, world, dev)


# -- data --------------------------------------------------------------------------------------
class BatchStream:
    """Endless, resumable, sharded iteration over a loader's bucketed batches.

    Each epoch's batch list comes from the loader's batch sampler (deterministic given the seed
    and epoch), is truncated to a multiple of ``world`` and sharded ``[rank::world]``; batches
    are then built directly with the dataset and collate function, so resuming at (epoch, index)
    skips the earlier batches without loading their audio. With ``num_workers > 0`` the rest of
    each epoch is loaded ahead by a DataLoader over that batch list (items are seeded by their
    key, so workers change nothing but speed); the position counts batches consumed, not loaded.
    """

    def __init__(self, loader: Any, rank: int = 0, world: int = 1, num_workers: int = 0,
                 sortagrad_epochs: int = 0) -> None:
        self.loader = loader
        self.rank, self.world = rank, world
        self.num_workers = num_workers
        self.sortagrad_epochs = sortagrad_epochs
        self.epoch, self.index = 0, 0
        self._batches: list[list[Any]] | None = None
        self._it: Iterator[dict[str, Any]] | None = None

    def _epoch_batches(self) -> list[list[Any]]:
        sampler = self.loader.batch_sampler
        if hasattr(sampler, "batches"):  # subbit's BucketBatchSampler: a pure function of the epoch
            batches = [list(b) for b in sampler.batches(self.epoch)]
        else:
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(self.epoch)
            batches = [list(b) for b in sampler]
        durations = getattr(sampler, "durations", None)
        if self.epoch < self.sortagrad_epochs and durations is not None:
            # curriculum ("SortaGrad", Deep Speech 2): shortest batches first; alignment is
            # learnt on short commands before long sentences
            batches.sort(key=lambda b: max(durations[i] for i in b))
        n = len(batches) // self.world * self.world
        if n == 0:
            raise ValueError(f"too few training batches ({len(batches)}) for {self.world} processes")
        mine = list(range(n))[self.rank :: self.world]
        if hasattr(sampler, "batches"):
            # dataset keys (index, epoch, batch_no): augmentation is seeded per (seed, epoch, index)
            return [[(i, self.epoch, b) for i in batches[b]] for b in mine]
        return [batches[b] for b in mine]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def _epoch_iter(self) -> Iterator[dict[str, Any]]:
        assert self._batches is not None
        remaining = self._batches[self.index :]
        ds, collate = self.loader.dataset, self.loader.collate_fn
        if self.num_workers > 0:
            from torch.utils.data import DataLoader

            # a private generator: the loader's worker seed must not consume the global torch RNG
            # (that would shift dropout masks and break resume parity)
            gen = torch.Generator().manual_seed(self.epoch)
            return iter(DataLoader(ds, batch_sampler=remaining, collate_fn=collate, num_workers=self.num_workers,
                                   generator=gen))
        return (collate([ds[i] for i in b]) for b in remaining)

    def __next__(self) -> dict[str, Any]:
        if self._batches is None:
            self._batches, self._it = self._epoch_batches(), None
        if self.index >= len(self._batches):
            self.epoch, self.index = self.epoch + 1, 0
            self._batches, self._it = self._epoch_batches(), None
        if self._it is None:
            self._it = self._epoch_iter()
        batch = next(self._it)
        self.index += 1
        return batch

    def mean_batch_seconds(self) -> float | None:
        """Mean audio seconds per batch over an epoch (None when the sampler has no durations)."""
        sampler = self.loader.batch_sampler
        durations = getattr(sampler, "durations", None)
        if durations is None or not hasattr(sampler, "batches"):
            return None
        batches = sampler.batches(self.epoch)
        return sum(durations[i] for b in batches for i in b) / max(1, len(batches))

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, d: dict[str, int]) -> None:
        self.epoch, self.index = int(d["epoch"]), int(d["index"])
        self._batches, self._it = None, None


# -- RNG ---------------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np.asarray(np_state["state"]["key"], dtype=np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": n["bit_generator"],
            "state": {"key": n["key"].cpu().numpy().astype(np.uint32), "pos": n["pos"]},
            "has_gauss": n["has_gauss"],
            "gauss": n["gauss"],
        }
    )
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# -- helpers -----------------------------------------------------------------------------------
def _quantizers(model: nn.Module) -> list[nn.Module]:
    from subbit.quant.base import WeightQuantizer

    return [m for m in model.modules() if isinstance(m, WeightQuantizer)]


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices only: no decay on biases, norms, or quantizer parameters (centroids, scales)."""
    q_params = {id(p) for q in _quantizers(model) for p in q.parameters(recurse=True)}
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 and id(p) not in q_params else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _load_init(model: nn.Module, init: str) -> dict[str, Any]:
    """Warm start: fp32 weights from a run dir (final.pt, else last.pt) or a checkpoint file."""
    path = Path(init)
    run = run_dir_of(path)
    cfg = read_run_config(run)
    if cfg.get("quant"):
        raise ValueError(f"init: {init} is a quantized run; warm start needs an fp32 run")
    if path.is_dir():
        paths = RunPaths(path)
        path = paths.final if paths.final.is_file() else paths.last
    state = model_state_from(path)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"init: {path} does not match the model (missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]})"
        )
    log.info("warm start from %s", path)
    return cfg


def _truncate_log(path: Path, step: int) -> None:
    """Drop rows logged after the checkpoint we resume from (they will be redone)."""
    if not path.is_file():
        return
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        return
    keep = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= step]
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows(keep)


def read_log(path: str | Path) -> list[dict[str, float]]:
    """RUN/log.csv as a list of dicts of floats (for tests and reports)."""
    with Path(path).open(newline="") as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


# -- the loop ----------------------------------------------------------------------------------
def train(cfg: TrainConfig, loss_hook: Callable[[int, torch.Tensor], torch.Tensor] | None = None) -> TrainResult:
    """Train (or resume) the run in ``cfg.out``; returns when the budget is spent.

    ``loss_hook(step, loss) -> loss`` lets tests inject faults (e.g. a NaN) at a given step.
    Raises :class:`TrainingDiverged` on a non-finite loss or gradient.
    """
    from tqdm import tqdm

    from subbit.asr.data import read_manifest, screen_utterances, write_skipped
    from subbit.asr.dataset import frontend_stats, make_loader
    from subbit.asr.models import build_from_config, build_model
    from subbit.asr.features import LogMel, frames_needed
    from subbit.asr.tokenizer import Tokenizer, train_tokenizer

    session = {k: getattr(cfg, k) for k in SESSION_FIELDS}
    paths = RunPaths(Path(cfg.out))
    if cfg.resume:
        if not paths.last.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {paths.last}")
        stored = read_run_config(paths.root)
        cfg = TrainConfig.from_dict({**stored["train_args"], **session})
    elif paths.last.is_file() or paths.final.is_file():
        raise ValueError(f"out: {paths.root} already holds a run; pass --resume or choose a new --out")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    dist = init_distributed(cfg.device)
    device = dist.device
    seed_everything(cfg.seed)

    data_dir = Path(cfg.data)
    train_manifest = data_dir / "train.jsonl"
    if not train_manifest.is_file():
        raise FileNotFoundError(f"data: no train.jsonl in {data_dir}")
    train_utts = read_manifest(train_manifest)
    if not train_utts and not train_utts.skipped:
        raise ValueError(f"{train_manifest}: no utterances")
    # every file is decoded once: missing, empty, undecodable, NaN/Inf audio and non-UTF-8 lines
    # are skipped (RUN/skipped.tsv), never a traceback mid-run; too short ones further below
    lengths: dict[str, int] = {}
    train_utts, skipped = screen_utterances(train_utts, lengths=lengths)
    if not train_utts:
        raise ValueError(f"{train_manifest}: no usable utterances ({len(skipped)} skipped, e.g. "
                         f"{[s['id'] + ': ' + s['reason'] for s in skipped[:3]]})")  # fmt: skip

    # tokenizer + model (+ warm start, + quantization)
    init_cfg = None
    if cfg.resume:
        tokenizer = Tokenizer.load(paths.tokenizer)
        model = build_from_config(stored["model"])
    else:
        if cfg.init:
            init_run = run_dir_of(cfg.init)
            tokenizer = Tokenizer.load(RunPaths(init_run).tokenizer)
            model = build_from_config(read_run_config(init_run)["model"])
            init_cfg = _load_init(model, cfg.init)
        else:
            tokenizer = train_tokenizer([u.text for u in train_utts], kind=cfg.tokenizer, vocab_size=cfg.vocab_size)
            model = build_model(cfg.model, cfg.preset, vocab_size=tokenizer.vocab_size, **cfg.model_overrides)
            if cfg.ctc_weight > 0:
                model = build_from_config({**model.config, "ctc_weight": float(cfg.ctc_weight)})
    if cfg.resume:
        frontend = frontend_from_config(stored)
    elif init_cfg is not None:  # the warm-started weights expect the features they were trained on
        frontend = frontend_from_config(init_cfg)
    else:
        frontend = LogMel()
    # an utterance shorter than one encoder frame would stop every step it lands in
    subsampling = int(getattr(getattr(model, "encoder", None), "subsampling", 1) or 1)
    min_samples = frames_needed(subsampling, frontend.n_fft, frontend.hop_length)
    if cfg.augment:  # speed perturbation shortens an utterance by up to its fastest factor
        from subbit.asr.augment import SPEEDS

        min_samples = math.ceil(min_samples * max(max(SPEEDS), 1.0))
    short = [u for u in train_utts if lengths.get(u.audio, 0) < min_samples]
    if short:
        skipped += [{"id": u.id, "audio": u.audio, "reason": f"shorter than one encoder frame "
                     f"({lengths.get(u.audio, 0)} samples, needs {min_samples}: subsampling {subsampling})"}
                    for u in short]  # fmt: skip
        keep = {id(u) for u in short}
        train_utts = [u for u in train_utts if id(u) not in keep]
        if not train_utts:
            raise ValueError(f"{train_manifest}: every utterance is shorter than one encoder frame ({min_samples} samples)")
    if skipped:
        log.warning("%s: skipped %d of %d utterances (listed in %s), e.g. %s: %s", train_manifest, len(skipped),
                    len(skipped) + len(train_utts), paths.root / "skipped.tsv", skipped[0]["id"], skipped[0]["reason"])
    if not cfg.resume and init_cfg is None:
        mean, std = frontend_stats(train_utts, frontend, seed=cfg.seed)
        frontend.set_stats(mean, std)
    quant_dict = None
    if cfg.quant:
        import subbit.quant as sq

        qconfig = sq.QuantConfig.from_dict(stored["quant"]) if cfg.resume else sq.QuantConfig.load(cfg.quant)
        quant_dict = qconfig.to_dict()
        model = sq.prepare(model, qconfig)
    model.to(device)
    if cfg.quant:
        sync_quantized_weights(model)
    n_params = sum(p.numel() for p in model.parameters())

    if dist.main and not cfg.resume:
        paths.checkpoints.mkdir(parents=True, exist_ok=True)
        tokenizer.save(paths.tokenizer)
        args = cfg.to_dict()
        if init_cfg is not None:  # record what was really built: the init run's model and tokenizer
            args["tokenizer"] = init_cfg["tokenizer"]["kind"]
            args["model"] = init_cfg["model"].get("arch", args["model"])
            args["preset"] = init_cfg["model"].get("preset", args["preset"])
        write_run_config(
            paths,
            model_config=_unwrap_config(model),
            tokenizer_kind=args["tokenizer"],
            vocab_size=tokenizer.vocab_size,
            quant=quant_dict,
            train_args=args,
            data_dir=str(data_dir),
            features=features_config(frontend),
        )
    if dist.main:
        paths.root.mkdir(parents=True, exist_ok=True)
        if skipped:
            write_skipped(paths.root / "skipped.tsv", skipped)
        elif (paths.root / "skipped.tsv").is_file():
            (paths.root / "skipped.tsv").unlink()
    dist.barrier()

    ddp_model: nn.Module = model
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ddp_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr)
    total: int | None = cfg.steps
    warmup = min(cfg.warmup_steps, max(1, total // 10)) if total else cfg.warmup_steps
    lr_sched = LRSchedule(cfg.lr, warmup, total, cfg.final_lr_ratio)

    loader = make_loader(
        train_utts,
        tokenizer,
        batch_size=cfg.batch_size,
        shuffle=True,
        augment=cfg.augment,
        seed=cfg.seed,
        max_frames=cfg.max_frames,
        frontend=frontend,
    )
    stream = BatchStream(loader, dist.rank, dist.world, num_workers=cfg.num_workers,
                         sortagrad_epochs=cfg.sortagrad_epochs)
    frame_sec = _frame_seconds(loader)

    step, elapsed_before, gq_start, best_wer = 0, 0.0, 0, math.inf
    gq = None
    ckpt: dict[str, Any] | None = None
    if cfg.resume:
        ckpt = load_checkpoint(paths.last, map_location="cpu")  # load_state_dict moves to the device
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        lr_sched.load_state_dict(ckpt["lr_schedule"])
        total = ckpt["total_steps"]
        step, elapsed_before = int(ckpt["step"]), float(ckpt["elapsed"])
        gq_start, best_wer = int(ckpt["gq_start"]), float(ckpt["best_wer"])
        stream.load_state_dict(ckpt["data"])
        if dist.main:
            _truncate_log(paths.log, step)
        log.info("resumed %s at step %d (%.1f min trained)", paths.root, step, elapsed_before / 60)

    def make_gq(total_steps: int, start: int) -> Any:
        import subbit.quant as sq

        return sq.GQScheduler(
            model,
            total_steps=max(1, total_steps - start),
            tau_start=cfg.tau_start,
            tau_end=cfg.tau_end,
            anneal=cfg.anneal,
            anneal_end=cfg.anneal_end,
            quant_every=cfg.quant_every,
            quant_mode=cfg.quant_mode,
        )

    if cfg.quant:
        if total is not None:
            gq = make_gq(total, gq_start)
            if ckpt is not None and ckpt.get("gq") is not None:
                gq.load_state_dict(ckpt["gq"])
        else:
            for q in _quantizers(model):
                q.set_tau(cfg.tau_start)
    if ckpt is not None:
        set_rng_state(ckpt["rng"])  # last: nothing above may consume random numbers after this
        del ckpt

    def save(path: Path) -> None:
        atomic_torch_save(
            {
                "schema_version": 1,
                "step": step,
                "total_steps": total,
                "elapsed": elapsed_before + (time.perf_counter() - t_start),
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "lr_schedule": lr_sched.state_dict(),
                "gq": gq.state_dict() if gq is not None else None,
                "gq_start": gq_start,
                "best_wer": best_wer,
                "rng": rng_state(),
                "data": stream.state_dict(),
                "world_size": dist.world,
            },
            path,
        )

    log_fh = None
    writer = None
    if dist.main:
        new_log = not paths.log.is_file()
        log_fh = paths.log.open("a", newline="")
        writer = csv.writer(log_fh)
        if new_log:
            writer.writerow(LOG_FIELDS)
        log.info(
            "training %s/%s (%.2fM params%s) on %s x%d, %d train utterances",
            cfg.model,
            cfg.preset,
            n_params / 1e6,
            ", quantized" if cfg.quant else "",
            device,
            dist.world,
            len(train_utts),
        )

    budget = cfg.minutes * 60 if cfg.minutes else None
    t_start = time.perf_counter()
    calib_t0, calib_audio = 0.0, 0.0
    session_steps = 0
    last_loss = float("nan")
    speeds: list[float] = []
    recent: deque[tuple[float, float]] = deque(maxlen=RATE_WINDOW)  # (time, audio s) per step
    stopped = "done"
    bar = tqdm(total=total, initial=step, desc="train", unit="step", disable=not (dist.main and cfg.progress))
    ddp_model.train()
    try:
        while total is None or step < total:
            if cfg.stop_after is not None and session_steps >= cfg.stop_after:
                stopped = "stop_after"
                break
            t0 = time.perf_counter()
            batch = next(stream)
            feats = batch["feats"].to(device, non_blocking=True)
            feat_lens = batch["feat_lens"].to(device)
            targets = batch["targets"].to(device)
            target_lens = batch["target_lens"].to(device)
            # bifocal RNN-T: the batch's per-frame pathway choice (wake word = small pathway), only to
            # encoders that take one (docs/models.md, section 3b); others get exactly the old call
            bifocal = "pathway_mask" in batch and getattr(model.encoder, "accepts_pathway_mask", False)
            loss = ddp_model(feats, feat_lens, targets, target_lens,
                             **({"pathway_mask": batch["pathway_mask"].to(device)} if bifocal else {}))
            if cfg.quant:
                import subbit.quant as sq

                loss = loss + sq.regularization(model)
            if loss_hook is not None:
                loss = loss_hook(step + 1, loss)
            lr = lr_sched(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            bad = torch.tensor([0.0 if torch.isfinite(loss).item() else 1.0], device=device)
            dist.all_reduce_(bad, "max")
            if bad.item() == 0:
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                bad += 0.0 if torch.isfinite(grad_norm).item() else 1.0
                dist.all_reduce_(bad, "max")
            if bad.item() > 0:
                what = "loss" if not torch.isfinite(loss).item() else "gradient"
                _on_divergence(model, paths, dist, save, step + 1, what, loss, cfg)
            optimizer.step()
            if gq is not None:
                gq.step()
            step += 1
            session_steps += 1
            dt = time.perf_counter() - t0

            stats = torch.tensor([loss.item(), float(feat_lens.sum().item())], device=device)
            dist.all_reduce_(stats)
            last_loss = stats[0].item() / dist.world
            audio_sec = stats[1].item() * frame_sec
            speed = audio_sec / dt
            speeds.append(speed)
            tau = _current_tau(gq, cfg)
            elapsed = elapsed_before + (time.perf_counter() - t_start)
            if writer is not None:
                writer.writerow(
                    [step, stream.epoch, repr(last_loss), f"{lr:.6g}", f"{tau:.6g}", f"{grad_norm.item():.4g}",
                     f"{speed:.1f}", f"{elapsed:.2f}"]
                )
                log_fh.flush()
            bar.update(1)
            bar.set_postfix(loss=f"{last_loss:.3f}", lr=f"{lr:.2e}", tau=f"{tau:.2g}", xRT=f"{speed:.0f}")

            # time budget: set the total number of steps from the measured speed, then keep
            # correcting it (the shared machine's load changes): fp32 runs every step, QAT runs
            # every `reestimate_every` steps, with the lr cosine and the GQ anneal re-based so
            # they still finish at the new total
            if budget is not None and session_steps >= 2:
                if session_steps == 2:
                    calib_t0, calib_audio = time.perf_counter(), 0.0
                    recent.clear()
                else:
                    calib_audio += audio_sec
                recent.append((time.perf_counter(), audio_sec))
                calibrated = session_steps >= max(cfg.calib_steps, 3)
                due = total is None or not cfg.quant or (session_steps - 2) % cfg.reestimate_every == 0
                if calibrated and due:
                    sec_per_step = _seconds_per_step(recent, calib_t0, calib_audio, session_steps,
                                                     stream.mean_batch_seconds(), dist.world)
                    safety = 0.9 if cfg.quant else 1.0
                    est = step + max(1, int((budget - elapsed) / sec_per_step * safety))
                    first = total is None
                    total = dist.broadcast_int(est)
                    if first:
                        lr_sched.total = total
                        # as with --steps, the warmup takes at most 10% of the run
                        lr_sched.warmup = min(lr_sched.warmup, max(step, total // 10))
                        log.info("time budget %.1f min: %.3f s/step -> about %d steps in all",
                                 cfg.minutes, sec_per_step, total)
                        if cfg.quant:
                            gq_start = step
                            gq = make_gq(total, gq_start)
                    else:
                        lr_sched.set_total(total, step)
                        if gq is not None:
                            gq.set_total_steps(max(1, total - gq_start))
                        total = lr_sched.total
                    bar.total = total
            if budget is not None and not cfg.quant and total is not None:
                out_of_time = torch.tensor([1.0 if elapsed >= budget else 0.0], device=device)
                if dist.all_reduce_(out_of_time, "max").item() > 0:
                    stopped = "time" if step < total else "done"
                    break

            if cfg.eval_every and step % cfg.eval_every == 0 and (total is None or step < total):
                wer = _dev_eval(model, tokenizer, frontend, data_dir, cfg, dist, paths, step)
                if wer is not None and wer < best_wer:
                    best_wer = wer
                    if dist.main:
                        save(paths.best)
                ddp_model.train()
            if dist.main and cfg.ckpt_every and step % cfg.ckpt_every == 0:
                save(paths.last)
            if dist.main and cfg.keep_every and step % cfg.keep_every == 0:
                save(paths.periodic(step))
    finally:
        bar.close()
        if log_fh is not None:
            log_fh.close()

    elapsed = elapsed_before + (time.perf_counter() - t_start)
    if dist.main:
        save(paths.last)
        if stopped != "stop_after":
            _write_final(model, paths, cfg)
    dist.barrier()
    mean_speed = float(np.mean(speeds[2:] if len(speeds) > 4 else speeds)) if speeds else 0.0
    if dist.main:
        log.info(
            "stopped (%s) at step %d/%s after %.1f min; last loss %.4f; %.0f audio s per s; %d utterances skipped%s",
            stopped, step, total, elapsed / 60, last_loss, mean_speed, len(skipped),
            f" ({paths.root / 'skipped.tsv'})" if skipped else "",
        )
    return TrainResult(paths.root, step, int(total or step), elapsed, last_loss, mean_speed, stopped, len(skipped))


def _seconds_per_step(recent: deque[tuple[float, float]], calib_t0: float, calib_audio: float,
                      session_steps: int, mean_batch: float | None, world: int) -> float:
    """Expected seconds of one future step, from the last ``RATE_WINDOW`` steps' speed.

    Batches differ in length (bucketing, curriculum), so the measured audio throughput is turned
    into the time of an average batch; without batch lengths, the mean step time since
    calibration began is used.
    """
    now = time.perf_counter()
    if len(recent) >= 3:
        span = recent[-1][0] - recent[0][0]
        audio = sum(a for _, a in list(recent)[1:])
        if mean_batch and span > 0 and audio > 0:
            return mean_batch * world / (audio / span)
    if mean_batch and calib_audio > 0:
        return mean_batch * world / (calib_audio / (now - calib_t0))
    return (now - calib_t0) / max(1, session_steps - 2)


def _unwrap_config(model: nn.Module) -> dict[str, Any]:
    cfg = getattr(model, "config", None)
    if not isinstance(cfg, dict):
        raise ValueError("model has no .config dict; cannot record it in config.json")
    return cfg


def _frame_seconds(loader: Any) -> float:
    """Seconds of audio per feature frame (10 ms unless the frontend says otherwise)."""
    frontend = getattr(getattr(loader, "dataset", None), "frontend", None)
    hop = getattr(frontend, "hop_length", None)
    sr = getattr(frontend, "sample_rate", None)
    if isinstance(hop, int) and isinstance(sr, int) and sr > 0:
        return hop / sr
    return 0.01


def _current_tau(gq: Any, cfg: TrainConfig) -> float:
    if not cfg.quant:
        return float("nan")
    if gq is None:
        return cfg.tau_start
    return float(getattr(gq, "tau", float("nan")))


def _on_divergence(model: nn.Module, paths: RunPaths, dist: Dist, save: Callable[[Path], None],
                   step: int, what: str, loss: torch.Tensor, cfg: TrainConfig | None = None) -> None:
    """Stop, keeping the last checkpoint written while the loss was finite, and say what recovers.

    ``last.pt`` is not overwritten when it exists: it was written at a periodic checkpoint, and
    the state now is further along the divergence (a resume would only fail again, one step on,
    and overwrite the good checkpoint each time). Only a run that diverges before its first
    checkpoint saves the current (finite) weights. ``--resume`` keeps the stored lr, so the
    recovery is a warm start into a new run directory with a lower ``--lr``.
    """
    finite = all(torch.isfinite(p).all().item() for p in model.parameters())
    kept = paths.last.is_file()
    if dist.main and finite and not kept:
        save(paths.last)
    note = "" if finite or kept else " (weights were already non-finite: nothing saved)"
    raise TrainingDiverged(
        f"non-finite {what} at step {step} (loss={loss.item()}); stopped. "
        f"The last good checkpoint is {paths.last}{note}. "
        + (_recovery_command(paths, cfg) if cfg is not None else "Lower --lr or check the data.")
    )


def _recovery_command(paths: RunPaths, cfg: TrainConfig) -> str:
    """The command that restarts from the last good weights at a tenth of the lr (``--resume``
    would restore the stored lr and diverge again)."""
    import shlex

    lr = cfg.lr / 10
    new = f"{str(paths.root).rstrip('/')}-lr{lr:g}"
    budget = ["--steps", str(cfg.steps)] if cfg.steps else ["--minutes", f"{cfg.minutes:g}"]
    common = ["--data", str(cfg.data), "--out", new, "--lr", f"{lr:g}", *budget]
    if not cfg.quant:
        cmd = ["subbit", "train", "--init", str(paths.last), *common]
        why = "Warm-start a new run from it at a tenth of the lr (--resume keeps the stored lr):"
    elif cfg.init:
        cmd = ["subbit", "train", "--init", str(cfg.init), "--quant", str(cfg.quant), *common]
        why = "Restart the quantized run from its fp32 start at a tenth of the lr (--resume keeps the stored lr):"
    else:
        cmd = ["subbit", "train", "--model", cfg.model, "--preset", cfg.preset, "--tokenizer", cfg.tokenizer,
               "--quant", str(cfg.quant), *common]  # fmt: skip
        why = "Restart the quantized run at a tenth of the lr (--resume keeps the stored lr):"
    return f"{why} {shlex.join(cmd)} (if it diverges again, check the data or lower --lr further)"


def _dev_eval(model: nn.Module, tokenizer: Any, frontend: Any, data_dir: Path, cfg: TrainConfig, dist: Dist,
              paths: RunPaths, step: int) -> float | None:
    """Greedy WER on the first ``eval_limit`` dev utterances (rank 0; others wait)."""
    from subbit.asr.data import read_manifest
    from subbit.asr.evaluate import evaluate

    wer = None
    dev = data_dir / "dev.jsonl"
    if dist.main and dev.is_file():
        utts = read_manifest(dev)
        if utts:
            import contextlib

            from subbit.quant.api import is_prepared, quantizer_enabled

            # quant_mode="forward" switches the quantizer off between T_q steps: the dev WER (and
            # best.pt) must come from the quantized model all the same
            on = quantizer_enabled(model) if is_prepared(model) else contextlib.nullcontext()
            with on:
                res = evaluate(model, tokenizer, utts, limit=cfg.eval_limit, device=dist.device, split="dev",
                               frontend=frontend)
            wer = res.wer
            new = not paths.eval_log.is_file()
            with paths.eval_log.open("a", newline="") as fh:
                w = csv.writer(fh)
                if new:
                    w.writerow(["step", "dev_wer", "utterances"])
                w.writerow([step, f"{wer:.5f}", len(res.utts)])
            log.info("step %d: dev WER %.2f%% (%d utts)", step, 100 * wer, len(res.utts))
    dist.barrier()
    return wer


def _write_final(model: nn.Module, paths: RunPaths, cfg: TrainConfig) -> None:
    """RUN/final.pt: the deployable state dict (converted to hard weights for QAT runs).

    A CTC head is training-only: it is left out of final.pt and of config.json's model config,
    so evaluation, export and the runtime see the plain transducer. Checkpoints keep it (resume).
    """
    if cfg.quant:  # on the prepared model itself (a QAT run from scratch also lists the CTC head)
        import subbit.quant as sq

        sq.convert(model)
        report = sq.report(model)
        (paths.root / "quant_report.txt").write_text(str(report) + "\n")
    if getattr(model, "ctc_head", None) is not None and hasattr(model, "without_ctc"):
        from subbit.asr.checkpoint import atomic_write_json

        model = model.without_ctc()
        config = json.loads(paths.config.read_text())
        config["model"] = model.config
        atomic_write_json(paths.config, config)
    atomic_torch_save(model.state_dict(), paths.final)

"""Everything a training session needs before its first step: the run's config (fresh or stored),
the screened training data, tokenizer, model (warm-started, quantized), frontend, optimizer, lr
schedule and batch stream, and the run directory's files.

The order of the steps below is part of the contract: they consume random numbers in the same
order on every run, so a seed gives the same model.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import subbit.quant as sq
from subbit.asr.augment import SPEEDS
from subbit.asr.checkpoint import (
    RunPaths,
    atomic_write_json,
    features_config,
    frontend_from_config,
    load_checkpoint,
    model_state_from,
    read_run_config,
    run_dir_of,
    sync_quantized_weights,
    write_run_config,
)
from subbit.asr.data import Utterance, read_manifest, screen_utterances, write_skipped
from subbit.asr.dataset import frontend_stats, make_loader
from subbit.asr.features import LogMel, frames_needed
from subbit.asr.models import build_from_config, build_model
from subbit.asr.tokenizer import Tokenizer, train_tokenizer
from subbit.asr.training.batches import BatchStream, seed_everything
from subbit.asr.training.config import RESUME_OVERRIDES, SESSION_FIELDS, TrainConfig
from subbit.asr.training.dist import Dist, init_distributed
from subbit.asr.training.schedule import LRSchedule
from subbit.quant.base import WeightQuantizer

log = logging.getLogger(__name__)


@dataclass
class Session:
    """What ``setup`` built; the loop reads it and never rebuilds any of it."""

    cfg: TrainConfig
    paths: RunPaths
    dist: Dist
    model: nn.Module
    ddp_model: nn.Module
    tokenizer: Tokenizer
    frontend: LogMel
    optimizer: torch.optim.Optimizer
    lr_sched: LRSchedule
    stream: BatchStream
    frame_sec: float
    data_dir: Path
    n_train: int
    skipped: list[dict[str, str]]
    ckpt: dict[str, Any] | None  # the checkpoint a resume restores (None for a fresh run)
    overrides: dict[str, Any]  # resume overrides that differ from the stored run (applied by state.restore)


def quantizers(model: nn.Module) -> list[WeightQuantizer]:
    return [m for m in model.modules() if isinstance(m, WeightQuantizer)]


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices only: no decay on biases, norms, or quantizer parameters (centroids, scales)."""
    q_params = {id(p) for q in quantizers(model) for p in q.parameters(recurse=True)}
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 and id(p) not in q_params else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def load_init(model: nn.Module, init: str) -> dict[str, Any]:
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


def frame_seconds(loader: Any) -> float:
    """Seconds of audio per feature frame (10 ms unless the frontend says otherwise)."""
    frontend = getattr(getattr(loader, "dataset", None), "frontend", None)
    hop = getattr(frontend, "hop_length", None)
    sr = getattr(frontend, "sample_rate", None)
    if isinstance(hop, int) and isinstance(sr, int) and sr > 0:
        return hop / sr
    return 0.01


def resumed_config(cfg: TrainConfig, paths: RunPaths, overrides: dict[str, Any]) -> tuple[TrainConfig, dict[str, Any],
                                                                                          dict[str, Any]]:
    """The stored run's config with this session's fields, the stored RUN/config.json, and the
    overrides (``--lr``, ``--steps``) that really change it, each announced in the log."""
    if not paths.last.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint at {paths.last}")
    unknown = sorted(set(overrides) - set(RESUME_OVERRIDES))
    if unknown:
        raise ValueError(f"--resume can override only {RESUME_OVERRIDES}, got {unknown}")
    stored = read_run_config(paths.root)
    args = dict(stored["train_args"])
    session = {k: getattr(cfg, k) for k in SESSION_FIELDS}
    changed = {k: v for k, v in overrides.items() if v is not None and args.get(k) != v}
    for k, v in changed.items():
        log.warning("--resume: --%s %s overrides the stored value %s", k, v, args.get(k))
    if "steps" in changed:
        args["minutes"] = None
    return TrainConfig.from_dict({**args, **changed, **session}), stored, changed


def _data(cfg: TrainConfig) -> tuple[Path, Path]:
    data_dir = Path(cfg.data).expanduser()
    train_manifest = data_dir / "train.jsonl"
    if not train_manifest.is_file():
        raise FileNotFoundError(f"data: no train.jsonl in {data_dir}")
    return data_dir.resolve(), train_manifest.resolve()


def _model(cfg: TrainConfig, paths: RunPaths, stored: dict[str, Any] | None, ckpt: dict[str, Any] | None,
           texts: list[str]) -> tuple[nn.Module, Tokenizer, dict[str, Any] | None]:  # fmt: skip
    """Tokenizer and fp32 model of a resumed, warm-started or fresh run (and the init run's config)."""
    if stored is not None:
        model_cfg = dict(stored["model"])
        # a finished run's config.json lost the training-only CTC head (write_final); its checkpoint has it
        if ckpt is not None and "ctc_weight" not in model_cfg and any(k.startswith("ctc_head.") for k in ckpt["model"]):
            model_cfg["ctc_weight"] = float(cfg.ctc_weight)
        return build_from_config(model_cfg), Tokenizer.load(paths.tokenizer), None
    if cfg.init:
        init_run = run_dir_of(cfg.init)
        tokenizer = Tokenizer.load(RunPaths(init_run).tokenizer)
        model = build_from_config(read_run_config(init_run)["model"])
        return model, tokenizer, load_init(model, cfg.init)
    tokenizer = train_tokenizer(texts, kind=cfg.tokenizer, vocab_size=cfg.vocab_size)
    model = build_model(cfg.model, cfg.preset, vocab_size=tokenizer.vocab_size, **cfg.model_overrides)
    if cfg.ctc_weight > 0:  # a second build, as before: the seed's models stay the same
        model = build_from_config({**model.config, "ctc_weight": float(cfg.ctc_weight)})
    return model, tokenizer, None


def _drop_short(utts: list[Utterance], lengths: dict[str, int], model: nn.Module, frontend: LogMel, augment: bool,
                manifest: Path) -> tuple[list[Utterance], list[dict[str, str]]]:  # fmt: skip
    """Utterances shorter than one encoder frame would stop every step they land in: skip them."""
    subsampling = int(getattr(getattr(model, "encoder", None), "subsampling", 1) or 1)
    min_samples = frames_needed(subsampling, frontend.n_fft, frontend.hop_length)
    if augment:  # speed perturbation shortens an utterance by up to its fastest factor
        min_samples = math.ceil(min_samples * max(max(SPEEDS), 1.0))
    short = [u for u in utts if lengths.get(u.audio, 0) < min_samples]
    if not short:
        return utts, []
    skipped = [{"id": u.id, "audio": u.audio, "reason": f"shorter than one encoder frame "
                f"({lengths.get(u.audio, 0)} samples, needs {min_samples}: subsampling {subsampling})"}
               for u in short]  # fmt: skip
    keep = {id(u) for u in short}
    utts = [u for u in utts if id(u) not in keep]
    if not utts:
        raise ValueError(f"{manifest}: every utterance is shorter than one encoder frame ({min_samples} samples)")
    return utts, skipped


def _write_run_files(s_cfg: TrainConfig, paths: RunPaths, model: nn.Module, tokenizer: Tokenizer, frontend: LogMel,
                     quant: dict[str, Any] | None, init_cfg: dict[str, Any] | None, data_dir: Path) -> None:
    """config.json (absolute data path) and tokenizer.model of a new run."""
    paths.checkpoints.mkdir(parents=True, exist_ok=True)
    tokenizer.save(paths.tokenizer)
    args = s_cfg.to_dict()
    args["data"] = str(data_dir)
    if init_cfg is not None:  # record what was really built: the init run's model and tokenizer
        args["tokenizer"] = init_cfg["tokenizer"]["kind"]
        args["model"] = init_cfg["model"].get("arch", args["model"])
        args["preset"] = init_cfg["model"].get("preset", args["preset"])
    model_cfg = getattr(model, "config", None)
    if not isinstance(model_cfg, dict):
        raise ValueError("model has no .config dict; cannot record it in config.json")
    write_run_config(paths, model_config=model_cfg, tokenizer_kind=args["tokenizer"], vocab_size=tokenizer.vocab_size,
                     quant=quant, train_args=args, data_dir=str(data_dir), features=features_config(frontend))


def _record_overrides(paths: RunPaths, changed: dict[str, Any]) -> None:
    """A resume that overrides ``--lr``/``--steps`` stores them, so the next plain resume keeps them."""
    config = read_run_config(paths.root)
    config["train_args"].update(changed)
    if "steps" in changed:
        config["train_args"]["minutes"] = None
    atomic_write_json(paths.config, config)


def setup(cfg: TrainConfig, overrides: dict[str, Any] | None = None) -> Session:
    """Build a fresh run, or rebuild a stored one for ``--resume`` (``overrides``: see ``train``)."""
    paths = RunPaths(Path(cfg.out))
    stored = ckpt = None
    changed: dict[str, Any] = {}
    if cfg.resume:
        cfg, stored, changed = resumed_config(cfg, paths, overrides or {})
        ckpt = load_checkpoint(paths.last, map_location="cpu")  # load_state_dict moves to the device
    elif paths.last.is_file() or paths.final.is_file():
        raise ValueError(f"out: {paths.root} already holds a run; pass --resume or choose a new --out")
    elif cfg.quant and not Path(cfg.quant).is_file():
        raise ValueError(f"--quant: {cfg.quant} is {'a directory' if Path(cfg.quant).is_dir() else 'not found'}; "
                         "give a rules file (.json or .yaml)")
    elif paths.good.is_file():  # a fresh start over a run that never finished its first checkpoint
        paths.good.unlink()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    dist = init_distributed(cfg.device)
    seed_everything(cfg.seed)

    data_dir, train_manifest = _data(cfg)
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

    model, tokenizer, init_cfg = _model(cfg, paths, stored, ckpt, [u.text for u in train_utts])
    if stored is not None:
        frontend = frontend_from_config(stored)
    elif init_cfg is not None:  # the warm-started weights expect the features they were trained on
        frontend = frontend_from_config(init_cfg)
    else:
        frontend = LogMel()
    train_utts, short = _drop_short(train_utts, lengths, model, frontend, cfg.augment, train_manifest)
    skipped += short
    if skipped:
        log.warning("%s: skipped %d of %d utterances (listed in %s), e.g. %s: %s", train_manifest, len(skipped),
                    len(skipped) + len(train_utts), paths.root / "skipped.tsv", skipped[0]["id"], skipped[0]["reason"])
    if stored is None and init_cfg is None:
        mean, std = frontend_stats(train_utts, frontend, seed=cfg.seed)
        frontend.set_stats(mean, std)
    quant_dict = None
    if cfg.quant:
        qconfig = sq.QuantConfig.from_dict(stored["quant"]) if stored is not None else sq.QuantConfig.load(cfg.quant)
        quant_dict = qconfig.to_dict()
        model = sq.prepare(model, qconfig)
    model.to(dist.device)
    if cfg.quant:
        sync_quantized_weights(model)

    if dist.main and stored is None:
        _write_run_files(cfg, paths, model, tokenizer, frontend, quant_dict, init_cfg, data_dir)
    if dist.main and changed:
        _record_overrides(paths, changed)
    if dist.main:
        paths.root.mkdir(parents=True, exist_ok=True)
        if skipped:
            write_skipped(paths.root / "skipped.tsv", skipped)
        elif (paths.root / "skipped.tsv").is_file():
            (paths.root / "skipped.tsv").unlink()
    dist.barrier()

    ddp_model: nn.Module = model
    if dist.enabled:
        ids = [dist.device.index] if dist.device.type == "cuda" else None
        ddp_model = DistributedDataParallel(model, device_ids=ids)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr)
    total = cfg.steps
    warmup = min(cfg.warmup_steps, max(1, total // 10)) if total else cfg.warmup_steps
    lr_sched = LRSchedule(cfg.lr, warmup, total, cfg.final_lr_ratio)
    loader = make_loader(train_utts, tokenizer, batch_size=cfg.batch_size, shuffle=True, augment=cfg.augment,
                         seed=cfg.seed, max_frames=cfg.max_frames, frontend=frontend)  # fmt: skip
    stream = BatchStream(loader, dist.rank, dist.world, num_workers=cfg.num_workers,
                         sortagrad_epochs=cfg.sortagrad_epochs)
    return Session(cfg, paths, dist, model, ddp_model, tokenizer, frontend, optimizer, lr_sched, stream,
                   frame_seconds(loader), data_dir, len(train_utts), skipped, ckpt, changed)  # fmt: skip

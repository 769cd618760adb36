"""The speech side of ``subbit allocate``: the dev loss of a trained run, cached sensitivities.

:mod:`subbit.quant.allocate` knows no speech; it needs a ``loss_fn(model)``. Here that is the
transducer loss (the training objective, utterance-weighted mean) on a fixed dev subset: the
first ``limit`` usable utterances of ``DATA/dev.jsonl``, their features computed once with the
run's own frontend and batched by length, so each of the ~8 x kernels evaluations is a few
forward passes. Measurements are cached as JSON next to the run (``RUN/sensitivity/``), keyed by
the weights' SHA-256, the method, granularity, bit depths and the subset (utterance ids, texts,
batch size), so a second budget for the same run is instant and a retrained run is remeasured.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from subbit.asr.checkpoint import LoadedRun, RunPaths, atomic_write_json, load_run, read_run_config, run_dir_of
from subbit.quant.allocate import (
    BITS, METHODS, Allocation, Constraints, Sensitivity, allocate, kernels_of, measure_sensitivity,
)  # fmt: skip

log = logging.getLogger(__name__)

#: dev utterances the loss is measured on unless told otherwise
DEFAULT_LIMIT = 64
DEFAULT_BATCH = 8
CACHE_VERSION = 1


def load_fp32_run(run: str | Path) -> LoadedRun:
    """The fp32 model of a run (its ``final.pt``); a quantized run is refused."""
    run_dir = run_dir_of(run)
    if read_run_config(run_dir).get("quant"):
        raise ValueError(f"RUN: {run} is quantized; allocate bits on the fp32 run it was fine-tuned from")
    return load_run(run_dir, "final")


def weights_sha256(run_dir: str | Path) -> str:
    """SHA-256 of the run's ``final.pt``: the cache key of its sensitivities."""
    h = hashlib.sha256()
    with open(RunPaths(Path(run_dir)).final, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class DevSubset:
    """Feature batches of a fixed dev subset, computed once; ``key`` identifies it for the cache."""

    batches: list[dict[str, torch.Tensor]]
    ids: list[str]
    key: str
    data_dir: Path

    def loss_fn(self, per_batch: bool = False) -> Callable[[nn.Module], Any]:
        """``loss_fn(model)``: the utterance-weighted mean transducer loss over the subset (a
        float), or with ``per_batch`` an iterator of per-batch loss tensors (for ``"fisher"``)."""

        def batches(model: nn.Module) -> Iterator[torch.Tensor]:
            for b in self.batches:
                yield model(b["feats"], b["feat_lens"], b["targets"], b["target_lens"])

        def mean(model: nn.Module) -> float:
            total = 0.0
            with torch.no_grad():
                for b, loss in zip(self.batches, batches(model)):
                    total += float(loss) * int(b["feats"].shape[0])
            return total / len(self.ids)

        return batches if per_batch else mean


def dev_subset(loaded: LoadedRun, data_dir: str | Path, limit: int = DEFAULT_LIMIT,
               batch_size: int = DEFAULT_BATCH, split: str = "dev") -> DevSubset:
    """The first ``limit`` usable utterances of ``DATA/{split}.jsonl`` (default the dev split) as
    padded feature batches (sorted by length, so a batch pads little), with the run's frontend
    and tokenizer."""
    from subbit.asr.data import read_manifest, screen_utterances
    from subbit.asr.dataset import AsrDataset, collate
    from subbit.asr.features import frames_needed

    if limit < 1 or batch_size < 1:
        raise ValueError(f"limit and batch_size must be >= 1, got {limit} and {batch_size}")
    data_dir = Path(data_dir)
    manifest = data_dir / f"{split}.jsonl"
    if not manifest.is_file():
        raise FileNotFoundError(f"data: no {split}.jsonl in {data_dir} (the loss is measured on it)")
    fe = loaded.frontend
    sub = int(getattr(getattr(loaded.model, "encoder", None), "subsampling", 1) or 1)
    utts, _ = screen_utterances(read_manifest(manifest), min_samples=frames_needed(sub, fe.n_fft, fe.hop_length))
    utts = [u for u in utts if loaded.tokenizer.encode(u.text)][:limit]
    if not utts:
        raise ValueError(f"{manifest}: no usable utterance")
    utts.sort(key=lambda u: (u.duration, u.id))
    ds = AsrDataset(utts, loaded.tokenizer, frontend=fe, augment=False)
    items = [ds[i] for i in range(len(ds))]
    batches = []
    for i in range(0, len(items), batch_size):
        b = collate(items[i : i + batch_size])
        batches.append({k: b[k] for k in ("feats", "feat_lens", "targets", "target_lens")})
    desc = json.dumps({"ids": [u.id for u in utts], "texts": [u.text for u in utts], "batch": batch_size})
    return DevSubset(batches, [u.id for u in utts], hashlib.sha256(desc.encode()).hexdigest(), data_dir)


def _cache_path(cache_dir: Path, key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir / f"{key['method']}-{key['granularity']}-{digest}.json"


@dataclass
class RunSensitivity:
    sensitivity: Sensitivity
    cache_path: Path
    cached: bool  # read from the cache (no measurement)
    subset: int  # dev utterances


def run_sensitivity(
    loaded: LoadedRun,
    data_dir: str | Path | None = None,
    method: str = "mulaw",
    granularity: str = "tensor",
    bits: Sequence[int] = BITS,
    options: dict[str, Any] | None = None,
    limit: int = DEFAULT_LIMIT,
    batch_size: int = DEFAULT_BATCH,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> RunSensitivity:
    """Per-kernel dev-loss sensitivity of an fp32 run, measured once and cached.

    ``data_dir`` defaults to the corpus the run was trained on; ``cache_dir`` to
    ``RUN/sensitivity``. A cache file is used only when its stored key (weights hash, method,
    granularity, bits, options, dev subset) equals this call's.
    """
    from tqdm import tqdm

    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    data = Path(data_dir) if data_dir is not None else Path(loaded.config["data"])
    subset = dev_subset(loaded, data, limit, batch_size)
    key = {"version": CACHE_VERSION, "weights_sha256": weights_sha256(loaded.run_dir), "method": method,
           "granularity": granularity, "bits": sorted(int(b) for b in bits), "options": dict(options or {}),
           "subset": subset.key}  # fmt: skip
    cdir = Path(cache_dir) if cache_dir is not None else loaded.run_dir / "sensitivity"
    path = _cache_path(cdir, key)
    if path.is_file():
        try:
            stored = json.loads(path.read_text())
            if isinstance(stored, dict) and stored.get("key") == key:
                return RunSensitivity(Sensitivity.from_dict(stored["sensitivity"]), path, True, len(subset.ids))
            log.warning("%s: key differs from this measurement; measuring again", path)
        except (OSError, ValueError, KeyError) as exc:
            log.warning("%s: unreadable cache (%s); measuring again", path, exc)
    model = loaded.model.eval()
    total = len(kernels_of(model)) * len(key["bits"])
    with tqdm(total=total, desc=f"sensitivity ({method})", unit="fit", disable=not progress) as bar:
        sens = measure_sensitivity(
            model, subset.loss_fn(per_batch=method == "fisher"), bits=key["bits"], method=method,
            granularity=granularity, options=options, on_step=lambda name, b: bar.update(1),
        )  # fmt: skip
    sens.meta.update({"dev_utterances": len(subset.ids), "data": str(subset.data_dir),
                      "loss": "transducer loss, utterance-weighted mean over the dev subset"})  # fmt: skip
    atomic_write_json(path, {"key": key, "sensitivity": sens.to_dict()})
    return RunSensitivity(sens, path, False, len(subset.ids))


@dataclass
class RunAllocation:
    allocation: Allocation
    sensitivity: RunSensitivity


def allocate_for_run(
    run: str | Path | LoadedRun,
    data_dir: str | Path | None = None,
    *,
    budget_bytes: int | None = None,
    avg_bits: float | None = None,
    constraints: Constraints | dict[str, dict[str, int]] | None = None,
    method: str = "mulaw",
    spec: dict[str, Any] | None = None,
    overhead_bytes: int = 0,
    limit: int = DEFAULT_LIMIT,
    batch_size: int = DEFAULT_BATCH,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> RunAllocation:
    """Sensitivity (cached) + exact allocation for an fp32 run. ``spec``: the LayerSpec dict
    every kernel gets but for its bits (default GQ per tensor); ``overhead_bytes``: file bytes
    beyond tensors (header, tokenizer) a ``budget_bytes`` must also hold."""
    from subbit.quant.rules import LayerSpec

    loaded = run if isinstance(run, LoadedRun) else load_fp32_run(run)
    layer = LayerSpec.from_dict(dict(spec or {}))
    options = dict(layer.options) if method in ("mulaw", "fisher") and layer.method == "gq" else {}
    rs = run_sensitivity(loaded, data_dir, method=method, granularity=layer.granularity, options=options,
                         limit=limit, batch_size=batch_size, cache_dir=cache_dir, progress=progress)  # fmt: skip
    alloc = allocate(loaded.model, rs.sensitivity, budget_bytes=budget_bytes, avg_bits=avg_bits,
                     constraints=constraints, spec=layer.to_dict(), overhead_bytes=overhead_bytes)  # fmt: skip
    return RunAllocation(alloc, rs)


def allocate_rules_for_run(
    run_dir: str | Path,
    data_dir: str | Path | None = None,
    avg_bits: float | None = 3.0,
    *,
    budget_bytes: int | None = None,
    constraints: Constraints | dict[str, dict[str, int]] | None = None,
    method: str = "mulaw",
    spec: dict[str, Any] | None = None,
    limit: int = DEFAULT_LIMIT,
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """The rules dict (``QuantConfig.from_dict`` / ``subbit quantize --rules`` after saving) of the
    automatic allocation for an fp32 run: ``avg_bits`` on average, or pass ``budget_bytes``
    (and ``avg_bits=None``; the budget then holds the kernels and the float tensors, not the
    file header: ``subbit allocate --budget`` adds that)."""
    if budget_bytes is not None:
        avg_bits = None
    res = allocate_for_run(run_dir, data_dir, budget_bytes=budget_bytes, avg_bits=avg_bits, constraints=constraints,
                           method=method, spec=spec, limit=limit, cache_dir=cache_dir, progress=progress)  # fmt: skip
    return res.allocation.rules()

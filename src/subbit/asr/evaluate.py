"""Word error rate of a transducer on a manifest, with per-utterance errors.

Scoring uses ``jiwer.process_words`` per utterance, so every utterance carries its own error
count for the errors file; the corpus WER is the sum of errors over the sum of reference words,
which is exactly what jiwer computes on the whole list.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, overload

import jiwer
import torch
from tqdm import tqdm

from subbit.asr import decode
from subbit.asr.data import screen_utterances
from subbit.asr.dataset import make_loader
from subbit.asr.features import LogMel, frames_needed


@dataclass
class UttResult:
    id: str
    ref: str
    hyp: str
    errors: int
    ref_words: int
    substitutions: int
    deletions: int
    insertions: int


class _Total:
    """A corpus count of :class:`EvalResult`: the sum of the per-utterance count of the same name."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, result: None, owner: type | None = None) -> _Total: ...
    @overload
    def __get__(self, result: EvalResult, owner: type | None = None) -> int: ...
    def __get__(self, result: EvalResult | None, owner: type | None = None) -> int | _Total:
        return self if result is None else sum(getattr(u, self.name) for u in result.utts)


@dataclass
class EvalResult:
    """Corpus-level scores plus the per-utterance rows they were summed from."""

    utts: list[UttResult]
    method: str = "greedy"
    split: str = ""
    run: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    substitutions = _Total()
    deletions = _Total()
    insertions = _Total()
    ref_words = _Total()

    @property
    def wer(self) -> float:
        errors = self.substitutions + self.deletions + self.insertions
        n = self.ref_words
        if n == 0:
            return 0.0 if errors == 0 else float("inf")
        return errors / n

    def to_dict(self) -> dict[str, Any]:
        return {
            "wer": self.wer,
            "wer_percent": 100.0 * self.wer,
            "utterances": len(self.utts),
            "ref_words": self.ref_words,
            "split": self.split,
            "substitutions": self.substitutions,
            "deletions": self.deletions,
            "insertions": self.insertions,
            "method": self.method,
            "run": self.run,
            **self.extra,
        }

    def summary(self) -> str:
        skipped = self.extra.get("skipped") or []
        return (
            f"{self.split or 'eval'}: WER {100 * self.wer:.2f}% on {len(self.utts)} utterances "
            f"({self.ref_words} words; sub {self.substitutions}, del {self.deletions}, "
            f"ins {self.insertions}; {self.method}{' streaming' if self.extra.get('streaming') else ''})"
            + (f"; {len(skipped)} utterances skipped (bad or too short audio, listed in the JSON), e.g. "
               f"{skipped[0]['id']}: {skipped[0]['reason']}" if skipped else "")
            + (f"; bifocal: {100 * pw['share_small']:.1f}% of encoder frames on the small pathway, encoder "
               f"MACs {100 * pw['macs_saved']:.1f}% below all-large"
               + (f" ({100 * pw['macs_saved_wake_utts']:.1f}% on the {pw['utts_wake']} wake-word utterances)"
                  if "macs_saved_wake_utts" in pw else "") if (pw := self.extra.get("pathway")) else "")
        )


def score(ids: Sequence[str], refs: Sequence[str], hyps: Sequence[str]) -> list[UttResult]:
    """Per-utterance word errors (jiwer.process_words on each pair)."""
    if not len(ids) == len(refs) == len(hyps):
        raise ValueError(f"ids, refs and hyps differ in length: {len(ids)}, {len(refs)}, {len(hyps)}")
    rows = []
    for uid, ref, hyp in zip(ids, refs, hyps):
        out = jiwer.process_words(ref, hyp)
        s, d, i = out.substitutions, out.deletions, out.insertions
        rows.append(UttResult(uid, ref, hyp, s + d + i, s + d + out.hits, s, d, i))
    return rows


def write_errors(path: str | Path, result: EvalResult) -> None:
    """Per-utterance rows sorted by errors (most first): JSON lines for .jsonl, else TSV."""
    rows = sorted(result.utts, key=lambda u: (-u.errors, u.id))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        if path.suffix in (".jsonl", ".json"):
            for u in rows:
                fh.write(json.dumps({k: v for k, v in asdict(u).items()}) + "\n")
        else:
            fh.write("id\tref\thyp\terrors\n")
            for u in rows:
                fh.write(f"{u.id}\t{u.ref}\t{u.hyp}\t{u.errors}\n")


def _chunk_frames(model: torch.nn.Module, chunk_frames: int | None) -> int:
    """Frames per streaming chunk: given, or the encoder's unit scaled up to at least 160 ms."""
    if chunk_frames:
        if chunk_frames < 1:
            raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
        return int(chunk_frames)
    unit = getattr(getattr(model, "encoder", None), "chunk_frames", None)
    if not isinstance(unit, int) or unit < 1:
        return 16
    return unit * max(1, -(-16 // unit))


@torch.inference_mode()
def transcribe(model: torch.nn.Module, tokenizer: Any, utts: Sequence[Any], *, method: str = "greedy", beam: int = 4,
               streaming: bool = False, chunk_frames: int | None = None, batch_size: int = 16,
               device: str | torch.device = "cpu", progress: bool = False, frontend: Any = None,
               pathway_stats: dict[str, int] | None = None) -> tuple[list[str], list[str], list[str]]:
    """Decode ``utts``; returns (ids, refs, hyps) in the manifest's order. The options are
    :func:`evaluate`'s, which passes them on.

    ``frontend``: the run's LogMel (``LoadedRun.frontend``, with its global mean/std); the
    default is an un-normalised LogMel. A bifocal model runs the wake word of utterances with a
    ``wake_end`` on its small pathway (ground-truth keyword spotting) and adds its frame and MAC
    counts to ``pathway_stats``.
    """
    if method not in ("greedy", "beam"):
        raise ValueError(f"method must be 'greedy' or 'beam', got {method!r}")
    if streaming and method != "greedy":
        raise ValueError("streaming decoding is greedy only (use --method greedy)")
    was_training = model.training
    model.eval()
    loader = make_loader(list(utts), tokenizer, batch_size=batch_size, shuffle=False, augment=False, seed=0,
                         frontend=frontend)
    out: dict[str, tuple[str, str]] = {}
    chunk = _chunk_frames(model, chunk_frames)
    bar = tqdm(total=len(utts), desc="decode", unit="utt", disable=not progress, leave=False)
    for batch in loader:
        feats = batch["feats"].to(device)
        lens = batch["feat_lens"].to(device)
        # bifocal: the batch's wake-word mask picks the pathway per frame (docs/models.md, 3b)
        mask = batch.get("pathway_mask") if getattr(model.encoder, "accepts_pathway_mask", False) else None
        if getattr(model.encoder, "accepts_pathway_mask", False) and pathway_stats is not None:
            m = mask if mask is not None else torch.zeros(feats.shape[:2], dtype=torch.bool)
            _add_pathway_cost(pathway_stats, model.encoder, m.cpu(), lens.cpu())
        if mask is not None:
            mask = mask.to(device)
        if streaming:
            token_lists = []
            for b in range(feats.shape[0]):
                dec = decode.StreamingGreedyDecoder(model)
                x = feats[b : b + 1, : int(lens[b])]
                for t0 in range(0, x.shape[1], chunk):
                    dec.accept_features(x[:, t0 : t0 + chunk],
                                        None if mask is None else mask[b : b + 1, t0 : min(t0 + chunk, x.shape[1])])
                token_lists.append(list(dec.finalize()))
        else:
            token_lists = decode.decode_batch(model, feats, lens, method=method, beam=beam, pathway_mask=mask)
        for uid, ref, toks in zip(batch["ids"], batch["texts"], token_lists):
            out[uid] = (ref, tokenizer.decode([int(t) for t in toks]))
        bar.update(len(batch["ids"]))
    bar.close()
    model.train(was_training)
    ids = [u.id for u in utts]
    missing = [i for i in ids if i not in out]
    if missing:
        raise RuntimeError(f"{len(missing)} utterances were not decoded, e.g. {missing[:3]}")
    return ids, [out[i][0] for i in ids], [out[i][1] for i in ids]


def _add_pathway_cost(stats: dict[str, int], encoder: Any, mask: torch.Tensor, lens: torch.Tensor) -> None:
    """Sum the batch's frame and MAC counts into ``stats``; the ``*_wake`` keys count only the
    utterances with a wake word, what a device that starts every request with one would see."""
    wake = mask.any(dim=1)
    parts = [("", mask, lens)] + ([("_wake", mask[wake], lens[wake])] if bool(wake.any()) else [])
    for suffix, m, n in parts:
        for k, v in encoder.pathway_cost(m, n).items():
            if isinstance(v, int):
                stats[k + suffix] = stats.get(k + suffix, 0) + v
    stats["utts_wake"] = stats.get("utts_wake", 0) + int(wake.sum())


def evaluate(
    model: torch.nn.Module,
    tokenizer: Any,
    utts: Sequence[Any],
    *,
    method: str = "greedy",
    beam: int = 4,
    streaming: bool = False,
    chunk_frames: int | None = None,
    batch_size: int = 16,
    limit: int | None = None,
    device: str | torch.device = "cpu",
    split: str = "",
    run: str = "",
    progress: bool = False,
    frontend: Any = None,
) -> EvalResult:
    """Decode and score; ``limit`` keeps the first N utterances of the manifest.

    Utterances whose audio is missing, empty, a directory, undecodable, NaN/Inf or shorter than
    one encoder frame (and manifest lines that were not UTF-8) are not scored: they are counted
    in the summary and listed in ``extra["skipped"]`` (the eval JSON) with the reason."""
    pre_skipped = list(getattr(utts, "skipped", []))
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        utts = list(utts)[:limit]
    if not utts and not pre_skipped:
        raise ValueError(f"nothing to evaluate (split {split or '?'} is empty)")
    fe = frontend if frontend is not None else LogMel()
    subsampling = int(getattr(getattr(model, "encoder", None), "subsampling", 1) or 1)
    min_samples = frames_needed(subsampling, int(getattr(fe, "n_fft", 400)), int(getattr(fe, "hop_length", 160)))
    utts, skipped = screen_utterances(list(utts), min_samples=min_samples)
    skipped = pre_skipped + skipped
    if not utts:
        raise ValueError(f"nothing to evaluate (split {split or '?'}): all {len(skipped)} utterances skipped, e.g. "
                         f"{[s['id'] + ': ' + s['reason'] for s in skipped[:3]]}")  # fmt: skip
    pathway: dict[str, int] = {}
    ids, refs, hyps = transcribe(model, tokenizer, utts, method=method, beam=beam, streaming=streaming,
                                 chunk_frames=chunk_frames, batch_size=batch_size, device=device, progress=progress,
                                 frontend=frontend, pathway_stats=pathway)  # fmt: skip
    extra: dict[str, Any] = {"streaming": bool(streaming), "skipped_count": len(skipped), "skipped": skipped}
    if pathway:  # bifocal: frames per pathway and encoder MACs vs all-large (docs/models.md, 3b)
        n = pathway["frames_small"] + pathway["frames_large"]
        extra["pathway"] = {**pathway, "share_small": pathway["frames_small"] / n if n else 0.0,
                            "macs_saved": 1 - pathway["macs"] / pathway["macs_all_large"]}
        if pathway.get("macs_all_large_wake"):
            extra["pathway"]["macs_saved_wake_utts"] = 1 - pathway["macs_wake"] / pathway["macs_all_large_wake"]
    if method == "beam":
        extra["beam"] = int(beam)
    return EvalResult(score(ids, refs, hyps), method=method, split=split, run=run, extra=extra)

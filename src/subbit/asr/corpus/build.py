"""Build the embedded default corpus: grammar/fortune text spoken by many synthetic voices.

Splits:
  * ``train`` / ``dev`` / ``test_seen``: training voices; dev and test sentences never occur in
    train (nor in each other).
  * ``test_heldout``: voices whose engine voice or espeak accent/variant never occurs in training
    (one whole flite voice, one festival voice, one espeak accent with its own variants; with
    the neural engines also Kokoro voices and, with ``heldout_engine``, one whole engine).
  * ``test_open`` (only with ``open_split``, the default without ``--quick``): open (fortune)
    sentences never in train, spoken by training voices. dev, test_seen and test_heldout then
    hold only grammar commands whose every word occurs in train, so they measure what the
    training set can teach.

Options added after the committed ``--quick`` corpus (wake word, open split, held-out engine,
neural engines) default to the old plan and are written to the options record only when set,
so a default ``--quick`` build stays byte-identical (tests/asr/test_corpus_quick_identity.py).

Output: ``OUT/{split}.jsonl`` manifests (audio paths relative to OUT), ``OUT/wav/{split}/*.wav``
(16 kHz, 16-bit) and ``OUT/corpus.json``. A build whose options match an existing
``corpus.json`` is a no-op; wav files already present are reused, so an interrupted build resumes.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import re
import time
from collections import defaultdict
from pathlib import Path

from tqdm import tqdm

from subbit.asr.corpus import grammar
from subbit.asr.corpus.options import (ALL_SPLITS, FESTIVAL_HELDOUT, FLITE_HELDOUT, FORMAT_VERSION, HELDOUT_ACCENTS,
                                       HELDOUT_VARIANTS, KOKORO_HELDOUT, OPEN_SPLIT, SPLITS, WAKE_GAP_SAMPLES,
                                       WAKE_WORD, BuildOptions)
from subbit.asr.corpus.plan import heldout_engine, plan_jobs, plan_voices
from subbit.asr.corpus.synth import run_task, tasks_by_voice
from subbit.asr.data import Utterance, atomic_write_text, read_manifest, write_manifest

log = logging.getLogger(__name__)

_WAV_NAME = re.compile(r"[a-z_]+-\d{6}-[0-9a-f]{10}\.wav")


def _remove_stale(out: Path, keep: set[str]) -> int:
    """Delete wavs of an earlier build with other options (only files named like ours)."""
    removed = 0
    for split in ALL_SPLITS:
        for p in (out / "wav" / split).glob(f"{split}-*.wav"):
            if str(p) not in keep and _WAV_NAME.fullmatch(p.name):
                p.unlink()
                removed += 1
    return removed


#: options added after the committed quick corpus: recorded only when not at these defaults
_LATER_DEFAULTS = {"wake_word_share": 0.0, "open_split": False, "heldout_engine": "", "augment": (),
                   "augment_share": 0.0}


def _options_record(opts: BuildOptions) -> dict:
    d = {k: v for k, v in opts.__dict__.items() if k not in _LATER_DEFAULTS or v != _LATER_DEFAULTS[k]}
    d["engines"] = list(opts.engines)
    if "augment" in d:
        d["augment"] = list(opts.augment)
    # what is installed decides the voices, so it is part of the cache key too
    d["voices"] = {k: sorted(v.speaker for v, _ in vs) for k, vs in plan_voices(opts).items()}
    # and so is whether Debian's fortunes are there (the open sentences come from them)
    d["open_sentences"] = len(grammar.fortune_sentences()) if opts.open_share > 0 else 0
    if opts.heldout_engine:
        d["heldout_engine_used"] = heldout_engine(opts)
    d["format_version"] = FORMAT_VERSION
    return d


def is_cached(out: Path, opts: BuildOptions) -> bool:
    """True when ``out`` holds a finished build with exactly these options."""
    summary = out / "corpus.json"
    if not summary.is_file():
        return False
    try:
        old = json.loads(summary.read_text())
    except (json.JSONDecodeError, OSError):
        return False
    if not isinstance(old, dict) or not isinstance(old.get("splits"), dict):
        return False
    if not all((out / f"{s}.jsonl").is_file() for s in (*SPLITS, *old["splits"])):
        return False
    return old.get("options") == _options_record(opts)


def build_corpus(out: str | os.PathLike, opts: BuildOptions, jobs: int = 2, progress: bool = True) -> dict:
    """Build (or reuse) the corpus in ``out``; returns the corpus.json summary."""
    out = Path(out).resolve()
    if is_cached(out, opts):
        log.info("corpus in %s is up to date (same options): nothing to do", out)
        summary = json.loads((out / "corpus.json").read_text())
        summary["cached"] = True
        return summary
    if jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {jobs}")
    t0 = time.time()
    voices = plan_voices(opts)
    plan = plan_jobs(opts, out, voices)
    if OPEN_SPLIT in plan and not plan[OPEN_SPLIT]:  # no fortunes installed: no open split
        del plan[OPEN_SPLIT]
        stale = out / f"{OPEN_SPLIT}.jsonl"
        if stale.is_file():
            stale.unlink()
    splits = [s for s in ALL_SPLITS if s in plan]
    all_jobs = [j for s in splits for j in plan[s]]
    tasks = tasks_by_voice(all_jobs)
    for split in splits:
        (out / "wav" / split).mkdir(parents=True, exist_ok=True)
    durations: dict[str, float] = {}
    wake_ends: dict[str, float | None] = {}
    bar = tqdm(total=len(all_jobs), desc="synthesising", unit="utt", disable=not progress)
    # Every task runs in a fresh worker process, serial builds included: espeak-ng's wave
    # generator keeps static state from one utterance to the next (not reset even by
    # espeak_Terminate), so a long-lived worker would make the samples, and the lengths to a few
    # ms, depend on which tasks it ran before. One process per task makes a build bit-identical
    # whatever --jobs is; a fork costs milliseconds next to a task of 40 utterances.
    ctx = mp.get_context("fork" if hasattr(os, "fork") else "spawn")
    with ctx.Pool(jobs, maxtasksperchild=1) as pool:
        for res in pool.imap_unordered(run_task, tasks):
            for uid, dur, wake_end in res:
                durations[uid], wake_ends[uid] = dur, wake_end
            bar.update(len(res))
    bar.close()

    summary: dict = {"format_version": FORMAT_VERSION, "options": _options_record(opts), "splits": {}}
    engines: dict[str, set[str]] = defaultdict(set)
    for split in splits:
        utts = [
            Utterance(j.uid, os.path.relpath(j.path, out), j.transcript, round(durations[j.uid], 4), j.voice.speaker,
                      wake_ends[j.uid])
            for j in plan[split]
        ]
        write_manifest(out / f"{split}.jsonl", utts)
        spk = sorted({j.voice.speaker for j in plan[split]})
        base_voices = sorted({f"{j.voice.engine}:{j.voice.name}" for j in plan[split]})
        for j in plan[split]:
            engines[j.voice.engine].add(j.voice.name)
        summary["splits"][split] = {
            "utterances": len(utts),
            "hours": round(sum(u.duration for u in utts) / 3600, 4),
            "speakers": len(spk),
            "voices": base_voices,
        }
        if opts.wake_word_share > 0:
            summary["splits"][split]["wake_word"] = sum(u.wake_end is not None for u in utts)
    summary["engines"] = {k: sorted(v) for k, v in sorted(engines.items())}
    summary["text"] = {"grammar": True, "open_sentences_available": summary["options"]["open_sentences"]}
    summary["heldout_rule"] = {
        "espeak_accents": list(HELDOUT_ACCENTS), "espeak_variants": list(HELDOUT_VARIANTS),
        "flite": FLITE_HELDOUT, "festival": FESTIVAL_HELDOUT,
    }
    if "kokoro" in summary["engines"]:
        summary["heldout_rule"]["kokoro"] = list(KOKORO_HELDOUT)
    if opts.heldout_engine:
        summary["heldout_rule"]["whole_engine"] = heldout_engine(opts)
    if opts.wake_word_share > 0:
        summary["wake_word"] = {"text": WAKE_WORD, "gap_samples": list(WAKE_GAP_SAMPLES)}
    if opts.augment_share > 0:
        counts: dict[str, int] = defaultdict(int)
        for j in plan["train"]:
            if j.effect:
                counts[j.effect] += 1
        summary["augmented_train"] = dict(sorted(counts.items()))
    summary["removed_stale_wavs"] = _remove_stale(out, {j.path for j in all_jobs})
    summary["build_seconds"] = round(time.time() - t0, 1)
    atomic_write_text(out / "corpus.json", json.dumps(summary, indent=2) + "\n")
    summary["cached"] = False
    return summary


def write_commands_view(src: str | os.PathLike, dst: str | os.PathLike,
                        open_sentences: set[str] | None = None) -> dict[str, int]:
    """Copy ``src``'s manifests to ``dst`` without the open (fortune) sentences; no new audio.

    Why: about a third of the quick test words come from fortunes, an open vocabulary that 1,500
    training sentences cannot teach, so the command-only view measures what a short run can learn
    (and training on it spends no steps on unlearnable text). Audio paths point back into
    ``src`` (relative when possible). Returns utterances kept per split.
    """
    src_p, dst_p = Path(src), Path(dst)
    if src_p.resolve() == dst_p.resolve():
        raise ValueError(f"dst must differ from src ({src_p})")
    drop = set(grammar.fortune_sentences()) if open_sentences is None else open_sentences
    kept: dict[str, int] = {}
    dst_p.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:  # test_open is all open sentences: nothing to keep
        manifest = src_p / f"{split}.jsonl"
        if not manifest.is_file():
            raise FileNotFoundError(f"{manifest} not found (is {src_p} a corpus?)")
        utts = [u for u in read_manifest(manifest) if u.text not in drop]
        for u in utts:
            u.audio = os.path.relpath(u.audio, dst_p.resolve())
        write_manifest(dst_p / f"{split}.jsonl", utts)
        kept[split] = len(utts)
    return kept


__all__ = ["BuildOptions", "build_corpus", "is_cached", "write_commands_view"]

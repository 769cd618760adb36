"""Build the embedded default corpus: grammar/fortune text spoken by many synthetic voices.

Splits:
  * ``train`` / ``dev`` / ``test_seen``: training voices; dev and test sentences never occur in
    train (nor in each other).
  * ``test_heldout``: voices whose engine voice or espeak accent/variant never occurs in training
    (one whole flite voice, one festival voice, one espeak accent with its own variants).

Output: ``OUT/{split}.jsonl`` manifests (audio paths relative to OUT), ``OUT/wav/{split}/*.wav``
(16 kHz, 16-bit) and ``OUT/corpus.json``. A build whose options match an existing
``corpus.json`` is a no-op; wav files already present are reused, so an interrupted build resumes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import os
import random
import re
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from subbit.asr.corpus import grammar, tts
from subbit.asr.corpus.tts import Voice
from subbit.asr.data import Utterance, atomic_write_text, write_manifest

log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test_seen", "test_heldout")
_WAV_NAME = re.compile(r"[a-z_]+-\d{6}-[0-9a-f]{10}\.wav")
FORMAT_VERSION = 3  # bump when grammar or synthesis changes what a build produces
MEAN_UTT_SECONDS = 2.6  # rough average, only used to turn --hours into a sentence count

# espeak-ng accents and variants; the held-out ones never appear in training.
TRAIN_ACCENTS = ("en", "en-us", "en-gb-x-rp", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-us-nyc")
HELDOUT_ACCENTS = ("en-029",)
TRAIN_VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4",
    "klatt", "klatt2", "klatt3", "klatt4", "Andy", "belinda", "john", "linda", "steph", "max",
)
HELDOUT_VARIANTS = ("f5", "m8", "klatt6", "iven", "aunty")
FLITE_HELDOUT = "awb"  # Scottish male, only in flite (slt also exists in festival: not held out)
FESTIVAL_HELDOUT = "ked_diphone"


@dataclass(frozen=True)
class BuildOptions:
    """Everything that determines the corpus content (compared to detect a cached build)."""

    seed: int = 0
    n_train: int = 4200
    n_dev: int = 300
    n_test: int = 300
    n_espeak_train: int = 40
    open_share: float = 0.15
    engines: tuple[str, ...] = ("espeak", "flite", "festival")

    @classmethod
    def create(cls, hours: float = 3.0, quick: bool = False, seed: int = 0) -> BuildOptions:
        if quick:
            return cls(seed=seed, n_train=1500, n_dev=150, n_test=150)
        if not hours > 0:
            raise ValueError(f"--hours must be positive, got {hours}")
        return cls(seed=seed, n_train=max(50, round(hours * 3600 / MEAN_UTT_SECONDS)))


def _espeak_voices(rng: random.Random, accents: tuple[str, ...], variants: tuple[str, ...], n: int) -> list[Voice]:
    pairs = [(a, v) for a in accents for v in variants]
    rng.shuffle(pairs)
    return [
        Voice("espeak", f"{a}+{v}", rate=rng.randint(135, 200), pitch=rng.randint(25, 75))
        for a, v in pairs[:n]
    ]


def plan_voices(opts: BuildOptions) -> dict[str, list[tuple[Voice, float]]]:
    """(voice, weight) lists for the seen and held-out sets, from the engines installed here."""
    rng = random.Random(f"voices-{opts.seed}")
    seen: list[tuple[Voice, float]] = []
    held: list[tuple[Voice, float]] = []
    for e in opts.engines:
        if e not in ("espeak", "flite", "festival"):
            raise ValueError(f"unknown engine {e!r} (choose from espeak, flite, festival)")
    if "espeak" in opts.engines and tts.espeak_available():
        seen += [(v, 1.0) for v in _espeak_voices(rng, TRAIN_ACCENTS, TRAIN_VARIANTS, opts.n_espeak_train)]
        held += [(v, 1.0) for v in _espeak_voices(rng, HELDOUT_ACCENTS, HELDOUT_VARIANTS, 5)]
    for name in tts.flite_voices() if "flite" in opts.engines else []:
        target = held if name == FLITE_HELDOUT else seen
        for stretch in (0.9, 1.0, 1.15):
            target.append((Voice("flite", name, stretch=stretch), 1.5))
    for name in tts.festival_voices() if "festival" in opts.engines else []:
        target = held if name == FESTIVAL_HELDOUT else seen
        for stretch in (0.95, 1.1):
            target.append((Voice("festival", name, stretch=stretch), 1.5))
    if not seen:
        raise RuntimeError("no TTS engine available: install espeakng-loader (pip) or flite/festival")
    if not held:  # only espeak present and nothing held out is impossible; keep the split honest
        raise RuntimeError("no held-out voices could be planned")
    return {"seen": seen, "heldout": held}


def _assign(rng: random.Random, voices: list[tuple[Voice, float]], n: int) -> list[Voice]:
    """Spread ``n`` utterances over voices by weight, every voice at least once when n allows."""
    vs = [v for v, _ in voices]
    ws = [w for _, w in voices]
    base = vs[: min(n, len(vs))]
    rest = rng.choices(vs, weights=ws, k=max(0, n - len(base)))
    out = base + rest
    rng.shuffle(out)
    return out


@dataclass
class _Job:
    uid: str
    text: str
    voice: Voice
    path: str  # absolute wav path


def plan_jobs(opts: BuildOptions, out: Path, voices: dict[str, list[tuple[Voice, float]]]) -> dict[str, list[_Job]]:
    """Sentences and voices for every split (deterministic given the options)."""
    rng = random.Random(f"text-{opts.seed}")
    fortunes = grammar.fortune_sentences()
    counts = {"train": opts.n_train, "dev": opts.n_dev, "test_seen": opts.n_test, "test_heldout": opts.n_test}
    used: set[str] = set()
    jobs: dict[str, list[_Job]] = {}
    for split in SPLITS:
        texts = grammar.make_sentences(counts[split], rng, fortunes, opts.open_share, exclude=used)
        if split == "train":
            used |= set(texts)
        else:  # evaluation sentences: unique, and excluded from later splits too
            texts = list(dict.fromkeys(texts))
            while len(texts) < counts[split]:
                extra = grammar.make_sentences(1, rng, fortunes, opts.open_share, exclude=used | set(texts))
                texts.append(extra[0])
            used |= set(texts)
        pool = voices["heldout"] if split == "test_heldout" else voices["seen"]
        assigned = _assign(rng, pool, len(texts))
        wav_dir = out / "wav" / split
        jobs[split] = [
            _Job(f"{split}-{i:06d}", t, v, str(wav_dir / f"{split}-{i:06d}-{_content_hash(t, v)}.wav"))
            for i, (t, v) in enumerate(zip(texts, assigned))
        ]
    return jobs


def _content_hash(text: str, voice: Voice) -> str:
    """Short hash of what a wav contains, so a resumed build never reuses a stale file."""
    key = json.dumps([FORMAT_VERSION, text, voice.to_dict()], sort_keys=True)
    return hashlib.sha1(key.encode()).hexdigest()[:10]


def _existing_duration(path: str) -> float | None:
    try:
        info = sf.info(path)
    except (RuntimeError, OSError, sf.LibsndfileError):
        return None
    if info.samplerate != tts.TARGET_RATE or info.frames == 0:
        return None
    return info.frames / info.samplerate


def _write_wav(path: str, audio: np.ndarray) -> float:
    peak = float(abs(audio).max()) if audio.size else 0.0
    if peak > 0.99:
        audio = audio * (0.99 / peak)
    tmp = path + ".tmp.wav"
    sf.write(tmp, audio, tts.TARGET_RATE, subtype="PCM_16")
    os.replace(tmp, path)
    return len(audio) / tts.TARGET_RATE


def _run_task(task: list[_Job]) -> list[tuple[str, float]]:
    """Synthesize one task (jobs of one voice); returns (uid, duration) pairs."""
    todo, done = [], []
    for job in task:
        dur = _existing_duration(job.path)
        if dur is None:
            todo.append(job)
        else:
            done.append((job.uid, dur))
    if not todo:
        return done
    voice = todo[0].voice
    if voice.engine == "festival":
        audios = tts.festival_batch([(j.uid, j.text) for j in todo], voice)
    else:
        audios = [tts.synthesize(j.text, voice) for j in todo]
    for job, audio in zip(todo, audios):
        if audio.size == 0:
            raise RuntimeError(f"{voice.speaker} produced no audio for {job.text!r}")
        done.append((job.uid, _write_wav(job.path, audio)))
    return done


def _tasks(jobs: list[_Job], chunk: int = 40) -> list[list[_Job]]:
    by_voice: dict[Voice, list[_Job]] = defaultdict(list)
    for j in jobs:
        by_voice[j.voice].append(j)
    tasks = []
    for vjobs in by_voice.values():
        for i in range(0, len(vjobs), chunk):
            tasks.append(vjobs[i : i + chunk])
    # slow engines first so the pool does not wait on a long tail
    order = {"festival": 0, "flite": 1, "espeak": 2}
    tasks.sort(key=lambda t: (order.get(t[0].voice.engine, 3), -len(t)))
    return tasks


def _remove_stale(out: Path, keep: set[str]) -> int:
    """Delete wavs of an earlier build with other options (only files named like ours)."""
    removed = 0
    for split in SPLITS:
        for p in (out / "wav" / split).glob(f"{split}-*.wav"):
            if str(p) not in keep and _WAV_NAME.fullmatch(p.name):
                p.unlink()
                removed += 1
    return removed


def _options_record(opts: BuildOptions) -> dict:
    d = dict(opts.__dict__)
    d["engines"] = list(opts.engines)
    # what is installed decides the voices, so it is part of the cache key too
    d["voices"] = {k: sorted(v.speaker for v, _ in vs) for k, vs in plan_voices(opts).items()}
    # and so is whether Debian's fortunes are there (the open sentences come from them)
    d["open_sentences"] = len(grammar.fortune_sentences()) if opts.open_share > 0 else 0
    d["format_version"] = FORMAT_VERSION
    return d


def is_cached(out: Path, opts: BuildOptions) -> bool:
    """True when ``out`` holds a finished build with exactly these options."""
    summary = out / "corpus.json"
    if not summary.is_file() or not all((out / f"{s}.jsonl").is_file() for s in SPLITS):
        return False
    try:
        old = json.loads(summary.read_text())
    except (json.JSONDecodeError, OSError):
        return False
    return old.get("options") == _options_record(opts)


def build_corpus(out: str | os.PathLike, opts: BuildOptions, jobs: int = 2, progress: bool = True) -> dict:
    """Build (or reuse) the corpus in ``out``; returns the corpus.json summary."""
    from tqdm import tqdm

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
    all_jobs = [j for s in SPLITS for j in plan[s]]
    tasks = _tasks(all_jobs)
    for split in SPLITS:
        (out / "wav" / split).mkdir(parents=True, exist_ok=True)
    durations: dict[str, float] = {}
    bar = tqdm(total=len(all_jobs), desc="synthesising", unit="utt", disable=not progress)
    # Every task runs in a fresh worker process, serial builds included: espeak-ng's wave
    # generator keeps static state from one utterance to the next (not reset even by
    # espeak_Terminate), so a long-lived worker would make the samples, and the lengths to a few
    # ms, depend on which tasks it ran before. One process per task makes a build bit-identical
    # whatever --jobs is; a fork costs milliseconds next to a task of 40 utterances.
    ctx = mp.get_context("fork" if hasattr(os, "fork") else "spawn")
    with ctx.Pool(jobs, maxtasksperchild=1) as pool:
        for res in pool.imap_unordered(_run_task, tasks):
            durations.update(res)
            bar.update(len(res))
    bar.close()

    summary: dict = {"format_version": FORMAT_VERSION, "options": _options_record(opts), "splits": {}}
    engines: dict[str, set[str]] = defaultdict(set)
    for split in SPLITS:
        utts = [
            Utterance(j.uid, os.path.relpath(j.path, out), j.text, round(durations[j.uid], 4), j.voice.speaker)
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
    summary["engines"] = {k: sorted(v) for k, v in sorted(engines.items())}
    summary["text"] = {"grammar": True, "open_sentences_available": summary["options"]["open_sentences"]}
    summary["heldout_rule"] = {
        "espeak_accents": list(HELDOUT_ACCENTS), "espeak_variants": list(HELDOUT_VARIANTS),
        "flite": FLITE_HELDOUT, "festival": FESTIVAL_HELDOUT,
    }
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
    from subbit.asr.data import read_manifest

    kept: dict[str, int] = {}
    dst_p.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        manifest = src_p / f"{split}.jsonl"
        if not manifest.is_file():
            raise FileNotFoundError(f"{manifest} not found (is {src_p} a corpus?)")
        utts = [u for u in read_manifest(manifest) if u.text not in drop]
        for u in utts:
            u.audio = os.path.relpath(u.audio, dst_p.resolve())
        write_manifest(dst_p / f"{split}.jsonl", utts)
        kept[split] = len(utts)
    return kept

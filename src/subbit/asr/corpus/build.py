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

from subbit.asr.corpus import grammar, neural, tts
from subbit.asr.corpus.tts import Voice
from subbit.asr.data import Utterance, atomic_write_text, write_manifest

log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test_seen", "test_heldout")
OPEN_SPLIT = "test_open"
ALL_SPLITS = (*SPLITS, OPEN_SPLIT)
ENGINES = ("espeak", "flite", "festival", "kokoro", "piper")
CLASSIC_ENGINES = ("espeak", "flite", "festival")
#: the wake word spoken before a share of the commands (``wake_word_share``): short, two
#: stressed syllables, not an English phrase the grammar produces
WAKE_WORD = "hey subbit"
WAKE_GAP_SAMPLES = (1600, 4800)  # silence between wake word and command: 0.1-0.3 s at 16 kHz
WAKE_TRIM = 0.01  # the wake word's trailing samples below this share of its peak are cut
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
# Kokoro: one female and one male voice per accent never in training (blends only of seen voices)
KOKORO_HELDOUT = ("af_sky", "am_echo", "bf_lily", "bm_fable")
KOKORO_TRAIN_BLENDS = 8
KOKORO_STRETCHES = (0.9, 1.0, 1.1)
#: engines that can be held out whole (``heldout_engine="auto"`` takes the first installed)
HELDOUT_ENGINE_ORDER = ("piper", "festival")


@dataclass(frozen=True)
class BuildOptions:
    """Everything that determines the corpus content (compared to detect a cached build)."""

    seed: int = 0
    n_train: int = 4200
    n_dev: int = 300
    n_test: int = 300
    n_espeak_train: int = 40
    open_share: float = 0.15
    engines: tuple[str, ...] = CLASSIC_ENGINES
    # --- added later: defaults keep the old plan and stay out of the options record
    wake_word_share: float = 0.0  # share of utterances with WAKE_WORD spoken before the command
    open_split: bool = False  # open sentences in their own test_open split (see module doc)
    heldout_engine: str = ""  # "" (none), "auto", or an engine held out of training whole
    augment: tuple[str, ...] = ()  # effects (augment.CORPUS_EFFECTS) baked into training audio
    augment_share: float = 0.0  # share of training utterances that get one of them

    @classmethod
    def create(cls, hours: float = 3.0, quick: bool = False, seed: int = 0,
               engines: tuple[str, ...] | None = None, **extra: object) -> BuildOptions:
        """Options for ``--quick`` (the committed small corpus) or for ``hours`` of training audio.

        The full corpus has test splits of 1,000 utterances, the open split, every engine that
        is installed and a whole engine held out. ``--quick`` keeps its old plan unless asked:
        neural engines only when named in ``engines`` (then an engine is held out whole too).
        """
        if quick:
            base: dict = {"n_train": 1500, "n_dev": 150, "n_test": 150}
            if engines is not None:
                base["engines"] = tuple(engines)
                if set(engines) - set(CLASSIC_ENGINES):
                    base["heldout_engine"] = "auto"
        else:
            if not hours > 0:
                raise ValueError(f"--hours must be positive, got {hours}")
            base = {"n_train": max(50, round(hours * 3600 / MEAN_UTT_SECONDS)), "n_test": 1000,
                    "open_split": True, "heldout_engine": "auto",
                    "engines": tuple(engines) if engines is not None else ENGINES}
        opts = cls(seed=seed, **{**base, **extra})
        opts.validate()
        return opts

    def validate(self) -> None:
        """ValueError for options no build can honour."""
        bad = [e for e in self.engines if e not in ENGINES]
        if bad:
            raise ValueError(f"unknown engine {bad[0]!r} (choose from {', '.join(ENGINES)})")
        if not 0.0 <= self.wake_word_share <= 1.0:
            raise ValueError(f"--wake-word-share must be in [0, 1], got {self.wake_word_share}")
        if self.heldout_engine not in ("", "auto", *ENGINES):
            raise ValueError(f"heldout_engine must be '', 'auto' or an engine, got {self.heldout_engine!r}")
        if self.heldout_engine in ("espeak",):
            raise ValueError("espeak cannot be held out whole (it is the engine that always exists)")
        from subbit.asr.augment import CORPUS_EFFECTS

        bad = [a for a in self.augment if a not in CORPUS_EFFECTS]
        if bad:
            raise ValueError(f"unknown --augment effect {bad[0]!r} (choose from {', '.join(CORPUS_EFFECTS)})")
        if not 0.0 <= self.augment_share <= 1.0:
            raise ValueError(f"--augment-share must be in [0, 1], got {self.augment_share}")
        if self.augment_share > 0 and not self.augment:
            raise ValueError("--augment-share needs --augment (which effects)")


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
    opts.validate()
    whole = heldout_engine(opts)
    if "espeak" in opts.engines and tts.espeak_available():
        seen += [(v, 1.0) for v in _espeak_voices(rng, TRAIN_ACCENTS, TRAIN_VARIANTS, opts.n_espeak_train)]
        held += [(v, 1.0) for v in _espeak_voices(rng, HELDOUT_ACCENTS, HELDOUT_VARIANTS, 5)]
    for name in tts.flite_voices() if "flite" in opts.engines else []:
        target = held if name == FLITE_HELDOUT else seen
        for stretch in (0.9, 1.0, 1.15):
            target.append((Voice("flite", name, stretch=stretch), 1.5))
    for name in tts.festival_voices() if "festival" in opts.engines else []:
        target = held if name == FESTIVAL_HELDOUT or whole == "festival" else seen
        for stretch in (0.95, 1.1):
            target.append((Voice("festival", name, stretch=stretch), 1.5))
    _plan_neural(opts, whole, seen, held)
    if not seen:
        raise RuntimeError("no TTS engine available: install espeakng-loader (pip) or flite/festival")
    if not held:  # only espeak present and nothing held out is impossible; keep the split honest
        raise RuntimeError("no held-out voices could be planned")
    return {"seen": seen, "heldout": held}


def heldout_engine(opts: BuildOptions) -> str | None:
    """The engine held out of training whole, if any (``auto``: the first installed of
    HELDOUT_ENGINE_ORDER among the requested engines)."""
    if not opts.heldout_engine:
        return None
    installed = {"piper": bool(neural.piper_voices()), "festival": bool(tts.festival_voices()),
                 "flite": bool(tts.flite_voices()), "kokoro": bool(neural.kokoro_voices())}
    if opts.heldout_engine == "auto":
        return next((e for e in HELDOUT_ENGINE_ORDER if e in opts.engines and installed[e]), None)
    return opts.heldout_engine if opts.heldout_engine in opts.engines and installed.get(opts.heldout_engine) else None


def _plan_neural(opts: BuildOptions, whole: str | None, seen: list[tuple[Voice, float]],
                 held: list[tuple[Voice, float]]) -> None:
    """Kokoro and Piper voices (only when installed and asked for); an own random stream so the
    classic voices are the same with or without them."""
    rng = random.Random(f"voices-neural-{opts.seed}")
    names = neural.kokoro_voices() if "kokoro" in opts.engines else []
    if names:
        train = [n for n in names if n not in KOKORO_HELDOUT]
        held_names = [n for n in names if n in KOKORO_HELDOUT]
        if whole == "kokoro":
            train, held_names = [], names
        elif not held_names and len(train) > 1:  # another set of voices: still hold one out
            held_names = [train.pop()]
        pairs = [(a, b) for i, a in enumerate(train) for b in train[i + 1:] if a[:1] == b[:1]]
        rng.shuffle(pairs)
        blends = [f"{a}+{b}" for a, b in pairs[:KOKORO_TRAIN_BLENDS]]
        for n in train + blends:
            seen.append((Voice("kokoro", n, stretch=rng.choice(KOKORO_STRETCHES)), 1.0))
        for n in held_names:
            held.append((Voice("kokoro", n, stretch=1.0), 1.0))
    if "piper" in opts.engines:
        for name in neural.piper_voices():
            target = held if whole == "piper" else seen
            for stretch in (0.9, 1.0, 1.15):
                target.append((Voice("piper", name, stretch=stretch), 1.5))


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
    text: str  # what is synthesised after the wake word (the whole text without one)
    voice: Voice
    path: str  # absolute wav path
    wake: str = ""  # wake word spoken first ("" = none)
    gap: int = 0  # samples of silence between wake word and command
    effect: str = ""  # augment effect applied to the whole utterance ("" = none)
    effect_seed: int = 0

    @property
    def transcript(self) -> str:
        return f"{self.wake} {self.text}" if self.wake else self.text


def _eval_texts(split: str, n: int, rng: random.Random, fortunes: list[str], opts: BuildOptions,
                used: set[str], vocab: set[str]) -> list[str]:
    """Unique sentences for an evaluation split, none in ``used``. With ``open_split``:
    test_open gets fortunes, the others grammar commands whose every word is in ``vocab``."""
    if not opts.open_split:  # the committed plan: commands and fortunes mixed
        texts = list(dict.fromkeys(grammar.make_sentences(n, rng, fortunes, opts.open_share, exclude=used)))
        while len(texts) < n:
            texts.append(grammar.make_sentences(1, rng, fortunes, opts.open_share, exclude=used | set(texts))[0])
        return texts
    if split == OPEN_SPLIT:
        pool = [f for f in fortunes if f not in used]
        return rng.sample(pool, min(n, len(pool)))
    texts: list[str] = []
    taken = set(used)
    tries = 0
    while len(texts) < n:
        tries += 1
        if tries > 200 * n + 1000:
            raise ValueError(f"could not draw {n} new in-vocabulary commands for {split}")
        s = grammar.make_sentences(1, rng, [], 0.0, exclude=taken)[0]
        if set(s.split()) <= vocab:
            texts.append(s)
            taken.add(s)
    return texts


def plan_splits(opts: BuildOptions) -> tuple[str, ...]:
    """Splits a build with these options writes (test_open only with ``open_split``)."""
    return ALL_SPLITS if opts.open_split else SPLITS


def plan_jobs(opts: BuildOptions, out: Path, voices: dict[str, list[tuple[Voice, float]]]) -> dict[str, list[_Job]]:
    """Sentences and voices for every split (deterministic given the options)."""
    rng = random.Random(f"text-{opts.seed}")
    fortunes = grammar.fortune_sentences()
    counts = {"train": opts.n_train, "dev": opts.n_dev, "test_seen": opts.n_test, "test_heldout": opts.n_test,
              OPEN_SPLIT: opts.n_test}
    used: set[str] = set()
    vocab: set[str] = set()
    jobs: dict[str, list[_Job]] = {}
    for split in plan_splits(opts):
        if split == "train":
            texts = grammar.make_sentences(counts[split], rng, fortunes, opts.open_share, exclude=used)
            vocab = {w for t in texts for w in t.split()}
        else:  # evaluation sentences: unique, and excluded from later splits too
            texts = _eval_texts(split, counts[split], rng, fortunes, opts, used, vocab)
        used |= set(texts)
        pool = voices["heldout"] if split == "test_heldout" else voices["seen"]
        assigned = _assign(rng, pool, len(texts))
        wav_dir = out / "wav" / split
        jobs[split] = [
            _Job(f"{split}-{i:06d}", t, v, str(wav_dir / f"{split}-{i:06d}-{_content_hash(t, v)}.wav"))
            for i, (t, v) in enumerate(zip(texts, assigned))
        ]
    if opts.wake_word_share > 0:
        _add_wake_words(opts, jobs)
    if opts.augment_share > 0:
        _add_effects(opts, jobs["train"])
    return jobs


def _add_effects(opts: BuildOptions, train: list[_Job]) -> None:
    """One effect of ``opts.augment`` on ``augment_share`` of the training utterances (evaluation
    splits stay clean); own random stream, and a seed per utterance for the effect itself."""
    rng = random.Random(f"augment-{opts.seed}")
    for j in train:
        if rng.random() >= opts.augment_share:
            continue
        j.effect = rng.choice(opts.augment)
        j.effect_seed = rng.randrange(2**32)
        j.path = os.path.join(os.path.dirname(j.path), f"{j.uid}-{_job_hash(j)}.wav")


def _add_wake_words(opts: BuildOptions, jobs: dict[str, list[_Job]]) -> None:
    """Put WAKE_WORD before ``wake_word_share`` of the utterances of every split (own random
    stream: the sentences and voices do not move). A polite "hey computer" prefix is dropped
    after the wake word."""
    rng = random.Random(f"wake-{opts.seed}")
    for split, js in jobs.items():
        for j in js:
            if rng.random() >= opts.wake_word_share:
                continue
            j.wake = WAKE_WORD
            j.gap = rng.randint(*WAKE_GAP_SAMPLES)
            if j.text.startswith("hey computer "):
                j.text = j.text[len("hey computer "):]
            j.path = os.path.join(os.path.dirname(j.path), f"{j.uid}-{_job_hash(j)}.wav")


def _job_hash(j: _Job) -> str:
    return _content_hash(j.text, j.voice, j.wake, j.gap, j.effect, j.effect_seed)


def _content_hash(text: str, voice: Voice, wake: str = "", gap: int = 0, effect: str = "", effect_seed: int = 0) -> str:
    """Short hash of what a wav contains, so a resumed build never reuses a stale file."""
    parts: list = [FORMAT_VERSION, text, voice.to_dict()]
    if wake:  # utterances without a wake word (or an effect) keep their old names
        parts += [wake, gap]
    if effect:
        parts += [effect, effect_seed]
    key = json.dumps(parts, sort_keys=True)
    return hashlib.sha1(key.encode()).hexdigest()[:10]


def wake_part(voice: Voice) -> np.ndarray:
    """The wake word as ``voice`` says it, trailing silence cut (the builder synthesises it first
    in each task, a fresh process, so it is the same audio in every task of that voice)."""
    audio = tts.synthesize(WAKE_WORD, voice)
    if audio.size == 0:
        raise RuntimeError(f"{voice.speaker} produced no audio for the wake word")
    loud = np.flatnonzero(np.abs(audio) >= WAKE_TRIM * float(np.abs(audio).max()))
    return audio[: int(loud[-1]) + 1].astype(np.float32)


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


def _run_task(task: list[_Job]) -> list[tuple[str, float, float | None]]:
    """Synthesize one task (jobs of one voice); returns (uid, duration, wake_end) triples."""
    # the wake word first (even when every wav exists): its length gives wake_end
    wake = wake_part(task[0].voice) if any(j.wake for j in task) else None
    wake_end = None if wake is None else wake.size / tts.TARGET_RATE
    todo, done = [], []
    for job in task:
        dur = _existing_duration(job.path)
        if dur is None:
            todo.append(job)
        else:
            done.append((job.uid, dur, wake_end if job.wake else None))
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
        if job.wake:
            assert wake is not None
            audio = np.concatenate([wake, np.zeros(job.gap, np.float32), audio])
        if job.effect:  # every effect keeps the length: wake_end stays exact
            from subbit.asr.augment import apply_effect

            audio = apply_effect(job.effect, audio, np.random.default_rng(job.effect_seed), tts.TARGET_RATE)
        done.append((job.uid, _write_wav(job.path, audio), wake_end if job.wake else None))
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
    order = {"kokoro": 0, "festival": 1, "piper": 2, "flite": 3, "espeak": 4}
    tasks.sort(key=lambda t: (order.get(t[0].voice.engine, 3), -len(t)))
    return tasks


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
    if OPEN_SPLIT in plan and not plan[OPEN_SPLIT]:  # no fortunes installed: no open split
        del plan[OPEN_SPLIT]
        stale = out / f"{OPEN_SPLIT}.jsonl"
        if stale.is_file():
            stale.unlink()
    splits = [s for s in ALL_SPLITS if s in plan]
    all_jobs = [j for s in splits for j in plan[s]]
    tasks = _tasks(all_jobs)
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
        for res in pool.imap_unordered(_run_task, tasks):
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
    from subbit.asr.data import read_manifest

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

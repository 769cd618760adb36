"""The plan of a build: which voices exist, and which sentence each voice says in which split.

Deterministic given the options and the engines installed here: every random draw comes from a
stream seeded by the options (one stream per concern, so adding wake words or effects moves no
sentence or voice). A job's wav name carries a hash of its content, so a resumed build never
reuses a stale file.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

from subbit.asr.corpus import grammar, neural, tts
from subbit.asr.corpus.options import (
    ALL_SPLITS,
    FESTIVAL_HELDOUT,
    FLITE_HELDOUT,
    FORMAT_VERSION,
    HELDOUT_ACCENTS,
    HELDOUT_ENGINE_ORDER,
    HELDOUT_VARIANTS,
    KOKORO_HELDOUT,
    KOKORO_STRETCHES,
    KOKORO_TRAIN_BLENDS,
    OPEN_SPLIT,
    SPLITS,
    TRAIN_ACCENTS,
    TRAIN_VARIANTS,
    WAKE_GAP_SAMPLES,
    WAKE_WORD,
    BuildOptions,
)
from subbit.asr.corpus.tts import Voice


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
class Job:
    """One utterance to synthesise: its text, voice, wav path and what is added around it."""

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


def plan_jobs(opts: BuildOptions, out: Path, voices: dict[str, list[tuple[Voice, float]]]) -> dict[str, list[Job]]:
    """Sentences and voices for every split (deterministic given the options)."""
    rng = random.Random(f"text-{opts.seed}")
    fortunes = grammar.fortune_sentences()
    counts = {"train": opts.n_train, "dev": opts.n_dev, "test_seen": opts.n_test, "test_heldout": opts.n_test,
              OPEN_SPLIT: opts.n_test}
    used: set[str] = set()
    vocab: set[str] = set()
    jobs: dict[str, list[Job]] = {}
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
            Job(f"{split}-{i:06d}", t, v, str(wav_dir / f"{split}-{i:06d}-{_content_hash(t, v)}.wav"))
            for i, (t, v) in enumerate(zip(texts, assigned))
        ]
    if opts.wake_word_share > 0:
        _add_wake_words(opts, jobs)
    if opts.augment_share > 0:
        _add_effects(opts, jobs["train"])
    return jobs


def _add_effects(opts: BuildOptions, train: list[Job]) -> None:
    """One effect of ``opts.augment`` on ``augment_share`` of the training utterances (evaluation
    splits stay clean); own random stream, and a seed per utterance for the effect itself."""
    rng = random.Random(f"augment-{opts.seed}")
    for j in train:
        if rng.random() >= opts.augment_share:
            continue
        j.effect = rng.choice(opts.augment)
        j.effect_seed = rng.randrange(2**32)
        j.path = os.path.join(os.path.dirname(j.path), f"{j.uid}-{_job_hash(j)}.wav")


def _add_wake_words(opts: BuildOptions, jobs: dict[str, list[Job]]) -> None:
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


def _job_hash(j: Job) -> str:
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

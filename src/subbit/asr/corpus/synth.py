"""Synthesis of a planned build: one task (the jobs of one voice) per worker process, wavs written
atomically, the wake word spoken first when a job has one. A wav already on disk is reused."""

from __future__ import annotations

import os
from collections import defaultdict

import numpy as np
import soundfile as sf

from subbit.asr.augment import apply_effect
from subbit.asr.corpus import tts
from subbit.asr.corpus.options import WAKE_TRIM, WAKE_WORD
from subbit.asr.corpus.plan import Job
from subbit.asr.corpus.tts import Voice


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


def run_task(task: list[Job]) -> list[tuple[str, float, float | None]]:
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
            audio = apply_effect(job.effect, audio, np.random.default_rng(job.effect_seed), tts.TARGET_RATE)
        done.append((job.uid, _write_wav(job.path, audio), wake_end if job.wake else None))
    return done


def tasks_by_voice(jobs: list[Job], chunk: int = 40) -> list[list[Job]]:
    by_voice: dict[Voice, list[Job]] = defaultdict(list)
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

"""Utterance manifests (JSON Lines) and audio loading.

A manifest has one JSON object per line: ``{"id", "audio", "text", "duration", "speaker"}``.
``audio`` is either absolute or relative to the manifest's own directory, so a corpus folder can
be moved as a whole; :func:`read_manifest` always returns absolute paths. ``duration`` is in
seconds. Blank lines are ignored.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

SAMPLE_RATE = 16000
MANIFEST_FIELDS: tuple[str, ...] = ("id", "audio", "text", "duration", "speaker")


@dataclass
class Utterance:
    """One transcribed recording."""

    id: str
    audio: str
    text: str
    duration: float
    speaker: str


def _check_record(obj: object, where: str) -> Utterance:
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in MANIFEST_FIELDS if k not in obj]
    if missing:
        raise ValueError(f"{where}: missing field(s) {', '.join(missing)}")
    for key in ("id", "audio", "text", "speaker"):
        if not isinstance(obj[key], str):
            raise ValueError(f"{where}: field {key!r} must be a string")
    dur = obj["duration"]
    if isinstance(dur, bool) or not isinstance(dur, (int, float)) or not dur >= 0:
        raise ValueError(f"{where}: field 'duration' must be a non-negative number")
    return Utterance(obj["id"], obj["audio"], obj["text"], float(dur), obj["speaker"])


def read_manifest(path: str | os.PathLike) -> list[Utterance]:
    """Read a JSONL manifest; relative audio paths are resolved against its directory.

    Raises ValueError naming the file and line for bad JSON or a bad/missing field.
    """
    path = Path(path)
    base = path.resolve().parent
    utts: list[Utterance] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: bad JSON ({exc.msg})") from None
            utt = _check_record(obj, where)
            if not os.path.isabs(utt.audio):
                utt.audio = str(base / utt.audio)
            utts.append(utt)
    return utts


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` via a temporary file + rename, so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_manifest(path: str | os.PathLike, utts: Iterable[Utterance], relative_to: str | os.PathLike | None = None) -> None:
    """Write utterances as JSONL (atomically).

    Audio paths are written as given, except that with ``relative_to`` (normally the manifest's
    directory) absolute paths under that directory are made relative to it.
    """
    root = Path(relative_to).resolve() if relative_to is not None else None
    lines = []
    for u in utts:
        rec = asdict(u)
        if root is not None and os.path.isabs(u.audio):
            try:
                rec["audio"] = str(Path(u.audio).resolve().relative_to(root))
            except ValueError:
                pass
        lines.append(json.dumps({k: rec[k] for k in MANIFEST_FIELDS}, ensure_ascii=False))
    atomic_write_text(path, "".join(line + "\n" for line in lines))


def resample_to(audio: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """Polyphase resampling along the last axis (float32)."""
    if src_rate == dst_rate:
        return audio.astype(np.float32, copy=False)
    g = gcd(int(src_rate), int(dst_rate))
    return resample_poly(audio, dst_rate // g, src_rate // g, axis=-1).astype(np.float32)


def load_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read any soundfile-readable file as float32 mono at ``sample_rate`` (resampling if needed)."""
    audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
    mono = audio.mean(axis=1) if audio.shape[1] > 1 else audio[:, 0]
    return resample_to(mono, sr, sample_rate)


__all__ = [
    "MANIFEST_FIELDS", "SAMPLE_RATE", "Utterance", "atomic_write_text", "load_audio",
    "read_manifest", "resample_to", "write_manifest",
]

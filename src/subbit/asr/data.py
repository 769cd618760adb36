"""Utterance manifests (JSON Lines) and audio loading.

A manifest has one JSON object per line: ``{"id", "audio", "text", "duration", "speaker"}``,
plus ``"wake_end"`` (seconds) on utterances that begin with a wake word (see :class:`Utterance`).
``audio`` is either absolute or relative to the manifest's own directory, so a corpus folder can
be moved as a whole; :func:`read_manifest` always returns absolute paths. ``duration`` is in
seconds. Blank lines are ignored.
"""

from __future__ import annotations

import json
import math
import os
import stat
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
    """One transcribed recording.

    ``wake_end``: for an utterance that starts with a spoken wake word (the synthetic corpus's
    ``--wake-word-share``), the exact end of the wake word in seconds (a whole number of samples
    at 16 kHz); ``None`` otherwise. The transcript then starts with the wake word's text. It is
    written to the manifest only when set, so manifests without wake words are unchanged.
    """

    id: str
    audio: str
    text: str
    duration: float
    speaker: str
    wake_end: float | None = None


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
    wake = obj.get("wake_end")
    if wake is not None:
        if isinstance(wake, bool) or not isinstance(wake, (int, float)) or not math.isfinite(wake):
            raise ValueError(f"{where}: field 'wake_end' must be a finite number")
        if not 0 < wake < dur:
            raise ValueError(f"{where}: field 'wake_end' ({wake}) must lie inside the audio (0 < wake_end < {dur})")
        wake = float(wake)
    return Utterance(obj["id"], obj["audio"], obj["text"], float(dur), obj["speaker"], wake)


class UtteranceList(list):
    """A list of :class:`Utterance` that also carries ``skipped``: one dict per manifest line or
    utterance left out, ``{"id", "audio", "reason"}`` (see :func:`screen_utterances`)."""

    def __init__(self, items: Iterable[Utterance] = (), skipped: list[dict[str, str]] | None = None) -> None:
        super().__init__(items)
        self.skipped: list[dict[str, str]] = list(skipped or [])


def read_manifest(path: str | os.PathLike) -> UtteranceList:
    """Read a JSONL manifest; relative audio paths are resolved against its directory.

    Raises ValueError naming the file and line for bad JSON or a bad/missing field. A line that
    is not UTF-8 is left out and listed in the result's ``skipped`` (naming file and line).
    """
    path = Path(path)
    base = path.resolve().parent
    utts = UtteranceList()
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                utts.skipped.append({"id": where, "audio": "", "reason": f"{where}: line is not UTF-8 "
                                     f"(byte {exc.start}: {raw[exc.start:exc.start + 1]!r})"})  # fmt: skip
                continue
            if not line.strip():
                continue
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
        out = {k: rec[k] for k in MANIFEST_FIELDS}
        if u.wake_end is not None:
            out["wake_end"] = u.wake_end
        lines.append(json.dumps(out, ensure_ascii=False))
    atomic_write_text(path, "".join(line + "\n" for line in lines))


def resample_to(audio: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """Polyphase resampling along the last axis (float32)."""
    if src_rate == dst_rate:
        return audio.astype(np.float32, copy=False)
    g = gcd(int(src_rate), int(dst_rate))
    return resample_poly(audio, dst_rate // g, src_rate // g, axis=-1).astype(np.float32)


def _read_mono(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Decode a regular audio file to float32 mono; ValueError naming the path otherwise (never
    opens a FIFO or a device, which could block)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ValueError(f"audio {path}: missing") from None
    except OSError as exc:
        raise ValueError(f"audio {path}: cannot stat: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ValueError(f"audio {path}: is a directory")
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"audio {path}: not a regular file")
    if st.st_size == 0:
        raise ValueError(f"audio {path}: empty file (0 bytes)")
    try:
        audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile.LibsndfileError, RuntimeError, TypeError on odd headers
        raise ValueError(f"audio {path}: not decodable audio ({str(exc)[:100]})") from None
    mono = audio.mean(axis=1) if audio.shape[1] > 1 else audio[:, 0]
    return mono, int(sr)


def load_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read any soundfile-readable file as float32 mono at ``sample_rate`` (resampling if needed).

    A missing, empty, non-regular or undecodable file raises ValueError naming the path."""
    mono, sr = _read_mono(path)
    return resample_to(mono, sr, sample_rate)


def check_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> tuple[str | None, int]:
    """``(reason, samples)``: why ``path`` cannot be used (None: it can) and its length in
    samples at ``sample_rate``. Reasons: missing, a directory / not a regular file, empty,
    not decodable, no samples, NaN/Inf samples."""
    try:
        mono, sr = _read_mono(path)
    except ValueError as exc:
        return str(exc).split(": ", 1)[-1], 0
    if mono.size == 0:
        return "no samples", 0
    if not np.all(np.isfinite(mono)):
        return f"{int(np.count_nonzero(~np.isfinite(mono)))} NaN/Inf samples", 0
    n = mono.size if sr == sample_rate else math.ceil(mono.size * sample_rate / sr)
    return None, int(n)


def screen_utterances(utts: Iterable[Utterance], min_samples: int = 1, sample_rate: int = SAMPLE_RATE,
                      what: str = "one encoder frame", lengths: dict[str, int] | None = None,
                      ) -> tuple[list[Utterance], list[dict[str, str]]]:  # fmt: skip
    """Split ``utts`` into usable ones and skipped ones (``{"id", "audio", "reason"}``).

    Each file is decoded once: missing, directory, empty, undecodable, NaN/Inf audio, and audio
    shorter than ``min_samples`` (``what`` names that length in the reason) are skipped;
    ``lengths`` (if given) receives each file's length in samples. The
    ``skipped`` of an :class:`UtteranceList` (lines that were not UTF-8) come first."""
    good: list[Utterance] = []
    skipped: list[dict[str, str]] = list(getattr(utts, "skipped", []))
    for u in utts:
        reason, n = check_audio(u.audio, sample_rate)
        if lengths is not None:
            lengths[u.audio] = n
        if reason is None and n < min_samples:
            reason = f"shorter than {what} ({n} samples, needs {min_samples})"
        if reason is None:
            good.append(u)
        else:
            skipped.append({"id": u.id, "audio": u.audio, "reason": reason})
    return good, skipped


def write_skipped(path: str | os.PathLike, skipped: list[dict[str, str]]) -> None:
    """``id<TAB>audio<TAB>reason`` per skipped utterance, with a header row (atomically)."""
    rows = ["id\taudio\treason"] + ["\t".join(str(s.get(k, "")).replace("\t", " ").replace("\n", " ")
                                            for k in ("id", "audio", "reason")) for s in skipped]  # fmt: skip
    atomic_write_text(path, "".join(r + "\n" for r in rows))


__all__ = [
    "MANIFEST_FIELDS", "SAMPLE_RATE", "Utterance", "UtteranceList", "atomic_write_text", "check_audio",
    "load_audio", "read_manifest", "resample_to", "screen_utterances", "write_manifest", "write_skipped",
]

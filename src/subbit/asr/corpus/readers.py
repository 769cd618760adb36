"""Readers that turn real corpora on disk into manifests.

Two layouts are understood:
  * ``librispeech``: ``SRC/SPEAKER/CHAPTER/SPEAKER-CHAPTER-UTT.flac`` with one
    ``SPEAKER-CHAPTER.trans.txt`` per chapter (lines ``UTT-ID TRANSCRIPT``). SRC may be the
    subset folder (e.g. ``train-clean-100``) or any folder above it.
  * ``wavtxt``: a directory tree of ``X.wav`` (or .flac/.ogg) files, each with ``X.txt`` beside it.

Every audio file is probed once with soundfile. Files that are corrupt, empty (no samples) or
unreadable are skipped and listed with the reason; a wrong sample rate is fine (``load_audio``
resamples). Manifests written by :func:`import_corpus` store **absolute** audio paths, since the
source tree usually lives outside the output folder.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import soundfile as sf
from tqdm import tqdm

from subbit.asr.corpus.grammar import normalize_text
from subbit.asr.data import Utterance, atomic_write_text, write_manifest

FORMATS = ("librispeech", "wavtxt")
AUDIO_EXTS = (".wav", ".flac", ".ogg")


@dataclass
class ImportResult:
    """Utterances read plus what was skipped, and why."""

    utts: list[Utterance] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"file", "reason"}

    def skip(self, path: str | os.PathLike, reason: str) -> None:
        self.skipped.append({"file": str(path), "reason": reason})


def probe_duration(path: str | os.PathLike) -> float:
    """Duration in seconds; raises ValueError for unreadable, corrupt or empty audio."""
    try:
        info = sf.info(str(path))
    except Exception as exc:  # soundfile raises several types for bad headers
        raise ValueError(f"unreadable audio ({exc.__class__.__name__})") from None
    if info.frames <= 0 or info.samplerate <= 0:
        raise ValueError("empty audio (no samples)")
    try:  # headers can lie: make sure the samples decode
        with sf.SoundFile(str(path)) as f:
            f.seek(max(0, info.frames - 1))
            if len(f.read(1)) == 0:
                raise ValueError("truncated audio")
    except ValueError:
        raise
    except Exception as exc:
        raise ValueError(f"corrupt audio ({exc.__class__.__name__})") from None
    return info.frames / info.samplerate


def _add(result: ImportResult, uid: str, audio: Path, text: str, speaker: str) -> None:
    text = normalize_text(text)
    if not text:
        result.skip(audio, "empty transcript")
        return
    try:
        dur = probe_duration(audio)
    except ValueError as exc:
        result.skip(audio, str(exc))
        return
    result.utts.append(Utterance(uid, str(audio.resolve()), text, round(dur, 4), speaker))


def read_librispeech(src: str | os.PathLike) -> ImportResult:
    """All utterances under ``src`` in the LibriSpeech layout, sorted by id."""
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"LibriSpeech source folder not found: {src}")
    result = ImportResult()
    trans_files = sorted(src.rglob("*.trans.txt"))
    if not trans_files:
        raise ValueError(f"{src}: no *.trans.txt files (is this a LibriSpeech folder?)")
    for trans in tqdm(trans_files, desc="chapters", unit="chapter", disable=None):
        try:
            lines = trans.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            result.skip(trans, f"unreadable transcript file ({exc.__class__.__name__})")
            continue
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            parts = line.strip().split(maxsplit=1)
            if len(parts) < 2:
                result.skip(f"{trans}:{lineno}", "transcript line without text")
                continue
            uid, text = parts
            audio = next((trans.parent / f"{uid}{ext}" for ext in (".flac", ".wav") if (trans.parent / f"{uid}{ext}").exists()), None)
            if audio is None:
                result.skip(trans.parent / f"{uid}.flac", "audio file missing")
                continue
            speaker = uid.split("-")[0]
            _add(result, uid, audio, text, speaker)
    result.utts.sort(key=lambda u: u.id)
    return result


def read_wavtxt(src: str | os.PathLike) -> ImportResult:
    """Utterances from ``X.wav`` + ``X.txt`` pairs anywhere under ``src``.

    The id is the path relative to ``src`` without extension ('/' replaced by '-'); the speaker
    is the first folder level (or ``"unknown"`` for files directly in ``src``).
    """
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"wav+txt source folder not found: {src}")
    result = ImportResult()
    audio_files = sorted(p for p in src.rglob("*") if p.suffix.lower() in AUDIO_EXTS and p.is_file())
    if not audio_files:
        raise ValueError(f"{src}: no .wav/.flac/.ogg files found")
    for audio in tqdm(audio_files, desc="files", unit="file", disable=None):
        txt = audio.with_suffix(".txt")
        if not txt.is_file():
            result.skip(audio, "no transcript (.txt) beside it")
            continue
        try:
            text = txt.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            result.skip(txt, f"unreadable transcript ({exc.__class__.__name__})")
            continue
        rel = audio.relative_to(src).with_suffix("")
        uid = "-".join(rel.parts)
        speaker = rel.parts[0] if len(rel.parts) > 1 else "unknown"
        _add(result, uid, audio, text, speaker)
    return result


def import_corpus(fmt: str, src: str | os.PathLike, out: str | os.PathLike, split: str) -> dict:
    """Read ``src`` and write ``out/{split}.jsonl`` plus the summary ``out/import-{split}.json``."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown --format {fmt!r} (choose from {', '.join(FORMATS)})")
    if not split or "/" in split or split.startswith("."):
        raise ValueError(f"bad --split name {split!r}")
    result = read_librispeech(src) if fmt == "librispeech" else read_wavtxt(src)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_manifest(out / f"{split}.jsonl", result.utts)
    summary = {
        "format": fmt,
        "source": str(Path(src).resolve()),
        "split": split,
        "manifest": str((out / f"{split}.jsonl").resolve()),
        "utterances": len(result.utts),
        "hours": round(sum(u.duration for u in result.utts) / 3600, 4),
        "speakers": len({u.speaker for u in result.utts}),
        "skipped": len(result.skipped),
        "skipped_files": result.skipped,
    }
    atomic_write_text(out / f"import-{split}.json", json.dumps(summary, indent=2) + "\n")
    return summary

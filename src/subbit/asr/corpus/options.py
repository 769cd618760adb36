"""The corpus builder's options and fixed plan: split names, engines, held-out voices, wake word.

``BuildOptions`` is everything that determines a corpus's content; the constants are the rules
every build follows (which espeak accents, flite/festival/Kokoro voices and engines are held
out of training). Bump ``FORMAT_VERSION`` when grammar or synthesis changes what a build makes.
"""

from __future__ import annotations

from dataclasses import dataclass

from subbit.asr.augment import CORPUS_EFFECTS

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
        bad = [a for a in self.augment if a not in CORPUS_EFFECTS]
        if bad:
            raise ValueError(f"unknown --augment effect {bad[0]!r} (choose from {', '.join(CORPUS_EFFECTS)})")
        if not 0.0 <= self.augment_share <= 1.0:
            raise ValueError(f"--augment-share must be in [0, 1], got {self.augment_share}")
        if self.augment_share > 0 and not self.augment:
            raise ValueError("--augment-share needs --augment (which effects)")


"""Named model sizes and the one function that turns a config dict into a model.

The config stores every hyperparameter (not just the preset name), so a checkpoint rebuilds
the same model even if a preset is retuned later. An architecture is registered by three
entries, one per table below: ``PRESETS[arch]`` (named sizes), ``ARCH_KEYS[arch]`` (its own
hyperparameters) and ``ENCODERS[arch]`` (builds the encoder from a checked config).
:func:`build_from_config` is the only builder; ``Transducer`` does not import this module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from .conformer import ConformerEncoder
from .rnnt import LSTMEncoder
from .transducer import Joiner, Predictor, Transducer, check_ctc_weight

CONFIG_VERSION = 1

_COMMON: dict[str, dict[str, Any]] = {
    "tiny": {"pred_embed": 16, "pred_hidden": 16, "pred_layers": 1, "joiner_dim": 32, "dropout": 0.0},
    "small": {"pred_embed": 128, "pred_hidden": 128, "pred_layers": 1, "joiner_dim": 192, "dropout": 0.1},
    "paper": {"pred_embed": 512, "pred_hidden": 1024, "pred_layers": 2, "joiner_dim": 512, "dropout": 0.1},
}

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "rnnt": {
        "tiny": {"stack": 2, "enc_hidden": 40, "enc_layers": 2, "enc_dim": 32, "stack2": 2, "stack2_after": 1},
        "small": {"stack": 4, "enc_hidden": 256, "enc_layers": 2, "enc_dim": 256, "stack2": 1, "stack2_after": 0},
        "paper": {"stack": 3, "enc_hidden": 1024, "enc_layers": 5, "enc_dim": 512, "stack2": 2, "stack2_after": 2},
    },
    "conformer": {
        "tiny": {"stack": 4, "d_model": 32, "n_heads": 2, "ff_mult": 2, "conv_kernel": 5, "n_blocks": 2,
                 "chunk_size": 4, "left_chunks": 2, "rel_pos": True},
        "small": {"stack": 4, "d_model": 144, "n_heads": 4, "ff_mult": 4, "conv_kernel": 15, "n_blocks": 4,
                  "chunk_size": 8, "left_chunks": 3, "rel_pos": True},
        "paper": {"stack": 4, "d_model": 256, "n_heads": 4, "ff_mult": 4, "conv_kernel": 15, "n_blocks": 16,
                  "chunk_size": 8, "left_chunks": 3, "rel_pos": True,
                  "pred_embed": 320, "pred_hidden": 320, "pred_layers": 1, "joiner_dim": 320},
    },
}

#: per architecture: the encoder's hyperparameters (config keys besides the shared ones)
ARCH_KEYS: dict[str, tuple[str, ...]] = {
    "rnnt": ("stack", "enc_hidden", "enc_layers", "enc_dim", "stack2", "stack2_after", "chunk_frames"),
    "conformer": ("stack", "d_model", "n_heads", "ff_mult", "conv_kernel", "n_blocks", "chunk_size",
                  "left_chunks", "rel_pos"),
}


def _rnnt_encoder(c: dict[str, Any]) -> nn.Module:
    return LSTMEncoder(c["n_mels"], c["stack"], c["enc_hidden"], c["enc_layers"], c["enc_dim"],
                       c["stack2"], c["stack2_after"], c["dropout"], c.get("chunk_frames"))


def _conformer_encoder(c: dict[str, Any]) -> nn.Module:
    return ConformerEncoder(c["n_mels"], c["stack"], c["d_model"], c["n_heads"], c["ff_mult"],
                            c["conv_kernel"], c["n_blocks"], c["chunk_size"], c["left_chunks"],
                            bool(c["rel_pos"]), c["dropout"])


#: per architecture: the encoder built from a checked config
ENCODERS: dict[str, Callable[[dict[str, Any]], nn.Module]] = {
    "rnnt": _rnnt_encoder,
    "conformer": _conformer_encoder,
}
# bifocal RNN-T (docs/models.md, section 3b): registered from its own module
from .bifocal import BIFOCAL_KEYS, BIFOCAL_PRESETS, build_bifocal_encoder  # noqa: E402

PRESETS["bifocal"], ARCH_KEYS["bifocal"], ENCODERS["bifocal"] = BIFOCAL_PRESETS, BIFOCAL_KEYS, build_bifocal_encoder
#: config keys that may be absent (their defaults are applied by the builders)
OPTIONAL_KEYS = ("version", "preset", "chunk_frames", "loss_chunk_frames", "ctc_weight")
_SHARED_KEYS = ("pred_embed", "pred_hidden", "pred_layers", "joiner_dim", "dropout", "loss_norm", "blank",
                "loss_chunk_frames")
_META_KEYS = ("version", "arch", "preset", "vocab_size", "n_mels")
#: optional in every config: > 0 adds the training-only CTC head
_TRAIN_KEYS = ("ctc_weight",)


def archs() -> tuple[str, ...]:
    """The registered architectures, in registration order."""
    return tuple(a for a in PRESETS if a in ARCH_KEYS and a in ENCODERS)


def preset_config(arch: str, preset: str, vocab_size: int, n_mels: int = 80, **overrides: Any) -> dict[str, Any]:
    """The full config dict of a preset with ``overrides`` applied (unknown keys are refused)."""
    if arch not in archs():
        raise ValueError(f"arch must be one of {archs()}, got {arch!r}")
    if preset not in PRESETS[arch]:
        raise ValueError(f"preset must be one of {tuple(PRESETS[arch])}, got {preset!r}")
    cfg: dict[str, Any] = {"version": CONFIG_VERSION, "arch": arch, "preset": preset,
                           "vocab_size": vocab_size, "n_mels": n_mels, "blank": 0, "loss_norm": "utterance",
                           "loss_chunk_frames": 0}
    cfg.update(_COMMON[preset])
    cfg.update(PRESETS[arch][preset])
    if arch == "rnnt":
        cfg.setdefault("chunk_frames", cfg["stack"] * cfg["stack2"])
    allowed = set(_keys(arch)) - set(_META_KEYS) - set(_TRAIN_KEYS)
    for key, value in overrides.items():
        if key not in allowed:
            raise ValueError(f"unknown model override {key!r} for arch {arch!r}; allowed: {sorted(allowed)}")
        if key in cfg:
            _check_type(key, value, cfg[key])
        cfg[key] = value
    return cfg


def _check_type(key: str, value: Any, default: Any) -> None:
    """An override has the preset value's type (an int where a float is expected is fine)."""
    if isinstance(default, bool):
        ok, kind = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok, kind = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif isinstance(default, float):
        ok, kind = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    elif isinstance(default, str):
        ok, kind = isinstance(value, str), "a string"
    else:
        return
    if not ok:
        raise ValueError(f"model override (--model-arg) {key}={value!r}: expected {kind}, like the preset's {default!r}")


def _keys(arch: str) -> tuple[str, ...]:
    return _META_KEYS + _SHARED_KEYS + ARCH_KEYS[arch] + _TRAIN_KEYS


def build_from_config(config: dict[str, Any]) -> Transducer:
    """Rebuild a model from its ``config`` (e.g. read back from a checkpoint's JSON).

    The optional key ``ctc_weight`` (> 0) adds the training-only CTC head.
    """
    if not isinstance(config, dict):
        raise ValueError(f"model config must be a dict, got {type(config).__name__}")
    arch = config.get("arch")
    if arch not in archs():
        raise ValueError(f"model config field 'arch' must be one of {archs()}, got {arch!r}")
    if config.get("version", CONFIG_VERSION) != CONFIG_VERSION:
        raise ValueError(f"model config field 'version' is {config.get('version')!r}; this code reads {CONFIG_VERSION}")
    missing = [k for k in _keys(arch) if k not in config and k not in OPTIONAL_KEYS]
    if missing:
        raise ValueError(f"model config is missing field(s) {missing}")
    unknown = sorted(set(config) - set(_keys(arch)))
    if unknown:
        raise ValueError(f"model config has unknown field(s) {unknown} for arch {arch!r}")
    c = dict(config)
    for k in ("vocab_size", "n_mels", "pred_embed", "pred_hidden", "pred_layers", "joiner_dim"):
        if not isinstance(c[k], int) or isinstance(c[k], bool) or c[k] < 1:
            raise ValueError(f"model config field {k!r} must be a positive integer, got {c[k]!r}")
    lcf = c.get("loss_chunk_frames", 0)
    if not isinstance(lcf, int) or isinstance(lcf, bool) or lcf < 0:
        raise ValueError(f"model config field 'loss_chunk_frames' must be an integer >= 0, got {lcf!r}")
    if c.get("loss_norm", "utterance") not in ("utterance", "token"):
        raise ValueError(f"model config field 'loss_norm' must be 'utterance' or 'token', got {c['loss_norm']!r}")
    if not 0 <= int(c["blank"]) < c["vocab_size"]:
        raise ValueError(f"model config field 'blank'={c['blank']} is outside the vocabulary of {c['vocab_size']}")
    if "ctc_weight" in c:
        c["ctc_weight"] = check_ctc_weight(c["ctc_weight"])
    encoder = ENCODERS[arch](c)
    predictor = Predictor(c["vocab_size"], c["pred_embed"], c["pred_hidden"], c["pred_layers"],
                          c["dropout"], int(c["blank"]))
    joiner = Joiner(encoder.output_dim, predictor.output_dim, c["joiner_dim"], c["vocab_size"])
    return Transducer(encoder, predictor, joiner, c)


def build_model(arch: str, preset: str, vocab_size: int, n_mels: int = 80, **overrides: Any) -> Transducer:
    """``build_model("rnnt", "small", vocab_size=128)``; ``overrides`` change single hyperparameters."""
    return build_from_config(preset_config(arch, preset, vocab_size, n_mels, **overrides))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


#: the registered architectures (computed once, after every registration above)
ARCHS = archs()

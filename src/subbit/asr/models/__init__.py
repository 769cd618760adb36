"""Transducer models: LSTM RNN-T and streaming Conformer encoders, shared predictor and joiner.

Layer-by-layer math (for the packed-weight runtime): docs/models.md.
"""

from .conformer import ConformerEncoder
from .presets import PRESETS, build_from_config, build_model, count_params, preset_config
from .rnnt import LSTMEncoder
from .transducer import Joiner, Predictor, Transducer, stack_frames

__all__ = [
    "PRESETS", "ConformerEncoder", "Joiner", "LSTMEncoder", "Predictor", "Transducer",
    "build_from_config", "build_model", "count_params", "preset_config", "stack_frames",
]

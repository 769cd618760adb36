"""The PyTorch baselines of the benchmark: the float model and its torch.ao dynamic int8 version,
both in the runtime's streaming interface (see :mod:`subbit.runtime.session`).

torch.ao.quantization is deprecated in torch 2.13 (still shipped): all of its use stays in this
module. The adapters call the model's own ``step``/``flush``/``join`` code, so the benchmark runs
exactly the network the training code defines.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from subbit import sizes

State = Any  # the model's own streaming state (nested dicts/lists of tensors), opaque here


class _TorchEncoder:
    """The encoder's step API. The initial state is built once from the float model and copied:
    torch.ao's quantized Linear has no ``.weight`` tensor, which ``init_state`` reads for dtype."""

    def __init__(self, enc: nn.Module, state0: State) -> None:
        self.enc, self.state0 = enc, state0
        self.chunk_frames = int(enc.chunk_frames)
        self.drops_pending = not hasattr(enc, "blocks")  # the LSTM encoder's flush only drops frames

    def init_state(self) -> State:
        return copy.deepcopy(self.state0)

    def step(self, feats: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        with torch.inference_mode():
            y, state = self.enc.step(torch.from_numpy(np.ascontiguousarray(feats))[None], state)
        return y[0].numpy(), state

    def flush(self, state: State) -> tuple[np.ndarray, State]:
        if self.drops_pending:
            return np.zeros((0, int(self.enc.output_dim)), np.float32), state
        with torch.inference_mode():
            y, state = self.enc.flush(state)
        return y[0].numpy(), state


class _TorchPredictor:
    def __init__(self, pred: nn.Module, state0: State) -> None:
        self.pred, self.state0 = pred, state0

    def init_state(self) -> State:
        return copy.deepcopy(self.state0)

    def step(self, token: int, state: State) -> tuple[Tensor, State]:
        with torch.inference_mode():
            out, state = self.pred.step(torch.tensor([int(token)]), state)
        return out, state


class _TorchJoiner:
    def __init__(self, joiner: nn.Module) -> None:
        self.j = joiner

    def project_enc(self, enc: np.ndarray) -> Tensor:
        with torch.inference_mode():
            return self.j.project_enc(torch.from_numpy(np.ascontiguousarray(enc)))

    def project_pred(self, out: Tensor) -> Tensor:
        with torch.inference_mode():
            return self.j.project_pred(out)[0]

    def join(self, enc_p: Tensor, pred_p: Tensor) -> np.ndarray:
        with torch.inference_mode():
            # 2-D in: torch.ao's quantized Linear refuses 1-D inputs
            return self.j.join(enc_p.reshape(1, -1), pred_p.reshape(1, -1))[0].numpy()


class TorchStreamingModel:
    """A ``subbit.asr.models.Transducer`` (fp32 or torch.ao-quantized) in the runtime interface.

    ``states``: (encoder, predictor) initial states of batch 1; required for a torch.ao model
    (take them from the float model before quantizing, see :func:`torch_int8_streaming_model`).
    """

    def __init__(self, model: nn.Module, states: tuple[State, State] | None = None) -> None:
        model.eval()
        self.model = model
        if states is None:
            states = (model.encoder.init_state(1), model.predictor.init_state(1))
        self.encoder = _TorchEncoder(model.encoder, states[0])
        self.predictor = _TorchPredictor(model.predictor, states[1])
        self.joiner = _TorchJoiner(model.joiner)
        self.blank = int(model.blank)
        self.n_mels = int(model.config["n_mels"])
        self.tokenizer_bytes = None


def quantize_torch_int8(model: nn.Module) -> nn.Module:
    """torch.ao dynamic int8 (fbgemm): every nn.LSTM and nn.Linear, per-tensor weight scales."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model.eval(), {nn.LSTM, nn.Linear}, dtype=torch.qint8)


def torch_int8_streaming_model(model: nn.Module) -> TorchStreamingModel:
    """torch.ao dynamic int8 version of a float model, in the runtime interface."""
    states = (model.encoder.init_state(1), model.predictor.init_state(1))
    return TorchStreamingModel(quantize_torch_int8(model), states)


def torch_weight_bytes(model: nn.Module, int8: bool = False) -> int:
    """Resident weight bytes of a float model, or of its torch.ao int8 version (``int8=True``).

    int8: Linear and LSTM weight matrices take 1 byte per value plus one per-tensor scale and zero
    point (:data:`subbit.sizes.TORCH_AO_QPARAM_BYTES`); biases, norms and embeddings stay as they
    are (torch.ao dynamic quantizes only LSTM/Linear). Counts from :mod:`subbit.sizes`.
    """
    total = 0
    for mod in model.modules():
        for name, p in mod.named_parameters(recurse=False):
            is_matrix = name == "weight" if isinstance(mod, nn.Linear) else name.startswith("weight_")
            if int8 and isinstance(mod, (nn.Linear, nn.LSTM)) and is_matrix:
                total += sizes.int8_bytes(p.numel(), 1, sizes.TORCH_AO_QPARAM_BYTES)
            else:
                total += sizes.float_bytes(p.numel(), p.element_size())
    return total

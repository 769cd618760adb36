"""The onnxruntime baseline, export half: the model's streaming graphs exported to ONNX and
quantized with ``onnxruntime.quantization.quantize_dynamic`` (int8 weights per tensor). The
adapter that runs them (without torch) is :mod:`subbit.bench.onnx_int8`.

Three graphs are exported with the TorchScript exporter (``dynamo=False``; the dynamo exporter
leaves LSTMs in fp32): a per-chunk encoder graph with its streaming state as inputs/outputs, a
predictor step graph (+ the joiner's projection) and the joiner. The graphs call the models' own
streaming code (``LSTMEncoder.step`` on one aligned chunk, ``ConformerEncoder._run`` on one
chunk, ``Predictor.step``), so no third copy of the encoders exists. The Conformer graph runs at a
fixed cache length with a key-validity mask, so it is exact from the first chunk; a short last
chunk is zero padded and its padding masked.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from subbit.asr.models.transducer import stack_frames

Example = tuple[tuple[Tensor, ...], list[str], list[str]]

# -- the graphs: thin wrappers around the models' own streaming code ------------------------------
class RnntEncoderGraph(nn.Module):
    """One aligned chunk (a multiple of both stackings) through ``LSTMEncoder.step``:
    frames + stacked (h, c) -> enc, (h, c). Nothing is left pending at an aligned chunk."""

    def __init__(self, enc: nn.Module) -> None:
        super().__init__()
        self.enc = enc
        self.chunk_frames = int(enc.chunk_frames)

    def forward(self, feats: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        state = self.enc.init_state(1)
        state.update(pending=feats[:, :0], h=list(h.unbind(0)), c=list(c.unbind(0)))
        y, new = self.enc.step(feats, state)
        return y, torch.stack(new["h"]), torch.stack(new["c"])

    def example(self) -> Example:
        n, enc = len(self.enc.lstms), self.enc
        return ((torch.zeros(1, self.chunk_frames, enc.n_mels), torch.zeros(n, 1, enc.hidden),
                 torch.zeros(n, 1, enc.hidden)), ["feats", "h", "c"], ["enc", "h_out", "c_out"])  # fmt: skip

    def meta(self) -> dict[str, Any]:
        e = self.enc
        return {"arch": "rnnt", "chunk_frames": self.chunk_frames, "enc_layers": len(e.lstms), "enc_hidden": e.hidden,
                "out_frames": self.chunk_frames // e.subsampling, "output_dim": e.output_dim,
                "subsampling": e.subsampling}  # fmt: skip


class ConformerEncoderGraph(nn.Module):
    """One chunk through ``ConformerEncoder._run`` at a fixed cache length ``keep`` (positions
    ``[keep, keep + T)``); ``key_valid`` masks empty cache slots and padding."""

    def __init__(self, enc: nn.Module) -> None:
        super().__init__()
        self.enc = enc
        self.keep = int(enc.left_chunks * enc.chunk_size)

    def forward(self, feats: Tensor, k: Tensor, v: Tensor, conv: Tensor,
                key_valid: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
        enc = self.enc
        x = enc.inp(stack_frames(feats, enc.stack))
        caches = [{"k": k[i], "v": v[i], "conv": conv[i]} for i in range(len(enc.blocks))]
        y, new = enc._run(x, caches, self.keep, key_valid)
        return (y, torch.stack([c["k"] for c in new]), torch.stack([c["v"] for c in new]),
                torch.stack([c["conv"] for c in new]))  # fmt: skip

    def example(self) -> Example:
        enc, nb = self.enc, len(self.enc.blocks)
        kv = torch.zeros(nb, 1, enc.heads, self.keep, enc.dh)
        conv = torch.zeros(nb, 1, enc.d, enc.kernel - 1)
        return ((torch.zeros(1, enc.chunk_frames, enc.n_mels), kv, kv.clone(), conv,
                 torch.ones(1, self.keep + enc.chunk_size, dtype=torch.bool)),
                ["feats", "k", "v", "conv", "key_valid"], ["enc", "k_out", "v_out", "conv_out"])  # fmt: skip

    def meta(self) -> dict[str, Any]:
        e = self.enc
        return {"arch": "conformer", "chunk_frames": e.chunk_frames, "n_blocks": len(e.blocks), "heads": e.heads,
                "dh": e.dh, "d": e.d, "kernel": e.kernel, "keep": self.keep, "chunk": e.chunk_size,
                "output_dim": e.output_dim, "stack": e.stack}  # fmt: skip


class PredictorGraph(nn.Module):
    """token [1] + stacked (h, c) through ``Predictor.step`` -> (projected output [J], h, c)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.pred, self.joiner = model.predictor, model.joiner

    def forward(self, token: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out, new = self.pred.step(token, {"h": list(h.unbind(0)), "c": list(c.unbind(0))})
        return self.joiner.project_pred(out)[0], torch.stack(new["h"]), torch.stack(new["c"])

    def example(self) -> Example:
        n = len(self.pred.lstms)
        z = torch.zeros(n, 1, self.pred.output_dim)
        return (torch.zeros(1, dtype=torch.long), z, z.clone()), ["token", "h", "c"], ["pred_p", "h_out", "c_out"]


class MethodGraph(nn.Module):
    """A bound method of a module as an nn.Module that owns the module (its parameters are traced
    as initializers)."""

    def __init__(self, fn: Callable[..., Tensor]) -> None:
        super().__init__()
        self.owner = fn.__self__  # type: ignore[attr-defined]
        self.fn = fn

    def forward(self, *args: Tensor) -> Tensor:
        return self.fn(*args)


def encoder_graph(model: nn.Module) -> RnntEncoderGraph | ConformerEncoderGraph:
    arch = model.config["arch"]
    if arch == "rnnt":
        return RnntEncoderGraph(model.encoder)
    if arch == "conformer":
        return ConformerEncoderGraph(model.encoder)
    raise ValueError(f"onnx baseline: arch {arch!r} is not supported (rnnt, conformer)")


# -- export + quantize -----------------------------------------------------------------------------
def _export(mod: nn.Module, args: tuple[Tensor, ...], names_in: list[str], names_out: list[str], path: Path,
            dynamic: dict[str, dict[int, str]]) -> Path:  # fmt: skip
    torch.onnx.export(mod, args, str(path), input_names=names_in, output_names=names_out,
                      dynamic_axes=dynamic or None, opset_version=17, dynamo=False)  # fmt: skip
    return path


def _quantize_onnx(src: Path, dst: Path) -> None:
    """onnxruntime dynamic int8 (weights int8 per tensor, activations quantized per call)."""
    # local: onnxruntime is an optional dependency (the benchmark's "ort" variant only)
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs advice on the root logger
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)


def export_onnx_int8(model: nn.Module, out_dir: str | os.PathLike[str], quantize: bool = True) -> dict[str, Any]:
    """Export the streaming graphs of ``model`` to ``out_dir`` (int8 when ``quantize``).

    Returns the metadata the ORT adapter needs (also written to ``out_dir/meta.json``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    cfg = model.config
    enc_mod = encoder_graph(model)
    meta = enc_mod.meta()
    pred_mod = PredictorGraph(model)
    tmp: dict[str, Path] = {}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args, names_in, names_out = enc_mod.example()
        tmp["encoder.onnx"] = _export(enc_mod, args, names_in, names_out, out / "encoder.fp32.onnx", {})
        pargs, pin, pout = pred_mod.example()
        tmp["predictor.onnx"] = _export(pred_mod, pargs, pin, pout, out / "predictor.fp32.onnx", {})
        d = model.encoder.output_dim
        tmp["enc_proj.onnx"] = _export(
            MethodGraph(model.joiner.project_enc), (torch.zeros(2, d),), ["enc"], ["enc_p"],
            out / "enc_proj.fp32.onnx", {"enc": {0: "t"}, "enc_p": {0: "t"}},
        )  # fmt: skip
        jd = int(cfg["joiner_dim"])
        tmp["join.onnx"] = _export(
            MethodGraph(model.joiner.join), (torch.zeros(jd), torch.zeros(jd)), ["enc_p", "pred_p"], ["logits"],
            out / "join.fp32.onnx", {},
        )  # fmt: skip
    for final, src in tmp.items():
        if quantize:
            _quantize_onnx(src, out / final)
            src.unlink()
        else:
            os.replace(src, out / final)
    meta.update({"blank": int(model.blank), "n_mels": int(cfg["n_mels"]), "vocab_size": int(cfg["vocab_size"]),
                 "pred_layers": int(cfg["pred_layers"]), "pred_hidden": int(cfg["pred_hidden"]),
                 "quantized": bool(quantize)})  # fmt: skip
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    return meta

"""Baselines for the benchmark: fp32 PyTorch, torch.ao dynamic int8 and onnxruntime dynamic int8.

Every baseline is wrapped in the runtime's streaming interface (see
:mod:`subbit.runtime.session`), so the very same :class:`StreamingSession` loop (NumPy frontend,
greedy decoding) drives all variants and only the network differs.

torch.ao.quantization is deprecated in torch 2.13 (still shipped): all of its use stays in
this module. The onnxruntime baseline exports three graphs with the TorchScript exporter
(``dynamo=False``; the dynamo exporter leaves LSTMs in fp32) and quantizes them with
``onnxruntime.quantization.quantize_dynamic``: a per-chunk encoder graph with its streaming
state as inputs/outputs, a predictor step graph (+ joiner projection) and the joiner. The
Conformer graph runs at a fixed cache length with a key-validity mask, so it is exact from
the first chunk; a short last chunk is zero padded and its padding masked.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np


# -- PyTorch (fp32 and torch.ao int8) -------------------------------------------------------------
class _TorchEncoder:
    """The encoder's step API. The initial state is built once from the float model and copied:
    torch.ao's quantized Linear has no ``.weight`` tensor, which ``init_state`` reads for dtype."""

    def __init__(self, enc: Any, state0: Any) -> None:
        import torch

        self.torch, self.enc, self.state0 = torch, enc, state0
        self.chunk_frames = int(enc.chunk_frames)
        self.drops_pending = not hasattr(enc, "blocks")  # the LSTM encoder's flush only drops frames

    def init_state(self) -> Any:
        import copy

        return copy.deepcopy(self.state0)

    def step(self, feats: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
        with self.torch.inference_mode():
            y, state = self.enc.step(self.torch.from_numpy(np.ascontiguousarray(feats))[None], state)
        return y[0].numpy(), state

    def flush(self, state: Any) -> tuple[np.ndarray, Any]:
        if self.drops_pending:
            return np.zeros((0, int(self.enc.output_dim)), np.float32), state
        with self.torch.inference_mode():
            y, state = self.enc.flush(state)
        return y[0].numpy(), state


class _TorchPredictor:
    def __init__(self, pred: Any, state0: Any) -> None:
        import torch

        self.torch, self.pred, self.state0 = torch, pred, state0

    def init_state(self) -> Any:
        import copy

        return copy.deepcopy(self.state0)

    def step(self, token: int, state: Any) -> tuple[Any, Any]:
        with self.torch.inference_mode():
            out, state = self.pred.step(self.torch.tensor([int(token)]), state)
        return out, state


class _TorchJoiner:
    def __init__(self, joiner: Any) -> None:
        import torch

        self.torch, self.j = torch, joiner

    def project_enc(self, enc: np.ndarray) -> Any:
        with self.torch.inference_mode():
            return self.j.project_enc(self.torch.from_numpy(np.ascontiguousarray(enc)))

    def project_pred(self, out: Any) -> Any:
        with self.torch.inference_mode():
            return self.j.project_pred(out)[0]

    def join(self, enc_p: Any, pred_p: Any) -> np.ndarray:
        with self.torch.inference_mode():
            # 2-D in: torch.ao's quantized Linear refuses 1-D inputs
            return self.j.join(enc_p.reshape(1, -1), pred_p.reshape(1, -1))[0].numpy()


class TorchStreamingModel:
    """A ``subbit.asr.models.Transducer`` (fp32 or torch.ao-quantized) in the runtime interface.

    ``states``: (encoder, predictor) initial states of batch 1; required for a torch.ao model
    (take them from the float model before quantizing, see :func:`torch_int8_streaming_model`).
    """

    def __init__(self, model: Any, states: tuple[Any, Any] | None = None) -> None:
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


def torch_int8_streaming_model(model: Any) -> TorchStreamingModel:
    """torch.ao dynamic int8 version of a float model, in the runtime interface."""
    states = (model.encoder.init_state(1), model.predictor.init_state(1))
    return TorchStreamingModel(quantize_torch_int8(model), states)


def quantize_torch_int8(model: Any) -> Any:
    """torch.ao dynamic int8 (fbgemm): every nn.LSTM and nn.Linear, per-tensor weight scales."""
    import torch
    from torch import nn

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model.eval(), {nn.LSTM, nn.Linear}, dtype=torch.qint8)


def torch_weight_bytes(model: Any, int8: bool = False) -> int:
    """Resident weight bytes of a float model, or of its torch.ao int8 version (``int8=True``).

    int8: Linear and LSTM weight matrices take 1 byte per value plus one per-tensor scale and zero
    point (:data:`subbit.sizes.TORCH_AO_QPARAM_BYTES`); biases, norms and embeddings stay as they
    are (torch.ao dynamic quantizes only LSTM/Linear). Counts from :mod:`subbit.sizes`.
    """
    from torch import nn

    from subbit import sizes

    total = 0
    for mod in model.modules():
        for name, p in mod.named_parameters(recurse=False):
            is_matrix = name == "weight" if isinstance(mod, nn.Linear) else name.startswith("weight_")
            if int8 and isinstance(mod, (nn.Linear, nn.LSTM)) and is_matrix:
                total += sizes.int8_bytes(p.numel(), 1, sizes.TORCH_AO_QPARAM_BYTES)
            else:
                total += sizes.float_bytes(p.numel(), p.element_size())
    return total


# -- onnxruntime -------------------------------------------------------------------------------------
ORT_FILES = ("encoder.onnx", "predictor.onnx", "enc_proj.onnx", "join.onnx")


def export_onnx_int8(model: Any, out_dir: str | os.PathLike[str], quantize: bool = True) -> dict[str, Any]:
    """Export the streaming graphs of ``model`` to ``out_dir`` (int8 when ``quantize``).

    Returns the metadata the ORT adapter needs (also written to ``out_dir/meta.json``).
    """
    import json

    import torch

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    cfg = model.config
    enc_mod, meta = _encoder_graph(model)
    pred_mod = _PredictorGraph(model)
    tmp = {}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args, names_in, names_out = enc_mod.example()
        tmp["encoder.onnx"] = _export(enc_mod, args, names_in, names_out, out / "encoder.fp32.onnx", {})
        pargs, pin, pout = pred_mod.example()
        tmp["predictor.onnx"] = _export(pred_mod, pargs, pin, pout, out / "predictor.fp32.onnx", {})
        d = model.encoder.output_dim
        tmp["enc_proj.onnx"] = _export(
            _Fn(model.joiner.project_enc), (torch.zeros(2, d),), ["enc"], ["enc_p"], out / "enc_proj.fp32.onnx",
            {"enc": {0: "t"}, "enc_p": {0: "t"}},
        )
        jd = int(cfg["joiner_dim"])
        tmp["join.onnx"] = _export(
            _Fn(model.joiner.join), (torch.zeros(jd), torch.zeros(jd)), ["enc_p", "pred_p"], ["logits"],
            out / "join.fp32.onnx", {},
        )
    for final, src in tmp.items():
        if quantize:
            _quantize_onnx(src, out / final)
            src.unlink()
        else:
            os.replace(src, out / final)
    meta.update({"blank": int(model.blank), "n_mels": int(cfg["n_mels"]), "vocab_size": int(cfg["vocab_size"]),
                 "pred_layers": int(cfg["pred_layers"]),
                 "pred_hidden": int(cfg["pred_hidden"]), "quantized": bool(quantize)})
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    return meta


def _quantize_onnx(src: Path, dst: Path) -> None:
    """onnxruntime dynamic int8 (weights int8 per tensor, activations quantized per call)."""
    import logging

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


def _export(mod: Any, args: tuple[Any, ...], names_in: list[str], names_out: list[str], path: Path,
            dynamic: dict[str, dict[int, str]]) -> Path:
    import torch

    torch.onnx.export(mod, args, str(path), input_names=names_in, output_names=names_out,
                      dynamic_axes=dynamic or None, opset_version=17, dynamo=False)
    return path


class _Fn:
    """Wrap a bound method of a module as an nn.Module (owning that module) for the exporter."""

    def __new__(cls, fn: Any) -> Any:
        from torch import nn

        class F(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.owner = fn.__self__  # registers the parameters: traced as initializers

            def forward(self, *a: Any) -> Any:  # noqa: D401
                return fn(*a)

        return F()


def _encoder_graph(model: Any) -> tuple[Any, dict[str, Any]]:
    cfg = model.config
    if cfg["arch"] == "rnnt":
        g = _RnntEncoderGraph(model.encoder)
        return g, {"arch": "rnnt", "chunk_frames": g.chunk_frames, "enc_layers": len(g.enc.lstms),
                   "enc_hidden": g.enc.hidden, "out_frames": g.chunk_frames // g.enc.subsampling,
                   "output_dim": g.enc.output_dim, "subsampling": g.enc.subsampling}
    g = _ConformerEncoderGraph(model.encoder)
    e = g.enc
    return g, {"arch": "conformer", "chunk_frames": e.chunk_frames, "n_blocks": len(e.blocks), "heads": e.heads,
               "dh": e.dh, "d": e.d, "kernel": e.kernel, "keep": g.keep, "chunk": e.chunk_size,
               "output_dim": e.output_dim, "stack": e.stack}


def _RnntEncoderGraph(enc: Any) -> Any:  # noqa: N802 - a factory that returns an nn.Module
    import torch
    from torch import nn

    from subbit.asr.models.transducer import lstm_run, stack_frames

    class G(nn.Module):
        """One aligned chunk (a multiple of both stackings): frames + (h, c) stacked -> enc, (h, c)."""

        def __init__(self) -> None:
            super().__init__()
            self.enc = enc
            self.chunk_frames = int(enc.chunk_frames)

        def forward(self, feats: Any, h: Any, c: Any) -> Any:
            x = stack_frames(feats, enc.stack)
            hs, cs = [], []
            for i, lstm in enumerate(enc.lstms):
                if i == enc.stack2_after:
                    x = stack_frames(x, enc.stack2)
                x, hn, cn = lstm_run(lstm, x, h[i], c[i])
                hs.append(hn)
                cs.append(cn)
            return enc.proj(x), torch.stack(hs), torch.stack(cs)

        def example(self) -> tuple[tuple[Any, ...], list[str], list[str]]:
            n = len(enc.lstms)
            return ((torch.zeros(1, self.chunk_frames, enc.n_mels), torch.zeros(n, 1, enc.hidden),
                     torch.zeros(n, 1, enc.hidden)), ["feats", "h", "c"], ["enc", "h_out", "c_out"])

    return G()


def _ConformerEncoderGraph(enc: Any) -> Any:  # noqa: N802
    import torch
    from torch import nn

    from subbit.asr.models.transducer import stack_frames

    class G(nn.Module):
        """One chunk at a fixed cache length ``keep``; ``key_valid`` masks empty cache slots/padding."""

        def __init__(self) -> None:
            super().__init__()
            self.enc = enc
            self.keep = enc.left_chunks * enc.chunk_size

        def forward(self, feats: Any, k: Any, v: Any, conv: Any, key_valid: Any) -> Any:
            x = enc.inp(stack_frames(feats, enc.stack))
            tq = x.size(1)
            q_pos = torch.arange(self.keep, self.keep + tq)
            k_pos = torch.arange(0, self.keep + tq)
            ks, vs, cs = [], [], []
            for i, blk in enumerate(enc.blocks):
                cache = {"k": k[i], "v": v[i], "conv": conv[i]}
                x, kk, vv, cc = blk(x, cache, q_pos, k_pos, key_valid)
                ks.append(kk[:, :, tq:])
                vs.append(vv[:, :, tq:])
                cs.append(cc)
            return x, torch.stack(ks), torch.stack(vs), torch.stack(cs)

        def example(self) -> tuple[tuple[Any, ...], list[str], list[str]]:
            nb = len(enc.blocks)
            kv = torch.zeros(nb, 1, enc.heads, self.keep, enc.dh)
            return ((torch.zeros(1, enc.chunk_frames, enc.n_mels), kv, kv.clone(),
                     torch.zeros(nb, 1, enc.d, enc.kernel - 1),
                     torch.ones(1, self.keep + enc.chunk_size, dtype=torch.bool)),
                    ["feats", "k", "v", "conv", "key_valid"], ["enc", "k_out", "v_out", "conv_out"])

    return G()


def _PredictorGraph(model: Any) -> Any:  # noqa: N802
    import torch
    from torch import nn

    from subbit.asr.models.transducer import lstm_run

    pred, joiner = model.predictor, model.joiner

    class G(nn.Module):
        """token [1] + stacked (h, c) -> (projected predictor output [J], h, c)."""

        def __init__(self) -> None:
            super().__init__()
            self.pred, self.joiner = pred, joiner

        def forward(self, token: Any, h: Any, c: Any) -> Any:
            x = pred.embed(token.reshape(1, 1))
            hs, cs = [], []
            for i, lstm in enumerate(pred.lstms):
                x, hn, cn = lstm_run(lstm, x, h[i], c[i])
                hs.append(hn)
                cs.append(cn)
            return joiner.project_pred(x[:, 0])[0], torch.stack(hs), torch.stack(cs)

        def example(self) -> tuple[tuple[Any, ...], list[str], list[str]]:
            n = len(pred.lstms)
            z = torch.zeros(n, 1, pred.output_dim)
            return ((torch.zeros(1, dtype=torch.long), z, z.clone()), ["token", "h", "c"],
                    ["pred_p", "h_out", "c_out"])

    return G()


class _OrtEncoder:
    def __init__(self, sess: Any, meta: dict[str, Any]) -> None:
        self.sess, self.m = sess, meta
        self.cf = int(meta["chunk_frames"])
        self.chunk_frames = self.cf

    def init_state(self) -> dict[str, Any]:
        m = self.m
        st: dict[str, Any] = {"pending": np.zeros((0, m["n_mels"]), np.float32)}
        if m["arch"] == "rnnt":
            z = np.zeros((m["enc_layers"], 1, m["enc_hidden"]), np.float32)
            st.update(h=z, c=z.copy())
        else:
            kv = np.zeros((m["n_blocks"], 1, m["heads"], m["keep"], m["dh"]), np.float32)
            st.update(k=kv, v=kv.copy(), conv=np.zeros((m["n_blocks"], 1, m["d"], m["kernel"] - 1), np.float32),
                      seen=0)
        return st

    def _chunk(self, feats: np.ndarray, st: dict[str, Any], n_valid_frames: int) -> np.ndarray:
        m = self.m
        x = feats[None].astype(np.float32)
        if m["arch"] == "rnnt":
            y, st["h"], st["c"] = self.sess.run(None, {"feats": x, "h": st["h"], "c": st["c"]})
            return y[0]
        keep, chunk = m["keep"], m["chunk"]
        valid = np.zeros((1, keep + chunk), dtype=bool)
        valid[0, keep - min(keep, st["seen"]) : keep] = True
        n_out = n_valid_frames // m["stack"]
        valid[0, keep : keep + n_out] = True
        y, st["k"], st["v"], st["conv"] = self.sess.run(
            None, {"feats": x, "k": st["k"], "v": st["v"], "conv": st["conv"], "key_valid": valid})
        st["seen"] += n_out
        return y[0, :n_out]

    def step(self, feats: np.ndarray, state: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
        st = dict(state)
        x = np.concatenate([st["pending"], feats], axis=0)
        outs = []
        while x.shape[0] >= self.cf:
            outs.append(self._chunk(x[: self.cf], st, self.cf))
            x = x[self.cf :]
        st["pending"] = x
        if not outs:
            return np.zeros((0, self.m["output_dim"]), np.float32), st
        return np.concatenate(outs, axis=0), st

    def flush(self, state: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
        st = dict(state)
        x = st["pending"]
        if self.m["arch"] == "rnnt" or x.shape[0] < self.m["stack"]:
            return np.zeros((0, self.m["output_dim"]), np.float32), st  # partial stacks are dropped
        n = x.shape[0] // self.m["stack"] * self.m["stack"]
        pad = np.zeros((self.cf, x.shape[1]), np.float32)
        pad[:n] = x[:n]
        y = self._chunk(pad, st, n)
        st["pending"] = x[:0]
        return y, st


class _OrtPredictor:
    def __init__(self, sess: Any, meta: dict[str, Any]) -> None:
        self.sess, self.m = sess, meta

    def init_state(self) -> tuple[np.ndarray, np.ndarray]:
        z = np.zeros((self.m["pred_layers"], 1, self.m["pred_hidden"]), np.float32)
        return z, z.copy()

    def step(self, token: int, state: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, Any]:
        p, h, c = self.sess.run(None, {"token": np.array([token], np.int64), "h": state[0], "c": state[1]})
        return p, (h, c)


class _OrtJoiner:
    def __init__(self, enc_proj: Any, join: Any) -> None:
        self.enc_proj, self.join_sess = enc_proj, join

    def project_enc(self, enc: np.ndarray) -> np.ndarray:
        return self.enc_proj.run(None, {"enc": np.ascontiguousarray(enc, np.float32)})[0]

    def project_pred(self, out: np.ndarray) -> np.ndarray:
        return out  # the predictor graph already applies the joiner's projection

    def join(self, enc_p: np.ndarray, pred_p: np.ndarray) -> np.ndarray:
        return self.join_sess.run(None, {"enc_p": np.ascontiguousarray(enc_p), "pred_p": pred_p})[0]


class OrtStreamingModel:
    """The exported ORT graphs in the runtime interface (imports no torch)."""

    def __init__(self, model_dir: str | os.PathLike[str], threads: int = 1) -> None:
        import json

        import onnxruntime as ort

        d = Path(model_dir)
        meta = json.loads((d / "meta.json").read_text())
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3

        def sess(name: str) -> Any:
            return ort.InferenceSession(str(d / name), opts, providers=["CPUExecutionProvider"])

        self.encoder = _OrtEncoder(sess("encoder.onnx"), meta)
        self.predictor = _OrtPredictor(sess("predictor.onnx"), meta)
        self.joiner = _OrtJoiner(sess("enc_proj.onnx"), sess("join.onnx"))
        self.blank = int(meta["blank"])
        self.n_mels = int(meta["n_mels"])
        self.tokenizer_bytes = None
        self.meta = meta


def ort_weight_bytes(model_dir: str | os.PathLike[str]) -> int:
    from subbit.bench.memory import onnx_initializer_bytes

    return sum(onnx_initializer_bytes(Path(model_dir) / f) for f in ORT_FILES)


def ort_available() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True

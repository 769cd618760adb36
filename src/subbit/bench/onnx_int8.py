"""The onnxruntime baseline, run half: the exported int8 graphs (:mod:`subbit.bench.onnx_export`) in
the runtime's streaming interface (see :mod:`subbit.runtime.session`). Imports no torch, so the
benchmark's memory figure for this variant is onnxruntime's alone.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from subbit.bench.memory import onnx_initializer_bytes

ORT_FILES = ("encoder.onnx", "predictor.onnx", "enc_proj.onnx", "join.onnx")
HC = tuple[np.ndarray, np.ndarray]  # an LSTM stack's (h, c)


class OrtSession(Protocol):
    """What this module uses of ``onnxruntime.InferenceSession``."""

    def run(self, output_names: list[str] | None, input_feed: dict[str, np.ndarray]) -> list[np.ndarray]: ...


class _OrtEncoder:
    def __init__(self, sess: OrtSession, meta: dict[str, Any]) -> None:
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
    def __init__(self, sess: OrtSession, meta: dict[str, Any]) -> None:
        self.sess, self.m = sess, meta

    def init_state(self) -> HC:
        z = np.zeros((self.m["pred_layers"], 1, self.m["pred_hidden"]), np.float32)
        return z, z.copy()

    def step(self, token: int, state: HC) -> tuple[np.ndarray, HC]:
        p, h, c = self.sess.run(None, {"token": np.array([token], np.int64), "h": state[0], "c": state[1]})
        return p, (h, c)


class _OrtJoiner:
    def __init__(self, enc_proj: OrtSession, join: OrtSession) -> None:
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
        # local: onnxruntime is an optional dependency (the benchmark's "ort" variant only)
        import onnxruntime as ort

        d = Path(model_dir)
        meta = json.loads((d / "meta.json").read_text())
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3

        def sess(name: str) -> OrtSession:
            return ort.InferenceSession(str(d / name), opts, providers=["CPUExecutionProvider"])

        self.encoder = _OrtEncoder(sess("encoder.onnx"), meta)
        self.predictor = _OrtPredictor(sess("predictor.onnx"), meta)
        self.joiner = _OrtJoiner(sess("enc_proj.onnx"), sess("join.onnx"))
        self.blank = int(meta["blank"])
        self.n_mels = int(meta["n_mels"])
        self.tokenizer_bytes = None
        self.meta = meta


def ort_weight_bytes(model_dir: str | os.PathLike[str]) -> int:
    return sum(onnx_initializer_bytes(Path(model_dir) / f) for f in ORT_FILES)


def ort_available() -> bool:
    try:
        # local: probing the optional dependencies is the point of this function
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True

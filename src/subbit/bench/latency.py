"""Streaming latency of one model variant, measured in a fresh process.

A variant is described by a small JSON-able dict (:class:`VariantSpec`); ``python -m
subbit.bench.latency SPEC.json`` builds it, streams ``seconds`` of audio through a
:class:`subbit.runtime.session.StreamingSession` in chunks of the model's encoder chunk, and
prints one JSON result line. One process per variant keeps ``ru_maxrss`` honest and lets the
thread count be fixed before numpy/torch/onnxruntime start their pools. The subbit, libsubbit
and onnxruntime variants never import torch.

Method ``libsubbit`` is the C runtime on its own: the file loaded by
:class:`subbit.runtime.native.NativeModel` (no Python copy of the weights) and streamed through a
``NativeSession`` in chunks of the library's ``chunk_samples``; it decodes greedily
(``token_every`` must be 0). Method ``subbit`` is the package's ``StreamingSession``, which runs
in libsubbit or NumPy (the row's ``backend`` says which: a scheduled decoding keeps it on NumPy).
``extra["blank_bias"]`` raises the blank logit's bias of the float variants rebuilt here, as the
parent did before exporting the other variants (the size sweep uses it so that greedy decoding
does the same work in every variant).

Metrics (all wall clock, ``time.perf_counter``):

* per-chunk latency: one ``accept_audio`` call = features + encoder step + greedy decoding of
  the frames it completed; p50/p90 over every chunk of every timed pass;
* user-perceived latency (UPL, the paper's): the last audio chunk's ``accept_audio`` plus
  ``finalize`` (flush + final decode), median over passes;
* real-time factor: processing time of a pass / audio duration, median over passes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass
class VariantSpec:
    """What one benchmark subprocess runs."""

    name: str
    method: str  # "fp32" | "torch-int8" | "ort-int8" | "subbit" | "libsubbit"
    bits: int
    threads: int
    seconds: float
    path: str = ""  # .subbit file, ORT dir, or model-config JSON
    seed: int = 0
    repeats: int = 2
    warmup_s: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)


def percentile(values: list[float] | np.ndarray, q: float) -> float:
    """Linear-interpolated percentile (``q`` in 0..100); NaN for no values."""
    v = np.asarray(values, dtype=np.float64)
    return float(np.percentile(v, q)) if v.size else float("nan")


def synth_audio(seconds: float, seed: int = 0, sample_rate: int = 16000) -> np.ndarray:
    """Speech-like test signal: a few gliding harmonics under a syllable-rate envelope, plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 6))
    env = 0.5 * (1 + np.sin(2 * np.pi * 4.0 * t)) ** 2
    x = 0.05 * voice * env + 0.003 * rng.standard_normal(t.size)
    return x.astype(np.float32)


@dataclass
class StreamTiming:
    chunk_ms: list[float]
    upl_ms: list[float]
    pass_s: list[float]
    audio_s: float
    tokens: int

    def summary(self) -> dict[str, float]:
        return {
            "p50_ms": percentile(self.chunk_ms, 50),
            "p90_ms": percentile(self.chunk_ms, 90),
            "upl_ms": float(np.median(self.upl_ms)),
            "rtf": float(np.median(self.pass_s)) / self.audio_s,
            "n_chunks": len(self.chunk_ms) // max(len(self.upl_ms), 1),
            "tokens": self.tokens,
        }


def time_stream(session: Any, audio: np.ndarray, chunk_samples: int, repeats: int = 1,
                sample_rate: int = 16000) -> StreamTiming:
    """Stream ``audio`` through ``session`` ``repeats`` times, timing every chunk and the finalize."""
    if chunk_samples < 1:
        raise ValueError(f"chunk_samples must be >= 1, got {chunk_samples}")
    chunk_ms: list[float] = []
    upl: list[float] = []
    passes: list[float] = []
    tokens = 0
    clock = time.perf_counter
    starts = list(range(0, audio.shape[0], chunk_samples))
    for _ in range(max(1, repeats)):
        session.reset()
        total = 0.0
        last = 0.0
        for s in starts:
            t0 = clock()
            session.accept_audio(audio[s : s + chunk_samples])
            dt = clock() - t0
            chunk_ms.append(dt * 1e3)
            total += dt
            last = dt
        t0 = clock()
        final = session.finalize_tokens()
        dt = clock() - t0
        total += dt
        upl.append((last + dt) * 1e3)
        passes.append(total)
        tokens = len(final)
    return StreamTiming(chunk_ms, upl, passes, audio.shape[0] / sample_rate, tokens)


def scheduled_session_class() -> type:
    """A StreamingSession whose decoding does greedy's work at a fixed token rate.

    With random weights, free greedy emission is arbitrary (anything from nothing to the
    maximum symbols on every frame) and differs between variants, so the predictor's share of
    the work would differ too. Here every encoder frame is projected and joined exactly as in
    greedy search, but every ``token_every``-th frame emits one token (then joins again, as
    greedy does after an emission), so all variants do identical work.
    """
    # local: a variant subprocess loads only its own backend (the ORT and packed ones run without torch)
    from subbit.runtime.session import StreamingSession

    class ScheduledSession(StreamingSession):
        def __init__(self, model: Any, token_every: int, vocab_size: int) -> None:
            self.token_every, self.vocab = int(token_every), int(vocab_size)
            super().__init__(model)

        def reset(self) -> None:
            super().reset()
            self.frame = 0

        def _decode_frame(self, frame: np.ndarray) -> None:
            join = self.model.joiner.join
            join(frame, self.pred_p)
            if self.frame % self.token_every == 0:
                tok = 1 + (self.frame * 7919) % (self.vocab - 1)
                self._emit(tok if tok != self.blank else 1 + tok % (self.vocab - 1))
                join(frame, self.pred_p)
            self.frame += 1

    return ScheduledSession


# -- one large matvec per bit depth ------------------------------------------------------------
def matvec_rows(bits_list: list[int], n: int = 4096, k: int = 4096, repeats: int = 30,
                seed: int = 0) -> list[dict[str, Any]]:
    """µs per ``[1, k] @ W[n, k]^T`` through the packed kernels, per bit depth, with the effective
    weight bandwidth next to a plain read of a buffer of the same size (``kernels.read_sum``)."""
    # local: a variant subprocess loads only its own backend (the ORT and packed ones run without torch)
    from subbit.export.bitpack import PackedTensor
    from subbit.runtime import kernels

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, k)).astype(np.float32)
    rows = []
    for bits in bits_list:
        idx = rng.integers(0, 1 << bits, size=(n, k))
        cb = np.sort(rng.standard_normal((1, 1 << bits))).astype(np.float32)
        pt = PackedTensor.from_indices(idx, cb, bits)
        kernels.packed_linear(x, pt)  # builds the int8 tables once
        buf = np.ascontiguousarray(pt.packed).reshape(-1)
        # kernel and plain read timed alternately: both see the same load on a shared machine
        t, t_read = _paired_times(lambda: kernels.packed_linear(x, pt), lambda: kernels.read_sum(buf), repeats)
        rows.append({
            "bits": bits, "n": n, "k": k, "us": float(np.median(t)) * 1e6, "weight_bytes": int(buf.nbytes),
            "gbps": buf.nbytes / float(np.median(t)) / 1e9, "read_gbps": buf.nbytes / float(np.median(t_read)) / 1e9,
            "fraction_of_read": float(np.median(t_read / t)), "path": kernels.default_path(),
        })
    return rows


def _paired_times(fa: Any, fb: Any, repeats: int) -> tuple[np.ndarray, np.ndarray]:
    ta, tb = [], []
    for _ in range(max(3, repeats)):
        for fn, out in ((fa, ta), (fb, tb)):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return np.asarray(ta), np.asarray(tb)


# -- the subprocess side -----------------------------------------------------------------------
class NativeStream:
    """A libsubbit session in :func:`time_stream`'s interface (decoding runs in C, greedy)."""

    def __init__(self, model: Any) -> None:
        self.session = model.session()

    def reset(self) -> None:
        self.session.reset()

    def accept_audio(self, samples: np.ndarray) -> None:
        self.session.accept(samples)

    def finalize_tokens(self) -> list[int]:
        self.session.finalize()
        return self.session.tokens()


def apply_blank_bias(model: Any, bias: float) -> None:
    """Add ``bias`` to the blank's output bias of a float transducer's joiner (in place)."""
    if bias:
        # local: only the float variants (and the parent building them) come here
        import torch

        with torch.no_grad():
            model.joiner.out.bias[int(model.config["blank"])] += float(bias)


def _build_model(spec: VariantSpec) -> tuple[Any, int, int]:
    """(streaming model in the runtime interface, resident weight bytes, vocabulary size)."""
    if spec.method == "libsubbit":
        # local: a variant subprocess loads only its own backend (the ORT and packed ones run without torch)
        from subbit.runtime import native

        nm = native.NativeModel(spec.path, threads=spec.threads)  # each session's worker threads
        return nm, nm.info.weight_bytes, nm.info.vocab_size
    if spec.method == "subbit":
        # local: a variant subprocess loads only its own backend (the ORT and packed ones run without torch)
        from subbit.runtime.models import PackedTransducer

        m = PackedTransducer.from_file(spec.path, threads=spec.threads)
        return m, m.weight_bytes, m.vocab_size
    if spec.method == "ort-int8":
        # local: a variant subprocess loads only its own backend (the ORT and packed ones run without torch)
        from subbit.bench.onnx_int8 import OrtStreamingModel, ort_weight_bytes

        o = OrtStreamingModel(spec.path, threads=spec.threads)
        return o, ort_weight_bytes(spec.path), int(o.meta["vocab_size"])
    if spec.method in ("fp32", "torch-int8"):
        # local: a variant subprocess loads only its own backend (the ORT and packed ones run without torch)
        import torch

        from subbit.asr.models import build_from_config
        from subbit.bench.torch_int8 import TorchStreamingModel, torch_int8_streaming_model, torch_weight_bytes

        torch.set_num_threads(spec.threads)
        # oneDNN re-lays out the LSTM weights on every call: ~10x slower for one-frame steps
        # (measured 56 vs 4.9 ms for a 1-step LSTM-1024), so the baselines run without it
        torch.backends.mkldnn.enabled = False
        torch.manual_seed(spec.seed)
        cfg = json.loads(Path(spec.path).read_text())
        model = build_from_config(cfg).eval()
        apply_blank_bias(model, float(spec.extra.get("blank_bias") or 0.0))
        vocab = int(cfg["vocab_size"])
        if spec.method == "torch-int8":
            return torch_int8_streaming_model(model), torch_weight_bytes(model, int8=True), vocab
        return TorchStreamingModel(model), torch_weight_bytes(model), vocab
    raise ValueError(f"variant method must be fp32, torch-int8, ort-int8, subbit or libsubbit, got {spec.method!r}")


def run_variant(spec: VariantSpec) -> dict[str, Any]:
    """Build, warm up and time one variant in this process; returns its result row."""
    # local: a variant subprocess loads only its own backend (the ORT and packed ones run without torch)
    from subbit.bench import memory
    from subbit.runtime.session import StreamingSession

    t0 = time.perf_counter()
    model, weight_bytes, vocab_size = _build_model(spec)
    load_s = time.perf_counter() - t0
    token_every = int(spec.extra.get("token_every", 0))
    if spec.method == "libsubbit":
        if token_every > 0 or spec.extra.get("chunk_frames"):
            raise ValueError("libsubbit decodes greedily in its own chunks: token_every must be 0, no chunk_frames")
        session: Any = NativeStream(model)
        chunk_samples = int(model.info.chunk_samples)
    else:
        if token_every > 0:
            session = scheduled_session_class()(model, token_every, vocab_size)
        else:
            session = StreamingSession(model)
        chunk_frames = int(spec.extra.get("chunk_frames") or model.encoder.chunk_frames)
        chunk_samples = chunk_frames * session.frontend.hop
    audio = synth_audio(spec.seconds, seed=spec.seed)
    warm = audio[: max(chunk_samples, int(spec.warmup_s * 16000))]
    time_stream(session, warm, chunk_samples, repeats=1)
    load_peak = memory.process_peak_rss_bytes()
    reset_ok = memory.reset_peak_rss()
    timing = time_stream(session, audio, chunk_samples, repeats=spec.repeats)
    stream_peak = memory.hwm_bytes() if reset_ok else None
    row: dict[str, Any] = {
        "name": spec.name, "method": spec.method, "bits": spec.bits, "threads": spec.threads,
        **timing.summary(),
        "weight_bytes": int(weight_bytes),
        "peak_rss_bytes": max(load_peak, stream_peak or 0),
        "stream_peak_rss_bytes": stream_peak,
        "torch_imported": "torch" in sys.modules,
        "chunk_ms": 1e3 * chunk_samples / 16000, "audio_s": spec.seconds, "load_s": load_s,
        "decode": f"one token every {token_every} frames" if token_every > 0 else "greedy",
    }
    if spec.method == "subbit":
        # local: a variant subprocess loads only its own backend (the ORT and packed ones run without torch)
        from subbit.runtime import kernels

        row["backend"] = session.backend
        row["kernel_path"] = model.native.info.kernel_path if session.backend == "c" else kernels.default_path()
    elif spec.method == "libsubbit":
        row["backend"] = "c"
        row["kernel_path"] = model.info.kernel_path
    return row


def run_in_subprocess(spec: VariantSpec, timeout: float = 900.0) -> dict[str, Any]:
    """Run ``spec`` in a fresh interpreter with every thread pool pinned to ``spec.threads``."""
    env = dict(os.environ)
    for k in THREAD_ENV:
        env[k] = str(spec.threads)
    proc = subprocess.run(
        [sys.executable, "-m", "subbit.bench.latency", json.dumps(asdict(spec))],
        capture_output=True, text=True, env=env, timeout=timeout,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"benchmark variant {spec.name!r} failed (exit {proc.returncode}): " + " | ".join(tail))
    return json.loads(lines[-1])


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m subbit.bench.latency SPEC_JSON", file=sys.stderr)
        return 2
    # local: a variant subprocess loads only its own backend (the ORT and packed ones run without torch)
    import logging
    import warnings

    logging.getLogger().setLevel(logging.ERROR)
    warnings.simplefilter("ignore")
    spec = VariantSpec(**json.loads(args[0]))
    print(json.dumps(run_variant(spec)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

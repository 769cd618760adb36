"""Fuzz the .subbit loader with mutants of a tiny exported model (issue 13).

Each mutant is one seeded change to the file of a tiny RNN-T (GQ 4-bit tables, 8-bit uniform
per-channel affine codebooks, a char tokenizer, log-mel settings with mean/std):

* ``corrupt``: what a bad disk, a bad copy or a careless edit does, digests left as they were:
  1-4 flipped bytes in the header, the payload or the tokenizer bytes; a truncated, extended
  or spliced file; a manifest or tensor-table value changed (numbers, strings, lists, nesting,
  removed and added keys) with the header re-serialized but not re-sealed.
* ``resealed``: the same kinds of change, plus edits of the tokenizer blob and of tensor
  values, made by a buggy writer or a forger who recomputes ``header_sha256`` and
  ``data_sha256``: only the checks behind the digests can refuse these.

Every mutant goes through ``subbit.export.container.load_packed``, the runtime
(``PackedTransducer.from_packed`` + ``StreamingSession`` on 0.6 s of audio, every joiner output
recorded) and ``subbit report`` (``report_subbit`` + ``format_report``). Outcomes:

* ``refused``: SubbitFormatError from any of the three (the documented error type);
* ``identical``: all three give exactly the original's outputs (manifest, every tensor, logits,
  transcript, report text); ``bytes unchanged`` counts the mutants whose bytes equal the
  original's (a no-op mutation, e.g. a value set to itself), which are identical by definition;
* ``different``: it loads and something differs. For ``corrupt`` mutants this is a failure
  (a damaged file must not load as another model); for ``resealed`` ones it is a well-formed
  file of another model (the digests are checksums, not a signature) and is counted apart;
* ``crashed``: any other exception, more than ``--timeout`` seconds, more than 50x the
  original's CPU time (and over 2 s), or a peak-RSS growth over 256 MiB in one mutant.

    python benchmarks/fuzz_container.py [--n 2000] [--seed 0] [--arch rnnt|conformer|bifocal] [--large-mib 256]

Prints a table and writes benchmarks/out/fuzz_container.json, with peak RSS against the file
size. ``tests/export/test_fuzz_model.py`` runs a few hundred of the same mutants in CI.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import re
import resource
import signal
import struct
import sys
import tempfile
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from subbit.bench.record import provenance, write_record

OUT = Path(__file__).resolve().parent / "out" / "fuzz_container.json"
FEATURES = {"kind": "logmel", "sample_rate": 16000, "n_fft": 400, "hop_length": 160, "n_mels": 80}
CHARS = "abcdefghij "  # 11 symbols + blank = the tiny model's vocab of 12


# -- the original file -----------------------------------------------------------------------
def make_original(path: Path, arch: str = "rnnt") -> bytes:
    """Export a tiny model with every kind of record the format has; returns the file bytes."""
    import torch

    from subbit.asr.models import build_model
    from subbit.asr.tokenizer import train_tokenizer
    from subbit.export.container import export_model
    from subbit.quant import QuantConfig, convert, prepare

    torch.manual_seed(0)
    model = build_model(arch, "tiny", vocab_size=len(CHARS) + 1).eval()
    with torch.no_grad():  # a sharper joiner so that the session emits tokens, not only blanks
        model.joiner.out.weight.mul_(3.0)
        model.joiner.out.bias[0] += 0.2
    rules = {"default": {"method": "gq", "bits": 4},
             "rules": {r"re:joiner\..*": {"method": "uniform", "bits": 8, "granularity": "channel"}}}  # fmt: skip
    prepare(model, QuantConfig.from_dict(rules))
    convert(model)
    tok = train_tokenizer([CHARS], kind="char")
    rng = np.random.default_rng(0)
    feats = {**FEATURES, "mean": [float(v) for v in rng.normal(size=80) * 0.1],
             "std": [float(v) for v in 1.0 + rng.uniform(size=80)]}  # fmt: skip
    export_model(model, path, arch=model.config, tokenizer_bytes=tok.to_bytes(), tokenizer_kind="char",
                 extra={"features": feats, "note": "fuzz original"})  # fmt: skip
    return path.read_bytes()


@dataclass
class Parts:
    """A file taken apart: header dict (tensor table + __metadata__), manifest, data section,
    arrays and dtypes (to rebuild the data section)."""

    header: dict[str, Any]
    manifest: dict[str, Any]
    data: bytes
    arrays: dict[str, np.ndarray]
    dtypes: dict[str, str]

    @classmethod
    def of(cls, blob: bytes) -> Parts:
        from subbit.export.container import parse_container

        n = struct.unpack("<Q", blob[:8])[0]
        header = json.loads(blob[8 : 8 + n])
        manifest, arrays = parse_container(blob)
        dtypes = {k: header[k]["dtype"] for k in arrays}
        return cls(header, manifest, blob[8 + n :], arrays, dtypes)


# -- JSON mutations --------------------------------------------------------------------------
NAMES = ["stack", "n_fft", "zero_index", "codebook", "mu", "bits", "shape", "groups", "extra", "arch", "kind",
         "nbytes", "dtype", "schema_minor", "features", "mean", "std", "hop_length", "surprise", "", "__metadata__"]
STRINGS = ["", "F16", "F32", "U8", "I64", "tensor", "channel", "affine", "table", "rnnt", "conformer", "char", "bpe",
           "gq", "rowblock32-planes-v1", "subbit", "0" * 64, "NaN", "\u00e9", "a" * 300]  # fmt: skip
NUMBERS = [0, 1, -1, 2, 3, 7, 8, 9, 16, 127, 128, 255, 256, 1 << 16, 1 << 31, 1 << 40, 1 << 63, 1 << 70, -(1 << 63),
           0.5, -0.0, 1e-300, 1e300, 4.0]  # fmt: skip


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(obj, list) and len(obj) <= 16:
        for i, v in enumerate(obj):
            out += _paths(v, prefix + (i,))
    elif isinstance(obj, list):  # long lists (mean/std, chars): a few positions
        for i in (0, 1, len(obj) // 2, len(obj) - 1):
            out.append(prefix + (i,))
    return out


def _deep(depth: int, as_dict: bool) -> Any:
    v: Any = 0
    for _ in range(depth):
        v = {"a": v} if as_dict else [v]
    return v


def _random_value(rng: np.random.Generator) -> Any:
    pick = int(rng.integers(0, 8))
    if pick == 0:
        return NUMBERS[int(rng.integers(len(NUMBERS)))]
    if pick == 1:
        return STRINGS[int(rng.integers(len(STRINGS)))]
    if pick == 2:
        return None
    if pick == 3:
        return bool(rng.integers(2))
    if pick == 4:
        return [NUMBERS[int(rng.integers(len(NUMBERS)))] for _ in range(int(rng.integers(0, 4)))]
    if pick == 5:
        return {NAMES[int(rng.integers(len(NAMES)))]: NUMBERS[int(rng.integers(len(NUMBERS)))]}
    if pick == 6:
        return _deep(int(rng.choice([5, 50, 5000])), bool(rng.integers(2)))
    return float(rng.normal() * 10 ** int(rng.integers(-3, 6)))


def _mutate_value(v: Any, rng: np.random.Generator) -> Any:
    """A new value for ``v``: a nearby one of the same type, or another type."""
    if rng.random() < 0.3:
        return _random_value(rng)
    if isinstance(v, bool):
        return not v
    if isinstance(v, int):
        op = int(rng.integers(0, 7))
        return [v + 1, v - 1, v * 2, 0, -v, v + (1 << 32), float(v)][op]
    if isinstance(v, float):
        op = int(rng.integers(0, 6))
        return [v * (1 + 1e-7), -v, 0.0, v * 1e30, v + 1.0, int(v)][op]
    if isinstance(v, str):
        op = int(rng.integers(0, 5))
        flipped = (v[:-1] + chr((ord(v[-1]) + 1) % 0x250)) if v else "x"
        return [flipped, "", v + v, v.upper(), STRINGS[int(rng.integers(len(STRINGS)))]][op]
    if isinstance(v, list):
        op = int(rng.integers(0, 6))
        if op == 0 and v:
            return v[:-1]
        if op == 1 and v:
            return v + [v[-1]]
        if op == 2:
            return v + [_random_value(rng)]
        if op == 3:
            return list(reversed(v))
        if op == 4:
            return [v]
        return []
    if isinstance(v, dict):
        w = dict(v)
        if w and rng.random() < 0.5:
            w.pop(list(w)[int(rng.integers(len(w)))])
        else:
            w[NAMES[int(rng.integers(len(NAMES)))]] = _random_value(rng)
        return w
    return _random_value(rng)


def mutate_json(obj: Any, rng: np.random.Generator, prefer: tuple[Any, ...] | None = None) -> tuple[Any, str]:
    """A deep copy of ``obj`` with one change at a random path (under ``prefer`` half the time):
    a value replaced, a key removed, or a key added. Returns (copy, description)."""
    obj = copy.deepcopy(obj)
    paths = [p for p in _paths(obj) if p]
    if prefer is not None and rng.random() < 0.5:
        under = [p for p in paths if p[: len(prefer)] == prefer]
        paths = under or paths
    path = paths[int(rng.integers(len(paths)))]
    node = obj
    for key in path[:-1]:
        node = node[key]
    last = path[-1]
    r = rng.random()
    if isinstance(node, dict) and r < 0.15:
        del node[last]
        return obj, f"remove {'.'.join(map(str, path))}"
    if isinstance(node, dict) and r < 0.25:
        name = NAMES[int(rng.integers(len(NAMES)))]
        node[name] = _random_value(rng)
        return obj, f"add {'.'.join(map(str, path[:-1] + (name,)))}"
    node[last] = _mutate_value(node[last], rng)
    return obj, f"set {'.'.join(map(str, path))}"


# -- building mutants ------------------------------------------------------------------------
def _dump(header: dict[str, Any]) -> bytes:
    """Length bytes + header JSON (padded), without touching header_sha256 (a stale digest)."""
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h


def _manifest_text(m: Any) -> str:
    return json.dumps(m, sort_keys=True, separators=(",", ":"))


def _header_with(parts: Parts, manifest: Any) -> dict[str, Any]:
    header = copy.deepcopy(parts.header)
    header["__metadata__"]["subbit"] = _manifest_text(manifest)
    return header


def _rebuilt(parts: Parts, manifest: dict[str, Any], arrays: dict[str, np.ndarray]) -> bytes:
    """A fully re-sealed file (new offsets, data_sha256 and header_sha256) of ``arrays``."""
    from subbit.export.container import _safetensors_bytes

    def meta(sha: str) -> dict[str, str]:
        return {"subbit": _manifest_text({**manifest, "data_sha256": sha})}

    tensors = {k: (parts.dtypes.get(k, "U8"), v) for k, v in arrays.items()}
    return _safetensors_bytes(tensors, meta)[0]


PREFER = [("arch",), ("extra", "features"), ("quantized",), ("float",), ("tokenizer",), None]


def _flip(blob: bytes, lo: int, hi: int, rng: np.random.Generator) -> bytes:
    b = bytearray(blob)
    for _ in range(int(rng.integers(1, 5))):
        pos = int(rng.integers(lo, hi))
        b[pos] = int(rng.integers(0, 256)) if rng.random() < 0.5 else b[pos] ^ (1 << int(rng.integers(8)))
    return bytes(b)


def _tensor_span(parts: Parts, name: str, hlen: int) -> tuple[int, int]:
    a, b = parts.header[name]["data_offsets"]
    return 8 + hlen + a, 8 + hlen + b


def corrupt_mutant(blob: bytes, parts: Parts, rng: np.random.Generator) -> tuple[str, bytes]:
    hlen = struct.unpack("<Q", blob[:8])[0]
    kind = int(rng.integers(0, 8))
    if kind == 0:
        return "flip header bytes", _flip(blob, 0, 8 + hlen, rng)
    if kind == 1:
        name = sorted(parts.arrays)[int(rng.integers(len(parts.arrays)))]
        lo, hi = _tensor_span(parts, name, hlen)
        return f"flip bytes of {name}", _flip(blob, lo, hi, rng) if hi > lo else blob[:-1]
    if kind == 2:
        lo, hi = _tensor_span(parts, "__tokenizer__", hlen)
        return "flip tokenizer bytes", _flip(blob, lo, hi, rng)
    if kind == 3:
        return "truncate", blob[: int(rng.integers(0, len(blob)))]
    if kind == 4:
        pos = int(rng.integers(0, len(blob) + 1))
        return "insert bytes", blob[:pos] + rng.bytes(int(rng.integers(1, 17))) + blob[pos:]
    if kind == 5:
        return "append bytes", blob + rng.bytes(int(rng.integers(1, 64)))
    if kind == 6:
        prefer = PREFER[int(rng.integers(len(PREFER)))]
        m, what = mutate_json(parts.manifest, rng, prefer)
        return f"manifest {what} (stale digest)", _dump(_header_with(parts, m)) + parts.data
    table = {k: v for k, v in parts.header.items() if k != "__metadata__"}
    t, what = mutate_json(table, rng)
    header = {"__metadata__": parts.header["__metadata__"], **(t if isinstance(t, dict) else {})}
    return f"table {what} (stale digest)", _dump(header) + parts.data


def _mutate_tokenizer(raw: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    magic = b"SBTOK1\n"
    n = int.from_bytes(raw[len(magic) : len(magic) + 4], "little")
    head = json.loads(raw[len(magic) + 4 : len(magic) + 4 + n])
    rest = raw[len(magic) + 4 + n :]
    kind = int(rng.integers(0, 5))
    if kind == 0:
        return "tokenizer flip", _flip(raw, 0, len(raw), rng)
    if kind == 1:
        return "tokenizer truncate", raw[: int(rng.integers(0, len(raw)))]
    if kind == 2:  # the length field
        return "tokenizer length", raw[: len(magic)] + int(rng.choice([0, n - 1, n + 1, 1 << 31])).to_bytes(
            4, "little") + raw[len(magic) + 4 :]  # fmt: skip
    if kind == 3:  # a header that is not an object, or deeply nested
        new: Any = rng.choice([0, 1, 2, 3])
        head2: Any = [head] if new == 0 else (_deep(100_000, bool(new == 1)) if new < 3 else "char")
        h = json.dumps(head2).encode()
        return "tokenizer header type", magic + len(h).to_bytes(4, "little") + h + rest
    head2, what = mutate_json(head, rng)
    h = json.dumps(head2).encode()
    return f"tokenizer {what}", magic + len(h).to_bytes(4, "little") + h + rest


def _mutate_array(arr: np.ndarray, rng: np.random.Generator) -> tuple[str, np.ndarray]:
    a = arr.copy()
    if a.size == 0:
        return "empty", a
    flat = a.reshape(-1)
    i = int(rng.integers(flat.size))
    if a.dtype.kind == "f":
        v = [np.nan, np.inf, -np.inf, 0.0, -flat[i], flat[i] * 1e30, np.float32(3.4e38), flat[i] + 1e-3][
            int(rng.integers(8))]  # fmt: skip
        flat[i] = v
        return f"value {v!r}", a
    raw = a.view(np.uint8).reshape(-1)
    j = int(rng.integers(raw.size))
    raw[j] ^= np.uint8(1 << int(rng.integers(8)))
    return "bit flip", a


def resealed_mutant(blob: bytes, parts: Parts, rng: np.random.Generator) -> tuple[str, bytes]:
    from subbit.export.container import seal_header

    kind = int(rng.integers(0, 8))
    if kind == 6:  # two or three manifest edits at once
        m, whats = parts.manifest, []
        for _ in range(int(rng.integers(2, 4))):
            m2, what = mutate_json(m, rng, PREFER[int(rng.integers(len(PREFER)))])
            if isinstance(m2, dict):
                m, whats = m2, whats + [what]
        return "manifest " + " + ".join(whats), seal_header(_header_with(parts, m)) + parts.data
    if kind == 7:  # runtime fields at and just past their documented limits (one or two at once)
        m = copy.deepcopy(parts.manifest)
        whats = []
        for _ in range(int(rng.integers(1, 3))):
            where, key, (lo, hi) = _limit_field(rng)
            value = int(rng.choice([lo, hi, lo - 1, hi + 1, lo + 1, hi - 1]))
            target = m["arch"] if where == "arch" else m["extra"]["features"]
            target[key] = value
            whats.append(f"{where}.{key}={value}")
        return "limits " + " + ".join(whats), seal_header(_header_with(parts, m)) + parts.data
    if kind <= 1:  # manifest values, re-sealed header, data untouched
        prefer = PREFER[int(rng.integers(len(PREFER)))]
        m, what = mutate_json(parts.manifest, rng, prefer)
        return f"manifest {what}", seal_header(_header_with(parts, m)) + parts.data
    if kind == 2:  # tensor table values
        table = {k: v for k, v in parts.header.items() if k != "__metadata__"}
        t, what = mutate_json(table, rng)
        header = {"__metadata__": parts.header["__metadata__"], **(t if isinstance(t, dict) else {})}
        try:
            return f"table {what}", seal_header(header) + parts.data
        except (TypeError, ValueError):  # not JSON-serialisable as a header
            return f"table {what}", _dump(header) + parts.data
    if kind == 3:  # the tokenizer blob, with nbytes kept consistent (or not)
        what, tok = _mutate_tokenizer(parts.arrays["__tokenizer__"].tobytes(), rng)
        arrays = {**parts.arrays, "__tokenizer__": np.frombuffer(tok, np.uint8).copy()}
        m = copy.deepcopy(parts.manifest)
        if rng.random() < 0.9:
            m["tokenizer"]["nbytes"] = len(tok)
        return what, _rebuilt(parts, m, arrays)
    if kind == 4:  # one tensor's values
        name = sorted(parts.arrays)[int(rng.integers(len(parts.arrays)))]
        what, arr = _mutate_array(parts.arrays[name], rng)
        return f"tensor {name} {what}", _rebuilt(parts, parts.manifest, {**parts.arrays, name: arr})
    # manifest and payload together: a value of the manifest and a tensor
    m, what = mutate_json(parts.manifest, rng, PREFER[int(rng.integers(len(PREFER)))])
    name = sorted(parts.arrays)[int(rng.integers(len(parts.arrays)))]
    what2, arr = _mutate_array(parts.arrays[name], rng)
    if not isinstance(m, dict):
        m = parts.manifest
    try:
        return f"manifest {what} + tensor {name} {what2}", _rebuilt(parts, m, {**parts.arrays, name: arr})
    except (TypeError, ValueError, RecursionError):
        return f"manifest {what} (unserialisable)", seal_header(_header_with(parts, m)) + parts.data


def _limit_field(rng: np.random.Generator) -> tuple[str, str, tuple[int, int]]:
    from subbit.runtime.frontend import FEATURE_LIMITS
    from subbit.runtime.models import ARCH_LIMITS

    fields = [("arch", k, v) for k, v in ARCH_LIMITS.items()] + [("features", k, v) for k, v in FEATURE_LIMITS.items()]
    return fields[int(rng.integers(len(fields)))]


# -- evaluation ------------------------------------------------------------------------------
def _audio() -> np.ndarray:
    from subbit.bench.latency import synth_audio

    return synth_audio(0.6, seed=1)


def _digest(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, np.ndarray):
            h.update(str((p.dtype.str, p.shape)).encode())
            h.update(np.ascontiguousarray(p).tobytes())
        else:
            h.update(json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()


def outputs(path: Path, audio: np.ndarray) -> dict[str, str]:
    """What load_packed, the runtime session and subbit report give for ``path`` (digests)."""
    from subbit.commands.report import format_report, report_subbit
    from subbit.export.container import load_packed
    from subbit.runtime.models import PackedTransducer
    from subbit.runtime.session import StreamingSession

    out: dict[str, str] = {}
    pm = load_packed(path)
    pieces: list[Any] = [pm.manifest, pm.tokenizer_bytes or b""]
    for name in sorted(pm.packed):
        pt = pm.packed[name]
        pieces += [name, pt.bits, list(pt.shape), pt.groups, pt.granularity, pt.method, pt.mu,
                   np.asarray(pt.packed), np.asarray(pt.codebook)]  # fmt: skip
    for name in sorted(pm.floats):
        pieces += [name, np.asarray(pm.floats[name])]
    out["load_packed"] = _digest(*[p.hex() if isinstance(p, bytes) else p for p in pieces])
    model = PackedTransducer.from_packed(pm)
    logits: list[np.ndarray] = []
    join = model.joiner.join

    def recording(e: Any, p: Any) -> Any:
        r = join(e, p)
        logits.append(np.asarray(r, np.float32).copy())
        return r

    model.joiner.join = recording  # type: ignore[method-assign]
    s = StreamingSession(model)
    third = len(audio) // 3
    texts = [s.accept_audio(audio[:third]), s.accept_audio(audio[third:]), s.finalize()]
    out["runtime"] = _digest(texts, list(s.tokens), *logits)
    rep = report_subbit(path)
    out["report"] = _digest(rep, format_report(rep))
    return out


class _Timeout(Exception):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise _Timeout()


#: a mutant that costs this much more CPU time than the original (and over MIN_SLOW_S), or grows
#: the peak RSS by more than MAX_RSS_STEP, counts as a crash: a few bytes must not buy a denial of service
SLOW_FACTOR, MIN_SLOW_S, MAX_RSS_STEP = 50.0, 2.0, 256 << 20


def classify(blob: bytes, path: Path, reference: dict[str, str], audio: np.ndarray, timeout: float,
             cpu_budget: float | None = None) -> tuple[str, str]:  # fmt: skip
    """(outcome, detail) of one mutant written to ``path``; ``cpu_budget``: CPU seconds above
    which a mutant that loads or is refused still counts as a crash."""
    cpu0, rss0 = time.process_time(), _rss_kb()
    outcome, detail = _classify(blob, path, reference, audio, timeout)
    cpu, rss = time.process_time() - cpu0, (_rss_kb() - rss0) * 1024
    if outcome != "crashed" and cpu_budget is not None and cpu > cpu_budget:
        return "crashed", f"resources: {cpu:.1f} s of CPU (budget {cpu_budget:.1f} s); was {outcome}"
    if outcome != "crashed" and rss > MAX_RSS_STEP:
        return "crashed", f"resources: peak RSS grew by {rss / 2**20:.0f} MiB; was {outcome}"
    return outcome, detail


def _classify(blob: bytes, path: Path, reference: dict[str, str], audio: np.ndarray, timeout: float) -> tuple[str, str]:
    from subbit.export.manifest import SubbitFormatError

    path.write_bytes(blob)
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = outputs(path, audio)
    except SubbitFormatError as exc:
        return "refused", str(exc).replace(str(path), "FILE")[:160]
    except _Timeout:
        return "crashed", f"timeout after {timeout} s"
    except RecursionError:
        return "crashed", "RecursionError"
    except Exception as exc:  # noqa: BLE001 - any other exception is what the fuzzer looks for
        return "crashed", f"{type(exc).__name__}: {str(exc)[:160]}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    if got == reference:
        return "identical", ""
    return "different", ", ".join(k for k in got if got[k] != reference[k])


def _reason(msg: str) -> str:
    """A refusal message without its file name and numbers: the check that refused."""
    msg = re.sub(r"^FILE: ", "", msg)
    msg = re.sub(r"'[^']*'|\[[^\]]*\]|-?\d[\d.e+-]*", "_", msg)
    return msg[:70]


def _rss_kb() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def run(n: int, seed: int = 0, arch: str = "rnnt", timeout: float = 20.0, workdir: Path | None = None,
        log: Any = None) -> dict[str, Any]:  # fmt: skip
    """Make ``n`` mutants (half corrupt, half resealed) and classify each; returns the summary."""
    with tempfile.TemporaryDirectory(dir=workdir) as d:
        orig_path = Path(d) / "orig.subbit"
        blob = make_original(orig_path, arch)
        parts = Parts.of(blob)
        audio = _audio()
        path = Path(d) / "mutant.subbit"  # every mutant and the reference at one path (the report names it)
        path.write_bytes(blob)
        cpu0 = time.process_time()
        reference = outputs(path, audio)
        ref_cpu = time.process_time() - cpu0
        cpu_budget = max(MIN_SLOW_S, SLOW_FACTOR * ref_cpu)
        if outputs(path, audio) != reference:
            raise RuntimeError("the original file gives different outputs on two loads: fuzzing would be meaningless")
        rng = np.random.default_rng(seed)
        counts: dict[str, Counter[str]] = {"corrupt": Counter(), "resealed": Counter()}
        failures: list[dict[str, Any]] = []
        refusals: Counter[str] = Counter()
        unchanged: Counter[str] = Counter()
        rss0 = _rss_kb()
        worst_step: tuple[int, str] = (0, "")
        biggest = len(blob)
        start = time.monotonic()
        for i in range(n):
            mode = "corrupt" if i % 2 == 0 else "resealed"
            try:
                what, mutant = (corrupt_mutant if mode == "corrupt" else resealed_mutant)(blob, parts, rng)
            except (TypeError, ValueError, RecursionError) as exc:  # the mutation itself cannot be written
                what, mutant = f"unwritable mutation ({type(exc).__name__})", blob[:-1]
            biggest = max(biggest, len(mutant))
            unchanged[mode] += mutant == blob  # a no-op mutation (e.g. a byte set to its own value)
            before = _rss_kb()
            outcome, detail = classify(mutant, path, reference, audio, timeout, cpu_budget)
            step = _rss_kb() - before
            if step > worst_step[0]:
                worst_step = (step, what)
            counts[mode][outcome] += 1
            if outcome == "refused":
                refusals[_reason(detail)] += 1
            bad = outcome == "crashed" or (outcome == "different" and mode == "corrupt")
            if bad or (outcome == "different" and len(failures) < 200):
                failures.append({"i": i, "mode": mode, "mutation": what, "outcome": outcome, "detail": detail,
                                 "failure": bad})  # fmt: skip
            if log is not None and (i + 1) % 250 == 0:
                log(f"{i + 1}/{n} mutants, {time.monotonic() - start:.0f} s")
        total: Counter[str] = counts["corrupt"] + counts["resealed"]
        rss_peak = _rss_kb()
        return {
            "tried": n, "seed": seed, "arch": arch, "file_bytes": len(blob), "largest_mutant_bytes": biggest,
            "refused": total["refused"], "identical": total["identical"], "different": total["different"],
            "crashed": total["crashed"],
            "by_mode": {k: {**{o: v[o] for o in ("refused", "identical", "different", "crashed")},
                            "bytes_unchanged": unchanged[k]} for k, v in counts.items()},  # fmt: skip
            "bytes_unchanged": sum(unchanged.values()),
            "corrupt_loaded_different": counts["corrupt"]["different"],
            "failures": [f for f in failures if f["failure"]],
            "resealed_different_examples": [f for f in failures if not f["failure"]][:20],
            "top_refusals": refusals.most_common(15),
            "peak_rss_bytes": rss_peak * 1024, "rss_before_mutants_bytes": rss0 * 1024,
            "rss_growth_during_mutants_bytes": (rss_peak - rss0) * 1024,
            "largest_rss_step_bytes": worst_step[0] * 1024, "largest_rss_step_mutation": worst_step[1],
            "seconds": round(time.monotonic() - start, 1),
            "reference_cpu_seconds": round(ref_cpu, 3), "cpu_budget_seconds": round(cpu_budget, 2),
        }  # fmt: skip


# -- peak RSS of loading a large file ----------------------------------------------------------
_MAKE = "import sys; from subbit.testing.dummies import large_subbit_file; large_subbit_file(sys.argv[1], int(sys.argv[2]), layers=4)"


def large_file_rss(mib: int, workdir: Path | None = None) -> dict[str, Any]:
    """Peak RSS that ``load_packed`` adds for a file of about ``mib`` MiB (4 packed 4-bit layers
    and their biases, :func:`subbit.testing.dummies.large_subbit_file`), measured in a fresh
    interpreter (:func:`subbit.testing.memory.load_memory`: VmHWM after - VmRSS before)."""
    import subprocess

    from subbit.testing.memory import load_memory

    with tempfile.TemporaryDirectory(dir=workdir) as d:
        path = Path(d) / "large.subbit"
        # built in a child too, so this process's own RSS does not grow by the file
        subprocess.run([sys.executable, "-c", _MAKE, str(path), str(mib)], check=True)
        size = path.stat().st_size
        hlen = _header_len(path)
        r = load_memory(path, "load_packed")
    grown = r["peak_growth_bytes"]
    return {"file_bytes": size, "header_bytes": 8 + hlen, "load_peak_rss_growth_bytes": grown,
            "growth_over_file": round(grown / size, 4), "anon_rss_growth_bytes": r["anon_growth_bytes"]}  # fmt: skip


def _header_len(path: Path) -> int:
    with open(path, "rb") as f:
        return int(struct.unpack("<Q", f.read(8))[0])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="mutants (half corrupt, half resealed)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--arch", default="rnnt", help="any arch of subbit.asr.models (rnnt, conformer, bifocal), tiny preset")
    ap.add_argument("--timeout", type=float, default=20.0, help="seconds per mutant before it counts as a crash")
    ap.add_argument("--large-mib", type=int, default=256, help="also load a file of this size for peak RSS (0: skip)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    summary = run(args.n, args.seed, args.arch, args.timeout, log=lambda s: print(s, file=sys.stderr, flush=True))
    if args.large_mib:
        summary["large_file"] = large_file_rss(args.large_mib)
    summary.update(provenance(__file__))
    print(f"{'mode':<10} {'tried':>6} {'refused':>8} {'identical':>10} {'different':>10} {'crashed':>8}"
          f" {'(bytes unchanged)':>18}")  # fmt: skip
    for mode, c in summary["by_mode"].items():
        tried = c["refused"] + c["identical"] + c["different"] + c["crashed"]
        print(f"{mode:<10} {tried:>6} {c['refused']:>8} {c['identical']:>10} {c['different']:>10} "
              f"{c['crashed']:>8} {c['bytes_unchanged']:>18}")  # fmt: skip
    print(f"{'total':<10} {summary['tried']:>6} {summary['refused']:>8} {summary['identical']:>10} "
          f"{summary['different']:>10} {summary['crashed']:>8} {summary['bytes_unchanged']:>18}")  # fmt: skip
    print(f"file {summary['file_bytes']} B (largest mutant {summary['largest_mutant_bytes']} B); peak RSS "
          f"{summary['peak_rss_bytes'] / 2**20:.0f} MiB, of which {summary['rss_growth_during_mutants_bytes'] / 2**20:.1f}"
          f" MiB while the mutants ran; {summary['seconds']} s; {summary['machine']}")  # fmt: skip
    print(f"largest RSS step of one mutant {summary['largest_rss_step_bytes'] / 2**20:.1f} MiB "
          f"({summary['largest_rss_step_mutation']})")
    if "large_file" in summary:
        lf = summary["large_file"]
        print(f"large file: {lf['file_bytes'] / 2**20:.0f} MiB (header {lf['header_bytes']} B): load_packed adds "
              f"{lf['load_peak_rss_growth_bytes'] / 2**20:.1f} MiB peak RSS = {lf['growth_over_file']:.4f} x the file")
    for f in summary["failures"][:20]:
        print(f"FAIL #{f['i']} {f['mode']} {f['mutation']}: {f['outcome']} {f['detail']}")
    write_record(args.out, summary)
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())

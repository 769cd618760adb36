"""libsubbit's worker threads under ThreadSanitizer: no data race in the pool's hand-off or in the
row-split matmuls (the AVX-512 kernel rewrites its activation buffer in place: each part must
work on its own copy), on every kernel path this CPU has, for both encoders.

subbit-stream and the library are compiled with ``-fsanitize=thread`` into a temporary folder
(skipped where the compiler has no TSan runtime); the transcripts must equal the normal build's.
Slow: one compile (about 20 s) and TSan's 5-15x slowdown.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import soundfile as sf

from subbit.runtime import kernels
from subbit.testing.dummies import dummy_subbit_file

from .test_libsubbit import CLI, build_library
from .test_libsubbit_threads import WIDE
from .test_session import audio

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tsan_cli(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None or not (ROOT / "libsubbit" / "Makefile").is_file():
        pytest.skip("no C compiler or no libsubbit sources")
    out = tmp_path_factory.mktemp("tsan") / "subbit-stream-tsan"
    sources = [*sorted((ROOT / "libsubbit" / "src").glob("*.c")), *sorted((ROOT / "src/subbit/runtime/csrc").glob("*.c")),
               ROOT / "examples/c/subbit_stream.c"]  # fmt: skip
    cmd = [cc, "-O1", "-g", "-std=c11", "-pthread", "-fsanitize=thread", "-ffp-contract=off",
           f"-I{ROOT / 'libsubbit/include'}", *map(str, sources), "-lm", "-o", str(out)]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"this compiler cannot build with ThreadSanitizer: {r.stderr[-300:]}")
    probe = subprocess.run([str(out)], capture_output=True, text=True)
    if "ThreadSanitizer" in probe.stderr and "FATAL" in probe.stderr:  # e.g. an unsupported memory layout
        pytest.skip(f"ThreadSanitizer cannot run here: {probe.stderr[-300:]}")
    build_library()
    return out


@pytest.mark.parametrize("arch", ["rnnt", "conformer"])
def test_threaded_sessions_have_no_data_race(tsan_cli: Path, tmp_path: Path, arch: str) -> None:
    model = dummy_subbit_file(tmp_path, arch, blank_bias=0.2, **WIDE[arch])
    wav = tmp_path / "a.wav"
    sf.write(wav, audio(1.0), 16000, subtype="PCM_16")
    paths = ["portable" if p == "c" else p for p in kernels.available_paths() if p != "ref"]
    for path in paths:
        env = {**os.environ, "SUBBIT_KERNEL": path, "TSAN_OPTIONS": "halt_on_error=1 exitcode=66"}
        run = subprocess.run([str(tsan_cli), "--threads", "3", "--repeats", "2", str(model), str(wav)],
                             capture_output=True, text=True, env=env)  # fmt: skip
        assert run.returncode == 0 and "ThreadSanitizer" not in run.stderr, (path, run.stderr[-3000:])
        plain = subprocess.run([str(CLI), str(model), str(wav)], capture_output=True, text=True, env=env, check=True)
        assert run.stdout.splitlines()[-1] == plain.stdout.splitlines()[-1] != ""

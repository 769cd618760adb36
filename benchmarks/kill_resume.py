"""kill -9 a small training run at random moments, resume it each time, compare the final model
with an uninterrupted run bit for bit (issue 13).

One uninterrupted ``subbit train`` (tiny RNN-T, a dummy corpus, a checkpoint every step) gives
the reference ``final.pt``. Then the same command runs again in a new directory and is killed
with SIGKILL at a random moment: with probability ``--p-startup`` while it starts (imports,
data, model), otherwise after the attempt has rewritten ``last.pt`` a random number of times (1
to a fifth of the run) plus a random fraction of one step's time (during steps and checkpoint
writes);
each restart passes ``--resume`` when ``checkpoints/last.pt`` exists. When the run
finishes before ``--kills`` kills, another interrupted run starts, until the kills are done.
Each interrupted run's ``final.pt`` is compared tensor for tensor (``torch.equal``) with the
reference; its ``log.csv`` losses too.

    python benchmarks/kill_resume.py [--kills 20] [--steps 40] [--seed 0] [--quant] [--out PATH]

Prints kills / restarts that resumed / resumes that failed / kills that left a ``.tmp`` file
(a checkpoint write was cut) / runs finished / final models bit-identical, and writes
benchmarks/out/kill_resume.json. ``tests/asr/test_kill_resume.py`` runs 3 kills (slow marker).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from subbit.bench.record import provenance, write_record

OUT = Path(__file__).resolve().parent / "out" / "kill_resume.json"
TRAIN = [sys.executable, "-c", "import sys; from subbit.cli import main; sys.exit(main())", "train"]


def train_args(data: Path, out: Path, steps: int, quant: Path | None) -> list[str]:
    args = ["--model", "rnnt", "--preset", "tiny", "--data", str(data), "--out", str(out), "--steps", str(steps),
            "--batch-size", "4", "--tokenizer", "char", "--ckpt-every", "1", "--warmup-steps", "2", "--threads", "1",
            "--no-progress", "--seed", "0"]  # fmt: skip
    if quant is not None:
        args += ["--quant", str(quant), "--quant-every", "2"]
    return args


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _tensors(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Every tensor in a (nested) checkpoint dict, by dotted path."""
    import torch

    out: dict[str, Any] = {}
    if isinstance(obj, torch.Tensor):
        out[prefix] = obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_tensors(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(_tensors(v, f"{prefix}.{i}"))
    return out


def same_model(a: Path, b: Path) -> bool:
    """``final.pt`` of two runs hold the same tensors, bit for bit (read with weights_only)."""
    import torch

    ta = _tensors(torch.load(a, weights_only=True, map_location="cpu"))
    tb = _tensors(torch.load(b, weights_only=True, map_location="cpu"))
    return ta.keys() == tb.keys() and bool(ta) and all(
        ta[k].dtype == tb[k].dtype and ta[k].shape == tb[k].shape and torch.equal(ta[k], tb[k]) for k in ta)


def losses(run: Path) -> list[tuple[int, str]]:
    """(step, loss) rows of log.csv, as written (strings: compared exactly)."""
    path = run / "log.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [(int(r["step"]), r["loss"]) for r in csv.DictReader(f) if r.get("step", "").isdigit()]


def checkpoint_step(run: Path) -> int | None:
    import torch

    last = run / "checkpoints" / "last.pt"
    if not last.is_file():
        return None
    try:
        return int(torch.load(last, weights_only=True, map_location="cpu")["step"])
    except Exception:  # noqa: BLE001 - a torn or foreign file: the resume will say so
        return -1


def _tmp_files(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.rglob("*.tmp*")) if run.exists() else []


def _checkpoint_id(run: Path) -> tuple[int, int] | None:
    """(inode, mtime) of last.pt: every atomic rewrite (a new file renamed over it) changes it."""
    try:
        st = os.stat(run / "checkpoints" / "last.pt")
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def _started(log: Path) -> bool:
    try:
        return b"training " in log.read_bytes()
    except OSError:
        return False


def interrupted_run(data: Path, run: Path, steps: int, quant: Path | None, kills_wanted: int, rng: random.Random,
                    train_seconds: float, p_startup: float, report: Any) -> dict[str, Any]:  # fmt: skip
    """Kill and resume one run until it finishes or ``kills_wanted`` kills are done; then let it finish."""
    events: list[dict[str, Any]] = []
    kills = resumed = failed = torn = 0
    attempt = 0
    while True:
        attempt += 1
        resume = (run / "checkpoints" / "last.pt").is_file()
        step_before = checkpoint_step(run) if resume else 0
        args = TRAIN + train_args(data, run, steps, quant) + (["--resume"] if resume else [])
        log = run.parent / f"{run.name}.attempt{attempt}.log"
        with open(log, "wb") as fh:
            proc = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, env=_env())
        killed, phase = False, "none"
        # a checkpoint of the last step: the attempt only writes final.pt; let it finish, so the
        # kills spread over the run instead of piling up on its end
        if kills < kills_wanted and (step_before or 0) < steps:
            phase = "startup" if rng.random() < p_startup else "steps"
            if phase == "startup":  # during start-up (imports, data, model, checkpoint load)
                deadline = time.monotonic() + rng.uniform(0.0, 6.0)
                while time.monotonic() < deadline and proc.poll() is None:
                    time.sleep(0.02)
            else:  # a random moment of the steps and checkpoint writes: after this attempt has
                # replaced last.pt a random number of times (1 .. a fifth of the run), plus a random
                # fraction of one step's time
                writes = rng.randint(1, max(1, steps // 5))
                seen = _checkpoint_id(run)
                while proc.poll() is None and writes > 0:
                    now = _checkpoint_id(run)
                    if now != seen:
                        seen, writes = now, writes - 1
                    time.sleep(0.005)
                time.sleep(rng.uniform(0.0, train_seconds / steps))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                killed = True
        rc = proc.wait()
        ev: dict[str, Any] = {"attempt": attempt, "resume": resume, "from_step": step_before, "killed": killed,
                              "phase": phase if killed else "none", "rc": rc}  # fmt: skip
        if killed:
            kills += 1
            tmp = _tmp_files(run)
            ev["tmp_files"] = tmp
            torn += bool(tmp)
            ev["step_after"] = checkpoint_step(run)
        if resume:
            ok = killed or rc == 0
            resumed += ok
            failed += not ok
        if not killed and rc != 0:
            ev["error"] = log.read_text(errors="replace")[-600:]
            events.append(ev)
            report(f"  attempt {attempt}: exited {rc} by itself: {ev['error'][-200:]!r}")
            return {"events": events, "kills": kills, "resumed": resumed, "resume_failed": failed + (not resume),
                    "torn_writes": torn, "finished": False}  # fmt: skip
        events.append(ev)
        report(f"  attempt {attempt}: {'resume from step ' + str(step_before) if resume else 'fresh'}"
               f"{', killed -> checkpoint at step ' + str(ev.get('step_after')) if killed else ', finished'}"
               f"{' (tmp: ' + ', '.join(ev.get('tmp_files', [])) + ')' if ev.get('tmp_files') else ''}")
        if not killed:
            return {"events": events, "kills": kills, "resumed": resumed, "resume_failed": failed,
                    "torn_writes": torn, "finished": True}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0, help="of the kill moments (training always uses --seed 0)")
    ap.add_argument("--p-startup", type=float, default=0.2, help="share of kills during start-up")
    ap.add_argument("--quant", action="store_true", help="GQ 3-bit QAT run (projection every 2 steps)")
    ap.add_argument("--workdir", type=Path, help="keep the runs here (default: a temporary directory)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    summary = run(args.kills, args.steps, args.seed, args.p_startup, args.quant, args.workdir,
                  report=lambda s: print(s, flush=True))  # fmt: skip
    summary.update(provenance(__file__))
    print(f"kills {summary['kills']} ({summary['torn_writes']} cut a checkpoint write, "
          f"{summary['startup_kills']} during start-up); restarts that resumed {summary['resumed']}, "
          f"resumes that failed {summary['resume_failed']}; runs {summary['runs']}, finished {summary['finished']}, "
          f"final model bit-identical {summary['identical_finals']}/{summary['runs']}, "
          f"loss logs identical {summary['identical_logs']}/{summary['runs']}; {summary['seconds']} s; "
          f"{summary['machine']}")  # fmt: skip
    write_record(args.out, summary)
    ok = summary["identical_finals"] == summary["runs"] == summary["finished"] and not summary["resume_failed"]
    return 0 if ok else 1


def run(kills: int, steps: int, seed: int = 0, p_startup: float = 0.2, quant: bool = False,
        workdir: Path | None = None, report: Any = print) -> dict[str, Any]:  # fmt: skip
    """The whole experiment; returns the summary (see the module docstring)."""
    from subbit.testing.dummies import make_dummy_corpus

    start = time.monotonic()
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(dir=workdir) as d:
        root = Path(d)
        data = root / "corpus"
        make_dummy_corpus(data, n_train=12, n_eval=2)
        rules = None
        if quant:
            rules = root / "rules.json"
            rules.write_text(json.dumps({"default": {"method": "gq", "bits": 3}}))
        ref = root / "reference"
        t0 = time.monotonic()
        with open(root / "reference.log", "wb") as fh:
            proc = subprocess.Popen(TRAIN + train_args(data, ref, steps, rules), stdout=fh, stderr=subprocess.STDOUT,
                                    env=_env())  # fmt: skip
            began = None
            while proc.poll() is None:
                if began is None and _started(root / "reference.log"):
                    began = time.monotonic()
                time.sleep(0.02)
        if proc.returncode != 0:
            raise RuntimeError(f"the uninterrupted run failed: {(root / 'reference.log').read_text()[-800:]}")
        train_seconds = time.monotonic() - (began or t0)
        report(f"uninterrupted run: {time.monotonic() - t0:.1f} s ({train_seconds:.1f} s of steps)")
        ref_losses = losses(ref)
        results = []
        done = 0
        while done < kills:
            run_dir = root / f"interrupted{len(results)}"
            report(f"interrupted run {len(results)}:")
            r = interrupted_run(data, run_dir, steps, rules, kills - done, rng, train_seconds, p_startup, report)
            done += r["kills"]
            final = run_dir / "final.pt"
            r["identical_final"] = bool(r["finished"] and final.is_file() and same_model(ref / "final.pt", final))
            r["identical_log"] = losses(run_dir) == ref_losses
            r["log_rows"], r["reference_log_rows"] = len(losses(run_dir)), len(ref_losses)
            results.append(r)
            if not r["finished"] or len(results) >= 4 * kills:
                break
    events = [e for r in results for e in r["events"]]
    return {
        "kills": sum(r["kills"] for r in results), "torn_writes": sum(r["torn_writes"] for r in results),
        "startup_kills": sum(1 for e in events if e["phase"] == "startup"),
        "resumed": sum(r["resumed"] for r in results), "resume_failed": sum(r["resume_failed"] for r in results),
        "runs": len(results), "finished": sum(r["finished"] for r in results),
        "identical_finals": sum(r["identical_final"] for r in results),
        "identical_logs": sum(r["identical_log"] for r in results),
        "steps": steps, "quant": quant, "seed": seed, "seconds": round(time.monotonic() - start, 1),
        "runs_detail": results,
    }  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())

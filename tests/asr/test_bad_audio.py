"""Bad audio is skipped with a count and a list, in train and eval: never a soundfile traceback,
never a run that stops on one file. And the NaN guard's advice is a command that works."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from subbit.asr.checkpoint import RunPaths, load_checkpoint
from subbit.asr.data import check_audio, load_audio, read_manifest, screen_utterances
from subbit.asr.evaluate import evaluate
from subbit.asr.models import build_model
from subbit.asr.tokenizer import Tokenizer
from subbit.asr.train import TrainConfig, TrainingDiverged, train
from subbit.testing.dummies import make_dummy_corpus

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dummy_corpus(tmp_path_factory.mktemp("corpus"), n_train=12, n_eval=4)


def _wav(path: Path, audio: np.ndarray) -> str:
    sf.write(str(path), audio.astype(np.float32), 16000, subtype="FLOAT")
    return str(path)


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda d: str(d / "nope.wav"), "missing"),
        (lambda d: ((d / "empty.wav").write_bytes(b""), str(d / "empty.wav"))[1], "empty file"),
        (lambda d: ((d / "text.wav").write_text("not audio\n"), str(d / "text.wav"))[1], "not decodable audio"),
        (lambda d: ((d / "dir.wav").mkdir(), str(d / "dir.wav"))[1], "is a directory"),
        (lambda d: _wav(d / "nan.wav", np.r_[np.zeros(8000), np.nan]), "1 NaN/Inf samples"),
        (lambda d: _wav(d / "inf.wav", np.r_[np.full(8000, np.inf), 0.0]), "8000 NaN/Inf samples"),
        (lambda d: _wav(d / "none.wav", np.zeros(0)), "no samples"),
    ],
)
def test_each_bad_file_gets_a_reason(tmp_path: Path, make, reason: str) -> None:  # type: ignore[no-untyped-def]
    path = make(tmp_path)
    got, n = check_audio(path)
    assert got is not None and reason in got and n == 0
    if "NaN" not in reason and reason != "no samples":  # decodable files load; the rest name the path
        with pytest.raises(ValueError, match=f"audio {path}: {reason}"):
            load_audio(path)


def test_a_fifo_is_skipped_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    out: list = []
    t = threading.Thread(target=lambda: out.append(check_audio(fifo)), daemon=True)
    start = time.monotonic()
    t.start()
    t.join(5.0)
    if t.is_alive():
        with open(fifo, "wb"):
            pass
        pytest.fail("check_audio blocked on a FIFO")
    assert time.monotonic() - start < 2.0 and out[0][0] == "not a regular file"


def test_a_short_utterance_is_skipped_naming_it(tmp_path: Path) -> None:
    from subbit.asr.data import Utterance

    u = Utterance("tiny-1", _wav(tmp_path / "s.wav", np.zeros(300)), "a", 0.02, "s")
    good, skipped = screen_utterances([u], min_samples=400)
    assert good == [] and skipped == [{"id": "tiny-1", "audio": u.audio,
                                       "reason": "shorter than one encoder frame (300 samples, needs 400)"}]


def test_a_non_utf8_manifest_line_is_skipped_naming_file_and_line(tmp_path: Path) -> None:
    wav = _wav(tmp_path / "ok.wav", np.zeros(8000))
    good = json.dumps({"id": "a", "audio": wav, "text": "hi", "duration": 0.5, "speaker": "s"}).encode()
    bad = b'{"id": "b", "audio": "ok.wav", "text": "caf\xe9", "duration": 0.5, "speaker": "s"}'
    (tmp_path / "m.jsonl").write_bytes(good + b"\n" + bad + b"\n")
    utts = read_manifest(tmp_path / "m.jsonl")
    assert [u.id for u in utts] == ["a"]
    assert len(utts.skipped) == 1 and f"{tmp_path / 'm.jsonl'}:2: line is not UTF-8" in utts.skipped[0]["reason"]


def _bad_corpus(corpus: Path, root: Path, split: str, n_bad: int = 5) -> tuple[Path, list[str]]:
    """A copy of ``corpus`` whose ``split`` manifest also holds n_bad bad files (first: empty)."""
    shutil.copytree(corpus, root)
    d = root / "bad"
    d.mkdir()
    (d / "empty.wav").write_bytes(b"")
    (d / "text.wav").write_text("hello")
    (d / "dir.wav").mkdir()
    _wav(d / "nan.wav", np.r_[np.zeros(4000), np.nan])
    paths = [d / "empty.wav", d / "missing.wav", d / "text.wav", d / "dir.wav", d / "nan.wav"][:n_bad]
    lines = [json.dumps({"id": f"bad-{i}", "audio": str(p), "text": "a b", "duration": 1.0, "speaker": "x"})
             for i, p in enumerate(paths)]  # fmt: skip
    man = root / f"{split}.jsonl"
    man.write_text(man.read_text() + "".join(line + "\n" for line in lines))
    return root, [f"bad-{i}" for i in range(len(paths))]


def test_a_corpus_with_one_empty_wav_trains_and_counts_it(corpus: Path, tmp_path: Path) -> None:
    data, bad = _bad_corpus(corpus, tmp_path / "data", "train", n_bad=1)
    cfg = TrainConfig(data=str(data), out=str(tmp_path / "run"), model="rnnt", preset="tiny", steps=2,
                      batch_size=4, tokenizer="char", warmup_steps=1, ckpt_every=0, progress=False, threads=1,
                      augment=False)  # fmt: skip
    result = train(cfg)
    assert result.stopped == "done" and result.steps == 2 and result.skipped == 1
    rows = (tmp_path / "run" / "skipped.tsv").read_text().splitlines()
    assert rows[0] == "id\taudio\treason" and rows[1].startswith("bad-0\t") and rows[1].endswith("empty file (0 bytes)")


def test_eval_skips_five_bad_files_and_lists_them(corpus: Path, tmp_path: Path) -> None:
    data, bad = _bad_corpus(corpus, tmp_path / "data", "dev")
    utts = read_manifest(data / "dev.jsonl")
    tok = Tokenizer("char", chars=list("abcdefghijklmnopqrstuvwxyz '"))
    model = build_model("rnnt", "tiny", vocab_size=tok.vocab_size).eval()
    res = evaluate(model, tok, utts, split="dev")
    assert len(res.utts) == 4 and [s["id"] for s in res.extra["skipped"]] == bad
    d = res.to_dict()
    assert d["skipped_count"] == 5 and {s["reason"].split(" (")[0] for s in d["skipped"]} >= {"missing", "is a directory"}
    assert "5 utterances skipped" in res.summary()
    json.dumps(d)  # the eval JSON holds the list


def test_nan_guard_prints_a_command_that_recovers(corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """Diverge at step 5; last.pt (step 4) is kept, a resume does not overwrite it, and the
    printed command (a resume at a tenth of the lr) runs to the end."""
    from subbit import cli

    out = tmp_path / "run"
    cfg = dict(data=str(corpus), out=str(out), model="rnnt", preset="tiny", steps=6, batch_size=4,
               tokenizer="char", warmup_steps=1, ckpt_every=2, progress=False, threads=1, augment=False)  # fmt: skip

    def poison(step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss * float("nan") if step >= 5 else loss

    with pytest.raises(TrainingDiverged) as err:
        train(TrainConfig(**cfg), loss_hook=poison)
    paths = RunPaths(out)
    assert load_checkpoint(paths.last)["step"] == 4
    with pytest.raises(TrainingDiverged):  # the resume fails the same way ...
        train(TrainConfig(**{**cfg, "resume": True}), loss_hook=lambda s, l: l * float("nan"))
    assert load_checkpoint(paths.last)["step"] == 4  # ... and leaves the good checkpoint alone
    msg = str(err.value)
    cmd = shlex.split(msg.split("lower lr: ", 1)[1].split(" (if it diverges", 1)[0])
    assert cmd[:5] == ["subbit", "train", "--out", str(out), "--resume"] and "--lr" in cmd
    assert cmd[cmd.index("--lr") + 1] == "0.0002"
    code = cli.main(cmd[1:] + ["--model", "rnnt", "--preset", "tiny", "--batch-size", "4", "--threads", "1",
                               "--no-progress", "--no-augment"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    new = RunPaths(Path(cmd[cmd.index("--out") + 1]))
    assert new.final.is_file() and load_checkpoint(new.last)["step"] == 6

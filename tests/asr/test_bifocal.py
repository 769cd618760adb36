"""Bifocal RNN-T (docs/models.md, section 3b): the pathway follows the mask, streaming == offline,
training takes the batch's mask, GQ covers both pathways, the dataset builds the mask."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import soundfile as sf
import torch

from subbit.asr.data import Utterance
from subbit.asr.dataset import AsrDataset, collate
from subbit.asr.models import build_model
from subbit.asr.models.bifocal import BifocalEncoder, stack_mask
from subbit.asr.tokenizer import train_tokenizer
from subbit.quant import QuantConfig, prepare
from subbit.quant.api import quantized_tensors
from subbit.runtime.models import wake_frames

torch.set_num_threads(1)
# float32 through 2 LSTM layers, different op grouping (pieces vs frames): a few ulp per step
TOL = 1e-5


def tiny(seed: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("bifocal", "tiny", vocab_size=12, **kw).eval()


def feats(b: int = 3, t: int = 48, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, t, 80, generator=torch.Generator().manual_seed(seed))


def switching_mask(b: int, t: int, seed: int = 2) -> torch.Tensor:
    """Runs of 1-12 frames alternating pathways, a different pattern per row."""
    g = np.random.default_rng(seed)
    rows = []
    for _ in range(b):
        row, small = [], bool(g.integers(2))
        while len(row) < t:
            row += [small] * int(g.integers(1, 13))
            small = not small
        rows.append(row[:t])
    return torch.tensor(rows)


def _perturb(enc: BifocalEncoder, which: str) -> BifocalEncoder:
    """A copy whose ``which`` pathway ("large" or "small" + its projections) has other weights."""
    enc = copy.deepcopy(enc)
    names = ("large",) if which == "large" else ("small", "down_h", "down_c", "up_h", "up_c")
    with torch.no_grad():
        for layer in enc.layers:
            for n in names:
                for p in getattr(layer, n).parameters():
                    p.add_(torch.randn_like(p))
    return enc


def _reference(enc: BifocalEncoder, x: torch.Tensor, small: torch.Tensor) -> torch.Tensor:
    """Frame-by-frame evaluation of the cell equations of docs/models.md 3b (one row, no batching)."""

    def cell(lstm: torch.nn.LSTM, xt: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> tuple:
        z = lstm.weight_ih_l0 @ xt + lstm.bias_ih_l0 + lstm.weight_hh_l0 @ h + lstm.bias_hh_l0
        i, f, g, o = z.chunk(4)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c

    m = stack_mask(small[None], enc.stack)[0]
    y = x[: x.shape[0] // enc.stack * enc.stack].reshape(-1, enc.stack * enc.n_mels)
    for li, layer in enumerate(enc.layers):
        if li == enc.stack2_after:
            n = y.shape[0] // enc.stack2
            y = y[: n * enc.stack2].reshape(n, -1)
            m = stack_mask(m[None], enc.stack2)[0]
        h = c = torch.zeros(enc.hidden)
        hs = cs = torch.zeros(enc.small_hidden)
        was_small = False
        out = []
        for t in range(y.shape[0]):
            if m[t]:
                if not was_small:
                    hs, cs = layer.down_h.weight @ h, layer.down_c.weight @ c
                hs, cs = cell(layer.small, y[t], hs, cs)
                out.append(layer.up_h.weight @ hs)
            else:
                if was_small:
                    h, c = layer.up_h.weight @ hs, layer.up_c.weight @ cs
                h, c = cell(layer.large, y[t], h, c)
                out.append(h)
            was_small = bool(m[t])
        y = torch.stack(out)
    return enc.proj(y)


@torch.no_grad()
def test_forward_matches_the_cell_equations_for_any_mask() -> None:
    enc = tiny().encoder
    x = feats()
    mask = switching_mask(3, 48)
    y, lens = enc(x, torch.tensor([48, 48, 48]), mask)
    assert int(stack_mask(stack_mask(mask, 2), 2).sum()) > 0  # the mask reaches the encoder rate
    for b in range(3):
        torch.testing.assert_close(y[b], _reference(enc, x[b], mask[b]), atol=TOL, rtol=0)


@torch.no_grad()
def test_the_pathway_follows_the_mask() -> None:
    enc = tiny().encoder
    x, lens = feats(), torch.tensor([48, 48, 48])
    none = torch.zeros(3, 48, dtype=torch.bool)
    every = torch.ones(3, 48, dtype=torch.bool)
    # all large = no mask: the small pathway and the projections play no part
    torch.testing.assert_close(enc(x, lens)[0], _perturb(enc, "small")(x, lens, none)[0], atol=0, rtol=0)
    # all small: the large LSTMs play no part
    torch.testing.assert_close(enc(x, lens, every)[0], _perturb(enc, "large")(x, lens, every)[0], atol=0, rtol=0)
    # a wake word of 24 feature frames = 6 encoder frames run small; later frames run large
    prefix = torch.zeros(3, 48, dtype=torch.bool)
    prefix[:, :24] = True
    ya, yb = enc(x, lens, prefix)[0], _perturb(enc, "large")(x, lens, prefix)[0]
    torch.testing.assert_close(ya[:, :6], yb[:, :6], atol=0, rtol=0)
    assert (ya[:, 6:] - yb[:, 6:]).abs().amin() > 0
    # and the small pathway's weights do reach the frames after the wake word (through the state)
    yc = _perturb(enc, "small")(x, lens, prefix)[0]
    assert (ya[:, 6:] - yc[:, 6:]).abs().max() > 1e-3 and (ya[:, :6] - yc[:, :6]).abs().amin() > 0


def test_a_stacked_frame_is_small_only_if_all_its_frames_are() -> None:
    m = torch.tensor([[True, True, True, False, False, True]])
    assert stack_mask(m, 2).tolist() == [[True, False, False]]
    assert stack_mask(m, 4).tolist() == [[False]]


@torch.no_grad()
@pytest.mark.parametrize("chunks", [[1], [5, 11, 3], [16], [64]])
def test_streaming_equals_offline(chunks: list[int]) -> None:
    enc = tiny().encoder
    t = 61
    x, mask = feats(2, t), switching_mask(2, t, seed=5)
    y_full, lens = enc(x, torch.tensor([t, t]), mask)
    st = enc.init_state(2)
    outs, pos, k = [], 0, 0
    while pos < t:
        n = chunks[k % len(chunks)]
        y, st = enc.step(x[:, pos : pos + n], st, mask[:, pos : pos + n])
        outs.append(y)
        pos, k = pos + n, k + 1
    outs.append(enc.flush(st)[0])
    torch.testing.assert_close(torch.cat(outs, dim=1), y_full, atol=TOL, rtol=0)


@torch.no_grad()
def test_streaming_wake_end_from_the_state() -> None:
    """``init_state(small_frames=n)`` runs the first n stream frames small, like a prefix mask."""
    enc = tiny().encoder
    x = feats(1, 40)
    prefix = torch.zeros(1, 40, dtype=torch.bool)
    prefix[:, :17] = True
    y_full, _ = enc(x, torch.tensor([40]), prefix)
    st = enc.init_state(1, small_frames=17)
    ys = []
    for pos in range(0, 40, 7):
        y, st = enc.step(x[:, pos : pos + 7], st)
        ys.append(y)
    torch.testing.assert_close(torch.cat(ys, dim=1), y_full, atol=TOL, rtol=0)


def test_bad_mask_shape_is_refused() -> None:
    enc = tiny().encoder
    with pytest.raises(ValueError, match="pathway_mask"):
        enc(feats(2, 20), torch.tensor([20, 20]), torch.zeros(2, 19, dtype=torch.bool))


def test_training_loss_takes_the_mask() -> None:
    model = tiny().train()
    x, lens = feats(2, 48), torch.tensor([48, 40])
    targets, tlens = torch.tensor([[1, 2, 3], [4, 5, 0]]), torch.tensor([3, 2])
    small_w = model.encoder.layers[0].small.weight_ih_l0
    # no mask: the small pathway gets no gradient; a wake-word mask: it does, and the loss changes
    loss0 = model(x, lens, targets, tlens)
    loss0.backward()
    assert small_w.grad is None or float(small_w.grad.abs().sum()) == 0
    model.zero_grad()
    mask = torch.zeros(2, 48, dtype=torch.bool)
    mask[:, :20] = True
    loss1 = model(x, lens, targets, tlens, pathway_mask=mask)
    loss1.backward()
    assert torch.isfinite(loss1) and float(small_w.grad.abs().sum()) > 0 and loss1.item() != loss0.item()


def test_other_encoders_refuse_a_mask() -> None:
    torch.manual_seed(0)
    model = build_model("rnnt", "tiny", vocab_size=12)
    with pytest.raises(TypeError):
        model(feats(1, 16), torch.tensor([16]), torch.tensor([[1]]), torch.tensor([1]),
              pathway_mask=torch.zeros(1, 16, dtype=torch.bool))


def test_gq_quantizes_both_pathways_and_the_projections() -> None:
    model = tiny()
    prepare(model, QuantConfig.from_dict({"default": {"method": "gq", "bits": 4}}))
    names = {q.name for q in quantized_tensors(model)}
    for i in range(2):
        for n in ("large.weight_ih_l0", "large.weight_hh_l0", "small.weight_ih_l0", "small.weight_hh_l0",
                  "down_h.weight", "down_c.weight", "up_h.weight", "up_c.weight"):
            assert f"encoder.layers.{i}.{n}" in names
    # and the quantized small pathway is what the forward uses
    x, lens = feats(1, 24), torch.tensor([24])
    every = torch.ones(1, 24, dtype=torch.bool)
    with torch.no_grad():
        y_q = model.encoder(x, lens, every)[0]
    ref = tiny().encoder
    assert (y_q - ref(x, lens, every)[0]).abs().max() > 1e-4


def test_pathway_cost_counts_frames_and_macs() -> None:
    enc = tiny().encoder
    lens = torch.tensor([48, 32])
    none = enc.pathway_cost(torch.zeros(2, 48, dtype=torch.bool), lens)
    assert none["frames_small"] == 0 and none["frames_large"] == 12 + 8 and none["macs_saved"] == 0
    assert none["macs"] == none["macs_all_large"]
    mask = torch.zeros(2, 48, dtype=torch.bool)
    mask[:, :24] = True
    half = enc.pathway_cost(mask, lens)
    assert half["frames_small"] == 12 and half["frames_large"] == 8
    assert half["macs_all_large"] == none["macs_all_large"] and 0 < half["macs_saved"] < 1
    # by hand: layer 0 (input 2*80) sees 24 + 16 frames, 12 + 12 small; layer 1 (input 2*40) 12 + 8
    # frames, 6 + 6 small; each row switches once each way per layer; 20 output frames
    h, s, d = 40, 8, 32
    layer = lambda i, ns, nl, sw_s, sw_l: (nl * 4 * h * (i + h) + ns * (4 * s * (i + s) + h * s)  # noqa: E731
                                           + sw_s * 2 * h * s + sw_l * h * s)
    want = layer(160, 24, 16, 2, 2) + layer(80, 12, 8, 2, 2) + 20 * h * d
    assert half["macs"] == want


def _utt(tmp_path, name: str, seconds: float, wake_end: float | None) -> Utterance:
    wave = (np.random.default_rng(0).standard_normal(int(16000 * seconds)) * 0.1).astype(np.float32)
    path = tmp_path / f"{name}.wav"
    sf.write(path, wave, 16000)
    u = Utterance(name, str(path), "ab ba", seconds, "s0")
    u.wake_end = wake_end  # the corpus's optional field (None: no wake word)
    return u


def test_collate_gives_the_wake_word_frames_as_the_mask(tmp_path) -> None:
    utts = [_utt(tmp_path, "a", 1.0, 0.4), _utt(tmp_path, "b", 0.8, None), _utt(tmp_path, "c", 0.6, 0.255)]
    ds = AsrDataset(utts, train_tokenizer(["ab ba"], kind="char"))
    batch = collate([ds[i] for i in range(3)])
    mask = batch["pathway_mask"]
    assert mask.shape == batch["feats"].shape[:2] and mask.dtype == torch.bool
    hop, n_fft = 160, 400
    for row, u in zip(mask, utts):
        n = int(row.sum())
        assert bool(row[:n].all())  # a prefix
        if u.wake_end is None:
            assert n == 0
        else:  # the last small frame's window ends inside the wake word, the next one's after it
            assert n == wake_frames(u.wake_end) > 0
            assert (n - 1) * hop + n_fft <= u.wake_end * 16000 < n * hop + n_fft
    no_wake = collate([ds[1]])
    assert "pathway_mask" not in no_wake


def test_wake_frames_edges() -> None:
    assert wake_frames(0.0) == 0 and wake_frames(399 / 16000) == 0 and wake_frames(400 / 16000) == 1
    assert wake_frames(559 / 16000) == 1 and wake_frames(560 / 16000) == 2
    with pytest.raises(ValueError, match="wake_end"):
        wake_frames(float("nan"))


@pytest.mark.parametrize("streaming", [False, True])
def test_evaluate_uses_the_wake_word_and_reports_the_pathway_share(tmp_path, streaming: bool) -> None:
    from subbit.asr.evaluate import evaluate

    utts = [_utt(tmp_path, "a", 1.0, 0.5), _utt(tmp_path, "b", 0.8, None)]
    tok = train_tokenizer(["ab ba"], kind="char")
    torch.manual_seed(0)
    model = build_model("bifocal", "tiny", vocab_size=tok.vocab_size)
    res = evaluate(model, tok, utts, streaming=streaming)
    pw = res.extra["pathway"]
    # utterance a: wake_frames(0.5) = 48 feature frames -> 12 of its 24 encoder frames; b: none
    assert pw["frames_small"] == wake_frames(0.5) // 4 == 12 and pw["frames_large"] == 12 + 19
    assert 0 < pw["macs_saved"] < pw["share_small"] and "small pathway" in res.summary()
    # the wake-word utterances alone: a's 12 small of 24 frames, so more is saved than split-wide
    alone = evaluate(model, tok, utts[:1], streaming=streaming).extra["pathway"]
    assert pw["utts_wake"] == 1 and "on the 1 wake-word utterances" in res.summary()
    assert pw["macs_saved_wake_utts"] == pytest.approx(alone["macs_saved"])
    assert pw["macs_saved_wake_utts"] > pw["macs_saved"]
    # the same model without the wake words: all large, nothing saved
    for u in utts:
        u.wake_end = None
    none = evaluate(model, tok, utts, streaming=streaming).extra["pathway"]
    assert none["macs_saved"] == 0 and none["utts_wake"] == 0 and "macs_saved_wake_utts" not in none


@pytest.mark.slow
def test_tiny_train_export_stream(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """subbit train --model bifocal on wake-word manifests -> export -> packed streaming session."""
    import json

    from subbit.asr.train import TrainConfig, train
    from subbit.runs import export_run, load_run
    from subbit.runtime.models import PackedTransducer
    from subbit.runtime.session import StreamingSession
    from subbit.testing.dummies import make_dummy_corpus

    corpus = make_dummy_corpus(tmp_path / "corpus", n_train=8, n_eval=2)
    lines = [json.loads(x) for x in (corpus / "train.jsonl").read_text().splitlines()]
    for i, rec in enumerate(lines):
        if i % 2 == 0:  # "wake word" = the first 40% of the audio
            rec["wake_end"] = round(0.4 * rec["duration"], 4)
    (corpus / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    seen: list[int] = []
    forward = BifocalEncoder.forward

    def spy(self, feats, lens, pathway_mask=None):
        seen.append(-1 if pathway_mask is None else int(pathway_mask.sum()))
        return forward(self, feats, lens, pathway_mask)

    monkeypatch.setattr(BifocalEncoder, "forward", spy)
    cfg = TrainConfig(data=str(corpus), out=str(tmp_path / "run"), model="bifocal", preset="tiny", steps=4,
                      batch_size=4, tokenizer="char", warmup_steps=1, ckpt_every=4, progress=False, threads=1)
    assert train(cfg).steps == 4
    monkeypatch.setattr(BifocalEncoder, "forward", forward)
    assert seen and max(seen) > 0  # the train step handed the wake-word mask to the encoder

    export_run(tmp_path / "run", tmp_path / "m.subbit")
    pt = PackedTransducer.from_file(tmp_path / "m.subbit")
    model = load_run(tmp_path / "run").model
    assert pt.config["arch"] == "bifocal"
    import soundfile as sf

    from subbit.asr.data import read_manifest

    u = read_manifest(corpus / "test_seen.jsonl")[0]
    wave, _ = sf.read(u.audio, dtype="float32")
    wake_end = 0.4 * u.duration
    session = StreamingSession(pt)
    session.set_wake_end(wake_end)
    for a in range(0, len(wave), 800):
        session.accept_audio(wave[a : a + 800])
    tokens = session.finalize_tokens()
    # the fp32 export streams what the PyTorch model decodes offline with the same mask
    x = StreamingSession(pt).frontend.accept(wave)
    mask = torch.from_numpy(np.arange(x.shape[0]) < wake_frames(wake_end))[None]
    from subbit.asr.decode import decode_batch

    ref = decode_batch(model, torch.from_numpy(x)[None], torch.tensor([x.shape[0]]), pathway_mask=mask)[0]
    assert tokens == ref
    with torch.no_grad():
        y_ref, _ = model.encoder(torch.from_numpy(x)[None], torch.tensor([x.shape[0]]), mask)
    y, _ = pt.encoder.step(x, pt.encoder.init_state(wake_frames(wake_end)))
    np.testing.assert_allclose(y, y_ref[0].numpy(), atol=1e-4, rtol=0)


def test_every_parameter_gets_a_gradient_even_when_a_pathway_is_unused() -> None:
    """(DDP without find_unused_parameters needs one for every parameter in every step.)"""
    model = tiny().train()
    loss = model(feats(2, 32), torch.tensor([32, 32]), torch.tensor([[1, 2], [3, 4]]), torch.tensor([2, 2]))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing
    assert float(model.encoder.layers[1].small.weight_hh_l0.grad.abs().sum()) == 0

"""Transducer = encoder + predictor + joiner, kept as three swappable modules (icefall habit).

The encoder (``rnnt.LSTMEncoder`` or ``conformer.ConformerEncoder``) maps features to frames;
the predictor (an LSTM language model over emitted tokens) and the joiner are shared by both
architectures and live here. Streaming states are plain dicts whose tensors all have the batch
as dimension 0, so the helpers below can select or reorder them without knowing their layout.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from subbit.asr.loss import rnnt_loss, rnnt_loss_from_parts

State = dict[str, Any]


# -- helpers shared by the encoders and the decoders ----------------------------------------
def stack_frames(x: Tensor, k: int) -> Tensor:
    """``[B, T, F] -> [B, T // k, k * F]``: concatenate k consecutive frames, earliest first.

    Frames past the last multiple of ``k`` are dropped, so a stream fed in pieces gives the same
    result as long as every piece except the last holds a multiple of ``k`` frames.
    """
    b, t, f = x.shape
    n = t // k
    return x[:, : n * k].reshape(b, n, k * f)


def state_map(fn: Any, *states: Any) -> Any:
    """Apply ``fn`` leaf-wise to tensors of equally shaped state trees; other leaves are copied."""
    first = states[0]
    if isinstance(first, Tensor):
        return fn(*states)
    if isinstance(first, dict):
        return {k: state_map(fn, *(s[k] for s in states)) for k in first}
    if isinstance(first, (list, tuple)):
        return type(first)(state_map(fn, *items) for items in zip(*states))
    return copy.copy(first)


def state_select(mask: Tensor, new: Any, old: Any) -> Any:
    """Per batch row: ``new`` where ``mask`` [B] is true, else ``old``."""

    def pick(a: Tensor, b: Tensor) -> Tensor:
        m = mask.reshape(-1, *([1] * (a.dim() - 1)))
        return torch.where(m, a, b)

    return state_map(pick, new, old)


def state_index(state: Any, index: Tensor) -> Any:
    """Reorder / repeat batch rows of a state: ``leaf[index]``."""
    return state_map(lambda a: a.index_select(0, index), state)


def lstm_run(lstm: nn.LSTM, x: Tensor, h: Tensor | None, c: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Run a one-layer batch-first ``nn.LSTM``; states are ``[B, H]`` (batch first) in and out."""
    if h is None or c is None:
        y, (hn, cn) = lstm(x)
    else:
        y, (hn, cn) = lstm(x, (h.unsqueeze(0).contiguous(), c.unsqueeze(0).contiguous()))
    return y, hn.squeeze(0), cn.squeeze(0)


# -- predictor ---------------------------------------------------------------------------------
class Predictor(nn.Module):
    """LSTM "prediction network": embeds the previous token (blank = start), runs LSTM layers."""

    def __init__(self, vocab_size: int, embed_dim: int, hidden: int, layers: int,
                 dropout: float = 0.0, blank: int = 0) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"pred_layers must be >= 1, got {layers}")
        self.blank = blank
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.lstms = nn.ModuleList(
            nn.LSTM(embed_dim if i == 0 else hidden, hidden, batch_first=True) for i in range(layers)
        )
        self.dropout = nn.Dropout(dropout)
        self.output_dim = hidden

    def forward(self, targets: Tensor) -> Tensor:
        """``targets [B, U]`` -> ``[B, U + 1, P]``; row u is the output after blank + targets[:u]."""
        start = targets.new_full((targets.size(0), 1), self.blank)
        x = self.dropout(self.embed(torch.cat([start, targets], dim=1)))
        for lstm in self.lstms:
            x, _, _ = lstm_run(lstm, x, None, None)
            x = self.dropout(x)
        return x

    def init_state(self, batch_size: int) -> State:
        p = self.embed.weight
        z = p.new_zeros(batch_size, self.output_dim)
        return {"h": [z.clone() for _ in self.lstms], "c": [z.clone() for _ in self.lstms]}

    def step(self, tokens: Tensor, state: State) -> tuple[Tensor, State]:
        """One token per row: ``tokens [B]`` -> ``(out [B, P], new state)``."""
        x = self.embed(tokens.reshape(-1, 1))
        hs, cs = [], []
        for i, lstm in enumerate(self.lstms):
            x, h, c = lstm_run(lstm, x, state["h"][i], state["c"][i])
            hs.append(h)
            cs.append(c)
        return x[:, 0], {"h": hs, "c": cs}


# -- joiner ------------------------------------------------------------------------------------
class Joiner(nn.Module):
    """``out(tanh(enc_proj(enc) + pred_proj(pred)))``; projections are applied before broadcasting."""

    def __init__(self, enc_dim: int, pred_dim: int, joiner_dim: int, vocab_size: int) -> None:
        super().__init__()
        self.enc_proj = nn.Linear(enc_dim, joiner_dim)
        self.pred_proj = nn.Linear(pred_dim, joiner_dim)
        self.out = nn.Linear(joiner_dim, vocab_size)

    def project_enc(self, enc: Tensor) -> Tensor:
        return self.enc_proj(enc)

    def project_pred(self, pred: Tensor) -> Tensor:
        return self.pred_proj(pred)

    def join(self, enc_p: Tensor, pred_p: Tensor) -> Tensor:
        """Logits from already projected inputs (decoders project each frame / token once)."""
        return self.out(torch.tanh_(enc_p + pred_p))  # in place: the sum is a fresh temporary

    def forward(self, enc: Tensor, pred: Tensor) -> Tensor:
        """``enc [..., D]``, ``pred [..., P]`` (broadcastable leading dims) -> ``[..., V]``."""
        return self.join(self.project_enc(enc), self.project_pred(pred))


# -- the whole model ---------------------------------------------------------------------------
class Transducer(nn.Module):
    """RNN-T model. ``forward`` returns the training loss; ``config`` rebuilds it exactly
    (``subbit.asr.models.build_from_config``)."""

    def __init__(self, encoder: nn.Module, predictor: Predictor, joiner: Joiner, config: dict[str, Any]) -> None:
        super().__init__()
        self.encoder = encoder
        self.predictor = predictor
        self.joiner = joiner
        self._config = dict(config)
        w = check_ctc_weight(self._config.get("ctc_weight", 0.0))
        # training-only auxiliary CTC head on the encoder output: CTC learns the audio-text
        # alignment far faster than RNN-T from scratch, which stops the predictor from
        # memorising text while the encoder is still useless. Decoders and the runtime ignore it.
        self.ctc_head = nn.Linear(encoder.output_dim, int(self._config["vocab_size"])) if w > 0 else None

    @property
    def config(self) -> dict[str, Any]:
        """JSON-able dict with every hyperparameter (a copy: editing it changes nothing)."""
        return copy.deepcopy(self._config)

    @property
    def blank(self) -> int:
        return int(self._config.get("blank", 0))

    @property
    def vocab_size(self) -> int:
        return int(self._config["vocab_size"])

    @property
    def ctc_weight(self) -> float:
        return float(self._config.get("ctc_weight", 0.0))

    def without_ctc(self) -> "Transducer":
        """The deployable model: same modules (shared), no CTC head, no ``ctc_weight`` in the config
        (so exporters and the runtime see exactly the tensors they know)."""
        cfg = {k: v for k, v in self._config.items() if k != "ctc_weight"}
        out = Transducer(self.encoder, self.predictor, self.joiner, cfg)
        out.train(self.training)
        return out

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """As ``nn.Module``'s, but a model without a CTC head accepts (drops) ``ctc_head.*`` tensors,
        so training checkpoints of a CTC run load into its deployable model."""
        if self.ctc_head is None:
            state_dict = {k: v for k, v in state_dict.items() if not k.startswith("ctc_head.")}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def encode(self, feats: Tensor, feat_lens: Tensor) -> tuple[Tensor, Tensor]:
        return self.encoder(feats, feat_lens)

    def forward(self, feats: Tensor, feat_lens: Tensor, targets: Tensor, target_lens: Tensor,
                pathway_mask: Tensor | None = None) -> Tensor:
        """Scalar training loss.

        Normalisation (config ``loss_norm``): ``"utterance"`` (default) = mean NLL per utterance
        (torchaudio's "mean"); ``"token"`` = summed NLL / (target tokens + one final blank per
        utterance). Same weighting of utterances, different per-batch scale; with AdamW and
        gradient clipping at 5, "utterance" reached a lower token error in 6 of 6 paired runs
        of a synthetic task (docs/models.md, section 7). Config ``loss_chunk_frames`` > 0 builds
        the joiner lattice that many frames at a time under checkpointing (memory for speed).
        """
        b = feats.size(0)
        if targets.dim() != 2 or targets.size(0) != b:
            raise ValueError(f"targets must be [B, U] with B={b}, got {tuple(targets.shape)}")
        if feat_lens.shape != (b,) or (b and int(feat_lens.max()) > feats.size(1)):
            raise ValueError(f"feat_lens must be [B={b}] with values <= T={feats.size(1)}, got {feat_lens.tolist()}")
        if target_lens.shape != (b,) or (b and int(target_lens.max()) > targets.size(1)):
            raise ValueError(f"target_lens must be [B={b}] with values <= U={targets.size(1)}, "
                             f"got {target_lens.tolist()}")
        u_max = int(target_lens.max()) if target_lens.numel() else 0
        targets = targets[:, :u_max]
        # pathway_mask [B, T]: per-frame pathway choice, only for encoders that take one (bifocal)
        enc, enc_lens = (self.encoder(feats, feat_lens) if pathway_mask is None
                         else self.encoder(feats, feat_lens, pathway_mask=pathway_mask))
        if enc_lens.numel() and int(enc_lens.min()) < 1:
            raise ValueError(
                "feat_lens: some utterance is shorter than one encoder frame "
                f"(subsampling {getattr(self.encoder, 'subsampling', '?')}); min feat_len={int(feat_lens.min())}"
            )
        pred = self.predictor(targets)
        chunk = int(self._config.get("loss_chunk_frames", 0))
        if chunk:  # lattice built a few frames at a time, recomputed in backward (large V or U)
            nll = rnnt_loss_from_parts(enc, pred, self.joiner, targets, enc_lens, target_lens,
                                       blank=self.blank, reduction="none", frames_per_chunk=chunk)
        else:
            logits = self.joiner(enc.unsqueeze(2), pred.unsqueeze(1))
            nll = rnnt_loss(logits, targets, enc_lens, target_lens, blank=self.blank, reduction="none")
        loss = self._normalise(nll, target_lens)
        if self.ctc_head is not None:
            loss = loss + self.ctc_weight * self._normalise(self.ctc_nll(enc, enc_lens, targets, target_lens),
                                                            target_lens)
        return loss

    def ctc_nll(self, enc: Tensor, enc_lens: Tensor, targets: Tensor, target_lens: Tensor) -> Tensor:
        """Per-utterance CTC negative log-likelihood of the auxiliary head (``[B]``).

        Utterances with more labels than encoder frames can have no CTC path; their loss is
        zeroed (``zero_infinity``) instead of poisoning the batch.
        """
        if self.ctc_head is None:
            raise ValueError("this model has no CTC head (config ctc_weight is 0)")
        logp = F.log_softmax(self.ctc_head(enc).float(), dim=-1).transpose(0, 1)  # [T, B, V]
        return F.ctc_loss(logp, targets, enc_lens, target_lens, blank=self.blank, reduction="none",
                          zero_infinity=True)

    def _normalise(self, nll: Tensor, target_lens: Tensor) -> Tensor:
        norm = self._config.get("loss_norm", "utterance")
        if norm == "token":
            return nll.sum() / (target_lens.sum() + target_lens.numel()).clamp(min=1).to(nll.dtype)
        if norm == "utterance":
            return nll.mean()
        raise ValueError(f"config loss_norm must be 'token' or 'utterance', got {norm!r}")


def check_ctc_weight(value: Any) -> float:
    """``ctc_weight`` must be a number in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= float(value) < 1:
        raise ValueError(f"model config field 'ctc_weight' must be a number in [0, 1), got {value!r}")
    return float(value)


__all__ = [
    "Joiner", "Predictor", "State", "Transducer", "check_ctc_weight", "lstm_run", "stack_frames",
    "state_index", "state_map", "state_select",
]

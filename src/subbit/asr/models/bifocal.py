"""Bifocal LSTM encoder: per frame, a large or a small LSTM pathway, chosen by a keyword spotter.

A reconstruction after Macoskey, Strimel, Rastrow, "Bifocal Neural ASR: Exploiting Keyword
Spotting for Inference Optimization" (ICASSP 2021, arXiv 2108.01704): the paper's cell
equations are not in our notes, so every choice below is ours (docs/models.md, section 3b).

Each layer holds a large LSTM (``enc_hidden`` units) and a small one (``small_hidden`` units).
The layer's output is always ``enc_hidden`` wide. While consecutive frames stay on one pathway,
that pathway's LSTM runs on its own (h, c); at a switch the state crosses over through bias-free
projections (``down_h``/``down_c`` large -> small, ``up_h``/``up_c`` small -> large), and a
small frame's output is ``up_h(h_small)``, so the large cell always continues from the previous
frame's output. The choice is a boolean per *input feature frame* (True = small); a stacked
frame runs small only if every frame it stacks is small. Training takes the mask from the
manifest's ``wake_end`` (ground-truth keyword spotting); inference from the caller (default:
all frames large, i.e. exactly the large LSTM encoder).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .rnnt import _check_feats, init_stacking
from .transducer import State, lstm_run, stack_frames

#: config keys of the bifocal encoder (the LSTM encoder's plus ``small_hidden``)
BIFOCAL_KEYS = ("stack", "enc_hidden", "small_hidden", "enc_layers", "enc_dim", "stack2", "stack2_after",
                "chunk_frames")


def stack_mask(mask: Tensor, k: int) -> Tensor:
    """``[B, T] -> [B, T // k]``: a stacked frame is small only if all ``k`` frames it joins are."""
    b, t = mask.shape
    n = t // k
    return mask[:, : n * k].reshape(b, n, k).all(dim=-1)


class BifocalLSTMLayer(nn.Module):
    """One bifocal layer: ``large`` / ``small`` one-layer LSTMs and the four state projections."""

    def __init__(self, in_dim: int, hidden: int, small_hidden: int) -> None:
        super().__init__()
        self.hidden, self.small_hidden = hidden, small_hidden
        self.large = nn.LSTM(in_dim, hidden, batch_first=True)
        self.small = nn.LSTM(in_dim, small_hidden, batch_first=True)
        # bias-free, so the zero start state is the same on both pathways
        self.down_h = nn.Linear(hidden, small_hidden, bias=False)
        self.down_c = nn.Linear(hidden, small_hidden, bias=False)
        self.up_h = nn.Linear(small_hidden, hidden, bias=False)
        self.up_c = nn.Linear(small_hidden, hidden, bias=False)

    def init_state(self, batch_size: int) -> State:
        p = self.up_h.weight
        return {"h": p.new_zeros(batch_size, self.hidden), "c": p.new_zeros(batch_size, self.hidden),
                "hs": p.new_zeros(batch_size, self.small_hidden), "cs": p.new_zeros(batch_size, self.small_hidden),
                "small": torch.zeros(batch_size, dtype=torch.bool, device=p.device)}

    def forward(self, x: Tensor, small: Tensor, state: State) -> tuple[Tensor, State]:
        """``x [B, T, I]``, ``small [B, T]`` bool -> ``(y [B, T, hidden], new state)``.

        Time is cut where any row switches pathway; inside each piece every row keeps one
        pathway, so each pathway's LSTM runs once per piece on the rows that use it.
        """
        b, t, _ = x.shape
        if t == 0:
            return x.new_zeros(b, 0, self.hidden), state
        cuts = [0] + (torch.nonzero((small[:, 1:] != small[:, :-1]).any(dim=0)).flatten() + 1).tolist() + [t]
        h, c, hs, cs, prev = state["h"], state["c"], state["hs"], state["cs"], state["small"]
        pieces = []
        for a, e in zip(cuts[:-1], cuts[1:]):
            now = small[:, a]
            y = x.new_zeros(b, e - a, self.hidden)
            rows_s = torch.nonzero(now).flatten()
            rows_l = torch.nonzero(~now).flatten()
            new_h, new_c, new_hs, new_cs = h, c, hs, cs
            if rows_s.numel():
                h0, c0 = hs.index_select(0, rows_s), cs.index_select(0, rows_s)
                cross = ~prev.index_select(0, rows_s)  # large -> small: project the state down
                if bool(cross.any()):
                    m = cross.unsqueeze(1)
                    h0 = torch.where(m, self.down_h(h.index_select(0, rows_s)), h0)
                    c0 = torch.where(m, self.down_c(c.index_select(0, rows_s)), c0)
                ys, hn, cn = lstm_run(self.small, x.index_select(0, rows_s)[:, a:e], h0, c0)
                y = y.index_copy(0, rows_s, self.up_h(ys))
                new_hs, new_cs = hs.index_copy(0, rows_s, hn), cs.index_copy(0, rows_s, cn)
            if rows_l.numel():
                h0, c0 = h.index_select(0, rows_l), c.index_select(0, rows_l)
                cross = prev.index_select(0, rows_l)  # small -> large: project the state up
                if bool(cross.any()):
                    m = cross.unsqueeze(1)
                    hs_l = hs.index_select(0, rows_l)
                    h0 = torch.where(m, self.up_h(hs_l), h0)
                    c0 = torch.where(m, self.up_c(cs.index_select(0, rows_l)), c0)
                yl, hn, cn = lstm_run(self.large, x.index_select(0, rows_l)[:, a:e], h0, c0)
                y = y.index_copy(0, rows_l, yl)
                new_h, new_c = h.index_copy(0, rows_l, hn), c.index_copy(0, rows_l, cn)
            h, c, hs, cs, prev = new_h, new_c, new_hs, new_cs, now
            pieces.append(y)
        return torch.cat(pieces, dim=1), {"h": h, "c": c, "hs": hs, "cs": cs, "small": prev}


class BifocalEncoder(nn.Module):
    """stack(``stack``) -> bifocal LSTM layers (optional 2nd stacking) -> Linear(enc_hidden, out_dim).

    Same layout and streaming contract as :class:`~subbit.asr.models.rnnt.LSTMEncoder`, plus a
    per-feature-frame ``pathway_mask`` (True = small pathway; absent = all large).
    """

    accepts_pathway_mask = True

    def __init__(self, n_mels: int, stack: int, hidden: int, small_hidden: int, layers: int, out_dim: int,
                 stack2: int = 1, stack2_after: int = 0, dropout: float = 0.0,
                 chunk_frames: int | None = None) -> None:
        super().__init__()
        if not 1 <= small_hidden <= hidden:
            raise ValueError(f"small_hidden must be in 1..enc_hidden={hidden}, got {small_hidden}")
        widths = init_stacking(self, n_mels, stack, layers, hidden, stack2, stack2_after, chunk_frames)
        self.hidden, self.small_hidden = hidden, small_hidden
        self.output_dim = out_dim
        self.layers = nn.ModuleList(BifocalLSTMLayer(w, hidden, small_hidden) for w in widths)
        self.proj = nn.Linear(hidden, out_dim)
        self.dropout = nn.Dropout(dropout)

    def _mask(self, feats: Tensor, pathway_mask: Tensor | None) -> Tensor:
        b, t = feats.shape[:2]
        if pathway_mask is None:
            return torch.zeros(b, t, dtype=torch.bool, device=feats.device)
        if pathway_mask.shape != (b, t):
            raise ValueError(f"pathway_mask must be [B, T] = [{b}, {t}] (one per feature frame), "
                             f"got {tuple(pathway_mask.shape)}")
        return pathway_mask.to(device=feats.device, dtype=torch.bool)

    def forward(self, feats: Tensor, lens: Tensor, pathway_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``feats [B, T, F]``, ``lens [B]``, ``pathway_mask [B, T]`` -> ``(enc [B, T', D], lens')``."""
        _check_feats(feats, self.n_mels)
        mask = stack_mask(self._mask(feats, pathway_mask), self.stack)
        x = stack_frames(feats, self.stack)
        lens = torch.div(lens, self.stack, rounding_mode="floor")
        for i, layer in enumerate(self.layers):
            if i == self.stack2_after:
                x, mask = stack_frames(x, self.stack2), stack_mask(mask, self.stack2)
                lens = torch.div(lens, self.stack2, rounding_mode="floor")
            if x.size(1) == 0:
                return x.new_zeros(x.size(0), 0, self.output_dim), lens
            x, _ = layer(x, mask, layer.init_state(x.size(0)))
            x = self.dropout(x)
        out = self.proj(x)
        if self.training and torch.is_grad_enabled():
            # every parameter joins the graph (a zero gradient where a pathway or projection was not
            # used by this batch), so DDP without find_unused_parameters gets all the gradients it waits for
            out = out + 0.0 * sum(p.sum() for p in self.layers.parameters())
        return out, lens

    # -- streaming ---------------------------------------------------------------------------
    def init_state(self, batch_size: int, small_frames: int | Tensor = 0) -> State:
        """``small_frames``: feature frames from the start of the stream that run small (the
        keyword spotter's wake-word end, see :func:`wake_frames`); 0 = all large."""
        p = self.proj.weight
        until = torch.as_tensor(small_frames, dtype=torch.int64).reshape(-1).expand(batch_size).clone()
        return {
            "pending": p.new_zeros(batch_size, 0, self.n_mels),
            "pending_mask": torch.zeros(batch_size, 0, dtype=torch.bool, device=p.device),
            "pending2": p.new_zeros(batch_size, 0, self.hidden),
            "pending2_mask": torch.zeros(batch_size, 0, dtype=torch.bool, device=p.device),
            "pos": torch.zeros(batch_size, dtype=torch.int64),
            "small_until": until,
            "layers": [layer.init_state(batch_size) for layer in self.layers],
        }

    def step(self, feats_chunk: Tensor, state: State, pathway_mask: Tensor | None = None) -> tuple[Tensor, State]:
        """Consume any number of new frames; return the encoder frames they complete.

        ``pathway_mask [B, t]`` picks the pathway of these frames; without it a frame runs small
        when its stream position is below the state's ``small_until``."""
        _check_feats(feats_chunk, self.n_mels)
        b, t = feats_chunk.shape[:2]
        if pathway_mask is None:
            pos = state["pos"].unsqueeze(1) + torch.arange(t).unsqueeze(0)
            pathway_mask = pos < state["small_until"].unsqueeze(1)
        m = torch.cat([state["pending_mask"], self._mask(feats_chunk, pathway_mask)], dim=1)
        x = torch.cat([state["pending"], feats_chunk], dim=1)
        n = x.size(1) // self.stack * self.stack
        new: State = {"pending": x[:, n:], "pending_mask": m[:, n:], "pending2": state["pending2"],
                      "pending2_mask": state["pending2_mask"], "pos": state["pos"] + t,
                      "small_until": state["small_until"], "layers": list(state["layers"])}
        x, m = stack_frames(x[:, :n], self.stack), stack_mask(m[:, :n], self.stack)
        for i, layer in enumerate(self.layers):
            if i == self.stack2_after:
                x, m = torch.cat([new["pending2"], x], dim=1), torch.cat([new["pending2_mask"], m], dim=1)
                n2 = x.size(1) // self.stack2 * self.stack2
                new["pending2"], new["pending2_mask"] = x[:, n2:], m[:, n2:]
                x, m = stack_frames(x[:, :n2], self.stack2), stack_mask(m[:, :n2], self.stack2)
            if x.size(1) == 0:
                return x.new_zeros(x.size(0), 0, self.output_dim), new
            x, new["layers"][i] = layer(x, m, state["layers"][i])
        return self.proj(x), new

    def flush(self, state: State) -> tuple[Tensor, State]:
        """End of stream: leftover frames (fewer than one stack) are dropped, as in ``forward``."""
        return self.proj.weight.new_zeros(state["pending"].size(0), 0, self.output_dim), state

    # -- cost --------------------------------------------------------------------------------
    def layer_masks(self, pathway_mask: Tensor, lens: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Per layer: ``(small [B, T_i], valid [B, T_i])`` at that layer's frame rate."""
        m = stack_mask(pathway_mask.bool(), self.stack)
        lens = torch.div(lens, self.stack, rounding_mode="floor")
        out = []
        for i in range(len(self.layers)):
            if i == self.stack2_after:
                m = stack_mask(m, self.stack2)
                lens = torch.div(lens, self.stack2, rounding_mode="floor")
            valid = torch.arange(m.size(1)).unsqueeze(0) < lens.unsqueeze(1)
            out.append((m & valid, valid))
        return out

    def pathway_cost(self, pathway_mask: Tensor, lens: Tensor) -> dict[str, Any]:
        """Frames on each pathway and encoder multiply-accumulates (matmuls only) of these
        utterances, against the same utterances run all-large (docs/models.md, section 3b)."""
        return pathway_cost(self, pathway_mask, lens)


def _layer_in(enc: BifocalEncoder, i: int) -> int:
    return enc.layers[i].large.input_size


def pathway_cost(enc: BifocalEncoder, pathway_mask: Tensor, lens: Tensor) -> dict[str, Any]:
    """See :meth:`BifocalEncoder.pathway_cost`. MACs per layer frame: large ``4H(I + H)``;
    small ``4S(I + S) + HS`` (the output projection ``up_h``); a switch large -> small adds
    ``2HS`` (``down_h``, ``down_c``), small -> large ``HS`` (``up_c``); plus ``H D`` for the
    final projection per encoder frame."""
    h, s, d = enc.hidden, enc.small_hidden, enc.output_dim
    small_frames = large_frames = 0
    macs = macs_large = 0
    for i, (small, valid) in enumerate(enc.layer_masks(pathway_mask, lens)):
        n_in = _layer_in(enc, i)
        ns, nv = int(small.sum()), int(valid.sum())
        nl = nv - ns
        prev = torch.cat([torch.zeros_like(small[:, :1]), small[:, :-1]], dim=1)
        to_small = int((small & ~prev & valid).sum())
        to_large = int((~small & prev & valid).sum())
        macs += nl * 4 * h * (n_in + h) + ns * (4 * s * (n_in + s) + h * s) + to_small * 2 * h * s + to_large * h * s
        macs_large += nv * 4 * h * (n_in + h)
        if i == len(enc.layers) - 1:
            small_frames, large_frames = ns, nl
            macs += nv * h * d
            macs_large += nv * h * d
    total = small_frames + large_frames
    return {"frames_small": small_frames, "frames_large": large_frames,
            "share_small": small_frames / total if total else 0.0,
            "macs": macs, "macs_all_large": macs_large,
            "macs_saved": 1.0 - macs / macs_large if macs_large else 0.0}


def build_bifocal_encoder(c: dict[str, Any]) -> BifocalEncoder:
    """The encoder from a checked model config (``arch = "bifocal"``)."""
    return BifocalEncoder(c["n_mels"], c["stack"], c["enc_hidden"], c["small_hidden"], c["enc_layers"],
                          c["enc_dim"], c["stack2"], c["stack2_after"], c["dropout"], c.get("chunk_frames"))


#: named sizes: the LSTM RNN-T's encoder with a small pathway of about a quarter of its width
BIFOCAL_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"stack": 2, "enc_hidden": 40, "small_hidden": 8, "enc_layers": 2, "enc_dim": 32, "stack2": 2,
             "stack2_after": 1, "chunk_frames": 4},
    "small": {"stack": 4, "enc_hidden": 256, "small_hidden": 64, "enc_layers": 2, "enc_dim": 256, "stack2": 1,
              "stack2_after": 0, "chunk_frames": 4},
    "paper": {"stack": 3, "enc_hidden": 1024, "small_hidden": 256, "enc_layers": 5, "enc_dim": 512, "stack2": 2,
              "stack2_after": 2, "chunk_frames": 6},
}

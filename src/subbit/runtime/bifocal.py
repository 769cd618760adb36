"""The Bifocal RNN-T encoder of the packed runtime (docs/models.md, section 3b).

Each layer has a large and a small LSTM pathway joined by bias-free state projections; which
one a frame runs is given per feature frame (a keyword spotter's wake word runs small, see
:func:`wake_frames`). Mirrors ``subbit.asr.models.bifocal`` with the same parameter names.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from subbit.export.manifest import is_finite_number
from subbit.runtime.arch import bad_arch, cfg_int, check_dims, take_stacks
from subbit.runtime.encoders import StackedEncoder, State
from subbit.runtime.layers import Array, PackedLSTM, WeightStore


def wake_frames(wake_end: float, sample_rate: int = 16000, n_fft: int = 400, hop: int = 160) -> int:
    """Feature frames whose whole window ``[t*hop, t*hop + n_fft)`` ends by ``wake_end`` seconds:
    the frames a keyword spotter's wake word covers (the bifocal encoder runs them small)."""
    if not is_finite_number(wake_end):
        raise ValueError(f"wake_end must be a finite number of seconds, got {wake_end!r:.40}")
    end = int(round(float(wake_end) * sample_rate))
    return 0 if end < n_fft else (end - n_fft) // hop + 1


def _take_mask_stacks(pending: Array, m: Array, k: int) -> tuple[Array, Array]:
    """:func:`~subbit.runtime.arch.take_stacks` for the pathway mask ``[T]``: a stacked frame is
    small only if every frame it joins is."""
    m = np.concatenate([pending, m])
    n = m.shape[0] // k * k
    return m[:n].reshape(-1, k).all(axis=1), m[n:]


class BifocalLayer:
    """Large and small LSTM pathways with bias-free state projections (docs/models.md, section 3b)."""

    def __init__(self, store: WeightStore, prefix: str) -> None:
        self.large = PackedLSTM.from_store(store, f"{prefix}.large").layers
        self.small = PackedLSTM.from_store(store, f"{prefix}.small").layers
        if len(self.large) != 1 or len(self.small) != 1:
            raise bad_arch(f"{prefix}: a bifocal pathway is a one-layer LSTM")
        self.large, self.small = self.large[0], self.small[0]
        self.down_h, self.down_c, self.up_h, self.up_c = (
            store.linear(f"{prefix}.{n}", bias=False) for n in ("down_h", "down_c", "up_h", "up_c"))
        h, s = self.large.hidden, self.small.hidden
        check_dims(f"{prefix}.small input size", self.small.ih.in_features, self.large.ih.in_features)
        for lin, name, (i, o) in ((self.down_h, "down_h", (h, s)), (self.down_c, "down_c", (h, s)),
                                  (self.up_h, "up_h", (s, h)), (self.up_c, "up_c", (s, h))):
            check_dims(f"{prefix}.{name} input size", lin.in_features, i)
            check_dims(f"{prefix}.{name} output size", lin.out_features, o)
        self.hidden, self.small_hidden, self.in_features = h, s, self.large.ih.in_features
        self.output_size = h

    def init_state(self) -> State:
        z, zs = np.zeros(self.hidden, np.float32), np.zeros(self.small_hidden, np.float32)
        return {"h": z, "c": z, "hs": zs, "cs": zs, "small": False}

    def __call__(self, x: Array, small: Array, state: State) -> tuple[Array, State]:
        """``x [T, I]``, ``small [T]`` bool -> ``(y [T, hidden], state)``; pieces of one pathway at a time."""
        st = dict(state)
        ys = []
        cuts = [0, *(np.flatnonzero(small[1:] != small[:-1]) + 1).tolist(), x.shape[0]]
        for a, e in zip(cuts[:-1], cuts[1:]):
            if small[a]:
                if not st["small"]:  # large -> small
                    st["hs"], st["cs"] = self.down_h(st["h"][None])[0], self.down_c(st["c"][None])[0]
                y, st["hs"], st["cs"] = self.small(x[a:e], st["hs"], st["cs"])
                ys.append(self.up_h(y))
            else:
                if st["small"]:  # small -> large
                    st["h"], st["c"] = self.up_h(st["hs"][None])[0], self.up_c(st["cs"][None])[0]
                y, st["h"], st["c"] = self.large(x[a:e], st["h"], st["c"])
                ys.append(y)
            st["small"] = bool(small[a])
        return np.concatenate(ys) if ys else np.zeros((0, self.hidden), np.float32), st

    @property
    def nbytes(self) -> int:
        return self.large.nbytes + self.small.nbytes + sum(
            lin.nbytes for lin in (self.down_h, self.down_c, self.up_h, self.up_c))


class BifocalEncoder(StackedEncoder):
    """stack -> bifocal layers (second stacking before ``stack2_after``) -> Linear projection.

    The pathway of each feature frame comes from ``step``'s ``pathway_mask`` or, without one,
    from the state's ``small_until`` (frames before it run small; 0 = all large)."""

    def __init__(self, store: WeightStore, cfg: dict[str, Any], prefix: str = "encoder") -> None:
        super().__init__(store, cfg, prefix, "layers", BifocalLayer)
        check_dims("manifest arch.small_hidden", self.layers[0].small_hidden, cfg_int(cfg, "small_hidden"))

    def init_state(self, small_frames: int = 0) -> State:
        """``small_frames``: stream frames from the start that run small (see :func:`wake_frames`)."""
        return {
            **self._pending(), "pending_mask": np.zeros(0, bool), "pending2_mask": np.zeros(0, bool),
            "pos": 0, "small_until": int(small_frames),
            "layers": [layer.init_state() for layer in self.layers],
        }

    def step(self, feats: Array, state: State, pathway_mask: Array | None = None) -> tuple[Array, State]:
        """Consume frames ``[t, n_mels]`` (and their pathway, True = small); return completed encoder frames."""
        t = feats.shape[0]
        if pathway_mask is None:
            pathway_mask = state["pos"] + np.arange(t) < state["small_until"]
        pathway_mask = np.asarray(pathway_mask, bool)
        if pathway_mask.shape != (t,):
            raise ValueError(f"pathway_mask must have one entry per frame ({t}), got shape {pathway_mask.shape}")
        new: State = {**state, "pos": state["pos"] + t, "layers": list(state["layers"])}
        x, new["pending"] = take_stacks(state["pending"], feats, self.stack)
        m, new["pending_mask"] = _take_mask_stacks(state["pending_mask"], pathway_mask, self.stack)
        for i, layer in enumerate(self.layers):
            if i == self.stack2_after:
                x, new["pending2"] = take_stacks(new["pending2"], x, self.stack2)
                m, new["pending2_mask"] = _take_mask_stacks(new["pending2_mask"], m, self.stack2)
            if x.shape[0] == 0:
                return self._empty(), new
            x, new["layers"][i] = layer(x, m, state["layers"][i])
        return self.proj(x), new

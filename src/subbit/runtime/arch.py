"""The arch config of a ``.subbit`` file as the runtime reads it: every integer it allocates or
indexes with is checked against :data:`ARCH_LIMITS`, and every width the config implies against
the tensors, before anything is built (docs/format.md, "Runtime limits"). A file that fails is
refused with :class:`~subbit.export.manifest.SubbitFormatError`. Also the frame stacking the
encoders share."""

from __future__ import annotations

from typing import Any

import numpy as np

from subbit.export.manifest import SubbitFormatError

Array = np.ndarray

#: ranges of the arch fields the runtime allocates or indexes with (docs/format.md, "Runtime
#: limits"); a real model is far inside them, a file outside them is refused before any allocation
ARCH_LIMITS: dict[str, tuple[int, int]] = {
    "n_mels": (1, 512), "stack": (1, 64), "stack2": (1, 64), "stack2_after": (0, 63), "enc_layers": (1, 64),
    "pred_layers": (1, 64), "n_blocks": (1, 64), "d_model": (1, 8192), "n_heads": (1, 256),
    "chunk_size": (1, 4096), "left_chunks": (0, 4096), "conv_kernel": (1, 1024), "vocab_size": (2, 1 << 20),
    "blank": (0, (1 << 20) - 1), "chunk_frames": (0, 1 << 16), "small_hidden": (1, 1 << 16),
}  # fmt: skip


def bad_arch(msg: str) -> SubbitFormatError:
    """The error of a file whose arch config the runtime cannot build."""
    return SubbitFormatError(msg)


def cfg_int(cfg: dict[str, Any], key: str, default: int | None = None) -> int:
    """``cfg[key]`` as an int inside :data:`ARCH_LIMITS` (``default`` when absent or null)."""
    v = cfg.get(key)
    if v is None:
        if default is None:
            raise bad_arch(f"manifest arch: no field {key!r}")
        return default
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
        raise bad_arch(f"manifest arch.{key}: must be an integer, got {v!r:.40}")
    lo, hi = ARCH_LIMITS.get(key, (-(1 << 31), 1 << 31))
    if not lo <= int(v) <= hi:
        raise bad_arch(f"manifest arch.{key}: {int(v)} outside [{lo}, {hi}]")
    return int(v)


def check_dims(where: str, got: int, want: int) -> None:
    """A width the tensors have (``got``) against the one the config implies (``want``)."""
    if got != want:
        raise bad_arch(f"manifest arch / tensors disagree: {where} is {got}, the config implies {want}")


def stack_frames(x: Array, k: int) -> Array:
    """``[T, F] -> [T // k, k * F]`` (earliest frame first), like the torch model's stack_frames."""
    n = x.shape[0] // k
    return np.ascontiguousarray(x[: n * k].reshape(n, k * x.shape[1]))


def take_stacks(pending: Array, x: Array, k: int) -> tuple[Array, Array]:
    """``pending`` then ``x`` as whole stacks of ``k`` frames ``[n, k * F]``, and the frames left over."""
    x = np.concatenate([pending, x], axis=0)
    n = x.shape[0] // k * k
    return stack_frames(x[:n], k), x[n:]

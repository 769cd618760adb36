"""docs/quantize-your-model.md: every Python block runs as written (a fresh namespace each)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "quantize-your-model.md"
BLOCKS = re.findall(r"```python\n(.*?)```", GUIDE.read_text(encoding="utf-8"), flags=re.S)


def test_the_guide_has_the_transformer_and_gru_examples():
    assert len(BLOCKS) == 2
    assert "nn.TransformerEncoderLayer" in BLOCKS[0] and "nn.GRU" in BLOCKS[1]


@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=["transformer", "gru"][: len(BLOCKS)])
def test_guide_block_runs(index, capsys):
    torch.set_num_threads(1)
    namespace: dict = {"__name__": f"guide_block_{index}"}
    exec(compile(BLOCKS[index], f"{GUIDE.name}[block {index}]", "exec"), namespace)  # noqa: S102
    model = namespace["model"]
    from subbit.quant import quantized_tensors

    qts = quantized_tensors(model)
    assert qts and all(qt.quantizer.is_converted for qt in qts)
    for qt in qts:  # training reached every latent weight and its centroids
        assert qt.latent.grad is not None and qt.latent.grad.abs().sum() > 0, qt.name
        assert qt.quantizer.theta.grad is not None, qt.name

"""The issue's "done when": mixed-bit GQ on Linear + 2-layer LSTM + Conv1d + Embedding, 300 steps."""

import importlib.util
from pathlib import Path

import pytest
import torch

from subbit.quant import quantized_tensors

torch.set_num_threads(1)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "quant_toy.py"


def load_example():
    spec = importlib.util.spec_from_file_location("quant_toy", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


@pytest.fixture(scope="module")
def outcome():
    return load_example().run(steps=300, seed=0, progress=False)


def test_bits_follow_the_rules_and_values_fit(outcome):
    bits = {qt.name: qt.quantizer.bits for qt in quantized_tensors(outcome["model"])}
    assert bits == {
        "emb.weight": 8, "lstm.weight_ih_l0": 4, "lstm.weight_hh_l0": 4, "lstm.weight_ih_l1": 4,
        "lstm.weight_hh_l1": 1, "conv.weight": 4, "head_out.weight": 5,
    }
    for name, (distinct, b) in outcome["distinct"].items():
        assert distinct <= 2**b, name


def test_centroids_moved_and_weights_sit_on_them(outcome):
    assert all(shift > 1e-3 for shift in outcome["centroid_shift"].values()), outcome["centroid_shift"]
    for row in outcome["report"].rows:
        assert row.hardness == 1.0 and row.tau == pytest.approx(1e-3)
    # at tau_end the soft forward (before convert) equals the hard one (after convert)
    assert outcome["soft_hard_max_diff"] < 1e-4
    assert outcome["hard_loss"] < outcome["start_loss"]


def test_report_lists_every_tensor(outcome):
    rep = outcome["report"]
    names = [qt.name for qt in quantized_tensors(outcome["model"])]
    assert [r.name for r in rep.rows] == names and len(names) == 7
    assert rep.float_tensors == [] and rep.unmatched_rules == []
    text = str(rep)
    assert all(n in text for n in names)

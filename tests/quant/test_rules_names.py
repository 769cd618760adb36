"""Rules as users write them: exact module names, regexes over parameter names (issue 12 item 6)."""

import torch
from torch import nn

from subbit.quant import QuantConfig, prepare, prepare_info, quantized_tensors


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(4, 4, num_layers=2)
        self.proj = nn.Linear(4, 4)


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.encoder = Encoder()
        self.head = nn.Linear(4, 10)


def bits_of(model):
    return {qt.name: qt.quantizer.bits for qt in quantized_tensors(model)}


def test_exact_module_name_rule_matches_its_weights():
    m = prepare(Model(), QuantConfig.from_dict({"default": {"bits": 4}, "rules": {"emb": {"bits": 8}, "encoder.lstm": {"bits": 2}}}))
    info = prepare_info(m)
    assert info.unmatched_rules == []
    b = bits_of(m)
    assert b["emb.weight"] == 8 and b["head.weight"] == 4
    assert all(b[f"encoder.lstm.weight_{k}_l{i}"] == 2 for k in ("ih", "hh") for i in range(2))
    assert info.matched["emb.weight"] == "emb"


def test_regex_over_parameter_names_reaches_kernels_sharing_one_module():
    m = prepare(Model(), QuantConfig.from_dict({"default": {"bits": 4}, "rules": {r"re:encoder\..*\.weight_hh_l\d+": {"bits": 1}}}))
    assert prepare_info(m).unmatched_rules == []
    b = bits_of(m)
    assert b["encoder.lstm.weight_hh_l0"] == b["encoder.lstm.weight_hh_l1"] == 1
    assert b["encoder.lstm.weight_ih_l0"] == b["encoder.lstm.weight_ih_l1"] == b["encoder.proj.weight"] == 4


def test_precedence_param_name_module_name_param_regex_module_regex_type():
    net = Model()
    cfg = QuantConfig.from_dict({
        "default": {"bits": 3},
        "rules": {
            "LSTM": {"bits": 2},
            r"re:encoder\.lstm": {"bits": 5},  # module regex, listed first
            r"re:.*weight_hh_l1": {"bits": 6},  # parameter regex, listed later: still wins over it
            "encoder.lstm": {"bits": 7},
            "encoder.lstm.weight_ih_l0": {"bits": 8},
        },
    })
    lstm = net.encoder.lstm
    assert cfg.match("encoder.lstm", lstm, "weight_ih_l0")[0] == "encoder.lstm.weight_ih_l0"  # exact param
    assert cfg.match("encoder.lstm", lstm, "weight_hh_l1")[0] == "encoder.lstm"  # exact module > regex
    del cfg.rules["encoder.lstm"]
    assert cfg.match("encoder.lstm", lstm, "weight_hh_l1")[0] == r"re:.*weight_hh_l1"  # param regex first
    assert cfg.match("encoder.lstm", lstm, "weight_hh_l0")[0] == r"re:encoder\.lstm"  # then module regex
    del cfg.rules[r"re:encoder\.lstm"]
    assert cfg.match("encoder.lstm", lstm, "weight_hh_l0")[0] == "LSTM"  # then type
    assert cfg.match("head", net.head, "weight") == (None, cfg.default)


def test_a_name_that_matches_nothing_is_still_reported():
    m = prepare(Model(), QuantConfig.from_dict({"rules": {"embedding": {"bits": 2}, "re:nothing\\..*": None}}))
    assert prepare_info(m).unmatched_rules == ["embedding", "re:nothing\\..*"]
    assert torch.is_tensor(m.emb.weight)

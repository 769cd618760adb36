import pytest
import torch
from torch import nn

from subbit.quant.rules import LayerSpec, QuantConfig
from subbit.testing.dummies import dummy_net

torch.set_num_threads(1)

FULL = {
    "default": {"bits": 4, "options": {"mu": 10.0}},
    "rules": {"lstm.weight_hh_l1": {"bits": 1}, "Embedding": {"bits": 8}, "re:head_.*": {"bits": 5, "granularity": "channel"}, "Conv1d": None},
}


def test_partial_rules_inherit_default():
    cfg = QuantConfig.from_dict(FULL)
    assert cfg.rules["lstm.weight_hh_l1"] == LayerSpec("gq", 1, "tensor", {"mu": 10.0})
    assert cfg.rules["re:head_.*"].granularity == "channel"
    assert cfg.rules["Conv1d"] is None
    none_default = QuantConfig.from_dict({"default": None, "rules": {"Linear": {"bits": 2}}})
    assert none_default.default is None and none_default.rules["Linear"] == LayerSpec(bits=2)


@pytest.mark.parametrize("fmt", ["dict", "json", "yaml", ".json", ".yaml", ".yml"])
def test_round_trip(fmt, tmp_path):
    cfg = QuantConfig.from_dict(FULL)
    if fmt == "dict":
        back = QuantConfig.from_dict(cfg.to_dict())
    elif fmt == "json":
        back = QuantConfig.from_json(cfg.to_json())
    elif fmt == "yaml":
        back = QuantConfig.from_yaml(cfg.to_yaml())
    else:
        path = tmp_path / f"cfg{fmt}"
        cfg.save(path)
        back = QuantConfig.load(path)
    assert back == cfg and back.to_dict() == cfg.to_dict()


@pytest.mark.parametrize(
    "data, message",
    [
        ({"default": {"bits": 9}}, r"default\.bits: expected an integer in 1\.\.8, got 9"),
        ({"rules": {"re:head_.*": {"bits": 9}}}, r"rules\['re:head_\.\*'\]\.bits: expected an integer in 1\.\.8, got 9"),
        ({"rules": {"Linear": {"bitz": 2}}}, r"rules\['Linear'\]\.bitz: unknown key"),
        ({"rules": {"Linear": {"method": "nope"}}}, r"rules\['Linear'\]\.method: unknown quantization method 'nope'"),
        ({"rules": {"Linear": {"granularity": "row"}}}, r"rules\['Linear'\]\.granularity"),
        ({"rules": {"Linear": {"options": {"nope": 1}}}}, r"rules\['Linear'\]\.options: .*'nope'"),
        ({"rules": {"re:(": {"bits": 2}}}, r"rules\['re:\('\]: invalid regular expression"),
        ({"default": {"bits": True}}, r"default\.bits"),
        ({"extra": 1}, r"extra: unknown key"),
        ({"version": 2}, r"version: expected 1"),
        ({"rules": [1]}, r"rules: expected a mapping"),
    ],
)
def test_validation_errors_name_the_field(data, message):
    with pytest.raises(ValueError, match=message):
        QuantConfig.from_dict(data)


def test_dataclass_validation_and_bad_files(tmp_path):
    with pytest.raises(ValueError, match="bits"):
        LayerSpec(bits=0)
    with pytest.raises(ValueError, match="version"):
        QuantConfig(version=3)
    with pytest.raises(ValueError, match=r"rules\['x'\]"):
        QuantConfig(rules={"x": {"bits": 2}})  # type: ignore[dict-item]
    bad = tmp_path / "cfg.toml"
    with pytest.raises(ValueError, match="cfg.toml"):
        QuantConfig().save(bad)
    broken = tmp_path / "cfg.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="cfg.json"):
        QuantConfig.load(broken)


def make_net() -> nn.Module:
    return dummy_net(("lstm", nn.LSTM(4, 4, 2)), ("head_a", nn.Linear(4, 4)), ("body", nn.Linear(4, 4)), seed=None)


def test_precedence_param_over_regex_over_type_over_default():
    net = make_net()
    cfg = QuantConfig.from_dict({
        "default": {"bits": 3},
        "rules": {"LSTM": {"bits": 2}, "re:lstm": {"bits": 6}, "lstm.weight_hh_l1": {"bits": 1},
                  "Linear": {"bits": 7}, "re:head_.*": None},
    })
    assert cfg.match("lstm", net.lstm, "weight_hh_l1") == ("lstm.weight_hh_l1", cfg.rules["lstm.weight_hh_l1"])
    assert cfg.match("lstm", net.lstm, "weight_ih_l0")[1].bits == 6
    assert cfg.match("head_a", net.head_a, "weight") == ("re:head_.*", None)
    assert cfg.match("body", net.body, "weight")[1].bits == 7
    only_type = QuantConfig.from_dict({"default": {"bits": 3}, "rules": {"LSTM": {"bits": 2}}})
    assert only_type.match("lstm", net.lstm, "weight_ih_l1")[1].bits == 2
    assert only_type.match("body", net.body, "weight") == (None, only_type.default)

r"""Which weight gets which quantizer: a versioned, validated, serialisable rule set.

A :class:`QuantConfig` holds a ``default`` :class:`LayerSpec` and ``rules`` keyed by

* an exact parameter FQN (``"lstm.weight_hh_l1"``),
* an exact module FQN (``"emb"``, ``"encoder.lstm"``: every quantizable weight of that module,
  as torchao's ``FqnToConfig`` and coremltools' ``module_name_configs`` read),
* ``"re:<regex>"``, matched with ``re.fullmatch`` against the *parameter* FQN
  (``"re:encoder\..*\.weight_hh_l\d+"``: every recurrent kernel of the encoder, though LSTM
  kernels share one module) and against the *module* FQN (``"re:head_.*"``),
* a module type name (``"Linear"``, ``"LSTM"``, ``"GRU"``, ``"Embedding"``, ``"Conv1d"``, ...;
  any class in the module's MRO).

Precedence: exact parameter name > exact module name > regex over parameter names > regex over
module names > module type > default. Between regexes of one kind the first in the dict wins; a
regex that matches the parameter FQN beats every regex that only matches the module FQN. A rule
value of ``None`` (or a ``None`` default) leaves the tensor in float. In dict/JSON/YAML form a rule may be partial (``{"bits": 1}``): missing fields are taken
from the default (or from ``LayerSpec()`` when the default is ``None``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch.nn as nn
import yaml

from subbit.quant.base import GRANULARITIES
from subbit.quant.options import MethodOptions
from subbit.quant.registry import get_method, known_methods

CONFIG_VERSION = 1
TYPE_KEYS = ("Linear", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "Embedding", "LSTM", "GRU",
             "MultiheadAttention")


@dataclass
class LayerSpec:
    """How one tensor is quantized: method name (see ``registry``), bit depth, groups, options."""

    method: str = "gq"
    bits: int = 4
    granularity: str = "tensor"
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.method, str) or self.method not in known_methods():
            raise ValueError(f"method: unknown quantization method {self.method!r}; known: {known_methods()}")
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 1 <= self.bits <= 8:
            raise ValueError(f"bits: expected an integer in 1..8, got {self.bits!r}")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity: expected one of {GRANULARITIES}, got {self.granularity!r}")
        if isinstance(self.options, MethodOptions):  # a typed value: stored as its (complete) dict
            self.options = self.options.to_dict()
        if not isinstance(self.options, dict) or not all(isinstance(k, str) for k in self.options):
            raise ValueError(f"options: expected a dict with string keys, got {self.options!r}")
        try:
            # validated as the method's dataclass; kept as given (partial) so configs and
            # checkpoints serialise exactly what the user wrote. A method that declares no
            # Options (a third-party one) checks its options in its constructor instead
            options_type = get_method(self.method).Options
            if options_type is not MethodOptions:
                options_type.from_dict(self.options)
        except ValueError as err:
            raise ValueError(f"options: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method, "bits": self.bits, "granularity": self.granularity, "options": dict(self.options),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], base: LayerSpec | None = None) -> LayerSpec:
        """Build from a (possibly partial) dict; missing fields come from ``base``."""
        if not isinstance(data, dict):
            raise ValueError(f"expected a mapping of LayerSpec fields, got {data!r}")
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(f"{unknown[0]}: unknown key; expected some of {names}")
        filled = (base or cls()).to_dict()
        filled.update(data)
        return cls(**filled)


def check_regex_key(key: str, where: str) -> None:
    """A ``re:`` key must hold a valid regular expression (others pass); ValueError names ``where``."""
    if key.startswith("re:"):
        try:
            re.compile(key[3:])
        except re.error as err:
            raise ValueError(f"{where}: invalid regular expression: {err}") from None


def _spec_or_none(value: Any, base: LayerSpec | None, where: str) -> LayerSpec | None:
    if value is None or isinstance(value, LayerSpec):
        return value
    try:
        return LayerSpec.from_dict(value, base)
    except ValueError as err:
        raise ValueError(f"{where}.{err}") from None


@dataclass
class QuantConfig:
    """The whole rule set; ``version`` guards the serialised format."""

    default: LayerSpec | None = field(default_factory=LayerSpec)
    rules: dict[str, LayerSpec | None] = field(default_factory=dict)
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        if self.version != CONFIG_VERSION:
            raise ValueError(f"version: expected {CONFIG_VERSION}, got {self.version!r}")
        if self.default is not None and not isinstance(self.default, LayerSpec):
            raise ValueError(f"default: expected a LayerSpec or None, got {type(self.default).__name__}")
        if not isinstance(self.rules, dict):
            raise ValueError(f"rules: expected a dict, got {type(self.rules).__name__}")
        for key, spec in self.rules.items():
            where = f"rules[{key!r}]"
            if not isinstance(key, str) or not key:
                raise ValueError(f"{where}: a rule key must be a non-empty string")
            if spec is not None and not isinstance(spec, LayerSpec):
                raise ValueError(f"{where}: expected a LayerSpec or None, got {type(spec).__name__}")
            check_regex_key(key, where)

    # -- matching ----------------------------------------------------------------------
    def match(self, module_name: str, module: nn.Module, param_name: str) -> tuple[str | None, LayerSpec | None]:
        """``(rule key or None for the default, spec or None for float)`` for one parameter."""
        fqn = f"{module_name}.{param_name}" if module_name else param_name
        if fqn in self.rules:
            return fqn, self.rules[fqn]
        if module_name and module_name in self.rules:
            return module_name, self.rules[module_name]
        regexes = [(k, v) for k, v in self.rules.items() if k.startswith("re:")]
        for name in (fqn, module_name):  # parameter FQN first, then module FQN
            for key, spec in regexes:
                if re.fullmatch(key[3:], name):
                    return key, spec
        for cls in type(module).__mro__:
            if cls.__name__ in self.rules and issubclass(cls, nn.Module) and cls is not nn.Module:
                return cls.__name__, self.rules[cls.__name__]
        return None, self.default

    # -- serialisation -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "default": None if self.default is None else self.default.to_dict(),
            "rules": {k: None if v is None else v.to_dict() for k, v in self.rules.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantConfig:
        if not isinstance(data, dict):
            raise ValueError(f"QuantConfig: expected a mapping, got {type(data).__name__}")
        unknown = sorted(set(data) - {"version", "default", "rules"})
        if unknown:
            raise ValueError(f"{unknown[0]}: unknown key; expected some of ['default', 'rules', 'version']")
        version = data.get("version", CONFIG_VERSION)
        if version != CONFIG_VERSION:
            raise ValueError(f"version: expected {CONFIG_VERSION}, got {version!r}")
        default = _spec_or_none(data["default"], None, "default") if "default" in data else LayerSpec()
        raw_rules = data.get("rules") or {}
        if not isinstance(raw_rules, dict):
            raise ValueError(f"rules: expected a mapping, got {type(raw_rules).__name__}")
        rules = {k: _spec_or_none(v, default, f"rules[{k!r}]") for k, v in raw_rules.items()}
        return cls(default=default, rules=rules, version=version)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> QuantConfig:
        return cls._parse(text, json.loads, json.JSONDecodeError, "JSON")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> QuantConfig:
        return cls._parse(text, yaml.safe_load, yaml.YAMLError, "YAML")

    @classmethod
    def _parse(cls, text: str, loads: Callable[[str], Any], error: type[Exception], kind: str) -> QuantConfig:
        try:
            data = loads(text)
        except error as err:
            raise ValueError(f"QuantConfig {kind}: {err}") from None
        return cls.from_dict(data)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.write_text(self._codec(path)[0](self))

    @classmethod
    def load(cls, path: str | Path) -> QuantConfig:
        path = Path(path)
        try:
            return cls._codec(path)[1](path.read_text())
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None

    @staticmethod
    def _codec(path: Path) -> tuple[Any, Any]:
        suffix = path.suffix.lower()
        if suffix == ".json":
            return QuantConfig.to_json, QuantConfig.from_json
        if suffix in (".yaml", ".yml"):
            return QuantConfig.to_yaml, QuantConfig.from_yaml
        raise ValueError(f"{path}: unknown config format {suffix!r}; use .json, .yaml or .yml")

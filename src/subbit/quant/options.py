"""Typed, validated method options: one frozen dataclass per quantization method.

A config (:class:`~subbit.quant.rules.LayerSpec`, a checkpoint's JSON, a study recipe) carries
a method's options as a plain dict, often partial (``{"mu": 25}``). Each method declares an
:class:`MethodOptions` subclass; :meth:`MethodOptions.from_dict` turns such a dict into a
complete, checked value at the boundary (an unknown key or a bad value is a ``ValueError``
naming the method and the option), and :meth:`MethodOptions.to_dict` / ``to_json`` give it
back as JSON-ready data that ``from_dict`` reads to an equal value.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, TypeVar

T = TypeVar("T", bound="MethodOptions")


@dataclass(frozen=True)
class MethodOptions:
    """Base of the per-method option dataclasses; ``method`` names the method in error messages."""

    method: ClassVar[str] = "base"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls: type[T], data: Mapping[str, Any] | MethodOptions | None = None) -> T:
        """Complete ``data`` (possibly partial) with the defaults and validate it."""
        if data is None:
            return cls()
        if isinstance(data, cls):
            return data
        if isinstance(data, MethodOptions):
            raise ValueError(f"{cls.method}: expected {cls.__name__}, got {type(data).__name__}")
        if not isinstance(data, Mapping):
            raise ValueError(f"{cls.method}: options must be a mapping, got {data!r}")
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(names), key=str)
        if unknown:
            raise ValueError(f"{cls.method}: unknown option {unknown[0]!r}; known options: {sorted(names)}")
        return cls(**data)

    @classmethod
    def from_json(cls: type[T], text: str) -> T:
        return cls.from_dict(json.loads(text))

    # -- validation helpers for ``__post_init__`` ------------------------------------------
    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)  # normalise a field of the frozen instance

    def _bool(self, *names: str) -> None:
        for name in names:
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{self.method}: option {name!r} must be a bool, got {getattr(self, name)!r}")

    def _choice(self, name: str, choices: tuple[str, ...]) -> None:
        if getattr(self, name) not in choices:
            raise ValueError(f"{self.method}: option {name!r} must be one of {choices}, got {getattr(self, name)!r}")

    def _number(self, name: str, *, positive: bool = False) -> None:
        """A finite number ``>= 0`` (``> 0`` with ``positive``), stored as float."""
        v = getattr(self, name)
        ok = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
        ok = ok and (v > 0 if positive else v >= 0)
        if not ok:
            rule = "positive and finite" if positive else "a finite number >= 0"
            raise ValueError(f"{self.method}: option {name!r} must be {rule}, got {v!r}")
        self._set(name, float(v))

    def _int(self, name: str, minimum: int) -> None:
        v = getattr(self, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise ValueError(f"{self.method}: option {name!r} must be an integer >= {minimum}, got {v!r}")

"""Name -> quantizer class, so a config's ``method`` string finds its implementation."""

from __future__ import annotations

from collections.abc import Callable

from subbit.quant.base import WeightQuantizer

_METHODS: dict[str, type[WeightQuantizer]] = {}


def register_method(name: str) -> Callable[[type[WeightQuantizer]], type[WeightQuantizer]]:
    def deco(cls: type[WeightQuantizer]) -> type[WeightQuantizer]:
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(f"quantization method {name!r} registered twice")
        cls.method = name
        _METHODS[name] = cls
        return cls

    return deco


def get_method(name: str) -> type[WeightQuantizer]:
    _load_builtin()
    try:
        return _METHODS[name]
    except KeyError:
        raise ValueError(f"unknown quantization method {name!r}; known: {sorted(_METHODS)}") from None


def known_methods() -> list[str]:
    _load_builtin()
    return sorted(_METHODS)


def _load_builtin() -> None:
    # importing the modules registers them; done lazily to keep import order simple
    import subbit.quant.gq  # noqa: F401
    import subbit.quant.baselines  # noqa: F401

"""quant.registry directly: built-in methods are found by name, unknown names are refused with the
list, and a name cannot be taken twice by different classes."""

from __future__ import annotations

import pytest
import torch

from subbit.quant import registry
from subbit.quant.base import WeightQuantizer
from subbit.quant.registry import get_method, known_methods, register_method


def test_builtin_methods_are_known_and_carry_their_name() -> None:
    names = known_methods()
    assert {"gq", "uniform", "s8bqat", "dkm", "ptq"} <= set(names) and names == sorted(names)
    for name in ("gq", "uniform", "s8bqat", "dkm", "ptq"):
        cls = get_method(name)
        assert issubclass(cls, WeightQuantizer) and cls.method == name


def test_unknown_method_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown quantization method 'gqq'; known: \[.*'gq'"):
        get_method("gqq")


def test_register_twice() -> None:
    name = "test_registry_dummy"

    class A(WeightQuantizer):
        def encode(self, w: torch.Tensor):  # type: ignore[no-untyped-def]
            raise NotImplementedError

    class B(A):
        pass

    try:
        assert register_method(name)(A) is A and A.method == name
        assert register_method(name)(A) is A  # the same class again: fine (module reloads)
        with pytest.raises(ValueError, match="registered twice"):
            register_method(name)(B)
        assert get_method(name) is A
    finally:
        registry._METHODS.pop(name, None)
    assert name not in known_methods()

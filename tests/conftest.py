"""Shared fixtures. The builders themselves live in :mod:`subbit.testing.dummies` (``dummy_net``,
``dummy_transducer``, ``dummy_run``, ``dummy_subbit_file``, ``make_dummy_corpus``), so scripts and
benchmarks can use them too; the fixtures here only give them a temporary place."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from subbit.testing.dummies import dummy_run, dummy_subbit_file, make_dummy_corpus

# two cores shared by many processes: one intra-op thread keeps timings and CI steady
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The dummy corpus (16 train, 4 per eval split), read-only and shared by the whole session.
    A test that edits its corpus makes its own (a module-level ``corpus`` fixture overrides this)."""
    return make_dummy_corpus(tmp_path_factory.mktemp("corpus"), n_train=16, n_eval=4)


@pytest.fixture
def tiny_run(tmp_path: Path) -> Callable[..., tuple[Path, torch.nn.Module]]:
    """``tiny_run(arch="rnnt", quant=None) -> (run_dir, model)``: a finished run under ``tmp_path``."""

    def make(arch: str = "rnnt", quant: dict | None = None, name: str = "run") -> tuple[Path, torch.nn.Module]:
        run = tmp_path / name
        return run, dummy_run(run, arch, quant)

    return make


@pytest.fixture
def subbit_file(tmp_path: Path) -> Callable[..., Path]:
    """``subbit_file(arch="rnnt", **options) -> path``: an exported tiny model under ``tmp_path``."""

    def make(arch: str = "rnnt", **options: object) -> Path:
        return dummy_subbit_file(tmp_path / arch, arch, **options)  # type: ignore[arg-type]

    return make

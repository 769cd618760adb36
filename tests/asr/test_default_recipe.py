"""Default training recipe: options left unset come from subbit.asr.recipes; flags given win."""

from __future__ import annotations

import pytest

from subbit.asr.recipes import AUGMENT_FROM_MINUTES, default_recipe
from subbit.cli import build_parser
from subbit.commands.train import config_from_args


def parse(*argv: str):
    return config_from_args(build_parser().parse_args(["train", "--data", "d", "--out", "o", *argv]))


def test_unset_options_come_from_the_recipe() -> None:
    cfg = parse("--minutes", "10")
    assert (cfg.tokenizer, cfg.batch_size, cfg.lr, cfg.sortagrad_epochs, cfg.augment) == ("char", 8, 3e-3, 1, False)
    assert parse("--minutes", str(AUGMENT_FROM_MINUTES)).augment is True
    assert parse("--model", "conformer", "--steps", "100").tokenizer == "char"


def test_flags_given_win_over_the_recipe() -> None:
    cfg = parse("--minutes", "10", "--tokenizer", "bpe", "--batch-size", "16", "--lr", "1e-3", "--augment",
                "--sortagrad", "0", "--warmup-steps", "7")
    assert (cfg.tokenizer, cfg.batch_size, cfg.lr, cfg.augment, cfg.sortagrad_epochs, cfg.warmup_steps) == \
        ("bpe", 16, 1e-3, True, 0, 7)
    assert parse("--minutes", "500", "--no-augment").augment is False


def test_unknown_arch_is_refused() -> None:
    with pytest.raises(ValueError, match="model"):
        default_recipe("lstm")

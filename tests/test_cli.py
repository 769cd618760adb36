"""Every verb of the ``subbit`` CLI is registered and answers ``--help``."""

import importlib

import pytest

from subbit import cli


@pytest.mark.parametrize("verb", cli.VERB_MODULES)
def test_verb_module_exists_and_registers(verb: str) -> None:
    module = importlib.import_module(f"subbit.commands.{verb}")
    assert callable(module.register)


@pytest.mark.parametrize("verb", cli.VERB_MODULES)
def test_verb_help(verb: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main([verb, "--help"])
    assert exc.value.code == 0
    assert verb in capsys.readouterr().out


def test_unknown_verb_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["no-such-verb"])
    assert exc.value.code == 2

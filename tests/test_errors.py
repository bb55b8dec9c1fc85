"""One error hierarchy: every error class of the package is a `regimes.errors.RegimesError`;
the command line turns those into one line and exit 2, and nothing else: a bug keeps its
traceback."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import regimes
from regimes import errors
from regimes.extras import EXTRAS, MissingExtraError


def error_classes() -> dict[str, type]:
    """Every exception class (not warnings) defined in a module of the package (one whose extra is installed)."""
    found = {}
    for info in pkgutil.walk_packages(regimes.__path__, "regimes."):
        if info.name == "regimes.__main__":
            continue
        try:
            module = importlib.import_module(info.name)
        except MissingExtraError:
            continue
        except ModuleNotFoundError as error:
            if (error.name or "").split(".")[0] not in {*EXTRAS, "wandb"}:
                raise
            continue
        for name, value in vars(module).items():
            if (
                isinstance(value, type)
                and issubclass(value, Exception)
                and not issubclass(value, Warning)
                and value.__module__ == info.name
            ):
                found[f"{info.name}.{name}"] = value
    return found


def test_every_error_class_of_the_package_is_a_regimes_error():
    classes = error_classes()
    assert len(classes) >= 15  # the hierarchy and the older names that derive from it
    assert {name for name, cls in classes.items() if not issubclass(cls, errors.RegimesError)} == set()


def test_the_built_in_bases_stay_for_python_callers():
    assert issubclass(errors.UsageError, ValueError) and issubclass(errors.DamagedInputError, ValueError)
    assert issubclass(errors.RunExistsError, FileExistsError) and issubclass(errors.NoRunError, FileNotFoundError)
    assert issubclass(errors.UnsupportedError, NotImplementedError)


@pytest.mark.parametrize("raised", [errors.UsageError("a wrong --set"), errors.DamagedInputError("x.json is cut")])
def test_the_cli_turns_a_regimes_error_into_one_line_and_exit_2(raised, monkeypatch, capsys):
    from regimes import cli

    def fails(args):
        raise raised

    monkeypatch.setattr(cli, "cmd_presets", fails)
    parser = cli.build_parser
    monkeypatch.setattr(cli, "build_parser", lambda: _with(parser(), fails))
    assert cli.main(["presets"]) == 2
    assert capsys.readouterr().err == f"regimes: error: {raised}\n"


def test_a_bug_keeps_its_traceback(monkeypatch):
    from regimes import cli

    def buggy(args):
        raise ValueError("a bug of ours")  # not a RegimesError: nothing catches it

    parser = cli.build_parser
    monkeypatch.setattr(cli, "build_parser", lambda: _with(parser(), buggy))
    with pytest.raises(ValueError, match="a bug of ours"):
        cli.main(["presets"])


def _with(parser, func):
    """The parser, with `regimes presets` calling `func`."""
    for action in parser._subparsers._group_actions:
        action.choices["presets"].set_defaults(func=func)
    return parser

"""Every example in the package's docstrings runs (doctest), so that none can rot."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import regimes
from regimes.extras import EXTRAS, MissingExtraError

OPTIONAL = set(EXTRAS) | {"wandb"}


def modules_with_examples() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(regimes.__path__, "regimes."):
        if info.name == "regimes.__main__":
            continue
        spec = importlib.util.find_spec(info.name)
        if spec is not None and spec.origin and ">>>" in open(spec.origin, encoding="utf-8").read():
            names.append(info.name)
    return names


@pytest.mark.parametrize("name", ["regimes", *modules_with_examples()])
def test_docstring_examples_run(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an example that writes, writes here
    try:
        module = importlib.import_module(name)
    except MissingExtraError as error:
        pytest.skip(str(error))
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] not in OPTIONAL:
            raise
        pytest.skip(f"needs {error.name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, (
        f"{result.failed} of {result.attempted} examples in {name} failed (run: python -m doctest -v)"
    )


def test_the_examples_are_found():
    assert {"regimes.run", "regimes.experiment.callbacks"} <= set(modules_with_examples())

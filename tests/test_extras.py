"""The optional-dependency gate: a missing package is one line naming the extra to install.

A package is made missing by blocking its import (``sys.modules[name] = None``),
which is what ``import`` itself treats as "not importable".
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

pytest.importorskip("pyarrow", reason="run directories need pyarrow: pip install -e '.[study]'")

from regimes import extras
from regimes.data import load_dataset
from regimes.experiment import dump_toml, get_preset
from regimes.experiment.engines import EngineError, make_engine
from regimes.extras import EXTRAS, MissingExtraError, available, install_command, require
from regimes.zoo import create_model

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def block(monkeypatch, *modules: str) -> None:
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)


# ---- the gate -----------------------------------------------------------------------------------


def test_require_names_the_extra_in_one_line(monkeypatch):
    block(monkeypatch, "matplotlib")
    with pytest.raises(MissingExtraError) as caught:
        require("matplotlib.pyplot", "the run's figure")
    message = (
        "the run's figure needs matplotlib, which is not installed: pip install -e '.[study]' (in the regimes checkout)"
    )
    assert str(caught.value) == message
    assert isinstance(caught.value, ImportError)


def test_require_names_the_pip_package_not_the_module(monkeypatch):
    block(monkeypatch, "sklearn", "PIL")
    with pytest.raises(
        MissingExtraError, match=r"^holding out needs scikit-learn, .*'\.\[study\]' \(in the regimes checkout\)$"
    ):
        require("sklearn.model_selection", "holding out")
    with pytest.raises(MissingExtraError, match=r"^decoding needs pillow, .*'\.\[hub\]' \(in the regimes checkout\)$"):
        require("PIL.Image", "decoding")


def test_a_package_that_is_installed_but_does_not_import_names_the_extra_too(monkeypatch):
    pytest.importorskip("matplotlib")
    block(monkeypatch, "matplotlib.pyplot")  # as if part of the installation were broken
    with pytest.raises(MissingExtraError) as caught:
        require("matplotlib.pyplot", "the figure")
    message = str(caught.value)
    assert message.startswith("the figure needs matplotlib, which does not import (")
    assert message.endswith("): pip install -e '.[study]' (in the regimes checkout)") and "\n" not in message


def test_require_returns_the_module():
    tomli_w = pytest.importorskip("tomli_w")
    assert require("tomli_w", "writing TOML") is tomli_w


def test_available_answers_without_importing(monkeypatch):
    assert available("json") and not available("regimes_has_no_such_module")
    pytest.importorskip("matplotlib")
    assert available("matplotlib")  # now cached
    block(monkeypatch, "matplotlib")
    assert not available("matplotlib") and not available("matplotlib.pyplot")  # a block beats the cache


def test_a_module_outside_the_table_is_our_bug():
    with pytest.raises(KeyError, match="EXTRAS"):
        require("seaborn", "a plot")


def test_every_extra_in_the_table_installs_its_package():
    if not PYPROJECT.is_file():
        pytest.skip("not a source checkout")
    optional = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    assert set(EXTRAS) >= {
        "matplotlib",
        "pyarrow",
        "tomli_w",
        "tqdm",
        "sklearn",
        "mnist1d",
        "datasets",
        "transformers",
        "tokenizers",
        "ray",
        "pandas",
        "PIL",
        "lightning",
        "accelerate",
        "mlflow",
        "tensorboard",
    }
    for module, (package, extra) in EXTRAS.items():
        assert extra in optional, f"{module}: pyproject.toml has no extra {extra!r}"
        requirements = [re.split(r"[<>=!~;\s]", r, maxsplit=1)[0].lower() for r in optional[extra]]
        assert package.lower() in requirements, f"{module}: the extra {extra!r} does not install {package}"
        assert install_command(module) == f"pip install -e '.[{extra}]' (in the regimes checkout)"


# ---- the gate where optional packages are used --------------------------------------------------


def test_a_data_loader_names_the_extra(monkeypatch):
    block(monkeypatch, "sklearn")
    with pytest.raises(MissingExtraError) as caught:
        load_dataset("breast-cancer")
    assert str(caught.value) == (
        "the breast-cancer data set needs scikit-learn, which is not installed: pip install -e '.[study]' (in the regimes checkout)"
    )


def test_generating_mnist1d_names_the_extra(monkeypatch, tmp_path):
    block(monkeypatch, "mnist1d")
    with pytest.raises(
        MissingExtraError, match=r"^the mnist1d data set needs mnist1d, .*'\.\[study\]' \(in the regimes checkout\)$"
    ):
        load_dataset("mnist1d", data_dir=tmp_path)  # no cached copy there: it must be generated


def test_a_hugging_face_model_names_the_extra(monkeypatch):
    block(monkeypatch, "transformers")
    with pytest.raises(MissingExtraError) as caught:
        create_model("vit", num_classes=2)
    assert str(caught.value) == (
        "building a Hugging Face model needs transformers, which is not installed: "
        "pip install -e '.[transformers]' (in the regimes checkout)"
    )


def test_writing_a_config_names_the_extra(monkeypatch):
    block(monkeypatch, "tomli_w")
    with pytest.raises(
        MissingExtraError, match=r"writing a config as TOML needs tomli-w, .*'\.\[study\]' \(in the regimes checkout\)$"
    ):
        dump_toml(get_preset("mlp-breast-cancer"))


def test_the_ray_engine_names_the_extra_as_an_engine_error(monkeypatch):
    block(monkeypatch, "ray")
    with pytest.raises(EngineError) as caught:
        make_engine("ray")
    assert (
        str(caught.value)
        == "the ray engine needs ray[tune], which is not installed: pip install -e '.[ray]' (in the regimes checkout)"
    )
    assert isinstance(caught.value.__cause__, MissingExtraError)


def test_the_table_is_the_one_place():
    # Nothing in the package spells an install command by hand.
    source = Path(extras.__file__).parent
    hand_written = [
        str(path.relative_to(source))
        for path in source.rglob("*.py")
        if path.name != "extras.py" and re.search(r"pip install ['\"]?regimes\[", path.read_text())
    ]
    assert hand_written == [], hand_written

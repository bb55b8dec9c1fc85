"""The registry helper, and every registry in the project answering an unknown name the same way."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

pytest.importorskip("pyarrow", reason="run directories need pyarrow: pip install -e '.[study]'")
pytest.importorskip("pandas", reason="these tests read runs with pandas: pip install -e '.[study]'")

import regimes
from regimes.data import load_dataset
from regimes.data.registry import DATASETS
from regimes.experiment import ConfigError, get_preset
from regimes.experiment.engines import ENGINES, make_engine
from regimes.experiment.grids import STUDY_GRIDS, study_grid
from regimes.experiment.presets import PRESETS
from regimes.experiment.tasks import TASKS, get_task
from regimes.extras import EXTRAS, MissingExtraError
from regimes.registry import Registry, UnknownNameError, suggestion, unknown_name_message
from regimes.zoo import create_model
from regimes.zoo.registry import MODELS

# ---- the helper ---------------------------------------------------------------------------------


def test_register_get_and_the_two_orders():
    colours = Registry("colour")
    colours.register("red", 1)
    colours.register("blue", 2)
    assert colours.get("red") == 1 and colours["blue"] == 2
    assert colours.names() == ["blue", "red"]  # sorted, for listings
    assert colours.items() == [("red", 1), ("blue", 2)] and list(colours) == ["red", "blue"]  # as registered
    assert "red" in colours and "green" not in colours and ["unhashable"] not in colours
    assert len(colours) == 2


def test_register_as_a_decorator_returns_the_thing_unchanged():
    shapes = Registry("shape")

    @shapes.register("square")
    def square(side):
        return side * side

    assert shapes.get("square") is square and square(3) == 9


def test_registering_a_name_twice_is_an_error():
    registry = Registry("colour", {"red": 1})
    with pytest.raises(ValueError, match="a colour named 'red' is already registered"):
        registry.register("red", 2)
    assert registry.get("red") == 1  # the first registration stands


def test_an_unknown_name_gets_the_one_message():
    registry = Registry("colour", {"red": 1, "green": 2, "blue": 3})
    with pytest.raises(UnknownNameError) as caught:
        registry.get("gren")
    assert str(caught.value) == "unknown colour 'gren' (did you mean 'green'?); known: blue, green, red"
    assert isinstance(caught.value, ValueError)


def test_nothing_near_means_no_suggestion_and_advice_ends_the_message():
    registry = Registry("colour", {"red": 1}, advice="or give an RGB triple")
    with pytest.raises(UnknownNameError) as caught:
        registry.get("ultraviolet")
    assert str(caught.value) == "unknown colour 'ultraviolet'; known: red; or give an RGB triple"
    with pytest.raises(UnknownNameError, match="unknown colour \\['red'\\]"):
        registry.get(["red"])  # an unhashable name is unknown, not a TypeError


def test_a_registry_raises_its_own_error_subclass():
    class UnknownColourError(UnknownNameError, LookupError):
        pass

    registry = Registry("colour", {"red": 1}, error=UnknownColourError)
    with pytest.raises(UnknownColourError, match="did you mean 'red'"):
        registry.get("rde")
    with pytest.raises(TypeError, match="subclass of UnknownNameError"):
        Registry("colour", error=KeyError)


def test_suggestion_is_the_nearest_choice_or_nothing():
    assert suggestion("lenet", ["mlp", "lenet5", "alexnet"]) == " (did you mean 'lenet5'?)"
    assert suggestion("transformer", ["mlp", "lenet5"]) == ""
    assert suggestion(3, ["3a"]) == " (did you mean '3a'?)"  # a non-string name is compared as text


def test_a_registry_holds_the_activation_table():
    from regimes.sites import ACTIVATIONS

    activations = Registry("activation", dict(ACTIVATIONS.items()))
    # The idioms the tracker uses on ACTIVATIONS: membership, sorted names, indexing.
    assert "relu" in activations and sorted(activations) == sorted(ACTIVATIONS)
    assert activations["gelu"] is ACTIVATIONS["gelu"]
    with pytest.raises(ValueError, match="unknown activation 'rellu' \\(did you mean 'relu'\\?\\); known: gelu, relu"):
        activations.get("rellu")


# ---- every registry in the project --------------------------------------------------------------

OPTIONAL = set(EXTRAS) | {"wandb"}  # top-level modules of the extras


def _registries_in_the_package() -> list[tuple[str, Registry]]:
    """Every Registry held at module level anywhere in `regimes`, so a new one is tested here at once."""
    found: dict[int, tuple[str, Registry]] = {}
    for module_info in pkgutil.walk_packages(regimes.__path__, "regimes."):
        if module_info.name == "regimes.__main__":  # runs the command line
            continue
        try:
            module = importlib.import_module(module_info.name)
        except ModuleNotFoundError as error:  # a module of an extra that is not installed
            if error.name is None or error.name.split(".")[0] not in OPTIONAL:
                raise
            continue
        except MissingExtraError:
            continue
        for attribute, value in vars(module).items():
            if isinstance(value, Registry):
                found.setdefault(id(value), (f"{module.__name__}.{attribute}", value))
    return sorted(found.values(), key=lambda item: item[0])


REGISTRIES = _registries_in_the_package()


def test_the_project_keeps_its_tables_in_registries():
    kinds = {registry.kind for _, registry in REGISTRIES}
    assert {"model", "data set", "task", "preset", "grid family", "engine"} <= kinds


@pytest.mark.parametrize("registry", [registry for _, registry in REGISTRIES], ids=[name for name, _ in REGISTRIES])
def test_every_registry_suggests_the_nearest_name(registry):
    name = registry.names()[0]
    typo = name + "~"  # one character off: nearer to `name` than to any other registered name
    with pytest.raises(UnknownNameError) as caught:
        registry.get(typo)
    message = str(caught.value)
    assert message.startswith(f"unknown {registry.kind} {typo!r} (did you mean {name!r}?); known: ")
    assert f"known: {', '.join(registry.names())}" in message


@pytest.mark.parametrize(
    "lookup, registry, typo, nearest",
    [
        (create_model, MODELS, "mlpp", "mlp"),
        (load_dataset, DATASETS, "cifar-10", "cifar10"),
        (get_task, TASKS, "seq2sq", "seq2seq"),
        (get_preset, PRESETS, "mlp-mnits", "mlp-mnist"),
        (study_grid, STUDY_GRIDS, "smal", "small"),
        (make_engine, ENGINES, "rey", "ray"),
    ],
    ids=lambda value: value.kind if isinstance(value, Registry) else None,
)
def test_public_lookups_give_their_registry_message(lookup, registry, typo, nearest):
    with pytest.raises(UnknownNameError) as caught:
        lookup(typo)
    assert str(caught.value) == unknown_name_message(registry.kind, typo, registry.names(), registry.advice)
    assert f"(did you mean {nearest!r}?)" in str(caught.value)


def test_presets_and_grid_families_are_config_errors_too():
    for lookup, typo in [(get_preset, "nope"), (study_grid, "nope")]:
        with pytest.raises(ConfigError):
            lookup(typo)

"""The study's sweep grids (SPEC section 4), and grids read from TOML: plain data.

A grid maps config keys to the values to try; the trials are every combination, in
the order the keys and values are given. A value may also be a table of several config
keys that go together (an optimizer variant such as SGD with Nesterov momentum), named
by its `name` key. Keys with a single value (not a list) are fixed for every trial. An
optimizer given by name alone means no momentum (whatever the base config has).

```toml
# my-grid.toml: 2 x 2 x 1 trials, 2 epochs each
optimizer = ["sgd", {name = "sgd-nesterov", optimizer = "sgd", momentum = 0.9, nesterov = true}]
lr = [1e-2, 1e-3]
weight_decay = [1e-4]
max_epochs = 2
```
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path

from regimes.errors import MissingInputError
from regimes.experiment.config import ConfigError, RunConfig, UnknownConfigNameError, check_path_name, read_toml
from regimes.registry import Registry
from regimes.study import GRID_FAMILIES, grid_family

__all__ = ["Grid", "GRID_FAMILIES", "STUDY_GRIDS", "family_of", "study_grid", "load_grid", "resolve_grid"]

_NO_MOMENTUM = {"momentum": 0.0, "nesterov": False}
_SGD_NESTEROV = {"name": "sgd-nesterov", "optimizer": "sgd", "momentum": 0.9, "nesterov": True}

STUDY_GRIDS: Registry[dict] = Registry(
    "grid family",
    advice="or give a TOML grid file",
    error=UnknownConfigNameError,
    entries={
        "small": {  # MLPs and LeNet5
            "optimizer": ["sgd", "adam"],
            "lr": [1e-2, 1e-3, 1e-4],
            "weight_decay": [1e-3, 1e-4],
            "max_epochs": 30,
        },
        "cnn": {  # AlexNet, ResNet34, EfficientNetB0
            "optimizer": ["sgd", _SGD_NESTEROV, "adam", "adamw"],
            "lr": [1e-2, 3e-2, 6e-2, 1e-3, 1e-4],
            "weight_decay": [1e-3, 5e-3, 1e-4],
            "max_epochs": 200,
        },
        "transformer": {
            "optimizer": ["sgd", "adam", "adamw"],
            "lr": [5e-4, 3e-4, 1e-4, 2e-5],
            "weight_decay": [5e-2, 1e-2],
            "max_epochs": 50,
        },
    },
)

# Short forms in trial names: sgd-lr1e-2-wd1e-4.
_ABBREVIATIONS = {"lr": "lr", "weight_decay": "wd", "momentum": "m", "batch_size": "bs", "max_epochs": "ep"}


@dataclass
class Grid:
    """`axes`: config key -> list of values (a value is a scalar or a dict of config keys);
    `fixed`: config values shared by every trial. `name` says where the grid came from."""

    axes: dict
    fixed: dict = field(default_factory=dict)
    name: str = ""

    def __len__(self) -> int:
        n = 1
        for values in self.axes.values():
            n *= len(values)
        return n

    def trials(self, base: RunConfig) -> list[tuple[str, RunConfig]]:
        """`[(name, config)]` for every combination, in grid order; `base` gives everything else."""
        base = base.replace(**self.fixed) if self.fixed else base
        out = []
        for combination in itertools.product(*self.axes.values()):
            defaults, changes, parts = {}, {}, []
            for key, value in zip(self.axes, combination):
                if isinstance(value, dict):
                    changes.update({k: v for k, v in value.items() if k != "name"})
                else:
                    changes[key] = value
                    if key == "optimizer":  # "sgd" alone is plain SGD, whatever the base config had
                        defaults.update({k: v for k, v in _NO_MOMENTUM.items() if k not in self.fixed})
                parts.append(part := _name_part(key, value))
                check_path_name(f"grid key {key!r}: the trial name part", part)
            out.append(("-".join(parts), base.replace(**{**defaults, **changes})))
        names = [name for name, _ in out]
        if len(set(names)) != len(names):
            duplicate = next(n for n in names if names.count(n) > 1)
            raise ConfigError(f"two trials of the grid are both named {duplicate!r}; give the tables distinct `name`s")
        return out


def family_of(model: str) -> str:
    return grid_family(model)


def study_grid(family: str) -> Grid:
    return grid_from_dict(STUDY_GRIDS.get(family), name=family)


def load_grid(path) -> Grid:
    return grid_from_dict(read_toml(path), name=str(path))


def resolve_grid(spec: str | None, config: RunConfig) -> Grid:
    """`spec`: None (the family of the config's model), a family name, or a TOML file."""
    if spec is None:
        return study_grid(family_of(config.model))
    if spec in STUDY_GRIDS:
        return study_grid(spec)
    if spec.endswith(".toml") or Path(spec).is_file():
        if not Path(spec).is_file():
            raise MissingInputError(f"grid file {spec} does not exist")
        return load_grid(spec)
    return study_grid(spec)  # not a family either: the registry's message lists the families


def grid_from_dict(data: dict, name: str = "") -> Grid:
    """Lists become axes, other values are fixed; a list-valued config key (`sites`) is an
    axis only as a list of lists."""
    known = {f.name: f.type for f in dataclasses.fields(RunConfig)}
    axes, fixed = {}, {}
    for key, value in data.items():
        if key not in known or key in ("model", "dataset"):
            valid = ", ".join(k for k in known if k not in ("model", "dataset"))
            raise ConfigError(f"grid key {key!r} is not a config key the grid can set; valid keys: {valid}")
        if isinstance(value, list) and (known[key] != "list" or all(isinstance(v, list) for v in value)):
            if not value:
                raise ConfigError(f"grid key {key!r} has an empty list of values")
            for v in value:
                if isinstance(v, dict):
                    if not v.get("name"):
                        raise ConfigError(f"a table in grid key {key!r} needs a `name` (used in trial names): {v!r}")
                    unknown = [k for k in v if k != "name" and k not in known]
                    if unknown:
                        raise ConfigError(f"a table in grid key {key!r} sets {unknown[0]!r}, which is not a config key")
            axes[key] = list(value)
        else:
            fixed[key] = value
    if not axes:
        raise ConfigError(f"the grid {name} has no list of values to sweep over")
    for key, values in axes.items():
        for v in values:
            if isinstance(v, dict) and (both := [k for k in v if k != key and (k in axes or k in fixed)]):
                raise ConfigError(
                    f"the table {v['name']!r} in grid key {key!r} sets {both[0]!r}, which the grid also sets"
                )
    return Grid(axes=axes, fixed=fixed, name=name)


def _name_part(key: str, value) -> str:
    if isinstance(value, dict):
        text = str(value["name"])
    elif key == "optimizer":
        text = str(value)
    elif isinstance(value, bool):
        text = _ABBREVIATIONS.get(key, key) if value else f"no{_ABBREVIATIONS.get(key, key)}"
    elif isinstance(value, list):
        text = f"{_ABBREVIATIONS.get(key, key)}-{'+'.join(map(str, value)) or 'all'}"
    elif isinstance(value, float):
        from regimes.report import short_scientific

        text = f"{_ABBREVIATIONS.get(key, key)}{short_scientific(value)}"
    else:
        text = f"{_ABBREVIATIONS.get(key, key)}{value}"
    return re.sub(r"[^A-Za-z0-9.+_-]", "_", text)

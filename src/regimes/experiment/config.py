"""A run's configuration: plain data, saved with every run (nanoGPT-style).

`RunConfig` holds what defines a run's numbers. Where it runs (device, data
directory, output folder) is not part of it, so a run can resume elsewhere.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from regimes.errors import UsageError
from regimes.extras import require
from regimes.registry import UnknownNameError, suggestion

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

OPTIMIZERS = ("sgd", "adam", "adamw")
PRECISIONS = ("fp32", "bf16")
WEIGHT_CHANGES = ("layerwise", "global")
FREEZES = ("off", "auto")  # or an epoch number


class ConfigError(UsageError):
    """A config key or value that is not valid; the message says which and what is."""


class UnknownConfigNameError(UnknownNameError, ConfigError):
    """A preset or grid family that does not exist: the registries' one message, as a ConfigError."""


@dataclass
class RunConfig:
    model: str
    dataset: str
    model_args: dict = field(default_factory=dict)  # passed to regimes.zoo.create_model
    data_args: dict = field(default_factory=dict)  # passed to regimes.data.load_dataset (vocab_size, max_length, ...)
    task: str = "classification"  # how batches become losses and scores (regimes.experiment.tasks)
    optimizer: str = "sgd"  # sgd | adam | adamw
    lr: float = 1e-2
    weight_decay: float = 0.0
    momentum: float = 0.0  # SGD only
    nesterov: bool = False  # SGD only, needs momentum > 0
    batch_size: int = 64
    max_epochs: int = 30
    patience: int = 0  # epochs without improvement before stopping; 0: a third of max_epochs
    min_delta: float = 0.01  # improvement that counts: 0.01 (MLPs, CNNs), 0 (Transformers)
    probe_fraction: float = 0.2  # |S| = round(probe_fraction * batch_size), at least 1
    track_every: int = 1  # measure dw/da every this many optimizer steps
    # Site names or globs to track; empty: the model's registered sites, else all.
    sites: list = field(default_factory=list)
    precision: str = "fp32"  # fp32 | bf16 (torch.autocast around forward passes and the probe)
    # Which weight change the headline rho uses: "layerwise" (the paper's "in practice": the
    # mean over tensors of each tensor's mean |dw|) or "global" (eq. 2). Both are recorded.
    weight_change: str = "layerwise"
    # Frozen-regime training (regimes.freeze): "off", "auto" (at the end of the epoch in which
    # the online detector first says the pattern settled) or an epoch number (after that epoch).
    freeze: str | int = "off"
    # The theory's instruments per epoch over the probe (regimes.experiment.geometry):
    # region distances, stability radii, the next epoch's steps, in the run directory.
    geometry: bool = False
    seed: int = 0
    preset: str = ""  # the preset this config came from, if any
    description: str = ""

    def __post_init__(self) -> None:
        self.validate()

    @property
    def early_stopping_patience(self) -> int:
        return self.patience or max(1, round(self.max_epochs / 3))

    @property
    def probe_size(self) -> int:
        return max(1, round(self.probe_fraction * self.batch_size))

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            expected = {
                "str": str,
                "int": int,
                "float": (int, float),
                "bool": bool,
                "dict": dict,
                "list": list,
                "str | int": (str, int),
            }[f.type]
            if isinstance(value, bool) and f.type in ("int", "float") or not isinstance(value, expected):
                raise ConfigError(f"{f.name} must be a {f.type}, got {value!r} ({type(value).__name__})")
        for name, value in _numbers(self.to_dict()):
            if not math.isfinite(value):
                raise ConfigError(f"{name} must be a finite number, got {value!r}")
        check_path_name("preset", self.preset, empty=True)
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(
                f"optimizer must be one of {', '.join(OPTIMIZERS)}, "
                f"got {self.optimizer!r}{suggestion(self.optimizer, OPTIMIZERS)}"
            )
        if self.weight_change not in WEIGHT_CHANGES:
            raise ConfigError(
                f"weight_change must be one of {', '.join(WEIGHT_CHANGES)}, "
                f"got {self.weight_change!r}{suggestion(self.weight_change, WEIGHT_CHANGES)}"
            )
        if not (self.freeze in FREEZES or type(self.freeze) is int and self.freeze >= 1):
            raise ConfigError(
                f'freeze must be "off", "auto" or an epoch number >= 1 (freeze after that epoch), '
                f"got {self.freeze!r}{suggestion(self.freeze, FREEZES) if isinstance(self.freeze, str) else ''}"
            )
        if self.geometry and self.freeze != "off":
            raise ConfigError(
                "geometry and freeze cannot go together: the frozen gates make the model's pattern a copy's, which "
                'the radii do not describe; set geometry = false or freeze = "off"'
            )
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"precision must be one of {', '.join(PRECISIONS)}, "
                f"got {self.precision!r}{suggestion(self.precision, PRECISIONS)}"
            )
        checks = [
            (self.lr > 0, "lr must be > 0"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (0 <= self.momentum < 1, "momentum must be in [0, 1)"),
            (
                not self.nesterov or (self.optimizer == "sgd" and self.momentum > 0),
                "nesterov needs optimizer = 'sgd' and momentum > 0",
            ),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.max_epochs >= 1, "max_epochs must be >= 1"),
            (self.patience >= 0, "patience must be >= 0 (0: a third of max_epochs)"),
            (self.min_delta >= 0, "min_delta must be >= 0"),
            (0 < self.probe_fraction <= 1, "probe_fraction must be in (0, 1]"),
            (self.track_every >= 1, "track_every must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> RunConfig:
        known = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in known:
                raise ConfigError(f"unknown config key {key!r}{suggestion(key, known)}; valid keys: {', '.join(known)}")
        for key in ("model", "dataset"):
            if key not in data:
                raise ConfigError(f"the config needs a {key!r} key")
        values = dict(data)
        for key in ("lr", "weight_decay", "momentum", "min_delta", "probe_fraction"):
            if isinstance(values.get(key), int) and not isinstance(values.get(key), bool):
                values[key] = float(values[key])  # TOML's 0 is an int
        return cls(**values)

    def replace(self, **changes) -> RunConfig:
        return RunConfig.from_dict({**self.to_dict(), **changes})


def check_path_name(key: str, name, *, empty: bool = False) -> None:
    """Refuse a name that becomes a folder's name (a preset, a sweep's trial) but could leave the
    folder it is meant for: a separator, `..`, `.`, a leading dot or dash, a control character
    (one-line ConfigError naming `key`). `empty`: "" is allowed (no name)."""
    if empty and name == "":
        return
    text = str(name)
    if (
        not text
        or text in (".", "..")
        or text[0] in ".-"
        or any(c in text for c in "/\\:")
        or any(ord(c) < 32 or ord(c) == 127 for c in text)
    ):
        raise ConfigError(
            f"{key} {text!r} cannot name a folder: a name holds no '/', '\\', ':' or control character, "
            "and does not start with '.' or '-'"
        )


def _numbers(data: dict, prefix: str = ""):
    """(dotted key, value) of every float in a config, nested tables and lists included."""
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, float):
            yield name, value
        elif isinstance(value, dict):
            yield from _numbers(value, f"{name}.")
        elif isinstance(value, list):
            yield from _numbers({f"[{i}]": v for i, v in enumerate(value)}, name)


def read_toml(path) -> dict:
    """A TOML file as a dict; a syntax error, a missing file or a folder is a ConfigError naming it."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(
            f"{path} is a folder, not a TOML config: name a file (`regimes show PRESET > my.toml` writes one)"
            f"{'; to continue the run in it, `regimes run --resume ' + str(path) + '`' if _holds_run(path) else ''}"
        )
    if not path.is_file():
        raise ConfigError(f"no config file {path}: name a TOML file, or a preset (`regimes presets` lists them)")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path} is not valid TOML: {error}") from error


def _holds_run(path: Path) -> bool:
    from regimes.records import is_run_directory

    return is_run_directory(path)


def load_toml(path) -> RunConfig:
    return RunConfig.from_dict(read_toml(path))


def dump_toml(config: RunConfig, comments: bool = True) -> str:
    """The config as TOML, each key whose meaning is not obvious from its value with a
    comment saying it (`patience = 0  # 0: a third of max_epochs, here 10 ...`). The
    comments are TOML comments: `load_toml` reads the text back to the same config."""
    text = require("tomli_w", "writing a config as TOML").dumps(config.to_dict())
    if not comments:
        return text
    notes = _key_notes(config)
    lines = text.splitlines()
    width = max((len(line) for line in lines if _top_level_key(line) in notes), default=0)
    out, top_level = [], True
    for line in lines:
        if line.startswith("["):  # a table header: the keys after it are the table's
            top_level = False
            key = line.strip("[]")
            out.append(f"{line}  # {notes[key]}" if key in notes else line)
        elif top_level and (key := _top_level_key(line)) in notes:
            out.append(f"{line:<{width}}  # {notes[key]}")
        else:
            out.append(line)
    return "\n".join(out) + "\n"


def _top_level_key(line: str) -> str | None:
    key, equals, _ = line.partition(" = ")
    return key if equals and key.isidentifier() else None


def _key_notes(config: RunConfig) -> dict[str, str]:
    """What each key means, with the numbers this config gives it."""
    patience = config.early_stopping_patience
    return {
        "task": "how batches become losses and scores",
        "optimizer": f"one of {', '.join(OPTIMIZERS)}; no learning rate schedule",
        "weight_decay": "the optimizer's weight_decay (AdamW: decoupled)",
        "momentum": "SGD only",
        "nesterov": "SGD only, needs momentum > 0",
        "batch_size": "training batch; also sets the probe's size (probe_fraction)",
        "max_epochs": "at most this many epochs; early stopping may end the run sooner",
        "patience": (f"0: a third of max_epochs, here {patience}: " if config.patience == 0 else "")
        + f"stop after {patience} epochs in a row without a validation improvement larger than min_delta",
        "min_delta": "an improvement of the validation score counts only if larger than this (absolute; 0: any)",
        "probe_fraction": f"probe |S| = round(probe_fraction * batch_size), at least 1: here {config.probe_size} "
        "validation samples, drawn with the seed",
        "track_every": "measure the weight and pattern change every this many optimizer steps",
        "sites": "site names or globs to track; []: the model's registered sites, else every ReLU",
        "precision": f"one of {', '.join(PRECISIONS)} (bf16: autocast around forward passes and the probe)",
        "weight_change": "which weight change rho reads: layerwise (mean over tensors) or global; both are recorded",
        "freeze": 'frozen-regime training: "off", "auto" (when the pattern settles) or after that epoch',
        "geometry": "record region distances and stability radii over the probe each epoch (costs about "
        "a few hundred probe forwards per epoch)",
        "seed": "model initialisation, data order and the probe",
        "preset": "the preset this config came from",
        "model_args": "passed to regimes.zoo.create_model",
        "data_args": "passed to regimes.data.load_dataset",
    }


def parse_override(text: str) -> tuple[str, object]:
    """`key=value` from the command line; the value is read as TOML (`lr=1e-3`, `sites=["a*"]`), else as a string."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    key, raw = (part.strip() for part in text.split("=", 1))
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    if "." in key:  # model_args.hidden=[64, 32]
        outer, inner = key.split(".", 1)
        return outer, {inner: value}
    return key, value


def apply_overrides(config: RunConfig, overrides: list[str]) -> RunConfig:
    data = config.to_dict()
    for text in overrides:
        key, value = parse_override(text)
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return RunConfig.from_dict(data)

"""The study's experiments: configs, presets, the training loop."""

from regimes.experiment.callbacks import Callback, EarlyStopping
from regimes.experiment.config import ConfigError, RunConfig, apply_overrides, dump_toml, load_toml
from regimes.experiment.presets import get_preset, list_presets
from regimes.experiment.state import RunState
from regimes.experiment.training import train_run

__all__ = [
    "Callback",
    "ConfigError",
    "EarlyStopping",
    "RunConfig",
    "RunState",
    "apply_overrides",
    "dump_toml",
    "get_preset",
    "list_presets",
    "load_toml",
    "train_run",
]

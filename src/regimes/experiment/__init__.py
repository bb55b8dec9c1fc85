"""The study's experiments: configs, presets, the training loop."""

from regimes.experiment.config import ConfigError, RunConfig, apply_overrides, dump_toml, load_toml
from regimes.experiment.presets import get_preset, list_presets
from regimes.experiment.training import EarlyStopping, train_run

__all__ = [
    "ConfigError",
    "EarlyStopping",
    "RunConfig",
    "apply_overrides",
    "dump_toml",
    "get_preset",
    "list_presets",
    "load_toml",
    "train_run",
]

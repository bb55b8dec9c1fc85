"""Frozen-regime training in the runner: the `freeze` config key as a callback."""

from __future__ import annotations

import warnings

from regimes.experiment.callbacks import Callback, RegimeDetection

__all__ = ["FreezeRegime", "FREEZE_COLUMNS"]

# The steps columns of a run with freeze on: the value network's own pattern beside da.
FREEZE_COLUMNS = ("dw", "dw_layerwise", "da", "da_value", "drift_value")


class FreezeRegime(Callback):
    """Frozen-regime training (`regimes.freeze`): at the end of an epoch, freeze the tracked
    activation pattern and train only the values from then on. `when`: "auto" (the first
    epoch whose end finds the online detector's first claim that the pattern settled,
    `first_settled_p` of `RegimeDetection`, which must come before this callback) or an
    epoch number (after that epoch). A run that ends at that epoch (early stopping, or
    its last) is not frozen. The tracker needs a `regimes.freeze.ValuePattern` quantity for the value
    network's own pattern (the runner adds it when `freeze` is on).

    `iteration_`: the optimizer step the regime was frozen at (None: not frozen);
    `gates_`: the installed `regimes.freeze.FrozenGates`. A checkpoint keeps the frozen
    copy's weights, and a resume installs the same gates again.
    """

    def __init__(self, when):
        self.when = when

    def on_train_begin(self, run, **kwargs) -> None:
        if self.when != "auto" and self.when >= run.config.max_epochs:
            warnings.warn(
                f"freeze = {self.when} freezes after epoch {self.when}, and the run has at most "
                f"{run.config.max_epochs} epochs: it will not freeze. Set freeze below max_epochs.",
                stacklevel=2,
            )
        self.gates_ = None
        self.iteration_ = None
        saved, self.saved_ = getattr(self, "saved_", None), None
        if saved:
            self._freeze(run, saved["frozen"])
            self.iteration_ = saved["iteration"]

    def on_epoch_end(self, run, **kwargs) -> None:
        if self.gates_ is not None or run.stop or run.epoch >= run.config.max_epochs:
            return  # frozen already, or no epoch left to train frozen
        if self.when == "auto":
            detection = next((c for c in run.callbacks if isinstance(c, RegimeDetection)), None)
            due = detection is not None and detection.detector_.first_settled_p is not None
        else:
            due = run.epoch >= self.when
        if due:
            self._freeze(run)

    def _freeze(self, run, frozen_state: dict | None = None) -> None:
        from regimes.freeze import freeze_regime

        self.gates_ = freeze_regime(run.tracker, frozen_state)
        self.iteration_ = run.tracker.iteration

    def state_dict(self) -> dict:
        if getattr(self, "gates_", None) is None:
            return {}
        return {"iteration": self.iteration_, "frozen": self.gates_.frozen.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.saved_ = state or None  # installed again in on_train_begin, where the run is at hand

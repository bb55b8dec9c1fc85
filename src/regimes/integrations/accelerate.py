"""accelerate: the tracking of a loop written with `accelerate.Accelerator`.

    from regimes.integrations.accelerate import RegimesTracking

    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    tracking = RegimesTracking(accelerator, model, probe, out="runs/my-loop")
    accelerator.register_for_checkpointing(tracking)     # save_state / load_state carry it
    for epoch in range(1, epochs + 1):
        for x, y in loader:
            with accelerator.accumulate(model):
                accelerator.backward(loss_fn(model(x), y))
                optimizer.step(); optimizer.zero_grad()
            tracking.step()                               # measures only when the optimizer stepped
        tracking.end_epoch(epoch, val_score=accuracy)
    tracking.finish()

Build it after `accelerator.prepare` (the model on its device); it tracks
`accelerator.unwrap_model(model)`. `step()` measures when `accelerator.sync_gradients` (an
optimizer step, not an accumulation micro-batch) and the step was not skipped by the
gradient scaler, and logs `regimes/delta_w` and `regimes/delta_a` with `accelerator.log`
every `log_every` measurements (the trackers of `accelerator.init_trackers`; main process).

Online detection (`detect=True`): `end_epoch` feeds the epoch's steps to the online detector
and calls `on_regime_change(event=..., iteration=...)` (a function of yours, if given) for each
`RegimeEvent`, with `iteration` the optimizer step of `event.step` (None when withdrawn); it
logs `regimes/settled_w` / `regimes/settled_p`. `freeze="auto"` or an epoch number (one
process) freezes the activation pattern at the end of that epoch, never after the last of
`epochs` (if given): the model trains with the frozen copy's gates from then on, the summary
has `freeze_iteration`, and `save_state` / `load_state` carry the frozen copy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from regimes.errors import UsageError
from regimes.extras import require
from regimes.integrations.session import (
    TrackingSession,
    default_probe_size,
    draw_probe,
    is_dataset,
    model_inputs,
    settled_metric,
)

accelerate = require("accelerate", "regimes.integrations.accelerate")

__all__ = ["RegimesTracking"]


class RegimesTracking:
    """Tracks weight change and activation-pattern change of an `Accelerator` loop.

    Args:
        accelerator: the loop's `accelerate.Accelerator`.
        model: the prepared model.
        probe: the probe's data (Tensor, tuple or dict, as the model takes it), or a
            map-style data set to draw `probe_size` samples from with `probe_seed`
            (collated by `collate`, default torch's).
        out: the run directory (default `<accelerator.project_dir>/regimes`, else `regimes`).
        log_every: log every this many measurements.
        batch_size: one optimizer step's samples, for the default probe size.
        probe_size: how many samples to draw when `probe` is a data set (default: 0.2 x `batch_size`).
        probe_seed: the seed of that draw.
        collate: how the drawn samples become one batch (default torch's `default_collate`).
        detect: run the online detector of `regimes.detect` at each `end_epoch`.
        tau: the detector's threshold, a fraction of each curve's range.
        freeze: `"off"`, `"auto"` or an epoch number: freeze the regime, as `regimes run --set freeze=...`.
        on_regime_change: called as `on_regime_change(event=..., iteration=...)` for each event.
        epochs: the loop's number of epochs, so that no freeze comes after its last (None: unknown).
        optimizer: the loop's optimizer, whose name, lr and weight decay the summary records.
        probe_inputs: a function from a collated batch to the model's inputs (default: a
            tensor as it is, the first element of a tuple, a dict without its labels).
        config: extra keys for the run's config (`{"weight_change": "global"}`, ...).
        force: replace a different run already in `out`.
        log_sites: also log `regimes/delta_a/<site>`.
        score: the name of the validation score passed to `end_epoch` (for the summary).
        higher_is_better: whether a larger score is better (False for perplexity).
        **tracker_options: passed to `regimes.Tracker` (`sites=`, `every=`, ...).

    `events_`: every (event, iteration) told so far, on the main process.
    """

    def __init__(
        self,
        accelerator,
        model,
        probe,
        *,
        probe_size: int | None = None,
        probe_seed: int = 0,
        probe_inputs: Callable | None = None,
        collate: Callable | None = None,
        batch_size: int | None = None,
        out=None,
        config: Mapping | None = None,
        force: bool = False,
        log_every: int = 1,
        log_sites: bool = False,
        score: str | None = None,
        higher_is_better: bool = True,
        detect: bool = True,
        tau: float = 0.1,
        freeze="off",
        on_regime_change: Callable | None = None,
        epochs: int | None = None,
        optimizer=None,
        **tracker_options,
    ) -> None:
        if isinstance(log_every, bool) or not isinstance(log_every, int) or log_every < 1:
            raise UsageError(f"log_every must be a whole number >= 1, got {log_every!r}")
        self.accelerator, self.log_every = accelerator, log_every
        self.on_regime_change, self.epochs, self.events_ = on_regime_change, epochs, []
        root = accelerator.project_dir or "."
        self.session = TrackingSession(
            out or f"{root}/regimes",
            host="accelerate",
            config=config,
            force=force,
            log_sites=log_sites,
            score=score,
            higher_is_better=higher_is_better,
            detect=detect,
            tau=tau,
            freeze=freeze,
        )

        def draw():
            if not is_dataset(probe):
                return probe
            size = probe_size or default_probe_size(batch_size)
            return (probe_inputs or model_inputs)(draw_probe(probe, size, probe_seed, collate))

        self.session.describe.update(batch_size=batch_size, max_epochs=epochs)
        # The tracker snapshots the weights now (iteration 0); the run directory waits for
        # the first step, so that accelerator.load_state can resume the tracker first.
        self.tracker = self.session.start(
            accelerator.unwrap_model(model),
            draw,
            rank=accelerator.process_index,
            optimizer=optimizer,
            **tracker_options,
        )
        self._measured = 0

    def step(self) -> None:
        """Call after every `optimizer.step()`: measures when the optimizer really stepped."""
        accelerator = self.accelerator
        if self.tracker is None or not accelerator.sync_gradients or accelerator.optimizer_step_was_skipped:
            return
        self.session.open()
        self.session.step()
        self._measured += 1
        if self._measured % self.log_every == 0 and (values := self.session.values()):
            accelerator.log(values, step=self.tracker.iteration)

    def end_epoch(self, epoch: int, **metrics) -> None:
        """The end of `epoch` (1, 2, ...): the steps so far, the detector's events, a freeze when
        due, and the epoch's row of `metrics`."""
        last = self.epochs is not None and epoch >= self.epochs
        for event, iteration in self.session.end_epoch(epoch, metrics, last=last):
            self.events_.append((event, iteration))
            self.accelerator.log(settled_metric(event, iteration), step=self.tracker.iteration)
            if self.on_regime_change is not None:
                self.on_regime_change(event=event, iteration=iteration)

    @property
    def gates(self):
        """The installed `regimes.freeze.FrozenGates` once the regime is frozen, else None."""
        return self.session.gates

    def finish(self):
        """The end of the loop: steps, summary with rho, figure. Returns the `RunSummary` (main process; else None)."""
        return self.session.finish()

    # accelerator.register_for_checkpointing(tracking): save_state / load_state call these.
    def state_dict(self) -> dict:
        return self.session.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.session.load_state_dict(state)

"""Lightning (2.x, the `lightning` package): a callback that tracks the fit's regimes.

    from regimes.integrations.lightning import RegimesCallback

    callback = RegimesCallback("val", probe_size=16, out="runs/my-fit")  # or RegimesCallback(probe_tensor)
    trainer = L.Trainer(max_epochs=10, callbacks=[callback], logger=TensorBoardLogger("tb"))
    trainer.fit(module, datamodule)
    callback.tracker.delta_w, callback.tracker.delta_a

- The tracker is built at `on_train_start`: the model is on its device (and wrapped by the
  strategy), a resumed fit's weights are restored. It tracks `pl_module` itself, so the probe
  is what `pl_module(...)` takes.
- One measurement per optimizer step that really stepped (`accumulate_grad_batches`, and a
  16-bit step skipped by the gradient scaler, record nothing).
- `regimes/delta_w` and `regimes/delta_a` go to every logger in `trainer.loggers`, every
  `log_every_n_steps` steps (the trainer's, unless given), from the first process only.
- The state goes into Lightning's checkpoints (`state_dict`), so `trainer.fit(..., ckpt_path=)`
  continues the curves; the run directory is rewound to the checkpoint and goes on.
- At the end of the fit, `out` holds the same run directory as `regimes run` writes (default:
  `<default_root_dir>/regimes`): steps, one row per epoch of the logged metrics, summary, figure.
- Online detection (`detect=True`, the default): at each epoch's end the online detector
  (`regimes.detect`) hears the epoch's steps. Each `RegimeEvent` is logged
  (`regimes/settled_w`, `regimes/settled_p`: the optimizer step the curve settled at, NaN when
  withdrawn) and told to every other callback of the trainer that has a method
  `on_regime_change(trainer, pl_module, *, event, iteration)`, Lightning's calling convention
  with the runner's keywords (`iteration`: the optimizer step of `event.step`, None when
  withdrawn). The summary has `settled_w_online` and `settled_p_online`.
- Frozen regime (`freeze="auto"` or an epoch number; one process): at the end of that epoch
  (auto: the first one after which the detector has said the pattern settled; never the fit's
  last) `regimes.freeze.freeze_regime` gates every tracked site of `pl_module` with a frozen
  copy's pattern. Training and validation from then on run the gated model (the gates act on
  forwards through `pl_module(...)`, and stay installed after the fit: `callback.gates.remove()`
  gives the plain network back); `da` is 0, `da_value` and `drift_value` say how the value
  network's own pattern moves; the summary has `freeze_iteration`; a checkpoint keeps the
  frozen copy, so `ckpt_path=` resumes with the same gates.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from regimes.errors import UsageError
from regimes.extras import require
from regimes.integrations.session import (
    StepGate,
    TrackingSession,
    check_freeze,
    default_probe_size,
    draw_probe,
    is_dataset,
    model_inputs,
    settled_metric,
    warn_late_freeze,
)
from regimes.run import default_out

pl = require("lightning.pytorch", "regimes.integrations.lightning")

__all__ = ["RegimesCallback"]


class RegimesCallback(pl.Callback):
    """Tracks weight change and activation-pattern change of a Lightning fit.

    Args:
        probe: the probe's data (a Tensor, a tuple of args or a dict of kwargs for
            `pl_module`), a map-style data set to draw it from, or "val" to draw it from the
            data set of the fit's (first) validation dataloader.
        probe_size: how many samples to draw; default round(0.2 x the samples of one
            optimizer step), at least 1 (the study's probe).
        probe_seed: the seed of the draw.
        probe_inputs: a function from a collated batch to the model's inputs (default: a
            tensor as it is, the first element of a tuple, a dict without its labels).
        out: the run directory; default `<trainer.default_root_dir>/regimes`.
        config: plain data kept in the run's config (hyperparameters, say).
        force: replace a finished or started run in `out` by a fresh fit.
        log_every_n_steps: logging cadence; default the trainer's.
        log_sites: also log `regimes/delta_a/<site>`.
        score: the logged metric that is the validation score (the figure and best_score).
        higher_is_better: whether a higher `score` is better.
        detect: run the online detector and tell its events (`on_regime_change`).
        tau: the detector's threshold, a fraction of each curve's range.
        freeze: "off", "auto" or an epoch number: freeze the activation pattern at the end of
            that epoch (see the module docstring).
        **tracker_options: passed to `regimes.Tracker` (sites, every, activation, autocast, ...).

    `events_`: every (event, iteration) told so far, on the process that writes.
    """

    def __init__(
        self,
        probe="val",
        *,
        probe_size: int | None = None,
        probe_seed: int = 0,
        probe_inputs: Callable | None = None,
        out=None,
        config: Mapping | None = None,
        force: bool = False,
        log_every_n_steps: int | None = None,
        log_sites: bool = False,
        score: str | None = None,
        higher_is_better: bool = True,
        detect: bool = True,
        tau: float = 0.1,
        freeze="off",
        **tracker_options,
    ) -> None:
        self.probe, self.probe_size, self.probe_seed, self.probe_inputs = probe, probe_size, probe_seed, probe_inputs
        self.out, self.config, self.force = out, config, force
        self.log_every_n_steps, self.log_sites, self.score, self.higher_is_better = (
            log_every_n_steps,
            log_sites,
            score,
            higher_is_better,
        )
        self.detect, self.tau, self.freeze = detect, tau, check_freeze(freeze, detect)
        self.tracker_options = tracker_options
        self.events_: list = []
        self.summary = None  # the run's RunSummary at the end of the fit, on the process that writes
        self.tracker = None  # the regimes.Tracker, on the process that tracks, once the fit has started
        self.session_: TrackingSession | None = None
        self.gate_: StepGate | None = None
        self.saved_: dict | None = None  # a checkpoint's state, loaded before the fit starts

    # -- the fit ---------------------------------------------------------------------------

    def on_train_start(self, trainer, pl_module) -> None:
        warn_late_freeze(self.freeze, trainer.max_epochs)
        session = TrackingSession(
            self.out or default_out(trainer.default_root_dir),
            host="lightning",
            config=self.config,
            force=self.force,
            log_sites=self.log_sites,
            score=self.score,
            higher_is_better=self.higher_is_better,
            detect=self.detect,
            tau=self.tau,
            freeze=self.freeze,
        )
        session.load_state_dict(self.saved_ or {})
        loader = trainer.train_dataloader
        session.describe.update(
            batch_size=self._samples_per_step(trainer),
            max_epochs=trainer.max_epochs,
            dataset=_dataset_name(getattr(loader, "dataset", None)),
        )
        self.tracker = session.start(
            pl_module,
            lambda: self._draw(trainer),
            step=trainer.global_step,
            rank=trainer.global_rank,
            optimizer=next(iter(trainer.optimizers), None),
            **self.tracker_options,
        )
        session.open()
        self.session_ = session
        if self.tracker is not None:
            self.gate_ = StepGate(trainer.optimizers)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.gate_ is None or not self.gate_.take():
            return
        self.session_.step()
        every = self.log_every_n_steps or trainer.log_every_n_steps
        if trainer.global_step % every == 0 and (values := self.session_.values()):
            for logger in trainer.loggers:
                logger.log_metrics(values, step=trainer.global_step)
                logger.save()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.session_.epoch = trainer.current_epoch + 1  # the epoch of the records measured from now on

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # Validation has run by now (Lightning validates inside the epoch), so the epoch's
        # row holds its validation metrics; metrics aggregated over the training epoch
        # (on_epoch=True) are reduced after this hook and land in the next row's view.
        # A freeze comes after the detector has heard the epoch, and before the next epoch's
        # training and validation, which run the gated model.
        epoch = trainer.current_epoch + 1
        last = _last_epoch(trainer, epoch)
        for event, iteration in self.session_.end_epoch(epoch, trainer.callback_metrics, last=last):
            self._tell(trainer, pl_module, event, iteration)

    def _tell(self, trainer, pl_module, event, iteration) -> None:
        self.events_.append((event, iteration))
        for logger in trainer.loggers:
            logger.log_metrics(settled_metric(event, iteration), step=trainer.global_step)
        for callback in trainer.callbacks:
            if callback is not self and callable(getattr(callback, "on_regime_change", None)):
                callback.on_regime_change(trainer, pl_module, event=event, iteration=iteration)

    @property
    def gates(self):
        """The installed `regimes.freeze.FrozenGates` once the regime is frozen, else None."""
        return self.session_.gates if self.session_ is not None else None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if self.session_ is not None:
            self.session_.flush()  # the steps table holds every record the checkpoint's state has seen

    def on_train_end(self, trainer, pl_module) -> None:
        self.summary = self.session_.finish()
        self._close()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if self.session_ is not None:
            self.session_.abort(exception)
        self._close()

    def _close(self) -> None:
        if self.gate_ is not None:
            self.gate_.close()
            self.gate_ = None

    # -- checkpoints -----------------------------------------------------------------------

    def state_dict(self) -> dict:
        return self.session_.state_dict() if self.session_ is not None else {}

    def load_state_dict(self, state_dict: dict) -> None:
        # Lightning restores callbacks before the fit starts: kept until on_train_start.
        self.saved_ = dict(state_dict)

    # -- the probe -------------------------------------------------------------------------

    def _draw(self, trainer):
        if not (isinstance(self.probe, str) or is_dataset(self.probe)):
            return self.probe  # the probe's data itself
        collate = None
        source = self.probe
        if isinstance(self.probe, str):
            if self.probe != "val":
                raise UsageError(f"probe={self.probe!r}: pass the probe's data, a data set, or 'val'")
            loaders = trainer.val_dataloaders
            loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
            if loader is None:
                raise UsageError("probe='val' needs a validation dataloader in the fit; pass the probe's data instead")
            source, collate = loader.dataset, loader.collate_fn
        size = self.probe_size or default_probe_size(self._samples_per_step(trainer))
        return (self.probe_inputs or model_inputs)(draw_probe(source, size, self.probe_seed, collate))

    @staticmethod
    def _samples_per_step(trainer) -> int | None:
        batch_size = getattr(trainer.train_dataloader, "batch_size", None)
        if not batch_size:
            return None
        return batch_size * trainer.accumulate_grad_batches * trainer.world_size


def _dataset_name(dataset) -> str | None:
    """A data set's name for the summary: its class's, unless it is a generic container."""
    return None if dataset is None else type(dataset).__name__


def _last_epoch(trainer, epoch: int) -> bool:
    """Whether the fit ends with `epoch` (its max_epochs or max_steps reached, or stopping)."""
    if trainer.should_stop:
        return True
    max_epochs, max_steps = trainer.max_epochs, trainer.max_steps
    if max_epochs is not None and max_epochs >= 0 and epoch >= max_epochs:
        return True
    return max_steps is not None and max_steps >= 0 and trainer.global_step >= max_steps

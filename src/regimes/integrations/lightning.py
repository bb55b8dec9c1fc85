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
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from regimes.extras import require
from regimes.integrations.session import (
    StepGate,
    TrackingSession,
    default_out,
    default_probe_size,
    draw_probe,
    is_dataset,
    model_inputs,
)  # fmt: skip

pl = require("lightning.pytorch", "regimes.integrations.lightning")

__all__ = ["RegimesCallback"]


class RegimesCallback(pl.Callback):
    """Tracks weight change and activation-pattern change of a Lightning fit.

    Args:
        probe: the probe's data (a Tensor, a tuple of args or a dict of kwargs for
            `pl_module`), a map-style data set to draw it from, or "val" to draw it from the
            data set of the fit's (first) validation dataloader.
        probe_size: how many samples to draw; default round(0.2 x the samples of one
            optimizer step), at least 1 (SPEC section 1).
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
        **tracker_options: passed to `regimes.Tracker` (sites, every, activation, autocast, ...).
    """

    def __init__(self, probe="val", *, probe_size: int | None = None, probe_seed: int = 0,
                 probe_inputs: Callable | None = None, out=None, config: Mapping | None = None, force: bool = False,
                 log_every_n_steps: int | None = None, log_sites: bool = False, score: str | None = None,
                 higher_is_better: bool = True, **tracker_options) -> None:  # fmt: skip
        self.probe, self.probe_size, self.probe_seed, self.probe_inputs = probe, probe_size, probe_seed, probe_inputs
        self.out, self.config, self.force = out, config, force
        self.log_every_n_steps, self.log_sites, self.score, self.higher_is_better = (
            log_every_n_steps, log_sites, score, higher_is_better)  # fmt: skip
        self.tracker_options = tracker_options
        self.summary = None  # the run's RunSummary at the end of the fit, on the process that writes
        self.tracker = None  # the regimes.Tracker, on the process that tracks, once the fit has started
        self.session_: TrackingSession | None = None
        self.gate_: StepGate | None = None
        self.saved_: dict | None = None  # a checkpoint's state, loaded before the fit starts

    # -- the fit ---------------------------------------------------------------------------

    def on_train_start(self, trainer, pl_module) -> None:
        session = TrackingSession(self.out or default_out(trainer.default_root_dir), host="lightning",
                                  config=self.config, force=self.force, log_sites=self.log_sites,
                                  score=self.score, higher_is_better=self.higher_is_better)  # fmt: skip
        session.load_state_dict(self.saved_ or {})
        self.tracker = session.start(pl_module, lambda: self._draw(trainer), step=trainer.global_step,
                                     rank=trainer.global_rank, **self.tracker_options)  # fmt: skip
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
        epoch = trainer.current_epoch + 1
        self.session_.flush(epoch)
        self.session_.epoch_row(epoch, trainer.callback_metrics)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if self.session_ is not None:
            self.session_.flush()  # the steps table holds every record the checkpoint's state has seen

    def on_train_end(self, trainer, pl_module) -> None:
        self.summary = self.session_.finish()
        self._close()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if self.session_ is not None:
            self.session_.interrupt(exception)
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
                raise ValueError(f"probe={self.probe!r}: pass the probe's data, a data set, or 'val'")
            loaders = trainer.val_dataloaders
            loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
            if loader is None:
                raise ValueError("probe='val' needs a validation dataloader in the fit; pass the probe's data instead")
            source, collate = loader.dataset, loader.collate_fn
        size = self.probe_size or default_probe_size(self._samples_per_step(trainer))
        return (self.probe_inputs or model_inputs)(draw_probe(source, size, self.probe_seed, collate))

    @staticmethod
    def _samples_per_step(trainer) -> int | None:
        batch_size = getattr(trainer.train_dataloader, "batch_size", None)
        if not batch_size:
            return None
        return batch_size * trainer.accumulate_grad_batches * trainer.world_size

"""The Hugging Face `Trainer`: a `TrainerCallback` that tracks the fit's regimes.

    from regimes.integrations.huggingface import RegimesCallback

    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=val, ...)
    callback = RegimesCallback("eval", probe_size=16).attach(trainer)   # or Trainer(callbacks=[...])
    trainer.train()
    callback.tracker.delta_w, trainer.state.log_history[-2]["regimes/delta_w"]

- The tracker is built at `on_train_begin` (the model is on its device) on the model the
  Trainer trains; a probe drawn from a data set keeps its `attention_mask`, so padding
  positions are not units.
- One measurement per optimizer update (`state.global_step`): gradient accumulation's
  micro-batches, and an fp16 step skipped by the gradient scaler, record nothing.
- `regimes/delta_w` and `regimes/delta_a` join the Trainer's own logs at every logging step
  (`logging_steps`), so the reporting integrations (TensorBoard under `train/regimes/...`,
  MLflow, W&B) and `trainer.state.log_history` receive them. The Trainer runs its reporting
  callbacks before the ones given to it, so `attach(trainer)` puts this one first; given
  only through `Trainer(callbacks=[...])`, the values still reach `log_history` and the
  callbacks after this one, but not the reporters.
- Its state is saved in each Trainer checkpoint folder (`regimes.pt`), and
  `trainer.train(resume_from_checkpoint=...)` continues the curves.
- At the end of training, `out` (default `<output_dir>/regimes`) holds the same run directory
  as `regimes run` writes: steps, one row per epoch (training loss, evaluation metrics), summary, figure.
- Online detection (`detect=True`, the default): at each epoch's end (`on_epoch_end`) the
  online detector (`regimes.detect`) hears the epoch's steps. Each `RegimeEvent` joins the next
  logs (`regimes/settled_w`, `regimes/settled_p`: the optimizer step the curve settled at, NaN
  when withdrawn) and, when the callback was attached, is told to every callback of
  `trainer.callback_handler` that has a method `on_regime_change(args, state, control, *,
  event, iteration, model)`: the Trainer's calling convention with the runner's keywords
  (`iteration`: the optimizer step of `event.step`, None when withdrawn). Added only through
  `Trainer(callbacks=[...])`, it cannot see the other callbacks: `events_` and the summary
  (`settled_w_online`, `settled_p_online`) still have them.
- Frozen regime (`freeze="auto"` or an epoch number; one process): at the end of that epoch
  (auto: the first one after which the detector has said the pattern settled; never the last)
  `regimes.freeze.freeze_regime` gates every tracked site of the model with a frozen copy's
  pattern. The Trainer evaluates after `on_epoch_end`, so that epoch's evaluation already runs
  the gated model, as does all training after it; the gates stay installed after training
  (`callback.gates.remove()` gives the plain network back). `da` is 0 from then on, `da_value`
  and `drift_value` say how the value network's own pattern moves, the summary has
  `freeze_iteration`, and a checkpoint's `regimes.pt` keeps the frozen copy, so a resume
  installs the same gates.
"""

from __future__ import annotations

import inspect
import io
import math
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from regimes.errors import UsageError
from regimes.extras import require
from regimes.integrations.session import (
    LABEL_KEYS,
    StepGate,
    TrackingSession,
    check_freeze,
    default_out,
    default_probe_size,
    draw_probe,
    is_dataset,
    model_inputs,
    settled_metric,
    warn_late_freeze,
)
from regimes.records import atomic_write, load_state, plain_state

transformers = require("transformers", "regimes.integrations.huggingface")
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR  # noqa: E402  (after the extras gate)

__all__ = ["RegimesCallback"]

STATE_FILE = "regimes.pt"  # the callback's state, inside each Trainer checkpoint folder


class RegimesCallback(transformers.TrainerCallback):
    """Tracks weight change and activation-pattern change of a `Trainer` fit.

    Args:
        probe: the probe's data (a Tensor, a tuple of args or a dict of kwargs such as a
            tokenizer's output with `attention_mask`), a map-style data set to draw it from
            (rows collated by the Trainer's data collator), or "eval" for the Trainer's
            `eval_dataset` (needs `attach(trainer)`).
        probe_size: how many samples to draw; default round(0.2 x the samples of one
            optimizer update), at least 1 (the study's probe).
        probe_seed: the seed of the draw.
        probe_inputs: a function from a collated batch to the model's inputs (default: the
            batch without its labels).
        out: the run directory; default `<args.output_dir>/regimes`.
        config: plain data kept in the run's config.
        force: replace a finished or started run in `out` by a fresh fit.
        log_sites: also log `regimes/delta_a/<site>`.
        score: the evaluation metric that is the validation score ("eval_accuracy", say).
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
        probe="eval",
        *,
        probe_size: int | None = None,
        probe_seed: int = 0,
        probe_inputs: Callable | None = None,
        out=None,
        config: Mapping | None = None,
        force: bool = False,
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
        self.log_sites, self.score, self.higher_is_better = log_sites, score, higher_is_better
        self.detect, self.tau, self.freeze = detect, tau, check_freeze(freeze, detect)
        self.tracker_options = tracker_options
        self.events_: list = []
        self.logs_: dict = {}  # what the events add to the next logs
        self.summary = None  # the run's RunSummary at the end of the fit, on the process that writes
        self.tracker = None  # the regimes.Tracker, on the process that tracks, once training has begun
        self.trainer_ = None
        self.session_: TrackingSession | None = None
        self.gate_: StepGate | None = None

    def attach(self, trainer) -> RegimesCallback:
        """Add this callback to `trainer` ahead of its reporting callbacks (so they log its
        values); it also lets probe="eval" find the evaluation data set. Returns self."""
        callbacks = trainer.callback_handler.callbacks
        if self in callbacks:
            callbacks.remove(self)
        callbacks.insert(0, self)
        self.trainer_ = trainer
        return self

    # -- the fit ---------------------------------------------------------------------------

    def on_train_begin(self, args, state, control, model=None, optimizer=None, train_dataloader=None, **kwargs):
        warn_late_freeze(self.freeze, state.num_train_epochs)
        session = TrackingSession(
            self.out or default_out(args.output_dir),
            host="huggingface",
            config=self.config,
            force=self.force,
            log_sites=self.log_sites,
            score=self.score,
            higher_is_better=self.higher_is_better,
            detect=self.detect,
            tau=self.tau,
            freeze=self.freeze,
        )
        session.describe.update(
            batch_size=args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size,
            max_epochs=math.ceil(state.num_train_epochs or 0) or None,
            dataset=type(getattr(train_dataloader, "dataset", None)).__name__ if train_dataloader is not None else None,
        )
        rank = args.process_index
        if state.global_step > 0:  # resumed: this process's state, saved in the checkpoint folder
            folder = _checkpoint_folder(args, state)
            saved = next((f for f in (folder / _state_file(rank, True), folder / STATE_FILE) if f.is_file()), None)
            if saved is not None and (rank == 0 or saved.name != STATE_FILE):
                session.load_state_dict(load_state(saved))
        self.tracker = session.start(
            model,
            lambda: self._draw(args, model, train_dataloader),
            step=state.global_step,
            rank=rank,
            optimizer=optimizer,
            **self.tracker_options,
        )
        session.open()
        self.session_ = session
        if self.tracker is not None:
            self.gate_ = StepGate([optimizer])
        if self.trainer_ is None and args.report_to and session.roles.writes:
            warnings.warn(
                f"RegimesCallback runs after the Trainer's reporting callbacks ({', '.join(args.report_to)}), which "
                "then miss regimes/delta_w and regimes/delta_a (trainer.state.log_history has them): add it with "
                "RegimesCallback(...).attach(trainer) instead of Trainer(callbacks=[...])",
                stacklevel=2,
            )

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.session_.epoch = math.floor(state.epoch or 0) + 1

    def on_step_end(self, args, state, control, **kwargs):
        if self.gate_ is not None and self.gate_.take():
            self.session_.step()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.session_ is None or logs is None:
            return
        values = {**self.session_.values(), **self.logs_}
        self.logs_ = {}
        logs.update(values)
        if values and state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(values)  # Trainer.log appended this step's entry before calling back

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        epoch = self.session_.epoch
        last = control.should_training_stop or state.global_step >= state.max_steps
        losses = [entry["loss"] for entry in state.log_history if "loss" in entry]
        # A freeze (when due) comes before the Trainer evaluates and saves at this epoch's end.
        for event, iteration in self.session_.end_epoch(epoch, {"train_loss": losses[-1]} if losses else {}, last=last):
            self._tell(args, state, control, model, event, iteration)

    def _tell(self, args, state, control, model, event, iteration) -> None:
        self.events_.append((event, iteration))
        self.logs_.update(settled_metric(event, iteration))
        callbacks = self.trainer_.callback_handler.callbacks if self.trainer_ is not None else []
        for callback in callbacks:
            if callback is not self and callable(getattr(callback, "on_regime_change", None)):
                callback.on_regime_change(args, state, control, event=event, iteration=iteration, model=model)

    @property
    def gates(self):
        """The installed `regimes.freeze.FrozenGates` once the regime is frozen, else None."""
        return self.session_.gates if self.session_ is not None else None

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if self.session_ is not None and metrics:
            self.session_.log(metrics, epoch=max(1, math.ceil((state.epoch or 0) - 1e-9)))

    def on_save(self, args, state, control, **kwargs):
        session = self.session_
        if session is None or session.tracker is None:
            return
        session.flush()
        if session.roles.writes or session.tracker.weights.sharding is not None:  # a sharded process keeps its own
            buffer = io.BytesIO()
            torch.save(plain_state(session.state_dict()), buffer)
            folder = _checkpoint_folder(args, state)
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write(
                folder / _state_file(args.process_index, session.tracker.weights.sharding is not None),
                buffer.getvalue(),
            )

    def on_train_end(self, args, state, control, **kwargs):
        if self.session_ is not None:
            self.summary = self.session_.finish()
        if self.gate_ is not None:
            self.gate_.close()
            self.gate_ = None

    # -- the probe -------------------------------------------------------------------------

    def _draw(self, args, model, train_dataloader):
        if not (isinstance(self.probe, str) or is_dataset(self.probe)):
            return self.probe  # the probe's data itself
        source, collate = self.probe, getattr(train_dataloader, "collate_fn", None)
        if isinstance(self.probe, str):
            if self.probe != "eval":
                raise UsageError(f"probe={self.probe!r}: pass the probe's data, a data set, or 'eval'")
            if self.trainer_ is None:
                raise UsageError(
                    "probe='eval' reads the Trainer's eval_dataset: attach the callback with "
                    "RegimesCallback(...).attach(trainer), or pass the data set itself as the probe"
                )
            source, collate = self.trainer_.eval_dataset, self.trainer_.data_collator
            if source is None or isinstance(source, Mapping):
                raise UsageError(
                    "probe='eval' needs one eval_dataset in the Trainer; pass the data set itself as the probe"
                )
        size = self.probe_size or default_probe_size(
            args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
        )
        rows = _ForwardColumns(source, model)
        return (self.probe_inputs or model_inputs)(draw_probe(rows, size, self.probe_seed, collate))


class _ForwardColumns:
    """A data set's rows with only the keys the model's forward takes (as the Trainer's
    remove_unused_columns does): text columns and the like would break the collator."""

    def __init__(self, dataset, model):
        self.dataset = dataset
        self.keys = set(inspect.signature(model.forward).parameters) | set(LABEL_KEYS)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        row = self.dataset[index]
        return {k: v for k, v in row.items() if k in self.keys} if isinstance(row, Mapping) else row


def _checkpoint_folder(args, state) -> Path:
    return Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"


def _state_file(rank: int, sharded: bool) -> str:
    return f"regimes-rank{rank}.pt" if sharded else STATE_FILE

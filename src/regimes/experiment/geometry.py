"""The theory's instruments along a run: the config key `geometry` as a callback.

At the start (epoch 0) and at the end of every epoch, over the probe's samples, at the
weights `w_e` of that moment:

    distance_p10 / _median / _p90    distance to the boundary of the linear region (input space)
    nearest_site                     the site most samples' nearest boundary lies in
    certified_p10 / _median / _p90   the certified parameter radius (Proposition 1, a lower bound)
    empirical_median                 the radius a search found (an upper bound)
    seconds                          what computing these cost

and, once the next epoch has run, what its steps did from `w_e`:

    step_max                  the largest step ||w_i - w_{i-1}||_2 (between measurements)
    displacement_max          the farthest the weights went from w_e, ||w_i - w_e||_2
    no_flip_guaranteed_step   fraction of samples whose certified radius exceeds step_max
    no_flip_guaranteed        fraction whose certified radius exceeds displacement_max: the
                              theory guarantees these samples kept their pattern all epoch
    no_flip_observed          fraction of samples with no flip at any measured step of the epoch
    step_over_radius          step_max / certified_median
    statistics_change         how far the running statistics (BatchNorm's) moved over the
                              epoch, relative: ||s - s_e||_2 / ||s_e||_2 (0 without any)

Proposition 1 is about the trainable parameters. Where only they move,
`no_flip_guaranteed <= no_flip_observed` (each sample it counts did keep its pattern) and
the gap is how much the theory leaves unexplained. Running statistics are not parameters:
they move with every training forward, whatever the learning rate, and an eval-mode
BatchNorm's pattern moves with them; where `statistics_change` is not 0 the guarantee
covers the parameters' share of the flips only, and the observed fraction can fall below it. `no_flip_guaranteed_step` compares the
radius with single steps, as the paper's argument does; it is a guarantee for the first step
from w_e only, since the radius moves with the weights.
"""

from __future__ import annotations

import math
import time
from collections import Counter

import numpy as np
import torch

from regimes.experiment.callbacks import Callback
from regimes.experiment.config import RunConfig
from regimes.experiment.setup import resolve_device, setup_run
from regimes.geometry.watch import AnchorWatch, percentiles, probe_geometry, probe_inputs

__all__ = ["GeometryRecorder", "NEXT_EPOCH_COLUMNS", "geometry_row"]

NEXT_EPOCH_COLUMNS = (
    "step_max",
    "displacement_max",
    "no_flip_guaranteed_step",
    "no_flip_guaranteed",
    "no_flip_observed",
    "step_over_radius",
    "statistics_change",
)


def geometry_row(per_sample: dict) -> dict:
    """An epoch's row (without `epoch`, `iteration`, `seconds`) from `probe_geometry`'s per-sample values."""
    sites = Counter(s for s in per_sample["nearest_site"] if s is not None)
    return {
        **percentiles(per_sample["distance"], "distance"),
        "nearest_site": sites.most_common(1)[0][0] if sites else None,
        **percentiles(per_sample["certified"], "certified"),
        "empirical_median": percentiles(per_sample["empirical"], "empirical")["empirical_median"],
    }


def running_statistics(model) -> list[torch.Tensor]:
    """Copies of the model's floating-point buffers (BatchNorm's running mean and variance)."""
    return [b.detach().double().clone() for b in model.buffers() if b.is_floating_point()]


def relative_change(before: list[torch.Tensor], after: list[torch.Tensor]) -> float:
    if not before:
        return 0.0
    moved = math.sqrt(sum(float((a - b).square().sum()) for a, b in zip(after, before)))
    return moved / max(math.sqrt(sum(float(b.square().sum()) for b in before)), 1e-30)


def next_epoch_columns(
    certified: np.ndarray,
    steps: np.ndarray,
    displacements: np.ndarray,
    flipped: np.ndarray,
    statistics_change: float = 0.0,
) -> dict:
    """What the next epoch's steps did, beside the radii `certified` (per sample) at its start."""
    if not len(steps):
        return dict.fromkeys(NEXT_EPOCH_COLUMNS)
    step_max, displacement_max = float(steps.max()), float(displacements.max())
    median = float(np.median(certified))
    return {
        "step_max": step_max,
        "displacement_max": displacement_max,
        "no_flip_guaranteed_step": float(np.mean(certified > step_max)),
        "no_flip_guaranteed": float(np.mean(certified > displacement_max)),
        "no_flip_observed": float(1.0 - np.mean(flipped)),
        "step_over_radius": step_max / median if median > 0 else float("inf"),
        "statistics_change": statistics_change,
    }


class GeometryRecorder(Callback):
    """Writes the run directory's geometry table (`RunDirectory.geometry_path`; see the
    module's docstring). The tracker needs the `UpdateNorm` and `AnchorWatch` quantities (the
    runner adds them when `geometry` is on); this callback must come before `Checkpoint`, so
    that a checkpoint holds the new anchor."""

    STEP_COLUMNS = ("update_norm", "displacement", "samples_flipped")  # what it adds to the steps table

    def __init__(self, run_dir, directions: int = 4):
        self.run_dir, self.directions = run_dir, directions

    def on_train_begin(self, run, **kwargs) -> None:
        tracker = run.tracker
        self.watch_ = next(q for q in tracker.quantities if isinstance(q, AnchorWatch))
        self.inputs_ = probe_inputs(tracker)
        saved, self.saved_ = getattr(self, "saved_", None), None
        if saved:  # a resume: the rows up to the checkpoint's epoch, the last one's next epoch to come
            self.rows_ = [r for r in self.run_dir.read_geometry() if r["epoch"] <= run.epoch]
            self.rows_[-1].update(dict.fromkeys(NEXT_EPOCH_COLUMNS))
            self.certified_, self.read_ = np.asarray(saved["certified"]), saved["read"]
            self.statistics_ = running_statistics(run.model)  # the checkpoint's: the anchor's
        else:
            self.rows_, self.read_ = [], tracker.iteration
            self._measure(run)
            self.run_dir.write_geometry(self.rows_)

    def on_epoch_end(self, run, **kwargs) -> None:
        new = run.tracker.records(since=self.read_, names=["update_norm", "displacement"])
        if len(new["iteration"]):
            self.read_ = int(new["iteration"][-1])
        flipped = self.watch_.flipped_since_anchor.cpu().numpy()
        moved = relative_change(self.statistics_, running_statistics(run.model))
        self.rows_[-1].update(
            next_epoch_columns(self.certified_, new["update_norm"], new["displacement"], flipped, moved)
        )
        self._measure(run)
        self.watch_.anchor()
        self.run_dir.write_geometry(self.rows_)

    def _measure(self, run) -> None:
        started = time.perf_counter()
        per_sample = probe_geometry(run.model, self.inputs_, directions=self.directions, seed=run.config.seed)
        self.certified_ = per_sample["certified"]
        self.statistics_ = running_statistics(run.model)
        row = {"epoch": run.epoch, "iteration": run.tracker.iteration, **geometry_row(per_sample)}
        self.rows_.append({**row, **dict.fromkeys(NEXT_EPOCH_COLUMNS), "seconds": time.perf_counter() - started})

    def state_dict(self) -> dict:
        if not hasattr(self, "certified_"):
            return {}
        return {"certified": self.certified_.tolist(), "read": self.read_}

    def load_state_dict(self, state: dict) -> None:
        self.saved_ = state or None  # used in on_train_begin, where the run is at hand


def checkpoint_geometry(run_dir, checkpoint: dict, *, device=None, data_dir=None) -> dict:
    """The geometry of a saved run's probe at its checkpoint's weights (`checkpoint`:
    `RunDirectory.read_checkpoint()`, the last finished epoch: a checkpoint holds no other):
    `epoch`, `iteration` and `probe_geometry`'s per-sample values. The model, data and probe
    are rebuilt from the run's config."""
    config = RunConfig.from_dict(run_dir.read_config())
    run = setup_run(config, resolve_device(device), data_dir)
    run.model.load_state_dict(checkpoint["model"])
    per_sample = probe_geometry(run.model, probe_inputs(run.tracker), seed=config.seed)
    return {
        "epoch": int(checkpoint["epoch"]),
        "iteration": int(checkpoint["run"]["tracker"]["iteration"]),
        **per_sample,
    }

"""A run's summary: one typed record, one status vocabulary.

```python
summary = RunSummary(model="mlp", dataset="digits", rho=1.26, status=Status.FINISHED)
summary["rho"], summary.get("freeze_iteration"), dict(summary)   # a read-only mapping too
summary.replace(status=Status.FAILED, error="ValueError: ...")    # a changed copy
RunSummary.from_dict(json.load(f))                                # any version's summary.json
```

`summary.json` is `dict(summary)` as strict JSON: the fields below in their order, then the
keys this version does not know (kept in `extra`), NaN and infinities written as null.
"""

from __future__ import annotations

import dataclasses
import platform
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from importlib import metadata

import numpy as np

from regimes.errors import DamagedInputError

__all__ = [
    "Status",
    "DONE",
    "STATUSES",
    "RunSummary",
    "software_versions",
    "STUDY_FIELDS",
    "study_fields",
    "validity",
    "LEARNED_MARGIN",
    "LEARNED_IMPROVEMENT",
]


class Status(str, Enum):
    """How a run stands. A `str`, so `Status.FINISHED == "finished"` and JSON writes "finished"."""

    RUNNING = "running"  # training, or stopped before it could say how it ended
    FINISHED = "finished"  # stopped early or at max_epochs
    DIVERGED = "diverged"  # the training loss became NaN or infinite
    INTERRUPTED = "interrupted"  # Ctrl-C or SIGTERM; resumable from its last finished epoch
    FAILED = "failed"  # an error ended it (the message is the summary's `error`)

    # The same text on every Python: 3.11 changed str() and format() of mixed-in enums.
    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @property
    def done(self) -> bool:
        """True when a rerun of a sweep leaves the run alone (`DONE`)."""
        return self in DONE


# The summary's neuron fields (regimes.neurons, the last epoch's means), as the run writes them
# and the report and seed statistics read them.
NEURON_FIELDS = ("dead", "always_on", "dead_units", "always_on_units")

DONE = (Status.FINISHED, Status.DIVERGED)  # a sweep rerun leaves these alone; anything else runs (again)
STATUSES = tuple(Status)


@dataclass(frozen=True, eq=False, kw_only=True)
class RunSummary(Mapping):
    """The numbers, status and provenance of one run (its `summary.json`).

    Every field may be missing from a summary written by an older version and then holds its
    default (None; status: running). Keys this version does not know are kept in `extra`,
    readable through the mapping and written back, so reading and rewriting loses nothing.
    A summary equals a mapping with the same keys and values, a key the mapping lacks
    counting as its default (as `from_dict` reads it).
    """

    # The run's configuration.
    preset: str | None = None
    model: str | None = None
    dataset: str | None = None
    optimizer: str | None = None
    momentum: float | None = None
    nesterov: bool | None = None
    weight_decay: float | None = None
    lr: float | None = None
    batch_size: int | None = None
    precision: str | None = None
    seed: int | None = None
    # The task's score and early stopping.
    score_name: str | None = None
    higher_is_better: bool | None = None
    best_score: float | None = None  # the best validation score of the run
    best_epoch: int | None = None  # the first epoch that reached it
    stop_epoch: int | None = None
    max_epochs: int | None = None
    # The study's numbers (SPEC section 2); rho is the headline one.
    auc_w: float | None = None
    auc_p: float | None = None
    rho: float | None = None
    stabilization_w: float | None = None
    stabilization_p: float | None = None
    window: int | None = None
    batches_per_epoch: int | None = None
    steps: int | None = None
    sites: list[str] | None = None
    probe_size: int | None = None
    train_size: int | None = None
    val_size: int | None = None
    data_source: str | None = None
    # How it went, where and with what.
    status: Status = Status.RUNNING
    seconds: float | None = None
    device: str | None = None
    versions: dict | None = None
    # SPEC section 3: rho under both weight changes, the frozen regime, the thread count.
    rho_global: float | None = None
    rho_layerwise: float | None = None
    freeze_iteration: int | None = None  # the iteration the regime was frozen at; None unless frozen
    stopping_score: float | None = None  # early stopping's reference (moves only by more than min_delta)
    stopping_epoch: int | None = None  # the epoch of that reference
    settled_w_online: int | None = None  # iteration the online detector says dw settled at (None: not settled)
    settled_p_online: int | None = None  # the same for da (regimes.detect, never looking ahead)
    # Validity of the run (SPEC section 1, `validity`): None where unknown (an older run, or a
    # task without the number). majority_score: the validation split's majority-class accuracy
    # (accuracy tasks); first_score: the first evaluation's validation score (epoch 1).
    majority_score: float | None = None
    first_score: float | None = None
    measured: bool | None = None  # at least two measurements per smoothing window
    learned: bool | None = None  # beat the majority class by 0.05 (accuracy) / improved on the first score by 10%
    frozen: bool | None = None  # the regime was frozen (freeze_iteration is set)
    threads: int | None = None  # torch's thread count during the run
    error: str | None = None  # what ended a failed run
    # SPEC "The four readings": weight change global (dw) | layerwise (dw_layerwise) x pattern
    # change mean over sites (da, the fields above) | pooled over units (da_units). None for a
    # run recorded before da_units.
    rho_units: float | None = None  # the headline's weight change with da_units
    rho_global_units: float | None = None  # AUC(dw) / AUC(da_units)
    rho_layerwise_units: float | None = None  # AUC(dw_layerwise) / AUC(da_units)
    auc_w_global: float | None = None  # AUC(dw), whichever weight change is the headline
    auc_w_layerwise: float | None = None  # AUC(dw_layerwise)
    auc_p_units: float | None = None  # AUC(da_units)
    stabilization_w_global: float | None = None  # t_tau of dw
    stabilization_w_layerwise: float | None = None  # t_tau of dw_layerwise
    stabilization_p_units: float | None = None  # t_tau of da_units
    # SPEC "Neurons, dead and always on", over the last epoch's measurements (regimes.neurons;
    # None when not recorded): the fractions of dead and of always-on neurons, averaged over
    # sites, and the fractions of all units that belong to such neurons.
    dead: float | None = None
    always_on: float | None = None
    dead_units: float | None = None
    always_on_units: float | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        try:
            status = Status(self.status)
        except ValueError:
            raise DamagedInputError(f"status must be one of {', '.join(Status)}, got {self.status!r}") from None
        object.__setattr__(self, "status", status)
        if clash := [k for k in self.extra if k in _KEYS]:
            raise ValueError(f"extra keys {clash} are fields of RunSummary; pass them as fields")

    @classmethod
    def from_dict(cls, data: Mapping) -> RunSummary:
        """A summary from a mapping (a summary.json of any version): missing keys take their
        defaults, unknown keys go to `extra`; a null status reads as running."""
        if isinstance(data, RunSummary):
            return data
        if not isinstance(data, Mapping):
            raise DamagedInputError(f"a run summary is a mapping of keys to values, got {type(data).__name__}")
        known = {k: v for k, v in data.items() if k in _KEYS}
        if known.get("status", Status.RUNNING) is None:
            del known["status"]
        for key, value in known.items():
            _check_type(key, value)
        return cls(**known, extra={k: v for k, v in data.items() if k not in _KEYS})

    def replace(self, **changes) -> RunSummary:
        """A copy with `changes`; keys that are not fields go to `extra`."""
        extra = {**self.extra, **{k: v for k, v in changes.items() if k not in _KEYS}}
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if k in _KEYS}, extra=extra)

    # -- the read-only mapping -----------------------------------------------------------

    def __getitem__(self, key: str):
        if key in _KEYS:
            return getattr(self, key)
        return self.extra[key]

    def __iter__(self):
        yield from _KEYS
        yield from self.extra

    def __len__(self) -> int:
        return len(_KEYS) + len(self.extra)

    def __eq__(self, other) -> bool:
        if not isinstance(other, Mapping):
            return NotImplemented
        try:
            other = RunSummary.from_dict(other)
        except (TypeError, ValueError):
            return False
        return dict(self.items()) == dict(other.items())

    __hash__ = None  # mutable contents (sites, versions), like a dict


_KEYS = tuple(f.name for f in dataclasses.fields(RunSummary) if f.name != "extra")
_TYPES = {f.name: str(f.type) for f in dataclasses.fields(RunSummary)}


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _check_type(key: str, value) -> None:
    """A summary's value has its field's type (None always allowed): a number where a number
    belongs, never a string, a bool or a table; a ValueError naming the key otherwise."""
    kind = _TYPES[key].replace(" | None", "")
    if value is None or kind == "Status":
        return
    ok = {
        "float": _is_number(value),
        "int": _is_number(value) and float(value).is_integer(),
        "str": isinstance(value, str),
        "bool": isinstance(value, (bool, np.bool_)),
        "dict": isinstance(value, Mapping),
        "list[str]": isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value),
    }.get(kind, True)
    if not ok:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise DamagedInputError(f"{key} must be {'an' if kind == 'int' else 'a'} {kind} or null, got {shown}")


# The summary fields that `regimes.analysis.summarize_run` computes: the study's numbers.
STUDY_FIELDS = (
    "auc_w",
    "auc_p",
    "rho",
    "stabilization_w",
    "stabilization_p",
    "window",
    "rho_global",
    "rho_layerwise",
    "rho_units",
    "rho_global_units",
    "rho_layerwise_units",
    "auc_w_global",
    "auc_w_layerwise",
    "auc_p_units",
    "stabilization_w_global",
    "stabilization_w_layerwise",
    "stabilization_p_units",
)


def study_fields(numbers: Mapping) -> dict:
    """The `STUDY_FIELDS` of `summarize_run`'s numbers, as `RunSummary` keywords (None where
    missing: a run with no step yet)."""
    return {k: numbers.get(k) for k in STUDY_FIELDS}


LEARNED_MARGIN = 0.05  # accuracy: the best validation score beats the majority class by at least this
LEARNED_IMPROVEMENT = 0.10  # lower-is-better scores (perplexity): the best is this fraction below the first


def validity(summary: Mapping, *, majority_score=None, first_score=None, every=None) -> dict:
    """Whether a run can be read as a result (SPEC section 1, "Validity of a run"): a pure function
    of its summary. Returns `measured`, `learned`, `frozen` (True, False, or None where the
    summary lacks what the answer needs) and `flags`: the words a table shows for a run that
    did not measure, did not learn or was frozen ("not measured", "not learned", "frozen").

    - measured: the run recorded at least two measurements per smoothing window:
      `steps // every >= 2 * window`, where `steps` is the summary's optimizer steps, `every`
      the tracker's measurement interval (the keyword, else the summary's `track_every`, else
      1) and `window` the summary's smoothing window, in measurements. None without `steps`
      or `window`.
    - learned: with a higher-is-better score (accuracy), `best_score - majority_score >= 0.05`;
      with a lower-is-better one (perplexity), `best_score <= (1 - 0.10) * first_score`, an
      improvement of at least 10% on the first evaluation. `majority_score` and `first_score`
      come from the keywords, else from the summary's fields; None without them (or without
      `higher_is_better`). A best score that is not a finite number has not learned.
    - frozen: `freeze_iteration` is set (else the summary's `frozen`, else False).

    The summary's own `measured` / `learned` (what the run wrote, knowing its measurement
    interval and its split) stand unless the caller passes `every` / the reference score; where
    the run wrote none, they are computed from the summary's numbers.
    """
    get = summary.get
    steps, window = get("steps"), get("window")
    measured = get("measured")
    if every is not None or measured is None:  # the run's own word stands unless the caller knows better
        every = every if every is not None else get("track_every") or 1
        if _number(steps) and _number(window) and _number(every) and every >= 1:
            measured = int(steps) // int(every) >= 2 * int(window)

    learned = get("learned")
    higher = get("higher_is_better")
    best = get("best_score")
    best = float(best) if _number(best) else float("nan")
    if higher is True and (majority_score is not None or learned is None):
        reference = majority_score if majority_score is not None else get("majority_score")
        if _number(reference):
            learned = best - float(reference) >= LEARNED_MARGIN - 1e-12
    elif higher is False and (first_score is not None or learned is None):
        reference = first_score if first_score is not None else get("first_score")
        if _number(reference):
            learned = best <= (1 - LEARNED_IMPROVEMENT) * float(reference) + 1e-12

    frozen = True if get("freeze_iteration") is not None else bool(get("frozen"))
    flags = [
        word
        for word, flagged in (
            ("not measured", measured is False),
            ("not learned", learned is False),
            ("frozen", frozen),
        )
        if flagged
    ]
    return {"measured": measured, "learned": learned, "frozen": frozen, "flags": flags}


def _number(value) -> bool:
    return _is_number(value) and bool(np.isfinite(value))


def software_versions() -> dict:
    """Versions of Python and of the packages that decide a run's numbers, and the platform."""
    versions = {"python": sys.version.split()[0], "platform": platform.platform(), "machine": platform.machine()}
    for name in ("torch", "numpy", "regimes", "pyarrow"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions

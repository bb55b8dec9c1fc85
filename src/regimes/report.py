"""Tables over many runs: the study's Table II and its aggregate line (SPEC sections 2 and 4).

```python
runs = load_runs(["runs/"])            # every run directory under runs/
rows = study_table(runs)
print(format_table(rows))              # Markdown; fmt="csv" or fmt="latex"
print(aggregate_line(rows, "markdown"))  # mean rho = 1.62 (+0.31 / -0.20) over 5 runs
```

Every row says its run's `seed`, `status` and directory name (`run`: a column when two rows
would otherwise look alike), and `flags` when the run did not measure, did not learn or was
frozen (SPEC section 1, `regimes.records.validity`: a column after status). Only finished,
unflagged runs enter the aggregate line (flagged ones with `include_flagged`), one line per
model and data set, which says how many it covers and how many it left out, and why. A sweep directory
(`regimes sweep`) is one row: its selected configuration, and with several seeds the means
over the seeds, rho with its 95% bootstrap interval; the aggregate line counts each of
those seeds as a run, so the row and the line agree. Reading the runs and the seeds'
statistics live in `regimes.runs` (re-exported here); this module only makes and formats
the table.
"""

from __future__ import annotations

import csv
import io
import math
from collections import Counter
from pathlib import Path

from regimes.analysis import aggregate, bootstrap_interval
from regimes.errors import UsageError
from regimes.records import NEURON_FIELDS, Status, is_sweep_directory, validity
from regimes.runs import as_float, config_value, load_runs, optimizer_text, seed_statistics, seed_text
from regimes.study import dataset_label, model_label

__all__ = [
    "load_runs",
    "as_float",
    "is_sweep_directory",
    "seed_statistics",
    "bootstrap_interval",
    "study_table",
    "format_table",
    "aggregate_line",
    "render",
    "short_scientific",
    "model_label",
    "dataset_label",
    "COLUMNS",
    "GEOMETRY_COLUMNS",
    "UNITS_COLUMNS",
    "NEURON_COLUMNS",
    "FORMATS",
]

FORMATS = ("markdown", "csv", "latex")

# (row key, Markdown header, LaTeX header); the CSV header is the row key.
COLUMNS = (
    ("model", "model", "Model"),
    ("dataset", "dataset", "Dataset"),
    ("optimizer", "optimizer", "Optimizer"),
    ("wd", "WD", "WD"),
    ("lr", "LR", "LR"),
    ("seed", "seed", "Seed"),
    ("status", "status", "Status"),
    ("best_score", "best val score", "Best val.\\ score"),
    ("stop_epoch", "stop epoch", "Stop epoch"),
    ("auc_w", "AUC_W", "$\\mathrm{AUC}_W$"),
    ("auc_p", "AUC_P", "$\\mathrm{AUC}_P$"),
    ("rho", "rho", "$\\rho$"),
    # The two readings of the weight change (SPEC section 1); rho is the config's (layerwise by default).
    ("rho_global", "rho global", "$\\rho_{\\mathrm{global}}$"),
    ("rho_layerwise", "rho layerwise", "$\\rho_{\\mathrm{layer}}$"),
)
# Added when the runs recorded the pattern change pooled over units (da_units): rho under the
# other two of the four readings (SPEC section 1; `regimes explain` says how far they disagree).
UNITS_COLUMNS = (
    ("rho_global_units", "rho global units", "$\\rho_{\\mathrm{global,units}}$"),
    ("rho_layerwise_units", "rho layerwise units", "$\\rho_{\\mathrm{layer,units}}$"),
)
# Added when the runs recorded their neurons (regimes.neurons): over the last epoch's
# measurements, the fractions of dead and always-on neurons (mean over sites) and of the
# units in them (SPEC "Neurons, dead and always on": what makes a pattern look settled).
NEURON_COLUMNS = (
    ("dead", "dead", "Dead"),
    ("dead_units", "dead units", "Dead units"),
    ("always_on", "always on", "Always on"),
    ("always_on_units", "always on units", "Always-on units"),
)
# Added after rho when a row comes from a sweep with several seeds (rho is then their mean).
SEED_COLUMNS = {
    "markdown": (("rho_ci", "rho 95% CI", ""), ("seeds", "seeds", "")),
    "latex": (("rho_ci", "", "95\\% CI"), ("seeds", "", "Seeds")),
    "csv": (("rho_low", "", ""), ("rho_high", "", ""), ("seeds", "", "")),
}
# Added at the end when a run recorded its geometry (config `geometry`; runs.geometry_numbers):
# medians over epochs of the probe's medians, and the no-flip fractions' means over epochs.
GEOMETRY_COLUMNS = (
    ("distance_median", "region distance", "Region dist."),
    ("certified_median", "radius", "Radius"),
    ("step_over_radius", "step/radius", "Step/radius"),
    ("no_flip_guaranteed", "no flip guaranteed", "No flip, guar."),
    ("no_flip_observed", "no flip observed", "No flip, obs."),
)
# Added after status when a row is flagged (SPEC section 1, "Validity of a run": not measured,
# not learned, frozen), and at the end when two rows share model, data set, optimizer, WD, LR
# and seed: the run's directory name. Every row carries both keys (`run`, `flags`).
FLAGS_COLUMN = ("flags", "flags", "Flags")
RUN_COLUMN = ("run", "run", "Run")
_TEXT_COLUMNS = {"model", "dataset", "optimizer", "status", "flags", "run"}


# -- the table -------------------------------------------------------------------------------


def study_table(runs) -> list[dict]:
    """One row per run with the study's columns (see COLUMNS); missing numbers are NaN.

    `seed` is the run's seed (for a sweep with seeds, the seeds its means are over, as
    text: "0-4"), `status` how the run stands (`regimes.records.Status`). A sweep row with
    seeds also has `members`: each seed run's status and rho, which `aggregate_line` counts.
    """
    rows = []
    for run in runs:
        seed = run.get("seed")
        rows.append(
            {
                "model": model_label(run.get("model") or "?"),
                "dataset": dataset_label(run.get("dataset") or "?"),
                "optimizer": optimizer_text(run),
                "wd": as_float(config_value(run, "weight_decay", "wd")),
                "lr": as_float(config_value(run, "lr")),
                "seed": seed if isinstance(seed, str) else _integer(seed),
                "status": Status(run.get("status") or Status.RUNNING),
                "best_score": as_float(run.get("best_score")),
                "stop_epoch": _integer(run.get("stop_epoch")),
                "auc_w": as_float(run.get("auc_w")),
                "auc_p": as_float(run.get("auc_p")),
                "rho": as_float(run.get("rho")),
                "rho_global": as_float(run.get("rho_global")),
                "rho_layerwise": as_float(run.get("rho_layerwise")),
            }
        )
        rows[-1]["run"] = Path(str(run.get("sweep") or run.get("path") or "")).name or None  # the directory's name
        rows[-1]["flags"] = list((run.get("validity") or validity(run))["flags"])
        if run.get("seeds"):  # a sweep rerun with several seeds
            rows[-1].update(
                rho_low=as_float(run.get("rho_low")), rho_high=as_float(run.get("rho_high")), seeds=int(run["seeds"])
            )
            rows[-1]["intervals"] = dict(run.get("intervals") or {})
        if run.get("members"):
            rows[-1]["members"] = [
                {**m, "flags": list((m.get("validity") or {}).get("flags", ()))} for m in run["members"]
            ]
        if "no_flip_observed" in run:
            rows[-1].update({key: as_float(run.get(key)) for key, _, _ in GEOMETRY_COLUMNS})
        if run.get("rho_units") is not None:
            rows[-1].update({key: as_float(run.get(key)) for key, _, _ in UNITS_COLUMNS})
        if run.get("dead") is not None:
            rows[-1].update({key: as_float(run.get(key)) for key, _, _ in NEURON_COLUMNS})
    return rows


def _integer(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


# -- formatting ------------------------------------------------------------------------------


def format_table(rows, fmt: str = "markdown", *, intervals: bool = False) -> str:
    """The table as Markdown (default), CSV or a LaTeX booktabs tabular.

    `intervals`: a row of several seeds shows every mean with its 95% bootstrap interval,
    "0.240 [0.217, 0.263]" (CSV: a `<column>_low` and a `<column>_high` column each)."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown table format {fmt!r}; choose one of {', '.join(FORMATS)}")
    columns = COLUMNS
    if any(row.get("flags") for row in rows):  # after status: how far the run can be read
        at = [key for key, _, _ in columns].index("status") + 1
        columns = columns[:at] + (FLAGS_COLUMN,) + columns[at:]
    columns += UNITS_COLUMNS if any("rho_layerwise_units" in row for row in rows) else ()
    columns += NEURON_COLUMNS if any("dead" in row for row in rows) else ()
    columns += SEED_COLUMNS[fmt] if any(row.get("seeds") for row in rows) else ()
    columns += GEOMETRY_COLUMNS if any("no_flip_observed" in row for row in rows) else ()
    if _ambiguous(rows):  # rows that the other columns do not tell apart: name their directories
        columns += (RUN_COLUMN,)
    cells = [
        [_cell(row.get(key), key, fmt) if key != "rho_ci" else _interval(row, fmt) for key, _, _ in columns]
        for row in rows
    ]
    keys = [key for key, _, _ in columns]
    with_interval = [key for key in keys if any(key in (row.get("intervals") or {}) for row in rows)]
    if intervals and fmt == "csv":
        for line, row in zip(cells, rows):
            bounds = (row.get("intervals") or {}).get
            line += [_cell(as_float((bounds(k) or [None, None])[i]), k, fmt) for k in with_interval for i in (0, 1)]
        columns += tuple((f"{k}_{end}", "", "") for k in with_interval for end in ("low", "high"))
    elif intervals:
        for line, row in zip(cells, rows):
            for key, (low, high) in (row.get("intervals") or {}).items():
                if key in keys and math.isfinite(as_float(low)) and math.isfinite(as_float(high)):
                    at = keys.index(key)
                    line[at] += f" [{_cell(as_float(low), key, fmt)}, {_cell(as_float(high), key, fmt)}]"
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([key for key, _, _ in columns])
        writer.writerows(cells)
        return out.getvalue()
    if fmt == "latex":
        spec = "".join("l" if key in _TEXT_COLUMNS else "r" for key, _, _ in columns)
        lines = [
            f"\\begin{{tabular}}{{{spec}}}",
            "\\toprule",
            " & ".join(tex for _, _, tex in columns) + " \\\\",
            "\\midrule",
            *(" & ".join(line) + " \\\\" for line in cells),
            "\\bottomrule",
            "\\end{tabular}",
        ]
        return "\n".join(lines) + "\n"
    header = [md for _, md, _ in columns]
    widths = [max([len(h), *(len(line[i]) for line in cells)]) for i, h in enumerate(header)]
    right = [key not in _TEXT_COLUMNS for key, _, _ in columns]

    def line(values):
        padded = (v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right))
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (w + 1) + ":" if r else "-" * (w + 2) for w, r in zip(widths, right)) + "|"
    return "\n".join([line(header), rule, *(line(c) for c in cells)]) + "\n"


def _ambiguous(rows) -> bool:
    seen = set()
    for row in rows:
        key = tuple(str(row.get(k)) for k in ("model", "dataset", "optimizer", "wd", "lr", "seed"))
        if key in seen:
            return True
        seen.add(key)
    return False


def _cell(value, key: str, fmt: str) -> str:
    if key == "flags":
        value = ", ".join(value or ())
    if key in _TEXT_COLUMNS:
        text = "" if value is None else str(value)
        if fmt == "latex":
            return _latex_escape(text)
        return text.replace("|", "\\|") if fmt == "markdown" else text
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return {"markdown": "-", "csv": "", "latex": "--"}[fmt]
    if isinstance(value, float) and math.isinf(value):
        sign = "-" if value < 0 else ""
        return {"markdown": f"{sign}inf", "csv": f"{sign}inf", "latex": f"${sign}\\infty$"}[fmt]
    if key in ("lr", "wd"):
        return short_scientific(value)
    if key == "seed":
        return str(value) if isinstance(value, str) else seed_text([value])
    if key == "stop_epoch":
        return str(int(value))
    if key == "best_score":
        return _score(value)
    if key in ("auc_w", "auc_p"):
        return f"{value:.3f}"
    if key in ("rho", "rho_low", "rho_high", "rho_global", "rho_layerwise", "rho_global_units", "rho_layerwise_units"):
        return f"{value:.2f}"
    if key == "seeds":
        return str(int(value))
    if key in ("no_flip_guaranteed", "no_flip_observed"):
        return f"{value:.2f}"
    if key in NEURON_FIELDS:
        return f"{value:.3f}"
    if key in ("distance_median", "certified_median", "step_over_radius"):
        return f"{value:.3g}"
    return str(value)


def _interval(row: dict, fmt: str) -> str:
    low, high = as_float(row.get("rho_low")), as_float(row.get("rho_high"))
    if not (math.isfinite(low) and math.isfinite(high)):
        return {"markdown": "-", "csv": "", "latex": "--"}[fmt]
    return f"[{low:.2f}, {high:.2f}]"


def short_scientific(x: float) -> str:
    """1e-4, 2.5e-4, 3e-2: the way learning rates and weight decays are written (0 is 0)."""
    x = float(x)
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    if 1 <= abs(x) < 1000:
        return f"{x:g}"
    mantissa, exponent = f"{x:.2e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def _score(x: float) -> str:
    """Four decimals for scores in [0, 1] (accuracy), four significant digits above (perplexity)."""
    if abs(x) <= 1:
        return f"{x:.4f}"
    return f"{x:.{max(0, 3 - int(math.floor(math.log10(abs(x)))))}f}"


def _latex_escape(text: str) -> str:
    special = {
        "\\": r"\textbackslash{}",
        "&": r"\&",
        "%": r"\%",
        "$": r"\$",
        "#": r"\#",
        "_": r"\_",
        "{": r"\{",
        "}": r"\}",
        "~": r"\textasciitilde{}",
        "^": r"\textasciicircum{}",
    }
    return "".join(special.get(c, c) for c in text)


def aggregate_line(rows, fmt: str = "markdown", unreadable: int = 0, *, include_flagged: bool = False) -> str:
    """`mean rho = m (+u / -l) over n runs` (SPEC section 2), over the finished runs with a finite rho.

    A sweep row with seeds (`members`) counts each seed run, so the line and the row's
    interval are over the same runs. The line says what it left out and why: runs that are
    running, interrupted, diverged or failed, finished ones without a finite rho, runs
    flagged as not measured, not learned or frozen (SPEC section 1, "Validity of a run";
    counted in when `include_flagged`), and `unreadable` directories that `load_runs`
    skipped. A row without a status is taken as finished (a table of numbers made by hand).

    Unrelated runs are not averaged together: rows of different model and data set get one
    line each, "MLP / Breast Cancer: mean rho = ...".
    """
    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    groups: dict = {}
    for row in rows:
        groups.setdefault((row.get("model"), row.get("dataset")), []).append(row)
    if len(groups) <= 1:
        return _group_line(rows, fmt, unreadable, include_flagged)
    lines = []
    for (model, dataset), members in groups.items():
        label = f"{model or '?'} / {dataset or '?'}"  # the rows' labels (study_table)
        label = _latex_escape(label) if fmt == "latex" else label
        lines.append(f"{label}: {_group_line(members, fmt, 0, include_flagged)}")
    if unreadable:
        lines.append(f"left out {unreadable} unreadable")
    return "\n".join(lines)


def _group_line(rows, fmt: str, unreadable: int, include_flagged: bool) -> str:
    rhos, left_out, seeds = [], Counter(), 0
    for row in rows:
        for run in row.get("members") or [row]:
            if (reason := _left_out_because(run, include_flagged)) is not None:
                left_out[reason] += 1
            else:
                rhos.append(as_float(run.get("rho")))
                seeds += bool(row.get("members"))
    if unreadable:
        left_out["unreadable"] = unreadable
    note = ""
    if left_out:
        reasons = ", ".join(f"{left_out[k]} {k}" for k in _LEFT_OUT if k in left_out)
        flagged = " and not flagged" if any(k in left_out for k in _FLAGS) else ""
        note = (
            f"; left out {left_out.total()} of {len(rhos) + left_out.total()}: {reasons} "
            f"(only finished runs with a finite rho{flagged} count)"
        )
    rho = "$\\rho$" if fmt == "latex" else "rho"
    if not rhos:
        return f"mean {rho}: no run finished with a finite rho{note}"
    m, upper, lower = aggregate(rhos)
    runs = "run" if len(rhos) == 1 else "runs"
    counted = f" ({seeds} of them seeds of a sweep, each counted)" if seeds else ""
    return f"mean {rho} = {m:.2f} (+{upper:.2f} / -{lower:.2f}) over {len(rhos)} {runs}{counted}{note}"


# Why a run is left out of the aggregate, in the order the line lists them.
_FLAGS = ("not measured", "not learned", "frozen")
_LEFT_OUT = (
    *map(str, (Status.RUNNING, Status.INTERRUPTED, Status.DIVERGED, Status.FAILED)),
    "without a finite rho",
    *_FLAGS,
    "unreadable",
)


def _left_out_because(run, include_flagged: bool = False) -> str | None:
    status = Status(run.get("status") or Status.FINISHED)
    if status != Status.FINISHED:
        return str(status)
    if not math.isfinite(as_float(run.get("rho"))):
        return "without a finite rho"
    flags = run.get("flags") or ()
    return None if include_flagged or not flags else flags[0]


def render(
    runs, fmt: str = "markdown", unreadable: int = 0, *, include_flagged: bool = False, intervals: bool = False
) -> str:
    """The table and, except for CSV (which must stay one table), the aggregate line under it
    (`unreadable`: directories `load_runs` skipped, which the line counts as left out;
    `include_flagged`: count runs flagged not measured, not learned or frozen in the mean;
    `intervals`: every mean of several seeds with its 95% interval, `format_table`)."""
    rows = study_table(runs)
    text = format_table(rows, fmt, intervals=intervals)
    if fmt != "csv":
        text += "\n" + aggregate_line(rows, fmt, unreadable, include_flagged=include_flagged) + "\n"
    return text

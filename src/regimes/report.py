"""Tables over many runs: the study's Table II and its aggregate line (SPEC sections 2 and 4).

```python
runs = load_runs(["runs/"])            # every run directory under runs/
rows = study_table(runs)
print(format_table(rows))              # Markdown; fmt="csv" or fmt="latex"
print(aggregate_line(rows, "markdown"))  # mean rho = 1.62 (+0.31 / -0.20) over 5 runs
```

A sweep directory (`regimes sweep`) is one row: its selected configuration, and with
several seeds the means over the seeds, rho with its 95% bootstrap interval.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np

from regimes.analysis import aggregate, bootstrap_interval
from regimes.records import RunDirectory, is_run_directory
from regimes.study import dataset_label, model_label, optimizer_label, row_rank

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
    ("best_score", "best val score", "Best val.\\ score"),
    ("stop_epoch", "stop epoch", "Stop epoch"),
    ("auc_w", "AUC_W", "$\\mathrm{AUC}_W$"),
    ("auc_p", "AUC_P", "$\\mathrm{AUC}_P$"),
    ("rho", "rho", "$\\rho$"),
)
# Added after rho when a row comes from a sweep with several seeds (rho is then their mean).
SEED_COLUMNS = {
    "markdown": (("rho_ci", "rho 95% CI", ""), ("seeds", "seeds", "")),
    "latex": (("rho_ci", "", "95\\% CI"), ("seeds", "", "Seeds")),
    "csv": (("rho_low", "", ""), ("rho_high", "", ""), ("seeds", "", "")),
}
_TEXT_COLUMNS = {"model", "dataset", "optimizer"}


# -- loading ---------------------------------------------------------------------------------


def load_runs(paths) -> list[dict]:
    """Read the runs at `paths`: run or sweep directories, or folders searched recursively for them.

    Each run is its summary (a flat dict) plus `path` and `config`; a sweep is its selected
    run, with the seeds' statistics when it has seeds (see `seed_statistics`). Runs come in
    the study's row order (model, then data set; rows the study does not have go after its
    rows of the same model), ties in the order found; a run reached twice is read once.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    found: list[Path] = []
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist")
        if is_sweep_directory(path) or is_run_directory(path):
            found.append(path)
            continue
        inside = []
        if path.is_dir():
            sweeps = sorted(p.parent for p in path.rglob("sweep.json"))
            runs = sorted(p.parent for p in path.rglob("summary.json")
                          if not any(s in p.parents for s in sweeps))  # fmt: skip
            inside = sorted(sweeps + runs)
        if not inside:
            raise FileNotFoundError(
                f"{path} holds no run: no summary.json in it or in any folder under it "
                "(a run directory is what `regimes run --out DIR` writes)"
            )
        found.extend(inside)

    runs, seen = [], set()
    for path in found:
        if (resolved := path.resolve()) in seen:
            continue
        seen.add(resolved)
        runs.append(_read_sweep(path) if is_sweep_directory(path) else _read_run(path))
    return sorted(runs, key=_study_order)


def is_sweep_directory(path) -> bool:
    """True when `path` is a folder that `regimes sweep` wrote (it holds sweep.json)."""
    return (Path(path) / "sweep.json").is_file()


def _read_sweep(path: Path) -> dict:
    """The sweep's row: its selected trial, or the seeds' means when it has seeds."""
    description = json.loads((path / "sweep.json").read_text())
    selected_path = path / "selected.json"
    selected = json.loads(selected_path.read_text()) if selected_path.is_file() else {}
    if selected.get("path"):
        run = _read_run(path / selected["path"])
    else:  # nothing finished yet: a row with the sweep's model and data set, no numbers
        run = {"model": description.get("model"), "dataset": description.get("dataset"),
               "status": selected.get("status", "running"), "path": str(path), "config": description.get("base", {})}  # fmt: skip
    run["sweep"] = str(path)
    run["trials"] = selected.get("trials")
    seed_runs = (selected.get("seeds") or {}).get("runs") or []  # the seeds of the current selection
    if seed_runs:
        summaries = [RunDirectory(path / name).read_summary() or {} for name in seed_runs]
        run.update(seed_statistics(summaries))
    return run


def seed_statistics(runs, confidence: float = 0.95, resamples: int = 10_000) -> dict:
    """Means over the finished runs of one configuration (several seeds), with rho's
    bootstrap interval (`bootstrap_interval`) and semi-deviations (SPEC section 2).

    Keys: seeds, best_score, stop_epoch (rounded mean), auc_w, auc_p, rho, rho_low,
    rho_high, rho_upper, rho_lower, rhos (each run's, in order).
    """
    finished = [r for r in runs if r.get("status") == "finished"]

    def mean(key):
        values = [v for v in (as_float(r.get(key)) for r in finished) if math.isfinite(v)]
        return float(np.mean(values)) if values else math.nan

    rhos = [v for v in (as_float(r.get("rho")) for r in finished) if math.isfinite(v)]
    m, upper, lower = aggregate(rhos) if rhos else (math.nan, math.nan, math.nan)
    low, high = bootstrap_interval(rhos, confidence, resamples)
    stop = mean("stop_epoch")
    return {
        "seeds": len(finished),
        "best_score": mean("best_score"),
        "stop_epoch": round(stop) if math.isfinite(stop) else None,
        "auc_w": mean("auc_w"),
        "auc_p": mean("auc_p"),
        "rho": m,
        "rho_low": low,
        "rho_high": high,
        "rho_upper": upper,
        "rho_lower": lower,
        "rhos": rhos,
    }


def _read_run(path: Path) -> dict:
    directory = RunDirectory(path)
    try:
        config = directory.read_config()
    except FileNotFoundError:
        config = {}
    summary = directory.read_summary() or {}
    run = {k: config[k] for k in ("model", "dataset") if k in config}
    run.update(summary)
    run.setdefault("status", "running")
    run["path"] = str(path)
    run["config"] = config
    return run


def _study_order(run: dict) -> tuple:
    model, dataset = str(run.get("model", "")), str(run.get("dataset", ""))
    return (*row_rank(model, dataset), model, dataset)


# -- the table -------------------------------------------------------------------------------


def study_table(runs) -> list[dict]:
    """One row per run with the study's columns (see COLUMNS); missing numbers are NaN."""
    rows = []
    for run in runs:
        rows.append(
            {
                "model": model_label(run.get("model", "?")),
                "dataset": dataset_label(run.get("dataset", "?")),
                "optimizer": _optimizer_label(run),
                "wd": as_float(_lookup(run, "weight_decay", "wd")),
                "lr": as_float(_lookup(run, "lr")),
                "best_score": as_float(run.get("best_score")),
                "stop_epoch": _integer(run.get("stop_epoch")),
                "auc_w": as_float(run.get("auc_w")),
                "auc_p": as_float(run.get("auc_p")),
                "rho": as_float(run.get("rho")),
            }
        )
        if run.get("seeds"):  # a sweep rerun with several seeds
            rows[-1].update(rho_low=as_float(run.get("rho_low")), rho_high=as_float(run.get("rho_high")),
                            seeds=int(run["seeds"]))  # fmt: skip
    return rows


def _lookup(run: dict, *names):
    """The first of `names` found in the summary, then in the config (flat or by section)."""
    config = run.get("config") or {}
    for source in [run, config, *(v for v in config.values() if isinstance(v, dict))]:
        for name in names:
            if source.get(name) is not None:
                return source[name]
    return None


def _optimizer_label(run: dict) -> str:
    name = _lookup(run, "optimizer")
    if isinstance(name, dict):  # a config section such as [optimizer] name = "sgd"
        name = name.get("name")
    label = optimizer_label(name) if name is not None else "?"
    momentum = as_float(_lookup(run, "momentum"))
    if _lookup(run, "nesterov"):
        label += f", Nesterov {momentum:g}" if momentum > 0 else ", Nesterov"
    elif momentum > 0:
        label += f", momentum {momentum:g}"
    return label


def as_float(value) -> float:
    """A number from a summary or table cell; None and non-numbers read as NaN."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan  # summary.json stores NaN and infinities as null


def _integer(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


# -- formatting ------------------------------------------------------------------------------


def format_table(rows, fmt: str = "markdown") -> str:
    """The table as Markdown (default), CSV or a LaTeX booktabs tabular."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown table format {fmt!r}; choose one of {', '.join(FORMATS)}")
    columns = COLUMNS + (SEED_COLUMNS[fmt] if any(row.get("seeds") for row in rows) else ())
    cells = [[_cell(row.get(key), key, fmt) if key != "rho_ci" else _interval(row, fmt) for key, _, _ in columns]
             for row in rows]  # fmt: skip
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
    widths = [max(len(h), *(len(line[i]) for line in cells)) for i, h in enumerate(header)]
    right = [key not in _TEXT_COLUMNS for key, _, _ in columns]

    def line(values):
        padded = (v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right))
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (w + 1) + ":" if r else "-" * (w + 2) for w, r in zip(widths, right)) + "|"
    return "\n".join([line(header), rule, *(line(c) for c in cells)]) + "\n"


def _cell(value, key: str, fmt: str) -> str:
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
    if key == "stop_epoch":
        return str(int(value))
    if key == "best_score":
        return _score(value)
    if key in ("auc_w", "auc_p"):
        return f"{value:.3f}"
    if key in ("rho", "rho_low", "rho_high"):
        return f"{value:.2f}"
    if key == "seeds":
        return str(int(value))
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
        "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
        "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    }  # fmt: skip
    return "".join(special.get(c, c) for c in text)


def aggregate_line(rows, fmt: str = "markdown") -> str:
    """`mean rho = m (+u / -l) over n runs` (SPEC section 2), over the rows with a finite rho."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    rhos = [r for r in (as_float(row.get("rho")) for row in rows) if math.isfinite(r)]
    skipped = len(rows) - len(rhos)
    note = f" ({skipped} without a finite rho left out)" if skipped else ""
    rho = "$\\rho$" if fmt == "latex" else "rho"
    if not rhos:
        return f"mean {rho}: no run with a finite rho{note}"
    m, upper, lower = aggregate(rhos)
    runs = "run" if len(rhos) == 1 else "runs"
    return f"mean {rho} = {m:.2f} (+{upper:.2f} / -{lower:.2f}) over {len(rhos)} {runs}{note}"


def render(runs, fmt: str = "markdown") -> str:
    """The table and, except for CSV (which must stay one table), the aggregate line under it."""
    rows = study_table(runs)
    text = format_table(rows, fmt)
    if fmt != "csv":
        text += "\n" + aggregate_line(rows, fmt) + "\n"
    return text

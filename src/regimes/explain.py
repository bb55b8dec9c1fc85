"""What explains a run's rho: the numbers behind the headline, each from a recorded column.

    numbers = explain("runs/mlp-breast-cancer-seed0")   # a dict (pure: reads, computes, returns)
    print(render(numbers))                              # the same in words, column by column
    fig, axes = plot_explain("runs/mlp-breast-cancer-seed0")   # one figure (matplotlib)

`regimes explain RUN_DIR` prints the text (and `--figure PATH` draws the figure). What it says:

- **sites**: which sites carry the pattern curve: each site's share of the area under
  `da` (the raw curve: `da` is the mean of the `da:<site>` columns, so the shares add up to
  1), each site's own t_tau (`da:<site>` smoothed and normalised as the study does), and the
  order in which the sites settle (bottom-up: in forward order).
- **tensors**: the same shares for the weight change, per trainable tensor (the per-tensor
  table's `dw` per `tensor`, the `dw:<tensor>` curves; `dw_layerwise` is their mean).
- **readings**: rho, AUCs and t_tau under the four readings (weight change global `dw` |
  layerwise `dw_layerwise` x pattern change sites `da` | units `da_units`) and how far they
  disagree (the largest rho over the smallest).
- **neurons**: the share of all units in dead and in always-on neurons (`dead_units`,
  `always_on_units`) over the first and the last epoch, and how much `da_units` would have
  fallen had only the units of the other neurons counted: how much of the pattern's calm
  is neurons that can no longer flip.
- **plateau**: whether the run started on a plateau (both normalised curves below half
  their range for the first 5% of the measurements or more), and then rho from the
  plateau's end beside the whole run's.
- **learned**: the best validation score against the majority-class accuracy where the run
  recorded it (SPEC "Validity of a run"), else against the first epoch's score.

A run recorded before `da_units` or `NeuronStats` existed is read too; what it lacks is None.
"""

from __future__ import annotations

import math

import numpy as np

from regimes import analysis
from regimes.errors import NoRunError

__all__ = ["explain", "render", "plot_explain", "site_order", "PLATEAU_LEVEL", "PLATEAU_FRACTION"]

PLATEAU_LEVEL = 0.5  # a curve is on a plateau while its normalised value is below this
PLATEAU_FRACTION = 0.05  # ... for at least this fraction of the run's measurements
READINGS = [(w, p) for w in analysis.WEIGHT_CHANGES for p in analysis.PATTERN_CHANGES]
_MAJORITY_KEYS = ("majority_score", "majority_accuracy", "baseline_score")


def explain(run_dir, tau: float = 0.1) -> dict:
    """The numbers that explain a run's rho (see the module's docstring), as plain data.

    Raises `NoRunError` when `run_dir` is not a run directory, `DamagedInputError` (through
    `RunDirectory`) when a table cannot be read.
    """
    from regimes.records import RunDirectory

    directory = RunDirectory(run_dir)
    if not directory.has_config() or not directory.has_records():
        raise NoRunError(f"{directory.path} is not a run directory with step records (`regimes run` writes one)")
    summary = dict(directory.read_summary() or {})
    steps = directory.read_steps()
    epochs = directory.read_epochs()
    if len(steps["da"]) == 0:
        raise NoRunError(f"{directory.path} has no measured step yet")
    per_epoch = _measurements_per_epoch(summary, steps)
    weight_change = "global" if _config_weight_change(directory) == "global" else "layerwise"
    sites = [name[3:] for name in steps if name.startswith("da:")]
    out = {
        "run": str(directory.path),
        "measurements": len(steps["da"]),
        "measurements_per_epoch": per_epoch,
        "window": min(analysis.smoothing_window(per_epoch), len(steps["da"])),
        "tau": tau,
        "weight_change": weight_change,
        "headline": (weight_change, "sites"),
        "readings": _readings(steps, per_epoch, tau),
        "sites": _sites(steps, sites, per_epoch, tau),
        "tensors": _tensors(directory, per_epoch, tau),
        "neurons": _neurons(steps, sites),
        "plateau": _plateau(steps, weight_change, per_epoch, tau),
        "learned": _learned(summary, epochs),
    }
    rhos = [r["rho"] for r in out["readings"].values() if _finite(r["rho"]) and r["rho"] > 0]
    out["disagreement"] = max(rhos) / min(rhos) if rhos else None
    out["order"] = site_order([s["t_tau"] for s in out["sites"]])
    return out


def site_order(t_taus: list[float]) -> str:
    """How the sites settle, in forward order: "never" (no site's curve stays below tau:
    every t_tau is 1), "bottom-up" (each t_tau >= the one before), "top-down" (each <=),
    "together" (all equal) or "mixed".

    >>> site_order([0.2, 0.5, 0.9]), site_order([0.9, 0.5]), site_order([0.3, 0.3]), site_order([0.1, 0.9, 0.5])
    ('bottom-up', 'top-down', 'together', 'mixed')
    >>> site_order([1.0, 1.0])
    'never'
    """
    t = np.asarray(t_taus, dtype=np.float64)
    if t.size and np.all(t >= 1):
        return "never"
    if t.size < 2 or np.all(t == t[0]):
        return "together"
    steps = np.diff(t)
    if np.all(steps >= 0):
        return "bottom-up"
    if np.all(steps <= 0):
        return "top-down"
    return "mixed"


# ------------------------------------------------------------------------------ the parts


def _readings(steps: dict, per_epoch: int, tau: float) -> dict:
    found = analysis.four_readings(steps, per_epoch, tau)
    out = {}
    for (w, p), numbers in found.items():
        out[f"{w}/{p}"] = {**numbers, "columns": [analysis.READING_CURVES[w], analysis.READING_CURVES[p]]}
    return out


def _sites(steps: dict, sites: list[str], per_epoch: int, tau: float) -> list[dict]:
    areas = np.array([np.nansum(steps[f"da:{s}"]) for s in sites])
    total = areas.sum()
    rows = []
    for site, area in zip(sites, areas):
        curve = analysis.normalized_curve(steps[f"da:{site}"], per_epoch)
        row = {
            "site": site,
            "column": f"da:{site}",
            "share": float(area / total) if total > 0 else None,
            "auc": analysis.auc(curve),
            "t_tau": analysis.stabilization(curve, tau),
        }
        for kind in ("on", "dead", "always_on"):
            column = steps.get(f"{kind}:{site}")
            row[kind] = _last_epoch_mean(steps, column)
        rows.append(row)
    return rows


def _tensors(directory, per_epoch: int, tau: float) -> list[dict]:
    table = directory.read_tensor_steps()  # long: one row per (iteration, tensor)
    names = list(dict.fromkeys(table["tensor"].tolist()))
    if not names:
        return []
    curves = {}
    for name in names:
        rows = table["tensor"] == name
        curves[name] = table["dw"][rows][np.argsort(table["iteration"][rows], kind="stable")]
    areas = np.array([np.nansum(curves[n]) for n in names])
    total = areas.sum()
    rows = [
        {
            "tensor": n,
            "column": f"dw:{n}",
            "share": float(a / total) if total > 0 else None,
            "t_tau": analysis.stabilization(analysis.normalized_curve(curves[n], per_epoch), tau),
        }
        for n, a in zip(names, areas)
    ]
    return sorted(rows, key=lambda r: -(r["share"] or 0))


def _neurons(steps: dict, sites: list[str]) -> dict | None:
    if "dead_units" not in steps or "da_units" not in steps:
        return None
    # Measurements with the columns (a run resumed by a newer version lacks them before).
    measured = np.isfinite(steps["da_units"]) & np.isfinite(steps["dead_units"])
    if not measured.any():
        return None
    steps = {k: v[measured] for k, v in steps.items()}
    epoch = steps["epoch"]
    first, last = epoch == epoch.min(), epoch == epoch.max()
    frozen = steps["dead_units"] + steps["always_on_units"]

    def mean(column, where):
        return float(np.mean(column[where]))

    pooled_early, pooled_late = mean(steps["da_units"], first), mean(steps["da_units"], last)
    # Flips per unit of the neurons that can still flip (neither dead nor always on).
    live = steps["da_units"] / np.where(frozen < 1, 1 - frozen, np.nan)
    live_early, live_late = float(np.nanmean(live[first])), float(np.nanmean(live[last]))
    fall = 1 - pooled_late / pooled_early if pooled_early > 0 else None
    fall_live = 1 - live_late / live_early if live_early > 0 and math.isfinite(live_late) else None
    return {
        "first_epoch": int(epoch.min()),
        "last_epoch": int(epoch.max()),
        "dead_units": [mean(steps["dead_units"], first), mean(steps["dead_units"], last)],
        "always_on_units": [mean(steps["always_on_units"], first), mean(steps["always_on_units"], last)],
        "on": [mean(steps["on"], first), mean(steps["on"], last)],
        "da_units": [pooled_early, pooled_late],
        "da_units_live": [live_early, live_late],
        "fall": fall,  # how much da_units fell from the first epoch to the last
        "fall_live": fall_live,  # the same counting only the units of live neurons
        "calm_from_frozen": (fall - fall_live) / fall if fall and fall_live is not None else None,
    }


def _plateau(steps: dict, weight_change: str, per_epoch: int, tau: float) -> dict:
    dw, da = steps[analysis.READING_CURVES[weight_change]], steps["da"]
    w_hat, a_hat = analysis.normalized_curve(dw, per_epoch), analysis.normalized_curve(da, per_epoch)
    risen = np.flatnonzero((w_hat >= PLATEAU_LEVEL) | (a_hat >= PLATEAU_LEVEL))
    end = int(risen[0]) if risen.size else len(w_hat)
    on_plateau = len(w_hat) > 0 and end / len(w_hat) >= PLATEAU_FRACTION and end < len(w_hat)
    out = {
        "on_plateau": bool(on_plateau),
        "end": end,
        "end_fraction": end / len(w_hat) if len(w_hat) else None,
        "end_iteration": int(steps["iteration"][end]) if end < len(steps["iteration"]) else None,
        "rho_after": None,
        "columns": [analysis.READING_CURVES[weight_change], "da"],
    }
    if on_plateau:  # smoothed index `end` starts at raw measurement `end` ('valid' mode)
        out["rho_after"] = analysis.summarize(dw[end:], da[end:], per_epoch, tau)["rho"]
    return out


def _learned(summary: dict, epochs: list[dict]) -> dict:
    from regimes.runs import best_validation

    higher = summary.get("higher_is_better") is not False
    best = best_validation(epochs, higher)
    scores = [r.get("val_score") for r in epochs if _finite(r.get("val_score"))]
    out = {
        "score_name": summary.get("score_name"),
        "best": best[0] if best else None,
        "best_epoch": best[1] if best else None,
        "first": scores[0] if scores else None,
        "majority": None,
        "learned": summary.get("learned"),
        "basis": None,
    }
    majority = next((summary[k] for k in _MAJORITY_KEYS if _finite(summary.get(k))), None)
    if best is None:
        out["basis"] = "no validation score recorded"
        return out
    if higher and majority is not None:
        out["majority"] = majority
        out["learned"] = best[0] >= majority + 0.05 if out["learned"] is None else out["learned"]
        out["basis"] = "best val_score >= majority-class accuracy + 0.05"
    elif not higher and out["first"] is not None:
        out["learned"] = best[0] <= 0.9 * out["first"] if out["learned"] is None else out["learned"]
        out["basis"] = "best val_score at least 10% below the first epoch's"
    else:
        change = best[0] - out["first"] if out["first"] is not None else None
        out["basis"] = (
            f"no majority-class accuracy recorded; the best is {_f(change, '+.4f')} on the first "
            "epoch's, which alone does not say it learned"
        )
    return out


# ------------------------------------------------------------------------------ words


def render(numbers: dict) -> str:
    """`explain`'s numbers in words, each with the column it comes from."""
    lines = [
        f"run {numbers['run']}: {numbers['measurements']} measurements, "
        f"{numbers['measurements_per_epoch']} per epoch, window {numbers['window']}, tau {numbers['tau']}"
    ]
    w, p = numbers["headline"]
    readings = numbers["readings"]
    lines.append("")
    lines.append("The four readings (rho = AUC_W / AUC_P; t_tau of each curve):")
    for key, r in readings.items():
        mark = "  <- headline" if key == f"{w}/{p}" else ""
        lines.append(
            f"  {key:<17} rho {_f(r['rho'], '.3f')}  AUC_W {_f(r['auc_w'], '.3f')} ({r['columns'][0]})  "
            f"AUC_P {_f(r['auc_p'], '.3f')} ({r['columns'][1]})  t_tau w {_f(r['stabilization_w'], '.2f')} "
            f"p {_f(r['stabilization_p'], '.2f')}{mark}"
        )
    if len(readings) < 4:
        lines.append("  (da_units not recorded: a run from before the pooled reading)")
    if numbers["disagreement"] is not None:
        lines.append(f"  they disagree by a factor {numbers['disagreement']:.2f} (largest rho / smallest)")
    lines.append("")
    lines.append(
        f"Which sites carry the pattern curve (share of the area under da = mean of da:<site>; "
        f"{_order_words(numbers['order'])}):"
    )
    for s in numbers["sites"]:
        neurons = ""
        if s["dead"] is not None:
            neurons = (
                f"  last epoch: on {_f(s['on'], '.3f')}, dead {_f(s['dead'], '.3f')}, "
                f"always on {_f(s['always_on'], '.3f')} (on:, dead:, always_on:{s['site']})"
            )
        lines.append(f"  {s['column']:<28} share {_f(s['share'], '.3f')}  t_tau {_f(s['t_tau'], '.2f')}{neurons}")
    if numbers["tensors"]:
        lines.append("Which tensors carry the weight curve (share of the area under the dw:<tensor> columns):")
        for t in numbers["tensors"][:5]:
            lines.append(f"  {t['column']:<28} share {_f(t['share'], '.3f')}  t_tau {_f(t['t_tau'], '.2f')}")
        if len(numbers["tensors"]) > 5:
            lines.append(f"  ... and {len(numbers['tensors']) - 5} more")
    n = numbers["neurons"]
    lines.append("")
    if n is None:
        lines.append("Neurons: not recorded (a run from before NeuronStats).")
    else:
        lines.append(
            f"Neurons (epoch {n['first_epoch']} -> epoch {n['last_epoch']}, means over each epoch's measurements):"
        )
        lines.append(
            f"  units in dead neurons      {_f(n['dead_units'][0], '.3f')} -> {_f(n['dead_units'][1], '.3f')}  (dead_units)"
        )
        lines.append(
            f"  units in always-on neurons {_f(n['always_on_units'][0], '.3f')} -> "
            f"{_f(n['always_on_units'][1], '.3f')}  (always_on_units)"
        )
        lines.append(
            f"  units on                   {_f(n['on'][0], '.3f')} -> {_f(n['on'][1], '.3f')}  (on, mean over sites)"
        )
        calm, fall = n["calm_from_frozen"], n["fall"]
        if not _finite(fall) or fall <= 0:
            lines.append(
                f"  da_units did not fall: {_f(n['da_units'][0], '.4f')} -> {_f(n['da_units'][1], '.4f')} "
                "(da_units, means over the first and the last epoch)"
            )
        else:
            share = "none of it" if not _finite(calm) or calm <= 0 else f"{_pct(calm)} of it"
            lines.append(
                f"  da_units fell by {_pct(fall)}; counting only live neurons' units "
                f"(da_units / (1 - dead_units - always_on_units)) by {_pct(n['fall_live'])}: "
                f"{share} is neurons that can no longer flip"
            )
    pl = numbers["plateau"]
    lines.append("")
    if pl["on_plateau"]:
        lines.append(
            f"Plateau: yes, both normalised curves ({', '.join(pl['columns'])}) stayed below "
            f"{PLATEAU_LEVEL} for the first {pl['end_fraction']:.2f} of the run (to iteration "
            f"{pl['end_iteration']}); rho from there {_f(pl['rho_after'], '.3f')} beside "
            f"{_f(readings.get(f'{w}/{p}', {}).get('rho'), '.3f')} over the whole run"
        )
    else:
        lines.append(
            f"Plateau: no (a normalised curve of {', '.join(pl['columns'])} reached {PLATEAU_LEVEL} "
            f"within the first {PLATEAU_FRACTION} of the run)"
        )
    le = numbers["learned"]
    verdict = {True: "yes", False: "NO", None: "not judged"}[le["learned"]]
    lines.append(
        f"Learned: {verdict}: best val_score {_f(le['best'], '.4f')} (epoch {le['best_epoch']}), first "
        f"epoch's {_f(le['first'], '.4f')}, majority-class {_f(le['majority'], '.4f')} (epochs table; "
        f"{le['basis']})"
    )
    return "\n".join(lines)


def plot_explain(run_dir, numbers: dict | None = None, axes=None):
    """One figure of three panels: each site's share of the da area with its t_tau, rho under
    the four readings, and the units in dead / always-on neurons over the run. Returns (fig, axes)."""
    from regimes.extras import require
    from regimes.records import RunDirectory

    require("matplotlib", "regimes explain's figure")
    from regimes.plots import _pyplot

    numbers = explain(run_dir) if numbers is None else numbers
    if axes is None:
        fig, axes = _pyplot().subplots(1, 3, figsize=(13, 3.6))
    else:
        fig = axes[0].figure
    sites = numbers["sites"]
    x = np.arange(len(sites))
    axes[0].bar(x, [s["share"] or 0 for s in sites], color="tab:orange")
    axes[0].set_xticks(x, [s["site"] for s in sites], rotation=30, ha="right", fontsize="small")
    axes[0].set_ylabel("share of the da area")
    twin = axes[0].twinx()
    twin.plot(x, [s["t_tau"] for s in sites], "ko-", label="t_tau")
    twin.set_ylim(0, 1.05)
    twin.set_ylabel(f"t_tau ({_order_words(numbers['order'])})")
    keys = list(numbers["readings"])
    axes[1].bar(range(len(keys)), [numbers["readings"][k]["rho"] for k in keys], color="tab:blue")
    axes[1].axhline(1, color="grey", lw=0.8)
    axes[1].set_xticks(range(len(keys)), keys, rotation=30, ha="right", fontsize="small")
    axes[1].set_ylabel("rho")
    steps = RunDirectory(numbers["run"]).read_steps()
    if "dead_units" in steps:
        axes[2].plot(steps["iteration"], steps["dead_units"], label="units in dead neurons")
        axes[2].plot(steps["iteration"], steps["always_on_units"], label="units in always-on neurons")
        axes[2].plot(steps["iteration"], steps["da_units"], label="da_units", lw=0.8)
        axes[2].legend(fontsize="small")
    axes[2].set_xlabel("iteration")
    plateau = numbers["plateau"]
    if plateau["on_plateau"] and plateau["end_iteration"] is not None:
        axes[2].axvline(plateau["end_iteration"], color="grey", ls="--")
    fig.tight_layout()
    return fig, axes


# ------------------------------------------------------------------------------ helpers


def _measurements_per_epoch(summary: dict, steps: dict) -> int:
    iterations = np.asarray(steps["iteration"])
    every = int(np.diff(iterations).min()) if iterations.size > 1 else 1
    if summary.get("batches_per_epoch"):
        return max(1, int(summary["batches_per_epoch"]) // max(every, 1))
    epochs = np.asarray(steps["epoch"])
    return max(1, int(np.sum(epochs == epochs.min())))


def _config_weight_change(directory) -> str:
    try:
        return str(directory.read_config().get("weight_change", "layerwise"))
    except (OSError, ValueError):
        return "layerwise"


def _last_epoch_mean(steps: dict, column) -> float | None:
    if column is None:
        return None
    return float(np.mean(column[steps["epoch"] == steps["epoch"].max()]))


def _order_words(order: str) -> str:
    return "no site settles below tau" if order == "never" else f"sites settle {order}"


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _f(value, spec: str) -> str:
    return format(value, spec) if _finite(value) else "-"


def _pct(value) -> str:
    return f"{100 * value:.0f}%" if _finite(value) else "-"

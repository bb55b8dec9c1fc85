"""The numbers the project produces stay the same, bit for bit, across redesigns.

`tests/golden/` holds the step tables and summaries of short runs of every offline
preset (seed 0) and of a small sweep, recorded at one torch thread before a
refactoring. These tests rerun them and compare every step value and every summary
number exactly. Re-record (only when a number is meant to change, and say so in the
commit) with:

    REGIMES_RECORD_GOLDEN=1 python -m pytest tests/test_same_numbers.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from regimes.experiment import get_preset, train_run
from regimes.experiment.engines import LocalEngine
from regimes.experiment.grids import grid_from_dict
from regimes.experiment.sweep import run_sweep
from regimes.records import RunDirectory

GOLDEN = Path(__file__).parent / "golden"
RECORD = bool(os.environ.get("REGIMES_RECORD_GOLDEN"))
OFFLINE = ["mlp-breast-cancer", "mlp-digits", "lenet5-digits", "mlp-mnist1d"]
EPOCHS = {"mlp-breast-cancer": 30, "mlp-digits": 4, "lenet5-digits": 2, "mlp-mnist1d": 4}
# Summary keys that depend on the machine or the clock, not on the numbers.
UNSTABLE = {"seconds", "versions", "device", "data_source", "wall_seconds", "path", "error"}


@pytest.fixture(autouse=True)
def _one_thread(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("REGIMES_DATA", str(tmp_path_factory.getbasetemp() / "data"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _numbers(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in UNSTABLE}


def _check(name: str, steps: dict, summary: dict) -> None:
    arrays, summary_path = GOLDEN / f"{name}.npz", GOLDEN / f"{name}.json"
    if RECORD:
        np.savez_compressed(arrays, **{k: np.asarray(v) for k, v in steps.items()})
        summary_path.write_text(json.dumps(_numbers(summary), indent=1, sort_keys=True) + "\n")
        return
    expected = np.load(arrays)
    assert sorted(steps) == sorted(expected.files)
    for column in expected.files:
        np.testing.assert_array_equal(steps[column], expected[column], err_msg=f"{name}: steps column {column}")
    recorded = json.loads(summary_path.read_text())
    now = json.loads(json.dumps(_numbers(summary)))  # as summary.json stores it (NaN -> null)
    assert {k: now.get(k) for k in recorded} == recorded


@pytest.mark.parametrize("preset", OFFLINE)
def test_offline_presets_give_the_recorded_numbers(preset, tmp_path):
    config = get_preset(preset).replace(max_epochs=EPOCHS[preset])
    summary = train_run(config, tmp_path / "run", device="cpu")  # the recorded numbers are the CPU's
    _check(preset, RunDirectory(tmp_path / "run").read_steps(), summary)


def test_a_sweep_gives_the_recorded_numbers(tmp_path):
    base = get_preset("mlp-breast-cancer").replace(max_epochs=3)
    grid = grid_from_dict({"optimizer": ["sgd", "adam"], "lr": [1e-2, 1e-3]}, name="golden")
    with LocalEngine(workers=1, threads=1, device="cpu") as engine:
        selected = run_sweep(base, grid, tmp_path / "sweep", engine, seeds=2)
    steps = RunDirectory(tmp_path / "sweep" / "seeds" / "seed1").read_steps()
    _check("sweep", steps, {k: v for k, v in selected.items() if k != "row"} | {"row": _numbers(selected["row"])})

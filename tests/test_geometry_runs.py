"""The theory's instruments along a run (config `geometry`): every column of the geometry
table against a slow reference written here from per-step copies of the weights and
hand-computed patterns; the guarantee's soundness sample by sample; resume; the command;
the report and the figure; the mistakes."""

from __future__ import annotations

import copy

import numpy as np
import pytest

pytest.importorskip("pyarrow", reason="run directories need pyarrow: pip install -e '.[study]'")
pd = pytest.importorskip("pandas", reason="these tests read runs with pandas: pip install -e '.[study]'")
import torch
from torch import nn

from regimes.cli import main
from regimes.experiment import get_preset, train_run
from regimes.experiment.callbacks import Callback
from regimes.experiment.config import ConfigError
from regimes.experiment.geometry import NEXT_EPOCH_COLUMNS
from regimes.geometry import parameter_radius, region_distance
from regimes.records import RunDirectory
from regimes.report import render
from regimes.runs import read_run


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _config(**changes):
    """The Breast Cancer MLP, small steps (so the radius exceeds some), the whole batch as probe."""
    base = get_preset("mlp-breast-cancer").replace(max_epochs=3, patience=5, geometry=True, lr=1e-4, probe_fraction=1.0)
    return base.replace(**changes)


def _no_batchnorm(config):
    return config.replace(model_args={**config.model_args, "batchnorm": False})


class Recorder(Callback):
    """The slow reference's raw material: the weights after every step and at every epoch's
    end, and the probe's ReLU pattern after every step, by hand (eval-mode forward hooks)."""

    def on_train_begin(self, run, **kwargs):
        self.x = run.tracker.probe.args[0].clone()
        self.models = {0: copy.deepcopy(run.model)}  # the weights at each epoch's end (0: start)
        self.steps = []  # (epoch, flat weights, pattern) after each step
        self.start = (self._flat(run.model), self._pattern(run.model))

    @staticmethod
    def _flat(model):
        return torch.cat([p.detach().double().reshape(-1) for p in model.parameters()])

    def _pattern(self, model):
        outputs = []
        hooks = [
            m.register_forward_hook(lambda m, i, o: outputs.append(o > 0))
            for m in model.modules()
            if isinstance(m, nn.ReLU)
        ]
        was = model.training
        model.eval()
        with torch.no_grad():
            model(self.x)
        model.train(was)
        for h in hooks:
            h.remove()
        return torch.cat([o.reshape(len(self.x), -1) for o in outputs], 1)

    def on_step_end(self, run, **kwargs):
        self.steps.append((run.epoch, self._flat(run.model), self._pattern(run.model)))

    def on_epoch_end(self, run, **kwargs):
        self.models[run.epoch] = copy.deepcopy(run.model)


def _reference(recorder: Recorder, epochs: int) -> list[dict]:
    rows = []
    weights, pattern = recorder.start
    for e in range(epochs + 1):
        model = recorder.models[e]
        distance = region_distance(model, recorder.x).double().numpy()
        certified, empirical = (t.double().numpy() for t in parameter_radius(model, recorder.x))
        row = {
            "epoch": e,
            "distance_median": np.median(distance),
            "distance_p10": np.percentile(distance, 10),
            "certified_median": np.median(certified),
            "certified_p90": np.percentile(certified, 90),
            "empirical_median": np.median(empirical),
            "certified": certified,
        }
        following = [(w, p) for epoch, w, p in recorder.steps if epoch == e + 1]
        if following:
            previous, steps, moves, flipped = weights, [], [], torch.zeros(len(recorder.x), dtype=torch.bool)
            for w, p in following:
                steps.append(float((w - previous).norm()))
                moves.append(float((w - weights).norm()))
                flipped |= (p != pattern).any(1)
                previous = w
            row.update(
                step_max=max(steps),
                displacement_max=max(moves),
                flipped=flipped.numpy(),
                no_flip_guaranteed=np.mean(certified > max(moves)),
                no_flip_observed=1 - flipped.double().mean().item(),
                no_flip_guaranteed_step=np.mean(certified > max(steps)),
            )
            weights, pattern = following[-1]
        rows.append(row)
    return rows


def test_every_column_equals_the_slow_reference_and_the_guarantee_holds_sample_by_sample(tmp_path):
    recorder = Recorder()
    train_run(_no_batchnorm(_config()), tmp_path / "run", callbacks=[recorder])
    table = RunDirectory(tmp_path / "run").read_geometry()
    reference = _reference(recorder, 3)
    assert [r["epoch"] for r in table] == [0, 1, 2, 3]
    assert all(r[c] is None for r in table[-1:] for c in NEXT_EPOCH_COLUMNS)  # no epoch after the last
    for got, want in zip(table, reference):
        for key in ("distance_median", "distance_p10", "certified_median", "certified_p90", "empirical_median"):
            assert got[key] == pytest.approx(want[key], rel=1e-6), (got["epoch"], key)
        if "step_max" not in want:
            continue
        for key in ("step_max", "displacement_max"):
            assert got[key] == pytest.approx(want[key], rel=1e-5), (got["epoch"], key)
        for key in ("no_flip_guaranteed", "no_flip_observed", "no_flip_guaranteed_step"):
            assert got[key] == pytest.approx(want[key], abs=1e-12), (got["epoch"], key)
        assert got["statistics_change"] == 0.0  # no BatchNorm
        # Proposition 1, sample by sample: a radius beyond the farthest move means no flip.
        covered = want["certified"] > want["displacement_max"]
        assert not (covered & want["flipped"]).any(), got["epoch"]
    # The check above bites: the radius covers some samples, and some flip.
    assert max(r["no_flip_guaranteed"] for r in table[:-1]) > 0
    steps = RunDirectory(tmp_path / "run").read_steps()
    assert 0 < steps["samples_flipped"].max() <= 1


def test_geometry_leaves_the_training_as_it_was(tmp_path):
    config = get_preset("mlp-breast-cancer").replace(max_epochs=2)
    train_run(config, tmp_path / "plain")
    train_run(config.replace(geometry=True), tmp_path / "geometry")
    plain, measured = RunDirectory(tmp_path / "plain"), RunDirectory(tmp_path / "geometry")
    a, b = plain.read_steps(), measured.read_steps()
    for column in a:
        np.testing.assert_array_equal(a[column], b[column], err_msg=column)
    assert {"update_norm", "displacement", "samples_flipped"} <= set(b) - set(a)
    scores = [(r["train_loss"], r["val_score"]) for r in plain.read_epochs()]
    assert scores == [(r["train_loss"], r["val_score"]) for r in measured.read_epochs()]


def test_batchnorm_statistics_are_reported_moving(tmp_path):
    train_run(_config(max_epochs=2, lr=1e-6), tmp_path / "run")
    rows = RunDirectory(tmp_path / "run").read_geometry()
    assert all(r["statistics_change"] > 0 for r in rows[:-1])


def test_a_resumed_run_records_the_uninterrupted_geometry(tmp_path):
    config = _no_batchnorm(_config(max_epochs=4))
    train_run(config, tmp_path / "whole")

    class StopAfterTwo(Callback):
        def on_epoch_end(self, run, **kwargs):
            if run.epoch == 2:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_run(config, tmp_path / "cut", callbacks=[StopAfterTwo()])
    train_run(config, tmp_path / "cut", resume=True)
    whole = pd.read_parquet(RunDirectory(tmp_path / "whole").geometry_path).drop(columns="seconds")
    cut = pd.read_parquet(RunDirectory(tmp_path / "cut").geometry_path).drop(columns="seconds")
    pd.testing.assert_frame_equal(whole, cut)
    a, b = RunDirectory(tmp_path / "whole").read_steps(), RunDirectory(tmp_path / "cut").read_steps()
    np.testing.assert_array_equal(a["samples_flipped"], b["samples_flipped"])


def test_the_command_prints_the_checkpoint_and_the_recorded_epochs(tmp_path, capsys):
    out = tmp_path / "run"
    train_run(_config(max_epochs=2), out)
    assert main(["geometry", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = RunDirectory(out).read_geometry()
    assert "epoch 2 (iteration" in printed and f"probe of {_config().probe_size} samples" in printed
    assert f"{rows[-1]['distance_median']:.4g}" in printed  # the checkpoint's median is the last row's
    assert printed.count("\n") > _config().probe_size + 5
    assert main(["geometry", str(out), "--epoch", "1"]) == 0
    printed = capsys.readouterr().out
    assert f"{rows[1]['step_max']:.4g}" in printed


def test_the_command_s_mistakes_are_one_line(tmp_path, capsys):
    out = tmp_path / "plain"
    train_run(get_preset("mlp-breast-cancer").replace(max_epochs=1), out)
    assert main(["geometry", str(out), "--epoch", "0"]) == 2
    assert "recorded no geometry" in capsys.readouterr().err
    assert main(["geometry", str(tmp_path / "nothing")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert main(["geometry", str(out)]) == 0  # the checkpoint's epoch works without a recorded table


def test_a_smooth_activation_with_geometry_is_one_line_and_leaves_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "run",
            "mlp-breast-cancer",
            "--set",
            "geometry=true",
            "--set",
            'model_args.activation="gelu"',
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "gelu" in err.lower() and "piecewise" in err.lower()
    assert not out.exists()


def test_geometry_and_freeze_do_not_go_together():
    with pytest.raises(ConfigError, match="geometry and freeze"):
        get_preset("mlp-breast-cancer").replace(geometry=True, freeze="auto")


def test_the_report_and_the_figure_show_the_geometry(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "run"
    train_run(_no_batchnorm(_config(max_epochs=2)), out)
    rows = RunDirectory(out).read_geometry()
    text = render([read_run(out)])
    assert "no flip guaranteed" in text and "no flip observed" in text
    observed = np.mean([r["no_flip_observed"] for r in rows[:-1]])
    assert f"{observed:.2f}" in text.splitlines()[2]
    from PIL import Image

    with Image.open(RunDirectory(out).figure_path) as image:
        assert image.size[0] > 1500  # the wide figure with the geometry panels
    plain = tmp_path / "plain"
    train_run(get_preset("mlp-breast-cancer").replace(max_epochs=1), plain)
    assert "no flip" not in render([read_run(plain)])

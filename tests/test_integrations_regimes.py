"""Online detection, its events and the frozen regime through the adapters, with the real
libraries (Lightning, the Hugging Face Trainer, accelerate).

The reference for the events is slow and obvious: the run's own steps table, fed after the
fit through a fresh `RegimeChangeDetector`. What the adapters told during the fit, and when
(the epoch whose end it was), must be exactly what that replay says, with the iteration the
runner's convention gives (measurement index x `every`).
"""

from __future__ import annotations

import csv

import numpy as np
import pytest

pytest.importorskip("pyarrow", reason="run directories need pyarrow: pip install -e '.[study]'")
import torch
from torch import nn

from regimes.detect import RegimeChangeDetector
from regimes.records import RunDirectory, Status

L = pytest.importorskip("lightning")
transformers = pytest.importorskip("transformers")

from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from lightning.pytorch.loggers import CSVLogger  # noqa: E402
from test_integrations import Classifier, TokenRows, lightning_trainer, loaders, pad, tabular, tiny_bert  # noqa: E402

from regimes.integrations import huggingface as hf_integration  # noqa: E402
from regimes.integrations import lightning as pl_integration  # noqa: E402

torch.set_num_threads(1)


def offline_events(out, every: int = 1, weights: str = "dw_layerwise") -> tuple[list, RegimeChangeDetector]:
    """(event, iteration, epoch) for every event a fresh detector emits on the run's steps table
    (epoch: the epoch of the measurement after which it was emitted), and the detector."""
    steps = RunDirectory(out).read_steps()
    detector = RegimeChangeDetector(int(np.count_nonzero(steps["epoch"] == steps["epoch"][0])))
    told = []
    for epoch, dw, da in zip(steps["epoch"], steps[weights], steps["da"]):
        for event in detector.update(float(dw), float(da)):
            told.append((event, None if event.step is None else event.step * every, int(epoch)))
    return told, detector


def assert_frozen_steps(out, freeze_iteration: int) -> dict:
    """The steps table of a run frozen at `freeze_iteration`: da is 0 after it, the value
    network's own pattern (da_value) is there and equals da before it, drift_value is NaN
    before it and finite after."""
    steps = RunDirectory(out).read_steps()
    after = steps["iteration"] > freeze_iteration
    assert after.any() and (~after).any()
    assert np.all(steps["da"][after] == 0)
    np.testing.assert_array_equal(steps["da_value"][~after], steps["da"][~after])
    assert np.isnan(steps["drift_value"][~after]).all() and np.isfinite(steps["drift_value"][after]).all()
    return steps


# ---------------------------------------------------------------------- Lightning


class Decaying(Classifier):
    """The test classifier with a learning rate that halves every epoch: its pattern settles."""

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=self.lr)
        return [optimizer], [torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.5)]


class LightningListener(L.Callback):
    """A user's callback: what it is told, and whether each validation runs the gated model."""

    def __init__(self, regimes_callback):
        self.regimes_callback, self.heard, self.gated = regimes_callback, [], []

    def on_regime_change(self, trainer, pl_module, *, event, iteration):
        self.heard.append((event, iteration, trainer.current_epoch + 1))

    def on_validation_epoch_start(self, trainer, pl_module):
        gates = self.regimes_callback.gates
        self.gated.append(gates is not None and gates.installed)


def lightning_fit(tmp_path, out, module, max_epochs, ckpt_path=None, checkpoints=None, logger=False, **options):
    callback = pl_integration.RegimesCallback("val", probe_size=12, out=out, **options)
    listener = LightningListener(callback)
    saving = [ModelCheckpoint(dirpath=checkpoints, save_top_k=-1, every_n_epochs=1)] if checkpoints else []
    trainer = lightning_trainer(
        tmp_path,
        [callback, listener, *saving],
        max_epochs=max_epochs,
        logger=logger,
        enable_checkpointing=bool(checkpoints),
    )
    trainer.fit(module, *loaders(), ckpt_path=ckpt_path)
    return callback, listener, module


def test_lightning_tells_other_callbacks_what_the_offline_detector_says_when_it_says_it_and_a_resume_too(tmp_path):
    # every=2: 5 measurements an epoch, and the iteration told is the measurement index x 2.
    logger = CSVLogger(tmp_path / "csv", name="fit")
    callback, listener, _ = lightning_fit(tmp_path, tmp_path / "whole", Decaying(lr=0.5), 9, logger=logger, every=2)
    expected, detector = offline_events(tmp_path / "whole", every=2)
    assert {e.curve for e, _, _ in expected} == {"w", "p"}  # both curves settled: the comparison is not of nothing
    assert listener.heard == expected
    assert [(e, i) for e, i, _ in expected] == callback.events_
    with open(f"{logger.log_dir}/metrics.csv") as f:
        logged = [row["regimes/settled_p"] for row in csv.DictReader(f) if row.get("regimes/settled_p")]
    assert [float(v) for v in logged] == [float(i) for e, i, _ in expected if e.curve == "p"]
    summary = RunDirectory(tmp_path / "whole").read_summary()
    assert summary.batches_per_epoch == 10 and summary.freeze_iteration is None
    assert (summary.settled_w_online, summary.settled_p_online) == (2 * detector.settled_w, 2 * detector.settled_p)

    # Stopped after epoch 7 (after the first event) and resumed: the detector replays what it
    # had heard and tells nothing twice.
    lightning_fit(tmp_path, tmp_path / "resumed", Decaying(lr=0.5), 7, checkpoints=tmp_path / "ckpt", every=2)
    first = RunDirectory(tmp_path / "resumed").read_summary()
    (checkpoint,) = (tmp_path / "ckpt").glob("epoch=6-*.ckpt")
    _, rest, _ = lightning_fit(tmp_path, tmp_path / "resumed", Decaying(lr=0.5), 9, ckpt_path=checkpoint, every=2)
    told_before = [(e, i, epoch) for e, i, epoch in expected if epoch <= 7]
    assert told_before and rest.heard == [t for t in expected if t not in told_before]
    assert (first.settled_w_online, first.settled_p_online) != (summary.settled_w_online, summary.settled_p_online)
    resumed = RunDirectory(tmp_path / "resumed").read_summary()
    assert (resumed.settled_w_online, resumed.settled_p_online) == (summary.settled_w_online, summary.settled_p_online)


def test_lightning_freeze_auto_freezes_at_the_end_of_the_epoch_the_detector_first_claims_the_pattern(tmp_path):
    callback, listener, module = lightning_fit(tmp_path, tmp_path / "run", Decaying(lr=0.5), 9, freeze="auto")
    expected, detector = offline_events(tmp_path / "run")
    claimed_at = detector.first_settled_p[1]  # the measurement after which the pattern was first claimed
    steps = RunDirectory(tmp_path / "run").read_steps()
    claim_epoch = int(steps["epoch"][claimed_at - 1])
    assert claim_epoch < 9  # frozen with epochs left to train
    summary = RunDirectory(tmp_path / "run").read_summary()
    assert summary.freeze_iteration == 10 * claim_epoch  # the end of that epoch
    assert summary.status == Status.FINISHED and summary.settled_p_online is not None
    assert_frozen_steps(tmp_path / "run", summary.freeze_iteration)
    # Validation runs inside the epoch, before its end: gated from the epoch after the freeze on.
    assert listener.gated == [False] * claim_epoch + [True] * (9 - claim_epoch)
    assert RunDirectory(tmp_path / "run").read_config()["freeze"] == "auto"


def test_lightning_freeze_after_an_epoch_keeps_da_at_zero_and_a_resume_installs_the_same_gates(tmp_path):
    # A constant learning rate: the value network's own pattern goes on moving after the freeze.
    whole, listener, module = lightning_fit(tmp_path, tmp_path / "whole", Classifier(lr=0.5), 4, freeze=2)
    summary = RunDirectory(tmp_path / "whole").read_summary()
    assert summary.freeze_iteration == 20
    steps = assert_frozen_steps(tmp_path / "whole", 20)
    assert np.max(steps["da_value"][steps["iteration"] > 20]) > 0  # frozen, not still
    assert listener.gated == [False, False, True, True] and whole.gates.installed
    x = tabular(12, seed=1).tensors[0]
    with torch.no_grad():
        gated = module(x)
        with whole.gates.suspended():
            own = module(x)
    assert not torch.equal(gated, own)  # the gates change what the model computes

    lightning_fit(tmp_path, tmp_path / "resumed", Classifier(lr=0.5), 3, checkpoints=tmp_path / "ckpt", freeze=2)
    (checkpoint,) = (tmp_path / "ckpt").glob("epoch=2-*.ckpt")  # after the freeze
    resumed, again, resumed_module = lightning_fit(
        tmp_path, tmp_path / "resumed", Classifier(lr=0.5), 4, ckpt_path=checkpoint, freeze=2
    )
    assert resumed.gates.installed and again.gated == [True]
    a, b = RunDirectory(tmp_path / "whole").read_steps(), RunDirectory(tmp_path / "resumed").read_steps()
    assert list(a) == list(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    for p, q in zip(module.parameters(), resumed_module.parameters()):
        assert torch.equal(p, q)
    assert RunDirectory(tmp_path / "resumed").read_summary().freeze_iteration == 20


def test_lightning_freeze_mistakes_are_one_clear_message(tmp_path):
    with pytest.warns(UserWarning, match="will not freeze"):
        lightning_fit(tmp_path, tmp_path / "late", Classifier(lr=0.5), 2, freeze=2)
    assert RunDirectory(tmp_path / "late").read_summary().freeze_iteration is None  # no epoch left to train frozen
    lightning_fit(tmp_path, tmp_path / "run", Classifier(lr=0.5), 2, checkpoints=tmp_path / "ckpt", freeze=1)
    (checkpoint,) = (tmp_path / "ckpt").glob("epoch=1-*.ckpt")
    with pytest.raises(ValueError, match="froze its regime at step 10"):
        lightning_fit(tmp_path, tmp_path / "run", Classifier(lr=0.5), 3, ckpt_path=checkpoint)
    with pytest.raises(ValueError, match="detect=True"):
        pl_integration.RegimesCallback(freeze="auto", detect=False)
    with pytest.raises(ValueError, match="epoch number"):
        pl_integration.RegimesCallback(freeze="sometimes")


class GeluClassifier(Classifier):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(6, 16), nn.GELU(), nn.Linear(16, 16), nn.GELU(), nn.Linear(16, 3))


def test_lightning_tracks_a_gelu_model_with_activation_gelu(tmp_path):
    callback, _, _ = lightning_fit(tmp_path, tmp_path / "run", GeluClassifier(), 1, activation="gelu")
    assert callback.tracker.sites == ["net.1", "net.3"]
    steps = RunDirectory(tmp_path / "run").read_steps()
    assert np.max(steps["da"]) > 0
    assert RunDirectory(tmp_path / "run").read_config()["activation"] == "gelu"


# ---------------------------------------------------------------------- the Hugging Face Trainer


class TrainerListener(transformers.TrainerCallback):
    """A user's callback: what it is told (the Trainer's calling convention), and whether each
    evaluation runs the gated model."""

    def __init__(self):
        self.heard, self.gated, self.regimes_callback = [], [], None

    def on_regime_change(self, args, state, control, *, event, iteration, model):
        assert model is not None
        self.heard.append((event, iteration, round(state.epoch)))

    def on_evaluate(self, args, state, control, **kwargs):
        gates = self.regimes_callback.gates
        self.gated.append(gates is not None and gates.installed)


def trainer_fit(tmp_path, out, epochs=8, resume=None, stop_at=None, save=None, output_dir="hf", **options):
    """The tiny ReLU BERT, 7 updates an epoch, its learning rate halving every epoch; `stop_at`:
    stop after that update; `save`: a checkpoint at each epoch's end ("epoch") or every `save` updates."""

    class StopAt(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == stop_at:
                control.should_training_stop = True

    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / output_dir),
        per_device_train_batch_size=4,
        num_train_epochs=epochs,
        logging_steps=1,
        save_strategy="no" if save is None else "epoch" if save == "epoch" else "steps",
        save_steps=save if isinstance(save, int) else 500,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        learning_rate=0.5,
        remove_unused_columns=False,
        eval_strategy="epoch",
        seed=0,
    )
    model = tiny_bert()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 ** (step / 7))
    listener = TrainerListener()
    trainer = transformers.Trainer(
        model=model,
        args=args,
        train_dataset=TokenRows(28, 0),
        eval_dataset=TokenRows(12, 1),
        data_collator=pad,
        callbacks=[listener, *([StopAt()] if stop_at else [])],
        optimizers=(optimizer, schedule),
    )
    callback = hf_integration.RegimesCallback("eval", probe_size=12, out=out, **options).attach(trainer)
    listener.regimes_callback = callback
    trainer.train(resume_from_checkpoint=resume)
    return callback, listener, trainer


def test_trainer_tells_its_callbacks_what_the_offline_detector_says_logs_it_and_a_resume_mid_epoch_too(tmp_path):
    callback, listener, trainer = trainer_fit(tmp_path, tmp_path / "run")
    expected, detector = offline_events(tmp_path / "run")
    assert {e.curve for e, _, _ in expected} == {"w", "p"}
    assert listener.heard == expected
    summary = RunDirectory(tmp_path / "run").read_summary()
    assert (summary.settled_w_online, summary.settled_p_online) == (detector.settled_w, detector.settled_p)
    logged = [entry["regimes/settled_p"] for entry in trainer.state.log_history if "regimes/settled_p" in entry]
    assert logged == [float(i) for e, i, _ in expected if e.curve == "p"]

    # Stopped at update 30, inside epoch 5 (updates 29-35), after the first event: the resumed
    # fit replays what the detector had heard (to update 28) and tells the rest, from 29 on.
    trainer_fit(tmp_path, tmp_path / "resumed", stop_at=30, save=10, output_dir="b")
    _, rest, _ = trainer_fit(
        tmp_path, tmp_path / "resumed", resume=str(tmp_path / "b" / "checkpoint-30"), output_dir="b"
    )
    told_before = [t for t in expected if t[2] <= 4]
    assert told_before and rest.heard == [t for t in expected if t not in told_before]
    resumed = RunDirectory(tmp_path / "resumed").read_summary()
    assert (resumed.settled_w_online, resumed.settled_p_online) == (summary.settled_w_online, summary.settled_p_online)


def test_trainer_freeze_auto_evaluates_and_trains_the_gated_model(tmp_path):
    callback, listener, trainer = trainer_fit(tmp_path, tmp_path / "run", freeze="auto")
    _, detector = offline_events(tmp_path / "run")
    steps = RunDirectory(tmp_path / "run").read_steps()
    claim_epoch = int(steps["epoch"][detector.first_settled_p[1] - 1])
    assert claim_epoch < 8
    summary = RunDirectory(tmp_path / "run").read_summary()
    assert summary.freeze_iteration == 7 * claim_epoch
    assert_frozen_steps(tmp_path / "run", summary.freeze_iteration)
    # The Trainer evaluates after on_epoch_end: the freeze's own epoch is evaluated gated.
    assert listener.gated == [False] * (claim_epoch - 1) + [True] * (9 - claim_epoch)
    assert callback.gates.installed and callback.gates.module is trainer.model


def test_trainer_freeze_after_an_epoch_and_a_resume_after_it_equal_the_uninterrupted_fit(tmp_path):
    whole, _, _ = trainer_fit(tmp_path, tmp_path / "whole", epochs=4, freeze=2)
    assert RunDirectory(tmp_path / "whole").read_summary().freeze_iteration == 14
    assert_frozen_steps(tmp_path / "whole", 14)
    trainer_fit(tmp_path, tmp_path / "resumed", epochs=4, freeze=2, stop_at=21, save="epoch", output_dir="b")
    checkpoint = tmp_path / "b" / "checkpoint-21"
    assert torch.load(checkpoint / hf_integration.STATE_FILE, weights_only=False)["frozen"]["iteration"] == 14
    resumed, listener, _ = trainer_fit(
        tmp_path, tmp_path / "resumed", epochs=4, freeze=2, resume=str(checkpoint), output_dir="b"
    )
    assert resumed.gates.installed and listener.gated == [True]
    a, b = RunDirectory(tmp_path / "whole").read_steps(), RunDirectory(tmp_path / "resumed").read_steps()
    assert list(a) == list(b)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-6, atol=0, err_msg=name)
    assert RunDirectory(tmp_path / "resumed").read_summary().freeze_iteration == 14


# ---------------------------------------------------------------------- accelerate


def test_accelerate_calls_the_users_function_and_freezes(tmp_path):
    accelerate = pytest.importorskip("accelerate")
    from regimes.integrations.accelerate import RegimesTracking

    accelerator = accelerate.Accelerator(cpu=True)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    schedule = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.5)
    loader = torch.utils.data.DataLoader(tabular(), batch_size=4)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    heard = []
    tracking = RegimesTracking(
        accelerator,
        model,
        tabular(12, seed=1).tensors[0],
        out=tmp_path / "run",
        freeze="auto",
        epochs=9,
        on_regime_change=lambda **told: heard.append(told),
    )
    for epoch in range(1, 10):
        for x, y in loader:
            accelerator.backward(nn.functional.cross_entropy(model(x), y))
            optimizer.step()
            optimizer.zero_grad()
            tracking.step()
        schedule.step()
        tracking.end_epoch(epoch)
    summary = tracking.finish()
    expected, detector = offline_events(tmp_path / "run")
    assert heard and heard == [{"event": e, "iteration": i} for e, i, _ in expected]
    assert summary.freeze_iteration is not None and tracking.gates.installed
    assert_frozen_steps(tmp_path / "run", summary.freeze_iteration)


def test_the_default_options_stay_out_of_the_run_s_config_so_older_run_directories_resume(tmp_path):
    from regimes.integrations.session import TrackingSession

    def config_of(out, **options):
        session = TrackingSession(out, host="test", **options)
        session.start(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)), lambda: torch.randn(5, 3))
        session.open()
        return RunDirectory(out).read_config()

    assert not {"detect", "tau", "freeze"} & set(config_of(tmp_path / "defaults"))
    chosen = config_of(tmp_path / "chosen", tau=0.2, freeze=3)
    assert (chosen["tau"], chosen["freeze"]) == (0.2, 3) and "detect" not in chosen

"""The integrations, with the real libraries: Lightning, the Hugging Face Trainer, accelerate,
and the loggers they report to (TensorBoard, MLflow, W&B offline).

Each adapter is held against a slow reference callback written here, riding in the same fit:
it keeps float64 copies of every parameter, hooks every nn.ReLU by hand, and measures only
when the host's step counter moved and the gradients were finite (the optimizer stepped).
"""

from __future__ import annotations

import math
import sys
import time

import numpy as np
import pytest

pytest.importorskip("pyarrow", reason="run directories need pyarrow: pip install -e '.[study]'")
import torch
from torch import nn

from regimes.records import RunDirectory, Status

L = pytest.importorskip("lightning")
transformers = pytest.importorskip("transformers")

from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger  # noqa: E402
from lightning.pytorch.plugins import MixedPrecision  # noqa: E402

from regimes.integrations import huggingface as hf_integration  # noqa: E402
from regimes.integrations import lightning as pl_integration  # noqa: E402
from regimes.integrations.session import draw_probe  # noqa: E402

torch.set_num_threads(1)


# ---------------------------------------------------------------------- the slow reference


class SlowReference:
    """dw and da the obvious way: float64 copies, nn.ReLU forward hooks, a masked mean per site."""

    def __init__(self, probe: dict | torch.Tensor, mask: torch.Tensor | None = None):
        self.probe, self.mask = probe, mask
        self.dw, self.da, self.skipped = [], [], 0

    def begin(self, model: nn.Module) -> None:
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.previous_w = [p.detach().double().clone() for p in self.params]
        self.previous_a = self.pattern(model)

    def measure(self, model: nn.Module) -> None:
        current = [p.detach().double().clone() for p in self.params]
        total = sum(float((c - q).abs().sum()) for c, q in zip(current, self.previous_w))
        self.dw.append(total / sum(p.numel() for p in self.params))
        pattern = self.pattern(model)
        per_site = []
        for before, after in zip(self.previous_a, pattern):
            flipped = before != after
            if self.mask is not None:  # [B, T] tokens only
                valid = self.mask.bool().unsqueeze(-1).expand_as(flipped)
                per_site.append(float(flipped[valid].double().mean()))
            else:
                per_site.append(float(flipped.double().mean()))
        self.da.append(float(np.mean(per_site)))
        self.previous_w, self.previous_a = current, pattern

    def pattern(self, model: nn.Module) -> list[torch.Tensor]:
        outputs, was = [], model.training
        hooks = [
            m.register_forward_hook(lambda m, i, o: outputs.append(o > 0))
            for m in model.modules()
            if isinstance(m, nn.ReLU)
        ]
        model.eval()
        try:
            with torch.no_grad():
                model(**self.probe) if isinstance(self.probe, dict) else model(self.probe)
        finally:
            for hook in hooks:
                hook.remove()
            model.train(was)
        return outputs


def assert_same_curves(tracker, reference: SlowReference) -> dict:
    dw, da = tracker.delta_w, tracker.delta_a
    assert len(dw) == len(reference.dw) > 0
    np.testing.assert_allclose(dw, reference.dw, rtol=2e-5, atol=1e-10)
    np.testing.assert_allclose(da, reference.da, rtol=0, atol=1e-12)
    return {
        "dw": float(np.max(np.abs(dw - reference.dw) / np.abs(reference.dw))),
        "da": float(np.max(np.abs(da - reference.da))),
    }


def assert_run_directory(out, tracker, epochs: int) -> None:
    """The same run directory as `regimes run`: steps equal to the tracker's records, one row
    per epoch, a finished summary with rho under both weight changes, the figure."""
    run = RunDirectory(out)
    steps = run.read_steps()
    records = tracker.records()
    for name in ("iteration", "dw", "dw_layerwise", "da", *(f"da:{s}" for s in tracker.sites)):
        np.testing.assert_array_equal(steps[name], records[name])
    assert steps["epoch"].min() == 1 and steps["epoch"].max() == epochs
    summary = run.read_summary()
    assert summary.status == Status.FINISHED and summary.steps == tracker.iteration
    assert summary.sites == tracker.sites and summary.probe_size == tracker.probe_size
    assert {"rho", "rho_global", "rho_layerwise", "auc_w", "auc_p"} <= {k for k, v in summary.items() if v is not None}
    assert [row["epoch"] for row in run.read_epochs()] == list(range(1, epochs + 1))
    assert run.figure_path.is_file() and run.config_path.is_file()


# ---------------------------------------------------------------------- Lightning


def tabular(n=40, features=6, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    return torch.utils.data.TensorDataset(x, (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long())


class Classifier(L.LightningModule):
    def __init__(self, lr=0.5, poison_batch: int | None = None):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
        self.lr, self.poison_batch = lr, poison_batch

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        loss = nn.functional.cross_entropy(self(batch[0]), batch[1])
        self.log("train_loss", loss)
        if self.current_epoch == 0 and batch_idx == self.poison_batch:
            loss = loss * math.inf  # non-finite gradients: the gradient scaler skips this step
        return loss

    def validation_step(self, batch, batch_idx):
        logits = self(batch[0])
        self.log("val_loss", nn.functional.cross_entropy(logits, batch[1]))
        self.log("val_acc", (logits.argmax(1) == batch[1]).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class LightningReference(L.Callback):
    def __init__(self, probe):
        self.reference = SlowReference(probe)

    def on_train_start(self, trainer, pl_module):
        self.reference.begin(pl_module)
        self.last_step = trainer.global_step

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.finite = all(torch.isfinite(p.grad).all() for p in pl_module.parameters() if p.grad is not None)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.last_step:
            return  # an accumulation micro-batch
        self.last_step = trainer.global_step
        if not self.finite:
            self.reference.skipped += 1
            return
        self.reference.measure(pl_module)


def loaders(batch_size=4):
    data = tabular()
    return (
        torch.utils.data.DataLoader(data, batch_size=batch_size),
        torch.utils.data.DataLoader(tabular(12, seed=1), batch_size=batch_size),
    )


def lightning_trainer(tmp_path, callbacks, **kwargs):
    options = dict(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
        num_sanity_val_steps=0,
    )
    return L.Trainer(callbacks=callbacks, **{**options, **kwargs})


def test_lightning_equals_the_slow_reference_with_accumulation_and_a_skipped_fp16_step(tmp_path, capsys):
    probe = tabular(12, seed=1).tensors[0][:5]
    callback = pl_integration.RegimesCallback(probe, out=tmp_path / "run", score="val_acc")
    reference = LightningReference(probe)
    trainer = lightning_trainer(
        tmp_path,
        [callback, reference],
        accumulate_grad_batches=3,
        plugins=[MixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu"))],
    )
    trainer.fit(Classifier(poison_batch=4), *loaders())
    # 10 batches of 4 in groups of 3: 4 optimizer steps an epoch, 8 in all, one skipped.
    assert trainer.global_step == 8 and reference.reference.skipped == 1
    assert callback.tracker.iteration == 7
    differences = assert_same_curves(callback.tracker, reference.reference)
    assert np.max(callback.tracker.delta_a) > 0  # patterns did move: the comparison is not of zeros
    assert_run_directory(tmp_path / "run", callback.tracker, epochs=2)
    summary = RunDirectory(tmp_path / "run").read_summary()
    assert summary.score_name == "val_acc" and summary.best_score is not None and summary["integration"] == "lightning"
    with capsys.disabled():
        print(
            f"\nlightning vs slow reference: max relative dw difference {differences['dw']:.2e}, "
            f"max da difference {differences['da']:.2e}"
        )


def test_lightning_logs_to_tensorboard_every_log_every_n_steps(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    callback = pl_integration.RegimesCallback("val", probe_size=4, out=tmp_path / "run", log_sites=True)
    logger = TensorBoardLogger(tmp_path / "tb", name="fit")
    trainer = lightning_trainer(tmp_path, [callback], logger=[logger, CSVLogger(tmp_path / "csv")], log_every_n_steps=3)
    trainer.fit(Classifier(), *loaders())
    events = EventAccumulator(logger.log_dir)
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"regimes/delta_w", "regimes/delta_a"} <= set(tags)
    assert {f"regimes/delta_a/{site}" for site in callback.tracker.sites} <= set(tags)
    records = callback.tracker.records()
    for tag, column in (("regimes/delta_w", "dw"), ("regimes/delta_a", "da")):
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [3, 6, 9, 12, 15, 18]  # 10 steps an epoch, every third
        expected = records[column][np.searchsorted(records["iteration"], [s.step for s in scalars])]
        np.testing.assert_allclose([s.value for s in scalars], expected, rtol=1e-6)  # event files hold float32
    csv = (tmp_path / "csv" / "lightning_logs" / "version_0" / "metrics.csv").read_text()
    assert "regimes/delta_w" in csv.splitlines()[0]


def test_lightning_probe_from_the_validation_data_follows_the_runner_rule(tmp_path):
    callback = pl_integration.RegimesCallback("val", probe_seed=3, out=tmp_path / "run")
    lightning_trainer(tmp_path, [callback], max_epochs=1).fit(Classifier(), *loaders(batch_size=5))
    x_val = tabular(12, seed=1).tensors[0]
    expected = x_val[torch.randperm(12, generator=torch.Generator().manual_seed(3))[:1]]  # round(0.2 * 5) = 1
    assert torch.equal(callback.tracker.probe.args[0], expected)


def test_lightning_resume_from_a_checkpoint_continues_the_curves(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    def fit(out, max_epochs, ckpt_path=None, checkpoints=None):
        callback = pl_integration.RegimesCallback("val", probe_size=4, out=out)
        saving = [ModelCheckpoint(dirpath=checkpoints, save_top_k=-1, every_n_epochs=1)] if checkpoints else []
        trainer = lightning_trainer(
            tmp_path,
            [callback, *saving],
            max_epochs=max_epochs,
            accumulate_grad_batches=2,
            enable_checkpointing=bool(checkpoints),
        )
        trainer.fit(Classifier(lr=0.2), *loaders(), ckpt_path=ckpt_path)
        return callback

    whole = fit(tmp_path / "whole", 3)
    fit(tmp_path / "resumed", 1, checkpoints=tmp_path / "ckpt")
    (checkpoint,) = (tmp_path / "ckpt").glob("*.ckpt")
    resumed = fit(tmp_path / "resumed", 3, ckpt_path=checkpoint)
    assert resumed.tracker.iteration == whole.tracker.iteration == 15
    a, b = RunDirectory(tmp_path / "whole").read_steps(), RunDirectory(tmp_path / "resumed").read_steps()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert RunDirectory(tmp_path / "resumed").read_summary().rho == RunDirectory(tmp_path / "whole").read_summary().rho


def test_lightning_refuses_a_fresh_fit_over_a_finished_run_unless_forced(tmp_path):
    lightning_trainer(tmp_path, [pl_integration.RegimesCallback("val", probe_size=2)], max_epochs=1).fit(
        Classifier(), *loaders()
    )
    with pytest.raises(FileExistsError, match="force=True"):
        lightning_trainer(tmp_path, [pl_integration.RegimesCallback("val", probe_size=2)], max_epochs=1).fit(
            Classifier(), *loaders()
        )
    callback = pl_integration.RegimesCallback("val", probe_size=2, force=True)
    lightning_trainer(tmp_path, [callback], max_epochs=1).fit(Classifier(), *loaders())
    assert RunDirectory(tmp_path / "regimes").read_summary().steps == callback.tracker.iteration == 10


# ---------------------------------------------------------------------- the Hugging Face Trainer


class TokenRows(torch.utils.data.Dataset):
    """Sequences of 3 to 9 tokens (so batches are padded), a label, and a text column the model does not take."""

    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.rows = []
        for _ in range(n):
            ids = torch.randint(1, 50, (int(torch.randint(3, 10, (1,), generator=g)),), generator=g).tolist()
            self.rows.append({"input_ids": ids, "labels": sum(ids) % 2, "text": "unused"})

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def pad(rows):
    length = max(len(r["input_ids"]) for r in rows)
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row["input_ids"])] = torch.tensor(row["input_ids"])
        mask[i, : len(row["input_ids"])] = 1
    batch = {"input_ids": ids, "attention_mask": mask}
    if "labels" in rows[0]:
        batch["labels"] = torch.tensor([r["labels"] for r in rows])
    return batch


def tiny_bert():
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        hidden_act="relu",
        max_position_embeddings=32,
        num_labels=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return transformers.BertForSequenceClassification(config)


def hf_trainer(tmp_path, callbacks=(), **kwargs):
    options = dict(
        output_dir=str(tmp_path / "hf"),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        num_train_epochs=2,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        learning_rate=1e-2,
        remove_unused_columns=False,
        eval_strategy="epoch",
        seed=0,
    )
    args = transformers.TrainingArguments(**{**options, **kwargs})
    return transformers.Trainer(
        model=tiny_bert(),
        args=args,
        train_dataset=TokenRows(28, 0),
        eval_dataset=TokenRows(12, 1),
        data_collator=pad,
        callbacks=list(callbacks),
    )


class TrainerReference(transformers.TrainerCallback):
    def __init__(self, probe):
        self.reference = SlowReference({k: v for k, v in probe.items() if k != "labels"}, probe["attention_mask"])

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.reference.begin(model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.reference.measure(model)  # the Trainer calls this once per optimizer update


def test_trainer_on_a_tiny_relu_bert_with_padding_and_accumulation_equals_the_slow_reference(tmp_path, capsys):
    probe = draw_probe(TokenRows(12, 1), 5, seed=0, collate=pad)
    assert (probe["attention_mask"] == 0).any()  # padded positions in the probe
    reference = TrainerReference(probe)
    trainer = hf_trainer(tmp_path, [reference])
    callback = hf_integration.RegimesCallback(
        "eval", probe_size=5, out=tmp_path / "run", score="eval_loss", higher_is_better=False
    ).attach(trainer)
    trainer.train()
    # 28 rows in batches of 4, two per update: 4 updates an epoch (the last of one batch), 8 in all.
    assert trainer.state.global_step == callback.tracker.iteration == 8
    assert torch.equal(callback.tracker.probe.kwargs["attention_mask"], probe["attention_mask"])
    differences = assert_same_curves(callback.tracker, reference.reference)
    assert_run_directory(tmp_path / "run", callback.tracker, epochs=2)
    rows = RunDirectory(tmp_path / "run").read_epochs()
    assert all("eval_loss" in row and "train_loss" in row for row in rows)
    logged = [entry for entry in trainer.state.log_history if "regimes/delta_w" in entry]
    assert [entry["step"] for entry in logged] == list(range(1, 9))
    np.testing.assert_array_equal([entry["regimes/delta_w"] for entry in logged], callback.tracker.delta_w)
    with capsys.disabled():
        print(
            f"\ntrainer vs slow reference: max relative dw difference {differences['dw']:.2e}, "
            f"max da difference {differences['da']:.2e}"
        )


def test_trainer_probe_drawn_from_a_data_set_drops_the_columns_the_model_does_not_take(tmp_path):
    trainer = hf_trainer(tmp_path, num_train_epochs=1, eval_strategy="no")
    callback = hf_integration.RegimesCallback(TokenRows(12, 1), probe_size=3, probe_seed=2, out=tmp_path / "run")
    trainer.add_callback(callback)
    trainer.train()
    expected = pad([TokenRows(12, 1)[i] for i in torch.randperm(12, generator=torch.Generator().manual_seed(2))[:3]])
    assert set(callback.tracker.probe.kwargs) == {"input_ids", "attention_mask"}
    assert torch.equal(callback.tracker.probe.kwargs["input_ids"], expected["input_ids"])


def test_trainer_resume_from_a_checkpoint_equals_the_uninterrupted_fit(tmp_path):
    class StopAt(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 4:
                control.should_training_stop = True

    def train(out, output_dir, resume=None, stop=False):
        trainer = hf_trainer(
            tmp_path,
            [StopAt()] if stop else [],
            output_dir=str(output_dir),
            save_strategy="steps",
            save_steps=2,
            eval_strategy="no",
        )
        callback = hf_integration.RegimesCallback(TokenRows(12, 1), probe_size=4, out=out).attach(trainer)
        trainer.train(resume_from_checkpoint=resume)
        return callback

    whole = train(tmp_path / "whole", tmp_path / "a")
    train(tmp_path / "resumed", tmp_path / "b", stop=True)
    assert (tmp_path / "b" / "checkpoint-4" / hf_integration.STATE_FILE).is_file()
    resumed = train(tmp_path / "resumed", tmp_path / "b", resume=str(tmp_path / "b" / "checkpoint-4"))
    assert resumed.tracker.iteration == whole.tracker.iteration == 8
    a, b = RunDirectory(tmp_path / "whole").read_steps(), RunDirectory(tmp_path / "resumed").read_steps()
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-6, atol=0, err_msg=name)


def test_trainer_reports_to_an_mlflow_file_store(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "regimes-test")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store behind this switch
    trainer = hf_trainer(tmp_path, report_to=["mlflow"], num_train_epochs=1, eval_strategy="no")
    callback = hf_integration.RegimesCallback(TokenRows(12, 1), probe_size=3, out=tmp_path / "run").attach(trainer)
    trainer.train()
    mlflow.flush_async_logging()
    client = mlflow.tracking.MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("regimes-test").experiment_id])
    history = sorted(client.get_metric_history(run.info.run_id, "regimes/delta_w"), key=lambda m: m.step)
    assert [m.step for m in history] == list(range(1, 5))
    np.testing.assert_allclose([m.value for m in history], callback.tracker.delta_w, rtol=1e-12)
    assert len(client.get_metric_history(run.info.run_id, "regimes/delta_a")) == 4


def wandb_history(run_file) -> list[dict]:
    """The history rows of an offline W&B run file: protobuf records in LevelDB's log format
    (32 KiB blocks of 7-byte-headed chunks) after a 7-byte file header."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data, rows, pending, position, block = run_file.read_bytes(), [], b"", 7, 32768
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if length == 0 and kind == 0:
            break
        chunk, position = data[position + 7 : position + 7 + length], position + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk  # full, first | middle, last
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            if record.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): item.value_json for item in record.history.item})
    return rows


@pytest.mark.slow
def test_trainer_reports_to_wandb_offline(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    trainer = hf_trainer(tmp_path, report_to=["wandb"], num_train_epochs=1, eval_strategy="no")
    callback = hf_integration.RegimesCallback(TokenRows(12, 1), probe_size=3, out=tmp_path / "run").attach(trainer)
    trainer.train()
    wandb.finish()
    # W&B's service process writes the offline file on its own schedule: read until it holds
    # every step (or give up after 30 s and let the assertion say what is there).
    deadline, logged = time.time() + 30, {}
    while time.time() < deadline:
        (run_file,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
        logged = {
            int(row["train/global_step"]): float(row["train/regimes/delta_w"])
            for row in wandb_history(run_file)
            if "train/regimes/delta_w" in row
        }
        if len(logged) >= 4:
            break
        time.sleep(0.5)
    assert sorted(logged) == list(range(1, 5))
    np.testing.assert_allclose([logged[s] for s in sorted(logged)], callback.tracker.delta_w, rtol=1e-12)


def test_trainer_without_attach_still_tracks_and_writes_and_says_what_the_reporters_miss(tmp_path):
    callback = hf_integration.RegimesCallback(TokenRows(12, 1), probe_size=3, out=tmp_path / "run")
    trainer = hf_trainer(tmp_path, [callback], num_train_epochs=1, eval_strategy="no", report_to=["tensorboard"])
    with pytest.warns(UserWarning, match=r"attach\(trainer\)"):
        trainer.train()
    assert callback.tracker.iteration == 4
    assert sum("regimes/delta_w" in entry for entry in trainer.state.log_history) == 4
    with pytest.raises(ValueError, match="attach"):
        hf_integration.RegimesCallback("eval")._draw(trainer.args, trainer.model, None)


# ---------------------------------------------------------------------- accelerate


def test_accelerate_loop_with_accumulation_logs_to_tensorboard_and_resumes(tmp_path):
    accelerate = pytest.importorskip("accelerate")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from regimes.integrations.accelerate import RegimesTracking

    def loop(out, epochs, resume_from=None, save_to=None, reference=None):
        accelerator = accelerate.Accelerator(
            cpu=True, gradient_accumulation_steps=2, log_with="tensorboard", project_dir=str(tmp_path / "acc")
        )
        accelerator.init_trackers(out.name)
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        loader = torch.utils.data.DataLoader(tabular(), batch_size=4)
        model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
        probe = tabular(12, seed=1).tensors[0][:4]
        tracking = RegimesTracking(accelerator, model, probe, out=out, log_every=2)
        accelerator.register_for_checkpointing(tracking)
        if reference is not None:
            reference.begin(model)
        start = 1
        if resume_from is not None:
            accelerator.load_state(resume_from)
            start = 2
        for epoch in range(start, epochs + 1):
            for x, y in loader:
                with accelerator.accumulate(model):
                    accelerator.backward(nn.functional.cross_entropy(model(x), y))
                    optimizer.step()
                    optimizer.zero_grad()
                tracking.step()
                if reference is not None and accelerator.sync_gradients:
                    reference.measure(model)
            tracking.end_epoch(epoch, train_loss=0.0)
            if save_to is not None and epoch == 1:
                accelerator.save_state(save_to)
        tracking.finish()
        accelerator.end_training()
        return tracking

    reference = SlowReference(tabular(12, seed=1).tensors[0][:4])
    whole = loop(tmp_path / "whole", 2, reference=reference)
    assert whole.tracker.iteration == 10  # 10 batches an epoch, 2 per step
    assert_same_curves(whole.tracker, reference)
    assert_run_directory(tmp_path / "whole", whole.tracker, epochs=2)
    (log_dir,) = (tmp_path / "acc" / "whole").rglob("events.out.tfevents*")
    events = EventAccumulator(str(log_dir.parent))
    events.Reload()
    assert [s.step for s in events.Scalars("regimes/delta_w")] == [2, 4, 6, 8, 10]

    loop(tmp_path / "resumed", 1, save_to=tmp_path / "state")
    resumed = loop(tmp_path / "resumed", 2, resume_from=tmp_path / "state")
    assert resumed.tracker.iteration == 10
    a, b = RunDirectory(tmp_path / "whole").read_steps(), RunDirectory(tmp_path / "resumed").read_steps()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


# ---------------------------------------------------------------------- the optional-dependency gate


@pytest.mark.parametrize(
    ("module", "blocked", "extra"),
    [
        ("regimes.integrations.lightning", "lightning", "lightning"),
        ("regimes.integrations.accelerate", "accelerate", "accelerate"),
        ("regimes.integrations.huggingface", "transformers", "transformers"),
    ],
)
def test_an_adapter_without_its_library_is_one_clear_message(monkeypatch, module, blocked, extra):
    import importlib

    from regimes.extras import MissingExtraError

    monkeypatch.setitem(sys.modules, blocked, None)
    monkeypatch.delitem(sys.modules, module, raising=False)
    with pytest.raises(MissingExtraError, match=rf"pip install -e '\.\[{extra}\]' \(in the regimes checkout\)"):
        importlib.import_module(module)

"""Setting a run up from its config: data, model, optimizer, probe and tracker, all seeded.

Everything that can be wrong with a config, its data or its device shows up here, before
the run directory exists, so that a failed start leaves nothing behind.
"""

from __future__ import annotations

import inspect
import math
import random
from typing import TYPE_CHECKING

import numpy as np
import torch

import regimes
from regimes.data import load_dataset
from regimes.data.registry import DATASETS
from regimes.errors import UsageError
from regimes.experiment.config import RunConfig
from regimes.experiment.state import RunState
from regimes.experiment.tasks import get_task
from regimes.freeze import ValuePattern
from regimes.geometry.watch import AnchorWatch
from regimes.neurons import NeuronStats
from regimes.quantities import UpdateNorm
from regimes.zoo import create_model, model_sites
from regimes.zoo.registry import ModelArgumentError, check_arguments, missing_arguments

if TYPE_CHECKING:  # a type only: the caller hands it in
    from regimes.experiment.distributed import DataParallel

__all__ = ["setup_run", "resolve_device", "check_names", "make_optimizer", "seed_everything", "batches_per_epoch"]


def make_optimizer(config: RunConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    params = model.parameters()
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, weight_decay=config.weight_decay, momentum=config.momentum, nesterov=config.nesterov
        )
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # every device


def batches_per_epoch(n_train: int, batch_size: int) -> int:
    n = -(-n_train // batch_size)
    return n - 1 if n > 1 and n_train % batch_size == 1 else n  # a last batch of one breaks BatchNorm


def resolve_device(name: str | torch.device | None = None) -> torch.device:
    """The device to train on: `name` checked against this machine (None: CUDA if present, else CPU)."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}: use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device {name!r}: this PyTorch build or machine has no CUDA GPU; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"device {name!r}: MPS (Apple GPUs) is not available here; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"device {name!r} is not supported by the runner: use cpu, cuda, cuda:N or mps")
    return device


def check_names(config: RunConfig) -> None:
    """The config's task, data set, model and model arguments exist; checked without loading
    or building anything (a sweep checks every trial before it starts)."""
    get_task(config.task)
    DATASETS.get(config.dataset)
    check_arguments(config.model, config.model_args, complete=False)  # the data may fix what is missing


def setup_run(config: RunConfig, device: torch.device, data_dir=None, parallel: DataParallel | None = None) -> RunState:
    """Data, model, optimizer and tracker, all seeded from the config."""
    task = get_task(config.task)
    seed_everything(config.seed)
    _check_data_options(config)
    splits = load_dataset(config.dataset, data_dir, **config.data_args)
    task.setup(splits)
    _check_vocabulary(config, splits)
    _check_data_arguments(config, splits)
    model = _build_model(config, device)
    if parallel is not None:
        parallel.wrap(model)
    optimizer = make_optimizer(config, model)
    probe_rng = torch.Generator().manual_seed(config.seed)
    val_tensors = splits.val.tensors
    probe_indices = torch.randperm(len(val_tensors[0]), generator=probe_rng)[: config.probe_size]
    probe = task.probe(val_tensors, probe_indices, device)
    tracker = None
    if parallel is None or parallel.main:  # under DDP the first process alone tracks
        tracker = regimes.Tracker(
            model,
            probe,
            every=config.track_every,
            sites=config.sites or model_sites(config.model),
            autocast=torch.bfloat16 if config.precision == "bf16" else None,
            activation=config.model_args.get("activation", "relu"),
            quantities=_quantities(config),
        )
    return RunState(
        config,
        device,
        task,
        splits,
        model,
        optimizer,
        tracker,
        order=torch.Generator().manual_seed(config.seed),
        batches_per_epoch=batches_per_epoch(len(splits.train), config.batch_size),
        parallel=parallel,
    )


def _quantities(config: RunConfig) -> list:
    """What the tracker measures beyond dw and da: the neurons behind the pattern (on, dead,
    always on), the value network's pattern under a freeze, the step sizes and the distance
    from the epoch's start for the geometry."""
    quantities = [NeuronStats()]
    quantities += [ValuePattern()] if config.freeze != "off" else []
    if config.geometry:
        quantities += [UpdateNorm(), AnchorWatch()]
    return quantities


def _check_vocabulary(config: RunConfig, splits) -> None:
    vocab = config.model_args.get("vocab_size")
    if splits.vocab_size and vocab is not None and vocab < splits.vocab_size:
        raise UsageError(
            f"model_args.vocab_size = {vocab} is smaller than the tokenizer's vocabulary ({splits.vocab_size}) "
            f"for {config.dataset}: set model_args.vocab_size = data_args.vocab_size"
        )


def _build_model(config: RunConfig, device: torch.device) -> torch.nn.Module:
    """The config's model on its device; one too big for this machine's memory is a UsageError."""
    try:
        return create_model(config.model, **config.model_args).to(device)
    except (MemoryError, torch.OutOfMemoryError) as error:
        raise UsageError(
            f"model {config.model!r} with {config.model_args} does not fit in memory ({error}); "
            "make it smaller (model_args) or use a device with more memory"
        ) from None
    except RuntimeError as error:
        if "can't allocate memory" not in str(error):  # the CPU allocator's words: anything else is a bug
            raise
        raise UsageError(
            f"model {config.model!r} with model_args {config.model_args} does not fit in this "
            "machine's memory: make it smaller (model_args)"
        ) from None


def _check_data_options(config: RunConfig) -> None:
    """The config's data_args are options the data set's loader takes."""
    loader = DATASETS.get(config.dataset).loader
    parameters = inspect.signature(loader).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    known = [name for name in parameters if name not in ("data_dir", "split_seed")]
    unknown = sorted(set(config.data_args) - set(known))
    if unknown:
        raise UsageError(
            f"data_args {', '.join(map(repr, unknown))}: data set {config.dataset!r} takes "
            f"{', '.join(known) or 'no options'}; remove it from the config's [data_args] table"
        )


def _check_data_arguments(config: RunConfig, splits) -> None:
    """A model argument the data set fixes (input size, classes) that the config leaves out is
    an error that gives the data set's values, so that the config stays the whole record."""
    from_data = {"input_size": math.prod(splits.input_shape), "num_classes": splits.num_classes}
    missing = [name for name in missing_arguments(config.model, config.model_args) if name in from_data]
    if missing:
        values = ", ".join(f"{name} = {from_data[name]}" for name in missing)
        sets = " ".join(f"--set model_args.{name}={from_data[name]}" for name in missing)
        raise ModelArgumentError(
            f"model {config.model!r} needs {', '.join(missing)}; for data set {config.dataset!r} that is {values}: "
            f"add them to the config's [model_args] table, or pass {sets}"
        )
    classes = config.model_args.get("num_classes")
    if isinstance(classes, int) and splits.num_classes and classes < splits.num_classes:
        raise ModelArgumentError(
            f"model_args.num_classes = {classes}, and data set {config.dataset!r} has {splits.num_classes} classes: "
            f"set model_args.num_classes = {splits.num_classes}"
        )

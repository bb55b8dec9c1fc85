"""The published study's vocabulary, in one place (docs/study.md): how it spells the
models and data sets, the order of its table's rows, and which sweep grid each model
family gets. Plain data keyed by the registry names (`regimes.zoo`, `regimes.data`);
no torch, so the report reads it cheaply.

>>> model_label("mlp"), dataset_label("breast-cancer"), optimizer_label("sgd")
('MLP', 'Breast Cancer', 'SGD')
>>> grid_family("lenet5"), grid_family("gpt2")
('small', 'transformer')
"""

from __future__ import annotations

from regimes.errors import UsageError

__all__ = [
    "MODEL_LABELS",
    "DATASET_LABELS",
    "OPTIMIZER_LABELS",
    "STUDY_ROWS",
    "GRID_FAMILIES",
    "model_label",
    "dataset_label",
    "optimizer_label",
    "grid_family",
    "row_rank",
]

MODEL_LABELS = {
    "mlp": "MLP",
    "lenet5": "LeNet5",
    "alexnet": "AlexNet",
    "resnet34": "ResNet34",
    "efficientnet_b0": "EfficientNetB0",
    "xlnet": "XLNet",
    "roberta": "RoBERTa",
    "t5": "T5",
    "gpt2": "GPT-2",
    "vit": "ViT",  # any size: the study's ViT-B16 and the CPU-scale one alike
    "swin": "Swin",
    "pvt": "PyramidViT",
    "resnet_small": "ResNet (small)",
    "efficientnet_small": "EfficientNet (small, ReLU)",
}
DATASET_LABELS = {
    "adult": "Adult",
    "breast-cancer": "Breast Cancer",
    "har": "HAR",
    "mnist": "MNIST",
    "cifar10": "CIFAR10",
    "cifar100": "CIFAR100",
    "tinyimagenet": "TinyImageNet",
    "sst2": "SST-2",
    "ag_news": "AG News",
    "squad": "SQuAD",
    "wikitext2": "WikiText",
    "wikitext103": "WikiText-103",
    "food101": "Food-101",
    "digits": "Digits",
    "mnist1d": "MNIST-1D",
    "fashion-mnist": "Fashion-MNIST",
    "jargon-file": "Jargon File",
}
OPTIMIZER_LABELS = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW"}

# The rows of the study's table, in its order.
STUDY_ROWS = [
    ("mlp", "adult"),
    ("mlp", "breast-cancer"),
    ("mlp", "har"),
    ("mlp", "mnist"),
    ("lenet5", "mnist"),
    ("lenet5", "cifar10"),
    ("alexnet", "cifar100"),
    ("resnet34", "cifar100"),
    ("resnet34", "tinyimagenet"),
    ("efficientnet_b0", "cifar100"),
    ("efficientnet_b0", "tinyimagenet"),
    ("xlnet", "sst2"),
    ("roberta", "ag_news"),
    ("t5", "squad"),
    ("gpt2", "wikitext2"),
    ("vit", "cifar100"),
    ("swin", "food101"),
    ("pvt", "tinyimagenet"),
]

# The study's sweep grid of each model (regimes.experiment.grids.STUDY_GRIDS).
GRID_FAMILIES = {
    "mlp": "small",
    "lenet5": "small",
    "alexnet": "cnn",
    "resnet34": "cnn",
    "efficientnet_b0": "cnn",
    "resnet_small": "cnn",  # the CPU-scale families (docs/families.md)
    "efficientnet_small": "cnn",
    "xlnet": "transformer",
    "roberta": "transformer",
    "t5": "transformer",
    "gpt2": "transformer",
    "vit": "transformer",
    "swin": "transformer",
    "pvt": "transformer",
}


def model_label(name) -> str:
    """The study's spelling of a model ("resnet34" -> "ResNet34"); other names as given."""
    return MODEL_LABELS.get(str(name), str(name))


def dataset_label(name) -> str:
    """The study's spelling of a data set ("breast-cancer" -> "Breast Cancer"); other names as given."""
    return DATASET_LABELS.get(str(name), str(name))


def optimizer_label(name) -> str:
    """The study's spelling of an optimizer ("adamw" -> "AdamW"); other names as given."""
    return OPTIMIZER_LABELS.get(str(name), str(name))


def grid_family(model: str) -> str:
    """The study's grid family of a model; a model the study has no grid for is an error."""
    if model not in GRID_FAMILIES:
        raise UsageError(
            f"the study has no sweep grid for model {model!r} (families: "
            f"{', '.join(sorted(set(GRID_FAMILIES.values())))}): pass --grid FAMILY or a TOML grid file"
        )
    return GRID_FAMILIES[model]


def row_rank(model: str, dataset: str) -> tuple[int, int]:
    """Where a (model, data set) run goes in the study's table: by model, then by row;
    rows the study does not have go after its rows of the same model."""
    models = list(dict.fromkeys(m for m, _ in STUDY_ROWS))
    model_rank = models.index(model) if model in models else len(models)
    row = STUDY_ROWS.index((model, dataset)) if (model, dataset) in STUDY_ROWS else len(STUDY_ROWS)
    return model_rank, row

"""Presets: every row of the study's Table II with the configuration that won its sweep,
plus offline stand-ins that need no download (SPEC section 4).

The study did not publish batch sizes, sequence lengths or vocabularies; the
ones here are ordinary choices for each data set, and part of the preset so
that `regimes show` states them.
"""

from __future__ import annotations

from regimes.experiment.config import RunConfig, UnknownConfigNameError
from regimes.registry import Registry
from regimes.zoo import STUDY_DROPOUT


def _mlp(input_size, num_classes, hidden, dropout):
    return {"input_size": input_size, "num_classes": num_classes, "hidden": list(hidden), "dropout": dropout}


# The study's protocol for Transformers: up to 50 epochs, any improvement counts.
_TRANSFORMER = dict(max_epochs=50, min_delta=0.0, precision="bf16")
# The CPU-scale image presets' subset of Fashion-MNIST (regimes.data.images.load_fashion_mnist).
_FASHION_SUBSET = {"train_size": 3000, "val_size": 1000}

PRESETS: Registry[dict] = Registry(
    "preset",
    advice="`regimes presets` describes them",
    error=UnknownConfigNameError,
    entries={
        # The study's rows (Table II), MLPs and CNNs: up to 30 epochs; AlexNet up to 200.
        "mlp-adult": dict(
            description="MLP 104-256-128-64-2 on Adult (UCI census income); Adam, lr 1e-2, wd 1e-4",
            model="mlp",
            model_args=_mlp(104, 2, (256, 128, 64), STUDY_DROPOUT),
            dataset="adult",
            optimizer="adam",
            lr=1e-2,
            weight_decay=1e-4,
            batch_size=128,
            max_epochs=30,
        ),
        "mlp-breast-cancer": dict(
            description="MLP 30-64-32-2 on Breast Cancer (ships with scikit-learn, no download); SGD, lr 1e-2, wd 1e-4",
            model="mlp",
            model_args=_mlp(30, 2, (64, 32), STUDY_DROPOUT),
            dataset="breast-cancer",
            optimizer="sgd",
            lr=1e-2,
            weight_decay=1e-4,
            batch_size=32,
            max_epochs=30,
        ),
        "mlp-har": dict(
            description="MLP 561-512-256-6 on UCI HAR (no dropout); SGD, lr 1e-2, wd 1e-4",
            model="mlp",
            model_args=_mlp(561, 6, (512, 256), 0.0),
            dataset="har",
            optimizer="sgd",
            lr=1e-2,
            weight_decay=1e-4,
            batch_size=64,
            max_epochs=30,
        ),
        "mlp-mnist": dict(
            description="MLP 784-256-128-10 on MNIST; SGD, lr 1e-2, wd 1e-4",
            model="mlp",
            model_args=_mlp(784, 10, (256, 128), STUDY_DROPOUT),
            dataset="mnist",
            optimizer="sgd",
            lr=1e-2,
            weight_decay=1e-4,
            batch_size=128,
            max_epochs=30,
        ),
        "lenet5-mnist": dict(
            description="LeNet5 on MNIST (28x28, padded first conv); SGD, lr 1e-2, wd 1e-4",
            model="lenet5",
            model_args={"in_channels": 1, "num_classes": 10, "input_size": 28},
            dataset="mnist",
            optimizer="sgd",
            lr=1e-2,
            weight_decay=1e-4,
            batch_size=128,
            max_epochs=30,
        ),
        "lenet5-cifar10": dict(
            description="LeNet5 on CIFAR-10 (32x32x3); Adam, lr 1e-3, wd 1e-4",
            model="lenet5",
            model_args={"in_channels": 3, "num_classes": 10, "input_size": 32},
            dataset="cifar10",
            optimizer="adam",
            lr=1e-3,
            weight_decay=1e-4,
            batch_size=128,
            max_epochs=30,
        ),
        "alexnet-cifar100": dict(
            description="CIFAR AlexNet (five 3x3 convs) on CIFAR-100; SGD, lr 1e-3, wd 1e-3; up to 200 epochs (GPU)",
            model="alexnet",
            model_args={"in_channels": 3, "num_classes": 100},
            dataset="cifar100",
            optimizer="sgd",
            lr=1e-3,
            weight_decay=1e-3,
            batch_size=128,
            max_epochs=200,
        ),
        # ResNet34 and EfficientNetB0 (Hugging Face configs, every activation ReLU and tracked):
        # up to 200 epochs, min improvement 0.01; bf16 autocast (GPU work).
        "resnet34-cifar100": dict(
            description="ResNet34 (basic blocks 3-4-6-3) on CIFAR-100; Adam, lr 1e-2, wd 1e-4; "
            "up to 200 epochs, bf16 (GPU)",
            model="resnet34",
            model_args={"num_classes": 100},
            dataset="cifar100",
            optimizer="adam",
            lr=1e-2,
            weight_decay=1e-4,
            batch_size=128,
            max_epochs=200,
            precision="bf16",
        ),
        "resnet34-tinyimagenet": dict(
            description="ResNet34 on TinyImageNet (64x64); SGD with Nesterov momentum 0.9, lr 1e-3, wd 5e-3; "
            "up to 200 epochs, bf16 (GPU)",
            model="resnet34",
            model_args={"num_classes": 200},
            dataset="tinyimagenet",
            optimizer="sgd",
            momentum=0.9,
            nesterov=True,
            lr=1e-3,
            weight_decay=5e-3,
            batch_size=128,
            max_epochs=200,
            precision="bf16",
        ),
        "efficientnetb0-cifar100": dict(
            description="EfficientNetB0 with ReLU on CIFAR-100; AdamW, lr 2e-2, wd 1e-3; up to 200 epochs, bf16 (GPU)",
            model="efficientnet_b0",
            model_args={"num_classes": 100},
            dataset="cifar100",
            optimizer="adamw",
            lr=2e-2,
            weight_decay=1e-3,
            batch_size=128,
            max_epochs=200,
            precision="bf16",
        ),
        "efficientnetb0-tinyimagenet": dict(
            description="EfficientNetB0 with ReLU on TinyImageNet (64x64); AdamW, lr 2e-2, wd 1e-3; "
            "up to 200 epochs, bf16 (GPU)",
            model="efficientnet_b0",
            model_args={"num_classes": 200},
            dataset="tinyimagenet",
            optimizer="adamw",
            lr=2e-2,
            weight_decay=1e-3,
            batch_size=128,
            max_epochs=200,
            precision="bf16",
        ),
        # Transformers with ReLU feed-forwards, only those sites tracked (the model's registered
        # sites): base sizes, up to 50 epochs, min improvement 0, bf16 autocast (GPU work).
        # Text: a byte-level BPE trained on the training split (data_args.vocab_size).
        "xlnet-sst2": dict(
            description="XLNet-base on SST-2 (BPE 8192, 64 tokens); AdamW, lr 2e-5, wd 1e-2; score: accuracy",
            model="xlnet",
            model_args={"num_classes": 2, "vocab_size": 8192},
            dataset="sst2",
            data_args={"vocab_size": 8192, "max_length": 64},
            task="text-classification",
            optimizer="adamw",
            lr=2e-5,
            weight_decay=1e-2,
            batch_size=32,
            **_TRANSFORMER,
        ),
        "roberta-ag-news": dict(
            description="RoBERTa-base on AG News (BPE 16384, 128 tokens); AdamW, lr 2e-5, wd 1e-2; score: accuracy",
            model="roberta",
            model_args={"num_classes": 4, "vocab_size": 16384, "max_length": 128},
            dataset="ag_news",
            data_args={"vocab_size": 16384, "max_length": 128},
            task="text-classification",
            optimizer="adamw",
            lr=2e-5,
            weight_decay=1e-2,
            batch_size=32,
            **_TRANSFORMER,
        ),
        "t5-squad": dict(
            description="T5-base on SQuAD v1.1, question+context -> answer (BPE 16384, 384/32 tokens); AdamW, lr 1e-4, "
            "wd 1e-2; score: token accuracy of the answer under teacher forcing",
            model="t5",
            model_args={"vocab_size": 16384},
            dataset="squad",
            data_args={"vocab_size": 16384, "max_length": 384, "target_length": 32},
            task="seq2seq",
            optimizer="adamw",
            lr=1e-4,
            weight_decay=1e-2,
            batch_size=16,
            **_TRANSFORMER,
        ),
        "gpt2-wikitext": dict(
            description="GPT-2 (124M shape) on WikiText-2 raw (BPE 16384, blocks of 512); AdamW, lr 3e-4, wd 1e-2; "
            "score: perplexity (lower is better)",
            model="gpt2",
            model_args={"vocab_size": 16384, "max_length": 512},
            dataset="wikitext2",
            data_args={"vocab_size": 16384, "max_length": 512},
            task="causal-lm",
            optimizer="adamw",
            lr=3e-4,
            weight_decay=1e-2,
            batch_size=8,
            **_TRANSFORMER,
        ),
        "vitb16-cifar100": dict(
            description="ViT-B/16 on CIFAR-100 resized to 224x224; AdamW, lr 1e-4, wd 5e-2; score: accuracy",
            model="vit",
            model_args={"num_classes": 100},
            dataset="cifar100",
            optimizer="adamw",
            lr=1e-4,
            weight_decay=5e-2,
            batch_size=128,
            **_TRANSFORMER,
        ),
        "swin-food101": dict(
            description="Swin-B on Food-101 (224x224); AdamW, lr 1e-4, wd 5e-2; score: accuracy",
            model="swin",
            model_args={"num_classes": 101},
            dataset="food101",
            data_args={"image_size": 224},
            optimizer="adamw",
            lr=1e-4,
            weight_decay=5e-2,
            batch_size=64,
            **_TRANSFORMER,
        ),
        "pvt-tinyimagenet": dict(
            description="PVT-Small on TinyImageNet resized to 224x224; AdamW, lr 5e-4, wd 5e-2; score: accuracy",
            model="pvt",
            model_args={"num_classes": 200},
            dataset="tinyimagenet",
            optimizer="adamw",
            lr=5e-4,
            weight_decay=5e-2,
            batch_size=128,
            **_TRANSFORMER,
        ),
        # Offline stand-ins: no download, for newcomers and the tests.
        "mlp-digits": dict(
            description="MLP 784-256-128-10 on scikit-learn's digits upsampled to 28x28 (MNIST stand-in, offline); "
            "the MNIST row's config",
            model="mlp",
            model_args=_mlp(784, 10, (256, 128), STUDY_DROPOUT),
            dataset="digits",
            optimizer="sgd",
            lr=1e-2,
            weight_decay=1e-4,
            batch_size=64,
            max_epochs=30,
        ),
        "lenet5-digits": dict(
            description="LeNet5 on scikit-learn's digits upsampled to 28x28 (MNIST stand-in, offline); "
            "the MNIST row's config",
            model="lenet5",
            model_args={"in_channels": 1, "num_classes": 10, "input_size": 28},
            dataset="digits",
            optimizer="sgd",
            lr=1e-2,
            weight_decay=1e-4,
            batch_size=64,
            max_epochs=30,
        ),
        "mlp-mnist1d": dict(
            description="MLP 40-256-128-10 on MNIST-1D (generated procedurally, offline); the MNIST row's config",
            model="mlp",
            model_args=_mlp(40, 10, (256, 128), STUDY_DROPOUT),
            dataset="mnist1d",
            optimizer="sgd",
            lr=1e-2,
            weight_decay=1e-4,
            batch_size=64,
            max_epochs=30,
        ),
        # Real images without a network: Debian's dataset-fashion-mnist (apt-get install
        # dataset-fashion-mnist), with the MNIST rows' configurations.
        "mlp-fashion-mnist": dict(
            description="MLP 784-256-128-10 on Fashion-MNIST (Debian's dataset-fashion-mnist, offline); "
            "the MNIST row's config",
            model="mlp",
            model_args=_mlp(784, 10, (256, 128), STUDY_DROPOUT),
            dataset="fashion-mnist",
            optimizer="sgd",
            lr=1e-2,
            weight_decay=1e-4,
            batch_size=128,
            max_epochs=30,
        ),
        "lenet5-fashion-mnist": dict(
            description="LeNet5 on Fashion-MNIST (Debian's dataset-fashion-mnist, offline); the MNIST row's config",
            model="lenet5",
            model_args={"in_channels": 1, "num_classes": 10, "input_size": 28},
            dataset="fashion-mnist",
            optimizer="sgd",
            lr=1e-2,
            weight_decay=1e-4,
            batch_size=128,
            max_epochs=30,
        ),
        # The study's families at CPU scale on real data that installs offline (SPEC section 4):
        # each row's optimizer settings, sizes cut so that one run fits in 10 minutes on one CPU
        # thread. Images: a 3,000 / 1,000 subset of Debian's Fashion-MNIST (drawn once, the same for
        # every seed); text: 200 kB of the Jargon File (Debian's jargon-text, public domain).
        "resnet-fashion-mnist": dict(
            description="ResNet-8 (CIFAR-style, widths 16-32-64) on 3,000 Fashion-MNIST images (Debian, offline); "
            "the ResNet34 row's Adam, lr 1e-2, wd 1e-4; up to 30 epochs (CPU)",
            model="resnet_small",
            model_args={"in_channels": 1, "num_classes": 10},
            dataset="fashion-mnist",
            data_args=_FASHION_SUBSET,
            optimizer="adam",
            lr=1e-2,
            weight_decay=1e-4,
            batch_size=64,
            max_epochs=30,
        ),
        "efficientnet-fashion-mnist": dict(
            description="small ReLU EfficientNet (MBConv + squeeze-excite, 4 stages) on 3,000 Fashion-MNIST images "
            "(Debian, offline); the EfficientNetB0 row's AdamW, lr 2e-2, wd 1e-3; up to 15 epochs (CPU)",
            model="efficientnet_small",
            model_args={"in_channels": 1, "num_classes": 10},
            dataset="fashion-mnist",
            data_args=_FASHION_SUBSET,
            optimizer="adamw",
            lr=2e-2,
            weight_decay=1e-3,
            batch_size=64,
            max_epochs=15,
        ),
        "vit-fashion-mnist": dict(
            description="ViT (4 layers, width 64, 7x7 patches, ReLU feed-forwards) on 3,000 Fashion-MNIST images "
            "(Debian, offline); the ViT-B16 row's AdamW, lr 1e-4, wd 5e-2; up to 30 epochs (CPU)",
            model="vit",
            model_args=dict(
                in_channels=1,
                num_classes=10,
                image_size=28,
                patch_size=7,
                hidden_size=64,
                num_layers=4,
                num_heads=4,
                intermediate_size=128,
            ),
            dataset="fashion-mnist",
            data_args=_FASHION_SUBSET,
            optimizer="adamw",
            lr=1e-4,
            weight_decay=5e-2,
            batch_size=64,
            max_epochs=30,
            min_delta=0.0,
        ),
        "gpt2-jargon": dict(
            description="GPT-2 shape (4 layers, width 128, ReLU feed-forwards) on 200 kB of the Jargon File "
            "(Debian's jargon-text, offline; BPE 4096, blocks of 128); the GPT-2 row's AdamW, lr 3e-4, wd 1e-2; "
            "up to 20 epochs (CPU); score: perplexity",
            model="gpt2",
            model_args=dict(vocab_size=4096, hidden_size=128, num_layers=4, num_heads=4, max_length=128),
            dataset="jargon-file",
            data_args=dict(vocab_size=4096, max_length=128, train_chars=200_000, val_chars=50_000),
            task="causal-lm",
            optimizer="adamw",
            lr=3e-4,
            weight_decay=1e-2,
            batch_size=16,
            max_epochs=20,
            min_delta=0.0,
        ),
    },
)


def list_presets() -> dict[str, str]:
    """`{name: one-line description}`, in the study's order."""
    return {name: preset["description"] for name, preset in PRESETS.items()}


def get_preset(name: str) -> RunConfig:
    return RunConfig.from_dict({**PRESETS.get(name), "preset": name})


# `-native` variants: the architecture's own activation instead of the study's ReLU (issue 12,
# part 3), tracked as the sign of its pre-activation. T5 (v1.0) is ReLU natively: no variant.
NATIVE_ACTIVATIONS = {
    "efficientnetb0-cifar100": "silu",  # swish
    "efficientnetb0-tinyimagenet": "silu",
    "xlnet-sst2": "gelu",
    "roberta-ag-news": "gelu",
    "gpt2-wikitext": "gelu",  # GPT-2's tanh approximation (regimes.zoo.hf_text)
    "vitb16-cifar100": "gelu",
    "swin-food101": "gelu",
    "pvt-tinyimagenet": "gelu",
}
for _name, _activation in NATIVE_ACTIVATIONS.items():
    _preset = PRESETS.get(_name)
    PRESETS.register(
        f"{_name}-native",
        {
            **_preset,
            "model_args": {**_preset["model_args"], "activation": _activation},
            "description": f"{_preset['description']}; with its native activation ({_activation}) instead of ReLU",
        },
    )

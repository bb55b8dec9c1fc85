"""regimes in a Hugging Face Trainer fit: an MLP on scikit-learn's digits, curves in TensorBoard.

    pip install -e '.[study,transformers,tensorboard]'   # in the regimes checkout
    python examples/trainer_digits.py
    tensorboard --logdir runs/trainer-digits/runs   # scalars train/regimes/delta_w, train/regimes/delta_a

The Trainer takes any nn.Module whose forward returns the loss; here a 64-128-64-10 ReLU MLP
with gradient accumulation (2 batches of 32 per update). `attach(trainer)` puts the callback
ahead of the Trainer's reporting callbacks, so regimes/delta_w and regimes/delta_a join the
Trainer's logs every `logging_steps` (TensorBoard prefixes them with train/). The probe is drawn
from the evaluation data set; the run directory is runs/trainer-digits/regimes.
"""

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from transformers import Trainer, TrainingArguments

from regimes.integrations.huggingface import RegimesCallback


class Digits(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y = torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"pixels": self.x[i], "labels": self.y[i]}


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, pixels, labels=None):
        logits = self.net(pixels)
        return {"loss": F.cross_entropy(logits, labels) if labels is not None else None, "logits": logits}


def accuracy(prediction):
    return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}


if __name__ == "__main__":
    torch.manual_seed(0)
    x, y = load_digits(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)
    args = TrainingArguments(
        output_dir="runs/trainer-digits",
        num_train_epochs=10,
        per_device_train_batch_size=32,
        gradient_accumulation_steps=2,
        learning_rate=0.05,
        optim="sgd",
        lr_scheduler_type="constant",
        eval_strategy="epoch",
        logging_steps=5,
        save_strategy="no",
        report_to=["tensorboard"],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    trainer = Trainer(
        model=MLP(),
        args=args,
        train_dataset=Digits(x_train, y_train),
        eval_dataset=Digits(x_val, y_val),
        compute_metrics=accuracy,
    )
    # force=True: running the example again replaces its run directory
    regimes = RegimesCallback("eval", score="eval_accuracy", force=True).attach(trainer)
    trainer.train()
    summary = regimes.summary
    print(f"sites {regimes.tracker.sites}; {regimes.tracker.iteration} optimizer updates")
    print(
        f"rho {summary.rho:.2f} (layerwise {summary.rho_layerwise:.2f}); best eval_accuracy {summary.best_score:.4f}; "
        "run directory runs/trainer-digits/regimes"
    )

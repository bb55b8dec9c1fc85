"""regimes in a Lightning fit: the study's Breast Cancer MLP, curves in TensorBoard.

    pip install -e '.[study,lightning,tensorboard]'   # in the regimes checkout
    python examples/lightning_breast_cancer.py
    tensorboard --logdir runs/tensorboard        # scalars regimes/delta_w and regimes/delta_a

Trains the 30-64-32-2 MLP (BatchNorm, dropout) with SGD for 18 epochs. The callback draws its
probe from the validation data (|S| = 0.2 x batch size, seed 0), measures after every optimizer
step, logs to the trainer's loggers, and writes runs/lightning-breast-cancer: the same run
directory as `regimes run` (steps/, epochs.parquet, summary.json with rho, figure.png).
"""

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from regimes.integrations.lightning import RegimesCallback


class BreastCancerMLP(L.LightningModule):
    def __init__(self, lr: float = 1e-2, weight_decay: float = 1e-4):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Linear(30, 64),
            nn.BatchNorm1d(64),
            nn.ReLU(),
            nn.Dropout(0.2),
            nn.Linear(64, 32),
            nn.BatchNorm1d(32),
            nn.ReLU(),
            nn.Dropout(0.2),
            nn.Linear(32, 2),
        )

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)


def loaders(batch_size: int = 32):
    x, y = load_breast_cancer(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)
    scaler = StandardScaler().fit(x_train)
    train = TensorDataset(torch.tensor(scaler.transform(x_train), dtype=torch.float32), torch.tensor(y_train))
    val = TensorDataset(torch.tensor(scaler.transform(x_val), dtype=torch.float32), torch.tensor(y_val))
    # drop_last: a last batch of one sample would break BatchNorm
    return DataLoader(train, batch_size, shuffle=True, drop_last=True), DataLoader(val, batch_size=256)


if __name__ == "__main__":
    L.seed_everything(0)
    # force=True: running the example again replaces its run directory
    regimes = RegimesCallback(
        "val",
        out="runs/lightning-breast-cancer",
        force=True,
        score="val_acc",
        config={"lr": 1e-2, "weight_decay": 1e-4, "batch_size": 32, "seed": 0},
    )
    trainer = L.Trainer(
        max_epochs=18,
        callbacks=[regimes],
        logger=TensorBoardLogger("runs/tensorboard", name="lightning"),
        log_every_n_steps=5,
        enable_checkpointing=False,
        enable_progress_bar=False,
    )
    trainer.fit(BreastCancerMLP(), *loaders())
    summary = regimes.summary
    print(f"sites {regimes.tracker.sites}; {regimes.tracker.iteration} steps")
    print(
        f"rho {summary.rho:.2f} (layerwise {summary.rho_layerwise:.2f}); best val_acc {summary.best_score:.4f}; "
        "run directory runs/lightning-breast-cancer"
    )

"""The tracker in a plain training loop: an MLP on scikit-learn's breast-cancer data.

    python examples/breast_cancer.py

Trains the study's Breast Cancer MLP (30-64-32-2, BatchNorm, dropout) with SGD for
18 epochs, tracking dw and da at every step, and prints the study's numbers.
"""

import torch
import torch.nn.functional as F
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from torch import nn

import regimes

torch.manual_seed(0)
x, y = load_breast_cancer(return_X_y=True)
x_train, x_val, y_train, y_val = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)
scaler = StandardScaler().fit(x_train)
x_train, x_val = (torch.tensor(scaler.transform(a), dtype=torch.float32) for a in (x_train, x_val))
y_train, y_val = torch.tensor(y_train), torch.tensor(y_val)

model = nn.Sequential(
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
optimizer = torch.optim.SGD(model.parameters(), lr=1e-2, weight_decay=1e-4)
batch_size = 32
probe = x_val[torch.randperm(len(x_val))[: round(0.2 * batch_size)]]  # the study's |S| = 0.2 x batch

with regimes.Tracker(model, probe) as tracker:
    for epoch in range(18):
        model.train()
        for batch in torch.randperm(len(x_train)).split(batch_size):
            if len(batch) < 2:
                continue  # BatchNorm needs two samples
            optimizer.zero_grad()
            F.cross_entropy(model(x_train[batch]), y_train[batch]).backward()
            optimizer.step()
            tracker.step()
        model.eval()
        with torch.no_grad():
            accuracy = (model(x_val).argmax(1) == y_val).float().mean().item()
        print(
            f"epoch {epoch + 1:2d}  val accuracy {accuracy:.4f}  dw {tracker.delta_w[-1]:.2e}  da {tracker.delta_a[-1]:.4f}"
        )

batches_per_epoch = -(-len(x_train) // batch_size)
summary = regimes.summarize(tracker.delta_w, tracker.delta_a, batches_per_epoch)
print(f"sites: {tracker.sites}")
print({k: round(v, 4) if isinstance(v, float) else v for k, v in summary.items()})

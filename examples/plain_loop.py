"""Your own training loop, recorded as `regimes run` records a run.

    python examples/plain_loop.py runs/plain-loop
    regimes report runs/plain-loop

Five added lines (marked) give the loop a run directory: the steps and epoch tables, the
summary with rho, the figure, a row in `regimes report`, and a resume (`state_dict`).
"""

import sys

import torch
from sklearn.datasets import load_breast_cancer
from torch import nn

import regimes

out = sys.argv[1] if len(sys.argv) > 1 else "runs/plain-loop"
x, y = load_breast_cancer(return_X_y=True)
x, y = torch.tensor((x - x.mean(0)) / x.std(0), dtype=torch.float32), torch.tensor(y)
x_train, y_train, x_val, y_val = x[:455], y[:455], x[455:], y[455:]
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(30, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 2))
optimizer = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)

run = regimes.Run(out, config={"lr": 1e-2, "batch_size": 32}, describe={"dataset": "breast_cancer"})  # added
tracker = run.watch(model, x_val[:6], optimizer=optimizer)  # added: the probe, 0.2 x the batch size
for epoch in range(1, 21):
    for batch in torch.randperm(len(x_train)).split(32):
        loss = nn.functional.cross_entropy(model(x_train[batch]), y_train[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        tracker.step()  # added
    with torch.no_grad():
        accuracy = (model(x_val).argmax(1) == y_val).float().mean()
    run.end_epoch(epoch, {"train_loss": loss, "val_score": accuracy})  # added
summary = run.finish()  # added
print(f"rho {summary['rho']:.2f} (global {summary['rho_global']:.2f}), best accuracy {summary['best_score']:.3f}")

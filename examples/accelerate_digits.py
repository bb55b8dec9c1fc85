"""regimes in a loop written with accelerate: an MLP on scikit-learn's digits, curves in TensorBoard.

    pip install -e '.[study,accelerate,tensorboard]'   # in the regimes checkout
    python examples/accelerate_digits.py                          # or: accelerate launch examples/accelerate_digits.py
    tensorboard --logdir runs/accelerate-digits/tensorboard       # scalars regimes/delta_w and regimes/delta_a

`RegimesTracking` is built after `accelerator.prepare` and tracks the unwrapped model;
`tracking.step()` after each `optimizer.step()` measures only when the optimizer stepped
(here every second batch: gradient accumulation). The values go to `accelerator.log`; the
state rides in `accelerator.save_state` (register_for_checkpointing); the run directory is
runs/accelerate-digits/regimes. Under `accelerate launch` with several processes, the main
process probes and writes.
"""

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from regimes.integrations.accelerate import RegimesTracking

if __name__ == "__main__":
    torch.manual_seed(0)
    x, y = load_digits(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(x / 16.0, y, test_size=0.2, stratify=y, random_state=0)
    train = TensorDataset(torch.tensor(x_train, dtype=torch.float32), torch.tensor(y_train))
    val = TensorDataset(torch.tensor(x_val, dtype=torch.float32), torch.tensor(y_val))

    accelerator = Accelerator(
        gradient_accumulation_steps=2, log_with="tensorboard", project_dir="runs/accelerate-digits"
    )
    accelerator.init_trackers("tensorboard")
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    loader = DataLoader(train, batch_size=32, shuffle=True)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)

    # The probe: 13 validation samples (0.2 x the 64 samples of one optimizer step), seed 0.
    # force=True: running the example again replaces its run directory.
    tracking = RegimesTracking(
        accelerator, model, val, batch_size=64, probe_seed=0, log_every=5, force=True, score="val_score"
    )
    accelerator.register_for_checkpointing(tracking)

    for epoch in range(1, 11):
        model.train()
        for inputs, targets in loader:
            with accelerator.accumulate(model):
                accelerator.backward(F.cross_entropy(model(inputs), targets))
                optimizer.step()
                optimizer.zero_grad()
            tracking.step()
        model.eval()
        with torch.no_grad():
            logits = model(val.tensors[0].to(accelerator.device))
        score = (logits.argmax(1).cpu() == val.tensors[1]).float().mean().item()
        accelerator.log({"val_score": score}, step=tracking.tracker.iteration if tracking.tracker else None)
        tracking.end_epoch(epoch, val_score=score)

    summary = tracking.finish()
    accelerator.end_training()
    if accelerator.is_main_process:
        print(f"sites {tracking.tracker.sites}; {tracking.tracker.iteration} optimizer steps")
        print(
            f"rho {summary.rho:.2f} (layerwise {summary.rho_layerwise:.2f}); best val_score {summary.best_score:.4f}; "
            "run directory runs/accelerate-digits/regimes"
        )

"""Where users train: thin adapters from training frameworks to a `regimes.Tracker`.

- `regimes.integrations.lightning.RegimesCallback(probe, **tracker_options)`: a Lightning callback.
- `regimes.integrations.huggingface.RegimesCallback(probe, **tracker_options)`: a `TrainerCallback`.
- `regimes.integrations.accelerate.RegimesTracking(accelerator, model, probe, ...)`: for loops
  written with `accelerate.Accelerator`.

Each measures once per optimizer step, logs `regimes/delta_w` and `regimes/delta_a` through the
host's own loggers, checkpoints with the host, and writes the same run directory as
`regimes run`. What they share (who tracks under several processes, drawing a probe from a
dataset, the run directory) is `regimes.integrations.session`. Each adapter imports its
framework through `regimes.extras`; importing this package imports none of them.
"""

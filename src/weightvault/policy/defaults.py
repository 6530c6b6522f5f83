"""Default data classes for an ML run directory, as policy TOML (parsed by ``policy/spec.py``).

A file belongs to the first class whose globs match its name or a directory above it, so the
order matters: optimizer state before weights (both are often ``.pt``), environment and dataset
metadata before generic configs, and a catch-all last.
"""

from __future__ import annotations

__all__ = ["DEFAULT_CLASSES"]

DEFAULT_CLASSES = """
[classes.optimizer]    # optimizer and scheduler state: large, only needed to resume
globs = ["optimizer*", "*optim_states*", "scheduler.pt", "rng_state*", "*.distcp"]
every = "1h"
keep_last = 2
tiers = ["hot", "warm"]

[classes.weights]      # model weights and checkpoints
globs = ["*.safetensors", "*.pt", "*.pth", "*.bin", "*.ckpt", "*.h5", "*.gguf", "*.npz", "*.npy", "*.onnx"]
every = "1h"
keep_last = 5
keep_daily = 7
keep_weekly = 4
keep_monthly = 6
tiers = ["hot", "warm", "cold", "archive"]

[classes.environment]  # what it takes to rebuild the software environment
globs = ["requirements*.txt", "environment*.yml", "environment*.yaml", "conda-*.yml", "pip-freeze*",
         "pyproject.toml", "poetry.lock", "uv.lock", "Pipfile*", "Dockerfile*", "env-manifest*"]
every = "1d"
keep_last = 5
keep_monthly = 12
tiers = ["hot", "warm", "cold", "archive"]

[classes.dataset]      # dataset metadata (not the data itself)
globs = ["dataset_info*", "dataset_dict.json", "state.json", "*.dataset.json", "data_manifest*", "splits*.json"]
every = "1d"
keep_last = 5
keep_monthly = 12
tiers = ["hot", "warm", "cold", "archive"]

[classes.logs]         # training logs and metrics
globs = ["*.log", "events.out.tfevents.*", "logs", "wandb", "mlruns", "*.csv", "trainer_state.json"]
every = "15min"
keep_last = 8
keep_daily = 14
tiers = ["hot", "warm", "cold"]

[classes.configs]      # model, tokenizer and training configuration
globs = ["*.json", "*.yaml", "*.yml", "*.toml", "*.ini", "*.cfg", "*.txt", "*.model", "*.tiktoken"]
every = "1h"
keep_last = 10
keep_daily = 30
tiers = ["hot", "warm", "cold", "archive"]

[classes.other]        # everything else
globs = ["*"]
every = "1d"
keep_last = 3
keep_weekly = 4
tiers = ["hot", "warm"]
"""

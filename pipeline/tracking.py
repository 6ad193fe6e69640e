"""Where a run's per-step metrics go: metrics.jsonl, TensorBoard and, when configured, Weights & Biases.

W&B runs with ``dir=run_dir``: an offline run lands in RUN_DIR/wandb/offline-run-*, and uploads later with
``wandb sync RUN_DIR/wandb/offline-run-*``. The wandb package is an extra: ``pip install -e '.[wandb]'``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

WANDB_MODES = ("online", "offline", "disabled")


@dataclass
class WandbSettings:
    project: str
    mode: str = "offline"  # offline needs no account or network; `wandb sync` uploads the run later
    entity: str | None = None
    group: str | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in WANDB_MODES:
            raise ValueError(f"wandb mode={self.mode!r} is invalid: use one of {', '.join(WANDB_MODES)}")


class RunLogger:
    """Each learner step's metrics to metrics.jsonl (one flushed line), TensorBoard (numbers only) and W&B."""

    def __init__(self, run_dir: Path, config: dict, wandb: WandbSettings | None = None) -> None:
        run_dir = Path(run_dir)
        # W&B first: if it cannot start, nothing has been opened.
        self.wandb_run = start_wandb(run_dir, config, wandb) if wandb is not None and wandb.mode != "disabled" else None
        self.metrics_file = open(run_dir / "metrics.jsonl", "w")
        self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def log(self, step: int, metrics: dict) -> None:
        self.metrics_file.write(json.dumps({**metrics, "step": step}) + "\n")
        self.metrics_file.flush()  # a report of a running (or crashed) run reads every finished step
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.writer.add_scalar(key, value, step)
        if self.wandb_run is not None:
            self.wandb_run.log(metrics, step=step)

    def log_summary(self, summary: dict) -> None:
        """The run's end-of-run numbers as the W&B run summary (metrics.jsonl and TensorBoard keep per-step values only)."""
        if self.wandb_run is not None:
            # Through JSON: W&B's summary takes string keys only (summary.json has int keys, e.g. policy versions).
            self.wandb_run.summary.update(json.loads(json.dumps(summary)))

    def close(self) -> None:
        self.metrics_file.close()
        self.writer.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()


def start_wandb(run_dir: Path, config: dict, settings: WandbSettings):
    try:
        import wandb
    except ImportError:
        raise ImportError(
            f"W&B logging is on (mode {settings.mode!r}) but the wandb package is not installed: pip install -e '.[wandb]' (or set the W&B mode to 'disabled')"
        ) from None
    return wandb.init(
        project=settings.project,
        entity=settings.entity,
        group=settings.group,
        name=settings.name,
        mode=settings.mode,
        dir=run_dir,
        config=config,
    )

"""What a person watching a training job sees: a progress bar, one line per step, and W&B
(online, offline or disabled by logging.wandb_mode; run ids and groups from learners.wandb_run).

The step line goes through the `thyme.train` logger when logging is configured (Hydra configures it:
the console and <run dir>/train.log both get it, as does a `ray job`'s log), else straight to stdout.
The progress bar is drawn only on a terminal: in a log file it would be a wall of carriage returns.
"""
from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from learners import wandb_run

log = logging.getLogger("thyme.train")


def step_metrics(per_rank: list[dict], samples: int) -> dict:
    """Combine the learners' figures for one optimizer step into the numbers that are logged."""
    nll = sum(m["nll_sum"] for m in per_rank)
    trained = sum(m["trained_tokens"] for m in per_rank)
    tokens = sum(m["tokens"] for m in per_rank)
    padded = sum(m["padded_tokens"] for m in per_rank)
    seconds = max(m["seconds"] for m in per_rank)  # ranks run in parallel: the slowest sets the pace
    return {
        "loss": nll / trained if trained else math.nan,
        "lr": per_rank[0]["lr"],
        "grad_norm": per_rank[0]["grad_norm"],
        "tokens_per_s": tokens / seconds if seconds else math.nan,
        "samples_per_s": samples / seconds if seconds else math.nan,
        "masked_share": 1 - trained / tokens if tokens else math.nan,
        "padding_waste": 1 - tokens / padded if padded else math.nan,
        "trained_tokens": trained,
        "step_seconds": seconds,
    }


def emit(line: str) -> None:
    """One line for the console and the log files, kept clear of a progress bar on a terminal."""
    if logging.getLogger().handlers:
        log.info(line)
    else:
        tqdm.write(line)
        sys.stdout.flush()  # a job's log file must show the step now, not when a buffer fills


class TrainLogger:
    def __init__(self, mode: str, project: str, run_name: str | None, stage: str, total_steps: int,
                 start_step: int, config: dict, wandb_dir: str, run_id: str | None = None,
                 group: str | None = None, job_type: str = "train"):
        self.stage = stage
        self.run = wandb_run.init_run(mode, project, run_id=run_id, group=group or run_name,
                                      name=wandb_run.run_name(stage, run_name), job_type=job_type,
                                      folder=Path(wandb_dir), config=config)
        on_terminal = _on_terminal()
        self.bar = tqdm(total=total_steps, initial=start_step, desc=f"{stage}", unit="step", dynamic_ncols=True,
                        disable=not on_terminal)
        # On a terminal, log lines go through tqdm.write so they print above the bar instead of through it.
        self._redirect = logging_redirect_tqdm() if on_terminal else None
        if self._redirect is not None:
            self._redirect.__enter__()

    def log_step(self, step: int, metrics: dict, print_line: bool = True) -> None:
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}")
        if print_line:
            emit(f"[{self.stage}] step {step:>6} | loss {metrics['loss']:.4f} | lr {metrics['lr']:.3e} | "
                 f"grad {metrics['grad_norm']:.3f} | {metrics['tokens_per_s']:.0f} tok/s | "
                 f"masked {metrics['masked_share']:.1%} | pad {metrics['padding_waste']:.1%} | "
                 f"{metrics['step_seconds']:.2f} s")
        if self.run is not None:
            self.run.log({f"{self.stage}/{k}": v for k, v in metrics.items()}, step=step)

    def log_summary(self, values: dict) -> None:
        if self.run is not None:
            self.run.summary.update({f"{self.stage}/{k}": v for k, v in values.items()})

    def close(self) -> None:
        if self._redirect is not None:
            self._redirect.__exit__(None, None, None)
        self.bar.close()
        if self.run is not None:
            self.run.finish()


def _on_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False

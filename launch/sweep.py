"""Hydra multirun: every job in its own folder, and a table of settings -> final metrics at the end.

    python -m launch.train -m stage.lr=1e-4,2e-4 seed=0,1

Jobs go to <output_dir>/sweep-<time>/job<N>/ (conf/config.yaml: hydra.sweep): each job's output_dir
is its own folder, so no job resumes another's checkpoints, each stage is its own W&B run and each
job its own W&B group. A job that fails is recorded (job_error.txt) and the sweep goes on; when all
jobs are done, SweepSummary (a Hydra callback) prints the table, writes it to
sweep_summary.md / sweep_summary.json in the sweep folder, and exits 1 if any job failed.
"""
from __future__ import annotations

import json
import logging
import traceback
from pathlib import Path

from hydra.experimental.callback import Callback

log = logging.getLogger("launch.sweep")
ERROR_FILE = "job_error.txt"
RESULT_FILE = "train_result.json"


def multirun_job_dir() -> str | None:
    """This job's own folder when running as a multirun job, else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    return hydra_cfg.runtime.output_dir if hydra_cfg.mode == RunMode.MULTIRUN else None


def with_output_dir(overrides: list[str], output_dir: str) -> list[str]:
    """The overrides with output_dir replaced (every stage of a pipeline is composed from them again)."""
    return [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != "output_dir"] + [f"output_dir={output_dir}"]


def record_failure(job_dir: str, exc: BaseException) -> None:
    """Keep a failed job's error in its folder so the summary (and a person) can see why."""
    from learners.train_config import ConfigError

    text = str(exc) if isinstance(exc, ConfigError) else "".join(traceback.format_exception(exc))
    Path(job_dir).mkdir(parents=True, exist_ok=True)
    (Path(job_dir) / ERROR_FILE).write_text(text)
    log.error("job failed: %s", text if isinstance(exc, ConfigError) else f"{type(exc).__name__}: {exc}")


def _job_settings(job_dir: Path) -> dict[str, str]:
    from omegaconf import OmegaConf

    path = job_dir / ".hydra" / "overrides.yaml"
    items = OmegaConf.to_container(OmegaConf.load(path)) if path.is_file() else []
    return dict(item.split("=", 1) for item in items if "=" in item and not item.startswith("output_dir="))


def collect(sweep_dir: Path) -> list[dict]:
    """One row per job folder: its number, settings, per-stage results or its error."""
    rows = []
    jobs = [d for d in Path(sweep_dir).iterdir() if d.is_dir() and d.name.startswith("job") and d.name[3:].isdigit()]
    for job in sorted(jobs, key=lambda d: int(d.name[3:])):
        row = {"job": job.name, "dir": str(job), "settings": _job_settings(job), "stages": [], "error": None}
        if (job / RESULT_FILE).is_file():
            row["stages"] = json.loads((job / RESULT_FILE).read_text())
        else:
            error = (job / ERROR_FILE).read_text().strip().splitlines() if (job / ERROR_FILE).is_file() else ["no result"]
            row["error"] = error[-1][:160] if error else "failed"
        rows.append(row)
    return rows


def _metrics(stage: dict) -> dict[str, object]:
    name = stage["stage"]
    out = {f"{name} steps": stage.get("steps"), f"{name} final loss": stage.get("last_loss")}
    out.update({f"{name} {k}": v for k, v in stage.items() if k.startswith("final_")})
    return out


def format_table(rows: list[dict]) -> str:
    """Markdown: one row per job, the settings that vary across jobs, then each stage's final figures."""
    keys = sorted({k for r in rows for k in r["settings"]})
    varying = [k for k in keys if len({r["settings"].get(k) for r in rows}) > 1] or keys
    metrics = [_metrics(s) for r in rows for s in r["stages"]]
    columns = list(dict.fromkeys(k for m in metrics for k in m))
    head = ["job", *varying, *columns, "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        figures = {k: v for s in r["stages"] for k, v in _metrics(s).items()}
        cells = [r["job"], *(r["settings"].get(k, "") for k in varying),
                 *(_cell(figures.get(c)) for c in columns), "ok" if r["error"] is None else f"failed: {r['error']}"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


class SweepSummary(Callback):
    """Hydra callback (conf/config.yaml hydra.callbacks): the sweep's table once every job has run."""

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        rows = collect(sweep_dir)
        table = format_table(rows)
        (sweep_dir / "sweep_summary.md").write_text(table + "\n")
        (sweep_dir / "sweep_summary.json").write_text(json.dumps(rows, indent=1))
        failed = [r["job"] for r in rows if r["error"] is not None]
        print(f"\nsweep of {len(rows)} job(s) in {sweep_dir}:\n{table}\n(also in {sweep_dir / 'sweep_summary.md'})",
              flush=True)
        if failed:
            raise SystemExit(f"{len(failed)} of {len(rows)} sweep job(s) failed: {', '.join(failed)}; "
                             f"see {ERROR_FILE} in their folders")

"""How a training stage or an eval becomes a W&B run: its id, group, name, folder and quiet settings.

- id: the stage folder's (learners.run_identity): a resumed stage continues its run; a fresh start
  in the same folder gets a new one;
- group: the pipeline, i.e. `logging.run_name`, else the run's output folder (a sweep job's folder is
  `<sweep>/jobN`, so every job is its own group and every stage its own run in it);
- name: the stage (`sft`, `sft_math`, `grpo`, `eval-...`), prefixed by `logging.run_name` when set;
- files: under the stage folder (offline runs are synced later with `wandb sync`), never under $HOME;
- quiet: no end-of-run summary block in log files, no git warning outside a git checkout.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE = REPO_ROOT / ".cache"


def keep_files_out_of_home() -> None:
    """Point W&B's and DeepSpeed's default folders (all under $HOME) into the repo's .cache, unless set."""
    for key, sub in (("WANDB_CACHE_DIR", "wandb/cache"), ("WANDB_CONFIG_DIR", "wandb/config"),
                     ("WANDB_DATA_DIR", "wandb/data"), ("TORCH_EXTENSIONS_DIR", "torch_extensions")):
        os.environ.setdefault(key, str(CACHE / sub))


def pipeline_group(output_dir: str, run_name: str | None) -> str:
    """The W&B group of every stage of one pipeline run (and of the evals of its checkpoints)."""
    if run_name:
        return run_name
    parts = Path(output_dir).resolve().parts
    return "/".join(parts[-2:]) if len(parts) >= 2 else str(output_dir)


def run_name(stage: str, prefix: str | None) -> str:
    return f"{prefix}-{stage}" if prefix else stage


def settings():
    import wandb

    git = {"git_root": str(REPO_ROOT)} if (REPO_ROOT / ".git").exists() else {"disable_git": True}
    return wandb.Settings(quiet=True, **git)


def init_run(mode: str, project: str, *, run_id: str | None, group: str | None, name: str, job_type: str,
             folder: Path, config: dict):
    """wandb.init for one stage or eval; None when W&B is disabled."""
    if mode == "disabled":
        return None
    import wandb

    keep_files_out_of_home()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return wandb.init(project=project, id=run_id, resume="allow" if run_id else None, name=name, group=group,
                      job_type=job_type, mode=mode, config=config, dir=str(folder), settings=settings(),
                      reinit="finish_previous")


def training_group_of(model_dir: str | Path) -> str | None:
    """The pipeline group of a checkpoint folder written by launch.train (…/<stage>/checkpoints/step_N/hf)."""
    path = Path(model_dir).resolve()
    for stage_dir in list(path.parents)[:4]:
        record = stage_dir / "run_config.json"
        if record.is_file():
            try:
                config = json.loads(record.read_text()).get("config", {})
            except (OSError, json.JSONDecodeError):
                return None
            # The stage folder's parent is the run's output_dir, resolved as the trainer resolved it.
            return pipeline_group(str(stage_dir.parent), (config.get("logging") or {}).get("run_name"))
    return None

"""What a stage folder was trained with, and the refusal to resume it with anything that changes training.

`<output_dir>/<stage>/run_config.json` holds the full resolved config of the run that started the
stage (every Hydra group, not only the trainer's), the command line, a fingerprint of the encoded
data and the W&B run id. A later run over the same folder that would resume from its checkpoints is
compared setting by setting before anything slow starts; any difference outside OPERATIONAL
(logging, checkpoint cadence, where Ray runs, cache folders) is refused with every differing setting
named: a resumed stage must be the same training run, or a sweep job would report another job's
loss as its own. Both trainers (SFT, GRPO) call `check_resume` before Ray and `begin` when they start.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from learners.checkpoint_io import latest_checkpoint
from learners.train_config import ConfigError

RECORD_FILE = "run_config.json"

# Settings that do not change what is trained: how it is watched, stored and placed. A setting is
# named by its dotted path; a section name covers all of it.
OPERATIONAL = (
    "output_dir", "pipeline", "logging", "hydra",
    "checkpoint.every_steps", "checkpoint.keep_last", "checkpoint.resume",
    "cluster.address", "cluster.num_cpus", "cluster.num_gpus", "cluster.cpus_per_learner", "cluster.placement_strategy",
    "model.tiny_dir", "data.generate_dir",  # build caches; the data fingerprint catches different contents
    "eval",
)
# Sections a trainer does not read at all: SFT does not run rollouts or the judge, and the sandbox
# only made its data (which the fingerprint covers); GRPO does not read the SFT data settings.
UNUSED_BY_SFT = ("rollout", "judge", "sandbox", "reward", "data.rl_path", "data.rl_generate_per_category",
                 "data.rl_generate_seed", "data.rl_categories", "data.rl_generate_dir")
UNUSED_BY_GRPO = ("data.sft_path", "data.math_path", "data.generate_per_category", "data.generate_seed",
                  "data.math_categories", "data.group_window", "data.rl_generate_dir")


def unused_sections(trainer: str) -> tuple[str, ...]:
    """The settings a trainer (stage.trainer: sft | grpo) does not read, so changing them is no new run."""
    return UNUSED_BY_GRPO if trainer == "grpo" else UNUSED_BY_SFT


@dataclass
class RunRecord:
    stage_dir: Path
    config: dict
    wandb_run_id: str
    generation: int  # 0 for the first fresh start in this folder, +1 for every later fresh start


def flatten(values, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay whole (a list is one setting)."""
    if isinstance(values, dict) and values:
        out = {}
        for key, value in values.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: values}


def _covered(key: str, names) -> bool:
    return any(key == n or key.startswith(n + ".") for n in names)


def differences(recorded: dict, current: dict, ignore=()) -> list[tuple[str, object, object]]:
    """(setting, recorded value, current value) for every training setting that differs, sorted."""
    old, new = flatten(recorded), flatten(current)
    skip = tuple(OPERATIONAL) + tuple(ignore)
    missing = object()
    found = []
    for key in sorted(set(old) | set(new)):
        if _covered(key, skip):
            continue
        a, b = old.get(key, missing), new.get(key, missing)
        if a != b:
            found.append((key, "(unset)" if a is missing else a, "(unset)" if b is missing else b))
    return found


def data_fingerprint(examples: list[dict]) -> str:
    """A short hash of the encoded training data (token ids and labels of every sample, in order)."""
    from array import array

    digest = hashlib.blake2b(digest_size=12)
    for example in examples:
        for key in ("input_ids", "labels"):
            ids = example.get(key, ())
            digest.update(array("q", ids.tolist() if hasattr(ids, "tolist") else ids).tobytes())
            digest.update(b"|")
    return digest.hexdigest()


def prompts_fingerprint(prompts: list[dict]) -> str:
    """A short hash of a GRPO stage's prompts (every field, in order)."""
    digest = hashlib.blake2b(digest_size=12)
    for prompt in prompts:
        digest.update(json.dumps(prompt, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def read_record(stage_dir: Path) -> dict | None:
    path = Path(stage_dir) / RECORD_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path} cannot be read ({exc}); it records what this stage was trained with. "
                          "Restore it, use another output_dir, or set checkpoint.resume=false to start afresh") from exc


def will_resume(stage_dir: Path, resume: bool) -> bool:
    return bool(resume) and latest_checkpoint(Path(stage_dir) / "checkpoints") is not None


def _show(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 80 else text[:77] + "..."


def check_resume(stage_dir: Path, config: dict, resume: bool, ignore=(), fingerprint: str | None = None) -> None:
    """Refuse (ConfigError) to resume STAGE_DIR's checkpoints with settings that change training.

    Called twice: before anything slow with the config only, and once the data is encoded with its
    fingerprint too. Nothing to compare (a fresh folder, resume off, no checkpoint yet) passes.
    """
    if not will_resume(stage_dir, resume):
        return
    record = read_record(stage_dir)
    if record is None:  # folders written before records existed: the trainer's own state checks remain
        return
    diffs = differences(record.get("config", {}), config, ignore)
    if fingerprint is not None and record.get("data_fingerprint") not in (None, fingerprint):
        diffs.append(("(training data)", record["data_fingerprint"], fingerprint))
    if diffs:
        lines = "\n".join(f"  {key}: {_show(a)} (recorded) -> {_show(b)} (this run)" for key, a, b in diffs)
        raise ConfigError(
            f"{stage_dir} holds checkpoints of a run with other training settings; resuming would continue that "
            f"run under a different configuration and report its results as this one's. Settings that differ:\n"
            f"{lines}\nUse another output_dir for this run (a Hydra sweep gives every job its own), put the "
            f"settings back, or set checkpoint.resume=false to train this stage afresh in {stage_dir} "
            f"(its checkpoints are replaced).")


def wandb_run_id(stage_dir: Path, stage: str, generation: int) -> str:
    """The W&B run id of a stage folder: the same on every resume, a new one for every fresh start."""
    folder = hashlib.sha1(str(Path(stage_dir).resolve()).encode()).hexdigest()[:10]
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in stage)
    return f"{safe}-{folder}-{generation}"


def begin(stage_dir: Path, stage: str, config: dict, resume: bool, fingerprint: str | None = None) -> RunRecord:
    """Record the run as the stage starts: kept as it is when resuming, written anew for a fresh start."""
    stage_dir = Path(stage_dir)
    previous = read_record(stage_dir)
    if will_resume(stage_dir, resume) and previous is not None:
        return RunRecord(stage_dir, previous["config"], previous["wandb_run_id"], previous.get("generation", 0))
    generation = previous.get("generation", 0) + 1 if previous is not None else 0
    record = {
        "stage": stage, "generation": generation, "wandb_run_id": wandb_run_id(stage_dir, stage, generation),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": [sys.executable, *sys.argv],
        "data_fingerprint": fingerprint, "config": config,
    }
    stage_dir.mkdir(parents=True, exist_ok=True)
    tmp = stage_dir / (RECORD_FILE + ".tmp")
    tmp.write_text(json.dumps(record, indent=1, default=str))
    os.replace(tmp, stage_dir / RECORD_FILE)  # atomic: a crash leaves the old record or the new one
    return RunRecord(stage_dir, config, record["wandb_run_id"], generation)

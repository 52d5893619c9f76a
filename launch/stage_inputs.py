"""What each stage of `launch.train` trains on, made ready before Ray starts.

The model (the tiny one is built on the fly when model.path is null), and per stage: SFT rows
encoded into examples (learners/sft_data.py), or RL prompts (learners/rl_data.py) for GRPO. Task
sets are generated with `python -m envs.tasks` when no data path is given. `prepare_stage` returns
a StageInputs whose `trainer(config, model_path)` builds the stage's trainer once the previous
stage's output is known.
"""
from __future__ import annotations

import logging
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig, OmegaConf

from learners.train_config import ConfigError, TrainConfig, validate_data_size

log = logging.getLogger("launch.train")
REPO_ROOT = Path(__file__).resolve().parents[1]
SFT_FILE = "sft.jsonl"
RL_FILE = "rl.jsonl"


@dataclass
class StageInputs:
    summary: str
    trainer: Callable  # (config, model_path) -> a trainer with .run()

    def describe(self) -> str:
        return self.summary


def _generate(out: Path, category: str, n: int, seed: int, trajectories: bool, extra: tuple[str, ...] = ()) -> None:
    cmd = [sys.executable, "-m", "envs.tasks", "generate", "--category", category, "--n", str(n),
           "--seed", str(seed), "--split", "train", "--out", str(out)] + (["--trajectories"] if trajectories else [])
    cmd += list(extra)
    done = subprocess.run(cmd, cwd=REPO_ROOT)
    wanted = out / (SFT_FILE if trajectories else RL_FILE)
    if done.returncode != 0 or not wanted.is_file():
        raise RuntimeError(f"generating the task set failed ({' '.join(cmd)} exited {done.returncode}); "
                           "run it by hand to see why, or set a data path to existing rows")


# ---- model and SFT data ---------------------------------------------------------------------------
def ensure_model(config: TrainConfig) -> str:
    if config.model.path:
        return config.model.path
    from policy.tiny_model import TinyModelConfig, built_config, make_tiny_model

    target = Path(config.model.tiny_dir)
    wanted = TinyModelConfig(tag_tokens=config.model.tiny_tag_tokens,
                             copy_pretrain_steps=config.model.tiny_copy_pretrain_steps)
    if not (target / "config.json").is_file():
        log.info("model.path is unset: building the tiny Qwen2.5-VL into %s", target)
        make_tiny_model(target, cfg=wanted)
    elif (built_config(target) or TinyModelConfig()) != wanted:
        raise ConfigError(f"model.tiny_dir={target} holds a tiny model built with other settings than "
                          f"model.tiny_tag_tokens={config.model.tiny_tag_tokens} "
                          f"model.tiny_copy_pretrain_steps={config.model.tiny_copy_pretrain_steps}: delete that "
                          "folder or set another model.tiny_dir")
    return str(target)


PROMPT_FILE = "prompt.yaml"


def ensure_generated_data(config: TrainConfig, prompt_cfg: dict | None = None) -> Path:
    """The generated task set's SFT rows (generate_dir/sft.jsonl), made once with envs.tasks. The rows'
    user turns are written with the run's prompt (kept beside them in prompt.yaml), so SFT sees the text
    rollouts and eval will show; a folder made with another prompt is refused rather than reused."""
    d = config.data
    out = Path(d.generate_dir)
    wanted = {k: prompt_cfg[k] for k in ("system", "user_template") if prompt_cfg and k in prompt_cfg}
    if (out / SFT_FILE).is_file():
        stored = out / PROMPT_FILE
        if wanted and stored.is_file() and OmegaConf.to_container(OmegaConf.load(stored)) != wanted:
            raise ConfigError(f"data.generate_dir={out} holds rows written with another prompt ({stored}): delete "
                              "that folder or set another data.generate_dir")
        return out / SFT_FILE
    n = d.generate_per_category * 6
    log.info("data paths unset: generating %d tasks with expert trajectories into %s", n, out)
    extra: tuple[str, ...] = ()
    if len(wanted) == 2:
        out.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(wanted), out / PROMPT_FILE)
        extra = ("--prompt", str(out / PROMPT_FILE))
        if "{image_path}" not in wanted["user_template"]:  # code cannot copy a path the prompt never shows
            extra += ("--set", "literal_path_share=0")
    _generate(out, "all", n, d.generate_seed, trajectories=True, extra=extra)
    return out / SFT_FILE


def stage_rows(config: TrainConfig, prompt_cfg: dict | None = None):
    """The SFT rows of this stage and where they came from (see conf/data/generated.yaml)."""
    from envs.data import load_sft_rows

    d, math = config.data, config.stage.data == "math"
    if math and d.math_path:
        rows, _counts = load_sft_rows(d.math_path)
        return rows, d.math_path
    source = d.sft_path or str(ensure_generated_data(config, prompt_cfg))
    rows, _counts = load_sft_rows(source)
    wanted = [r for r in rows if (r.category in d.math_categories) == math]
    return wanted, f"{source} ({'only' if math else 'without'} categories {d.math_categories})"


def encode_stage(config: TrainConfig, model_path: str, prompt_cfg: dict):
    from learners.batching import LengthFilter
    from learners.sft_data import encode_rows
    from learners.sft_masking import MaskRules
    from policy.multimodal import PolicyProcessor

    processor = PolicyProcessor.from_pretrained(model_path, max_pixels=config.model.max_pixels)
    rows, source = stage_rows(config, prompt_cfg)
    rules = MaskRules(last_round_only=config.stage.train_rounds == "last")
    length_filter = LengthFilter(config.data.max_seq_len, config.data.overlong, processor.image_pad_id)
    examples, report = encode_rows(rows, processor, prompt_cfg.get("system"), rules, length_filter,
                                   desc=f"encoding {config.stage.name} rows")
    log.info("%s data from %s: %s", config.stage.name, source, report.summary())
    if not examples:  # a file of another kind (a task manifest, RL rows) is named as such, with what to use
        from launch.input_checks import unrecognised_rows

        given = config.data.math_path if config.stage.data == "math" and config.data.math_path else config.data.sft_path
        kind = unrecognised_rows(given) if given else None
        if kind:
            raise ConfigError(f"{'data.math_path' if given == config.data.math_path else 'data.sft_path'}={given}: {kind}")
    validate_data_size(config, len(examples), source)
    pad_id = processor.tokenizer.pad_token_id
    if pad_id is None:
        pad_id = processor.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    return examples, pad_id, processor.image_pad_id


# ---- GRPO prompts ---------------------------------------------------------------------------------
def ensure_rl_data(config: TrainConfig) -> list[Path]:
    """The generated RL task set's rows (rl_generate_dir[/<category>]/rl.jsonl), made once with envs.tasks."""
    d = config.data
    out = Path(d.rl_generate_dir)
    categories = d.rl_categories or ["all"]
    files = []
    for category in categories:
        folder = out if categories == ["all"] else out / category
        if not (folder / RL_FILE).is_file():
            n = d.rl_generate_per_category * (6 if category == "all" else 1)
            log.info("data.rl_path unset: generating %d %s RL tasks into %s", n, category, folder)
            _generate(folder, category, n, d.rl_generate_seed, trajectories=False)
        files.append(folder / RL_FILE)
    return files


def rl_prompts(config: TrainConfig) -> tuple[list[dict], str]:
    from learners.rl_data import load_rl_prompts

    sources = [Path(config.data.rl_path)] if config.data.rl_path else ensure_rl_data(config)
    prompts, notes = [], []
    for source in sources:
        found, counts = load_rl_prompts(source, config.stage_dir / "rl_images")
        prompts += found
        notes.append(counts.summary())
    return prompts, "; ".join(notes)


def _section(stage_cfg: DictConfig, key: str) -> dict:
    node = stage_cfg.get(key)
    return OmegaConf.to_container(node, resolve=True) if node is not None else {}


def prepare_stage(config: TrainConfig, stage_cfg: DictConfig, base_model: str) -> StageInputs:
    """Everything a stage needs before Ray starts; bad data is refused here with what to change."""
    if config.stage.trainer == "grpo":
        from learners.grpo_trainer import GRPOTrainer
        from policy.agent_config import RolloutConfig

        prompts, note = rl_prompts(config)
        rollout = _section(stage_cfg, "rollout")
        training_sampling = {**(rollout.get("sampling") or {}), **((config.stage.grpo or {}).get("sampling") or {})}
        try:  # fail on a bad rollout setting now, not inside an actor
            RolloutConfig(**{**rollout, "sampling": training_sampling})
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"rollout (with stage.grpo.sampling): {exc}") from exc
        if rollout.get("engine", "hf") == "hf" and config.cluster.gpus_per_engine > 1:
            raise ConfigError(f"cluster.gpus_per_engine={config.cluster.gpus_per_engine} with rollout.engine=hf: the HF "
                              "engine runs on one GPU; set cluster.gpus_per_engine=1, or rollout.engine=vllm for "
                              "tensor parallel")
        log.info("%s prompts: %s", config.stage.name, note)
        sections = {k: _section(stage_cfg, k) for k in ("sandbox", "reward", "judge", "prompt")}
        return StageInputs(f"{len(prompts)} RL prompts", lambda cfg, path: GRPOTrainer(
            cfg, path, prompts, rollout=rollout, sandbox=sections["sandbox"], reward=sections["reward"] or None,
            judge=sections["judge"] or None, prompt=sections["prompt"] or None))
    from learners.sft_trainer import SFTTrainer

    examples, pad_id, image_pad_id = encode_stage(config, base_model, _section(stage_cfg, "prompt"))
    return StageInputs(f"{len(examples)} samples",
                       lambda cfg, path: SFTTrainer(cfg, path, examples, pad_id, image_pad_id))

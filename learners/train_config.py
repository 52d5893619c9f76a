"""Typed configuration for `launch.train` (the Hydra YAML under conf/ is turned into these dataclasses)
and the checks that run before Ray starts. Every error says which setting to change."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the setting and what to change."""


@dataclass
class ModelConfig:
    path: str | None = None  # HF folder (tiny or real Qwen2.5-VL); None builds the tiny model on the fly
    tiny_dir: str = "outputs/tiny_model"  # where the on-the-fly tiny model is built (reused if present)
    tiny_tag_tokens: bool = False  # the tiny model's tokenizer makes each Thyme tag one token (the demo's)
    tiny_copy_pretrain_steps: int = 0  # steps of copy pre-training of the tiny model (policy/tiny_pretrain.py)
    freeze_vision: bool = False  # keep the vision tower's weights fixed
    gradient_checkpointing: bool = False
    max_pixels: int | None = None  # cap an image's pixels before the vision tower (None: processor default)


@dataclass
class DataConfig:
    sft_path: str | None = None  # SFT rows (JSONL/Parquet file or folder) for the image stage
    math_path: str | None = None  # computation rows for the annealing stage
    generate_dir: str = "outputs/sft_data"  # where the small task set is generated when a path is None
    generate_per_category: int = 6  # tasks per category for the on-the-fly set
    generate_seed: int = 0
    math_categories: list[str] = field(default_factory=lambda: ["computation"])  # generated rows -> math stage
    max_seq_len: int = 2048
    overlong: str = "truncate"  # truncate | skip
    group_window: int = 8  # global batches sorted together by length (1 = no grouping across batches)
    rl_path: str | None = None  # RL rows (released Thyme RL format or envs.tasks' rl.jsonl) for GRPO stages
    rl_generate_dir: str = "outputs/rl_data"  # where RL tasks are generated when rl_path is None
    rl_generate_per_category: int = 8
    rl_generate_seed: int = 1
    rl_categories: list[str] | None = None  # generated RL tasks: these categories (None: all)


@dataclass
class StageConfig:
    name: str = "sft"
    data: str = "sft"  # which data: sft (image) | math (computation)
    train_rounds: str = "last"  # last: 2+ round samples learn only the final round | all
    init_from: str = "model"  # model: model.path | previous: the previous pipeline stage's output
    lr: float = 1e-5
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio
    warmup_ratio: float = 0.05
    epochs: int = 3
    max_steps: int | None = None  # stop earlier than the epochs would
    global_batch: int = 128
    micro_batch: int = 1
    weight_decay: float = 0.0
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    adam_eps: float = 1e-8
    grad_clip: float = 1.0
    zero_stage: int = 2
    precision: str = "auto"  # auto: bf16 on GPU, fp32 on CPU | bf16 | fp32
    loss: str = "sft"  # a name in learners.losses.LOSSES
    trainer: str = "sft"  # sft (learners/sft_trainer.py) | grpo (learners/grpo_trainer.py)
    grpo: dict | None = None  # GRPO stages: learners.grpo_config.GRPOSettings fields


@dataclass
class ClusterConfig:
    address: str | None = None  # None: a local Ray (or the cluster of a `ray job`); "auto" / "ray://host:port": join one
    num_learners: int | None = 1  # None: sized from the machine / joined cluster (one per GPU; 1 without GPUs)
    gpus_per_learner: int | None = 0  # 0: CPU learners (gloo); 1: one GPU each (nccl); None: 1 if there are GPUs
    cpus_per_learner: int = 1
    num_cpus: int | None = None  # local Ray only: logical CPUs (None: detect)
    num_gpus: int | None = None  # local Ray only: GPUs (None: detect)
    placement_strategy: str = "PACK"
    # GRPO stages place these too (learners/grpo_config.py checks the plan fits before Ray starts).
    rl_num_learners: int | None = None  # learners of GRPO stages, when they must leave GPUs to engines (None: num_learners)
    rollout_engines: int = 1  # RolloutActors, each with its own engine (HF or vLLM)
    gpus_per_engine: int = 0  # GPUs per engine (vLLM: its tensor-parallel size)
    cpus_per_engine: int = 1
    reference: str = "colocated"  # where the KL's reference policy lives: colocated (on the learners) | separate
    reference_workers: int = 1  # separate: reference ranks, each on its own bundle
    gpus_per_reference: int = 0
    cpus_per_reference: int = 1
    sandbox_actors: int = 1  # SandboxActors (each a warm sandbox serving many episodes)
    cpus_per_sandbox: int = 1
    reward_cpus: int = 1


@dataclass
class LoggingConfig:
    wandb_mode: str = "offline"  # online | offline | disabled
    project: str = "thyme-rl"
    run_name: str | None = None
    every_steps: int = 1  # console line + W&B point every N steps


@dataclass
class CheckpointConfig:
    every_steps: int = 0  # 0: only at the end of a stage
    keep_last: int = 2
    resume: bool = True  # continue from the newest complete checkpoint in the stage's folder


@dataclass
class TrainConfig:
    output_dir: str = "outputs/train"
    seed: int = 0
    pipeline: list[str] | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    stage: StageConfig = field(default_factory=StageConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    @property
    def stage_dir(self) -> Path:
        return Path(self.output_dir) / self.stage.name


def _build(cls, values: dict[str, Any], where: str):
    """A dataclass from a dict, refusing unknown keys (a typo must not be silently ignored)."""
    values = dict(values or {})
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        import difflib

        close = {k: difflib.get_close_matches(k, list(known), n=1, cutoff=0.5) for k in unknown}
        hints = "".join(f" did you mean {where + '.' if where else ''}{m[0]} for {k}?" for k, m in close.items() if m)
        raise ConfigError(f"unknown setting(s) {', '.join(where + '.' + k if where else k for k in unknown)};{hints} "
                          f"known: {', '.join(sorted(known))}")
    kwargs = {}
    for name, value in values.items():
        sub = _SECTIONS.get(name) if cls is TrainConfig else None
        kwargs[name] = _build(sub, value, name) if sub else value
    return cls(**kwargs)


_SECTIONS = {"model": ModelConfig, "data": DataConfig, "stage": StageConfig, "cluster": ClusterConfig,
             "logging": LoggingConfig, "checkpoint": CheckpointConfig}


def from_dict(values: dict[str, Any], check_paths: bool = True) -> TrainConfig:
    """TrainConfig from a plain dict (e.g. OmegaConf.to_container of the Hydra config), validated.

    Sections owned by other parts of the system (sandbox, judge, prompt, rollout, hydra) are ignored here.
    check_paths=False skips the checks of data and model paths (a job's paths live on the cluster).
    """
    mine = {k: v for k, v in values.items() if k in {f.name for f in fields(TrainConfig)}}
    config = _build(TrainConfig, mine, "")
    if config.stage.trainer == "grpo" and config.cluster.rl_num_learners is not None:
        config.cluster.num_learners = config.cluster.rl_num_learners
    validate(config, check_paths)
    return config


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def validate(config: TrainConfig, check_paths: bool = True) -> None:
    """Checks that need nothing but the config itself (cluster and data checks come separately)."""
    s, c, d = config.stage, config.cluster, config.data
    _check(c.num_learners is None or c.num_learners >= 1,
           f"cluster.num_learners={c.num_learners}: need at least 1 learner (or null: one per GPU of the cluster)")
    _check(s.micro_batch >= 1, f"stage.micro_batch={s.micro_batch}: need at least 1 sample per micro batch")
    _check(s.global_batch >= 1, f"stage.global_batch={s.global_batch}: need at least 1 sample per step")
    if c.num_learners is not None:  # null: checked once sized from the cluster (size_cluster)
        _check_batch_split(config)
    _check(s.lr > 0, f"stage.lr={s.lr}: the learning rate must be positive")
    _check(0 <= s.warmup_ratio < 1, f"stage.warmup_ratio={s.warmup_ratio}: must be in [0, 1)")
    _check(0 <= s.min_lr_ratio <= 1, f"stage.min_lr_ratio={s.min_lr_ratio}: must be in [0, 1]")
    _check(s.epochs >= 1, f"stage.epochs={s.epochs}: must be at least 1")
    _check(s.max_steps is None or s.max_steps >= 1, f"stage.max_steps={s.max_steps}: must be >= 1 or null")
    _check(s.zero_stage in (0, 1, 2, 3), f"stage.zero_stage={s.zero_stage}: DeepSpeed ZeRO stages are 0, 1, 2, 3")
    _check(s.precision in ("auto", "bf16", "fp32"), f"stage.precision={s.precision!r}: use auto, bf16 or fp32")
    _check(s.train_rounds in ("last", "all"), f"stage.train_rounds={s.train_rounds!r}: use last (image stage) or all (math annealing)")
    _check(s.data in ("sft", "math", "rl"), f"stage.data={s.data!r}: use sft (image data), math (computation data) "
           "or rl (RL prompts, GRPO stages)")
    _check(s.trainer in ("sft", "grpo"), f"stage.trainer={s.trainer!r}: use sft or grpo")
    if s.trainer == "grpo":
        from learners.grpo_config import grpo_settings, validate_rl_cluster

        _check(s.loss == "grpo" and s.data == "rl", f"a GRPO stage trains with stage.loss=grpo on stage.data=rl "
               f"(got loss={s.loss!r}, data={s.data!r})")
        if c.num_learners is not None:  # null: checked once sized from the cluster (size_cluster)
            grpo_settings(s.grpo, s.global_batch, s.micro_batch, c.num_learners)
        validate_rl_cluster(c)
    _check(s.init_from in ("model", "previous"), f"stage.init_from={s.init_from!r}: use model or previous")
    _check(len(s.adam_betas) == 2, f"stage.adam_betas={s.adam_betas}: need two numbers")
    from learners.losses import LOSSES  # late: keeps the config module free of torch at import
    _check(s.loss in LOSSES, f"stage.loss={s.loss!r}: known losses are {', '.join(sorted(LOSSES))}")
    _check(d.overlong in ("truncate", "skip"), f"data.overlong={d.overlong!r}: use truncate or skip")
    _check(config.model.tiny_copy_pretrain_steps >= 0,
           f"model.tiny_copy_pretrain_steps={config.model.tiny_copy_pretrain_steps}: must be >= 0 (0: no pre-training)")
    _check(d.max_seq_len >= 16, f"data.max_seq_len={d.max_seq_len}: too small to hold a prompt")
    _check((c.gpus_per_learner is None or c.gpus_per_learner >= 0) and c.cpus_per_learner >= 1,
           f"cluster.gpus_per_learner={c.gpus_per_learner}, cluster.cpus_per_learner={c.cpus_per_learner}: "
           "need >= 0 GPUs and >= 1 CPU per learner")
    _check(config.logging.wandb_mode in ("online", "offline", "disabled"),
           f"logging.wandb_mode={config.logging.wandb_mode!r}: use online, offline or disabled")
    _check(config.checkpoint.keep_last >= 1, f"checkpoint.keep_last={config.checkpoint.keep_last}: keep at least 1")
    if not check_paths:
        return
    for name, value in (("data.sft_path", d.sft_path), ("data.math_path", d.math_path), ("data.rl_path", d.rl_path)):
        if value is not None:
            _check(Path(value).exists(), f"{name}={value} does not exist; point it at an existing JSONL/Parquet "
                   f"file or folder of rows, or set {name}=null to build a small set on the fly")
            _check(Path(value).is_dir() or Path(value).suffix in (".jsonl", ".json", ".parquet"),
                   f"{name}={value} is a {Path(value).suffix or 'suffix-less'} file; training rows are .jsonl or "
                   ".parquet files (or a folder of them) in the released Thyme format")
    if config.model.path is not None:
        from policy.model_dir import model_dir_problem  # late: no torch/transformers needed for this check

        problem = model_dir_problem(config.model.path, "model.path")
        _check(problem is None, f"{problem} (or model.path=null to build the tiny model on the fly)")


def _check_batch_split(config: TrainConfig) -> None:
    s, c = config.stage, config.cluster
    per_pass = s.micro_batch * c.num_learners
    if s.global_batch < per_pass or s.global_batch % per_pass:
        lower = max(per_pass, s.global_batch // per_pass * per_pass)
        raise ConfigError(
            f"stage.global_batch={s.global_batch} is not a multiple of stage.micro_batch ({s.micro_batch}) x "
            f"cluster.num_learners ({c.num_learners}) = {per_pass}; set stage.global_batch to a multiple of "
            f"{per_pass} (e.g. {lower} or {lower + per_pass}) or change the micro batch / learner count")


def size_cluster(config: TrainConfig, available_gpus: int, available_cpus: int) -> None:
    """Fill in the learner count / GPUs per learner left null from what the machine or cluster has, then
    run the checks that needed them (validate). One learner per GPU, at most as many as split the
    global batch evenly; without GPUs, one CPU learner. Whether everything fits is the caller's check
    (validate_resources for SFT, the placement plan for GRPO)."""
    c, s = config.cluster, config.stage
    if c.gpus_per_learner is None:
        c.gpus_per_learner = 1 if available_gpus > 0 else 0
    if c.num_learners is None:
        if c.gpus_per_learner:
            most = available_gpus // c.gpus_per_learner
            fits = [n for n in range(most, 0, -1) if s.global_batch % (s.micro_batch * n) == 0]
            _check(bool(fits), f"cluster.num_learners=null sizes the learners from the cluster, which has "
                   f"{available_gpus} GPU(s): none for cluster.gpus_per_learner={c.gpus_per_learner}; set "
                   "cluster.gpus_per_learner=0 for CPU learners or join a cluster with GPUs")
            c.num_learners = fits[0]
        else:
            c.num_learners = 1
    validate(config)


def validate_resources(config: TrainConfig, available_gpus: int, available_cpus: int) -> None:
    """The learners fit the machine/cluster: refused with what to change otherwise."""
    c = config.cluster
    gpus = c.num_learners * c.gpus_per_learner
    if gpus > available_gpus:
        fit = available_gpus // max(1, c.gpus_per_learner)
        # Every suggestion must itself be a valid setting: never "lower cluster.num_learners to 0".
        other = (f"lower cluster.num_learners to {fit}, or " if fit >= 1 else "")
        raise ConfigError(
            f"asked for {gpus} GPU(s) (cluster.num_learners={c.num_learners} x cluster.gpus_per_learner="
            f"{c.gpus_per_learner}) but the cluster has {available_gpus}; {other}set cluster.gpus_per_learner=0 "
            "for CPU learners (cluster=local_cpu)")
    cpus = c.num_learners * c.cpus_per_learner
    if cpus > available_cpus:
        fit = available_cpus // c.cpus_per_learner
        other = f"lower cluster.num_learners to {fit} or " if fit >= 1 else ""
        raise ConfigError(
            f"asked for {cpus} CPU(s) (cluster.num_learners={c.num_learners} x cluster.cpus_per_learner="
            f"{c.cpus_per_learner}) but the cluster has {available_cpus}; {other}lower cluster.cpus_per_learner")


def validate_data_size(config: TrainConfig, num_samples: int, source: str) -> None:
    _check(num_samples >= config.stage.global_batch,
           f"{source} has {num_samples} usable sample(s), fewer than one global batch "
           f"(stage.global_batch={config.stage.global_batch}); lower stage.global_batch or add data")

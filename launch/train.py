"""Train the policy: `python -m launch.train [stage=NAME | pipeline=[A,B,...]] [overrides...]`.

SFT stages run learners/sft_trainer.py, GRPO stages learners/grpo_trainer.py (stage.trainer).
Order of work: compose and validate every stage's config (bad configs are refused here, before Ray
starts); check the actors fit the machine or cluster; build the tiny model / task sets on the fly
when no path is given; load and encode each stage's data (launch/stage_inputs.py); start Ray; run
the stages in order, each one starting from the previous one's final checkpoint when its
`init_from` says `previous`.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import asdict
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from launch.stage_inputs import REPO_ROOT, ensure_model, prepare_stage
from learners.train_config import ConfigError, TrainConfig, from_dict, validate_resources

log = logging.getLogger("launch.train")
CONF_DIR = REPO_ROOT / "conf"


# ---- configs ------------------------------------------------------------------------------------
def stage_overrides(overrides: list[str], stage: str) -> list[str]:
    """The command line's overrides with the stage replaced and the pipeline removed."""
    def key(o: str) -> str:
        return o.split("=", 1)[0].lstrip("+~")
    return [o for o in overrides if key(o) not in ("stage", "pipeline")] + [f"stage={stage}"]


def compose_stages(cfg: DictConfig, overrides: list[str]) -> list[DictConfig]:
    """One composed config per stage: the pipeline's stages, or just `cfg`. Needs Hydra initialised."""
    if not cfg.get("pipeline"):
        return [cfg]
    from hydra import compose

    return [compose(config_name="config", overrides=stage_overrides(overrides, name)) for name in cfg.pipeline]


def typed(cfg: DictConfig) -> TrainConfig:
    try:
        values = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except Exception as exc:  # a ??? left in a config group, e.g. model=qwen2_5_vl_7b without model.path
        raise ConfigError(f"{exc}; set it on the command line (e.g. model.path=/models/Qwen2.5-VL-7B-Instruct)") from exc
    return from_dict(values)


def check_pipeline(configs: list[TrainConfig]) -> None:
    names = [c.stage.name for c in configs]
    if len(set(names)) != len(names):
        raise ConfigError(f"pipeline stages must have distinct names (each gets its own folder), got {names}")


# ---- resources ----------------------------------------------------------------------------------
def available_resources(config: TrainConfig) -> tuple[int, int]:
    """(GPUs, CPUs) the learners can use: the running/joined Ray cluster's, else this machine's."""
    import ray

    if ray.is_initialized():
        res = ray.cluster_resources()
        return int(res.get("GPU", 0)), int(res.get("CPU", 0))
    c = config.cluster
    if c.address is not None:
        return 1 << 30, 1 << 30  # checked again against the cluster once joined (see start_ray)
    if c.num_gpus is not None:
        gpus = c.num_gpus
    else:
        import torch

        gpus = torch.cuda.device_count()
    return gpus, c.num_cpus or os.cpu_count() or 1


def check_fits(config: TrainConfig, stage_cfg: DictConfig, gpus: int, cpus: int) -> int:
    """Refuse a stage its cluster cannot hold; returns the logical CPUs it asks for."""
    if config.stage.trainer != "grpo":
        validate_resources(config, gpus, cpus)
        return config.cluster.num_learners * config.cluster.cpus_per_learner
    from learners.grpo_config import check_plan_fits, grpo_settings, rl_placement

    settings = grpo_settings(config.stage.grpo, config.stage.global_batch, config.stage.micro_batch,
                             config.cluster.num_learners)
    judge = OmegaConf.to_container(stage_cfg.get("judge") or {}, resolve=True)
    judge_gpus = int((judge.get("vllm") or {}).get("gpus", 0)) if judge.get("backend") == "vllm" else 0
    plan = rl_placement(config.cluster, settings.kl_beta, judge_gpus)
    # A local Ray is started with as many logical CPUs as the plan asks: only GPUs are real limits there.
    check_plan_fits(plan, gpus, cpus if config.cluster.address is not None else max(cpus, plan.cpus))
    return plan.cpus


def start_ray(config: TrainConfig, cpus_needed: int = 0) -> bool:
    """Start or join Ray unless it already runs (tests). Returns whether we started it."""
    import ray

    if ray.is_initialized():
        return False
    c = config.cluster
    env = {"PYTHONPATH": str(REPO_ROOT), "TORCH_EXTENSIONS_DIR": os.environ["TORCH_EXTENSIONS_DIR"]}
    if c.address is not None:
        ray.init(address=c.address, runtime_env={"env_vars": env})
        gpus, cpus = available_resources(config)
        validate_resources(config, gpus, cpus)
    else:
        gpus, cpus = available_resources(config)
        # Logical CPUs: at least one per actor plus the driver, even on a 2-core laptop.
        ray.init(num_cpus=max(cpus, cpus_needed + 1), num_gpus=gpus,
                 include_dashboard=False, runtime_env={"env_vars": env})
    return True


# ---- run ----------------------------------------------------------------------------------------
def run(stage_cfgs: list[DictConfig]) -> list:
    """Validate, prepare and train every stage; returns their StageResults."""
    configs = [typed(c) for c in stage_cfgs]
    check_pipeline(configs)
    cpus_needed = max(check_fits(c, s, *available_resources(c)) for c, s in zip(configs, stage_cfgs))
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO_ROOT / ".cache" / "torch_extensions"))
    base_model = ensure_model(configs[0])
    prepared = [prepare_stage(c, s, base_model) for c, s in zip(configs, stage_cfgs)]

    import ray

    started = start_ray(configs[0], cpus_needed)
    results = []
    try:
        for config, stage_cfg, inputs in zip(configs, stage_cfgs, prepared):
            model_path = results[-1].hf_dir if config.stage.init_from == "previous" and results else \
                (config.model.path or base_model)
            log.info("stage %s starts from %s (%s)", config.stage.name, model_path, inputs.describe())
            result = inputs.trainer(config, model_path).run()
            results.append(result)
            log.info("stage %s done: %d steps, %s %.4f -> %.4f, model at %s", result.stage, result.steps, result.metric,
                     result.first_loss or float("nan"), result.last_loss or float("nan"), result.hf_dir)
    finally:
        if started:
            ray.shutdown()
    out = Path(configs[0].output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_result.json").write_text(json.dumps([asdict(r) for r in results], indent=1))
    return results


@hydra.main(version_base=None, config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    try:
        results = run(compose_stages(cfg, list(HydraConfig.get().overrides.task)))
    except ConfigError as exc:
        log.error("configuration refused: %s", exc)
        sys.exit(2)
    for r in results:
        print(f"{r.stage}: {r.steps} steps, {r.metric} {r.first_loss:.4f} -> {r.last_loss:.4f}; model: {r.hf_dir}")


if __name__ == "__main__":
    main()

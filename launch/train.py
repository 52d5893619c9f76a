"""Train the policy: `python -m launch.train [stage=NAME | pipeline=[A,B,...]] [overrides...]`.

SFT stages run learners/sft_trainer.py, GRPO stages learners/grpo_trainer.py (stage.trainer).
Order of work: check the command line (typos get "did you mean"; every job of a sweep is validated
first); compose and validate every stage's config (bad configs are refused here, before Ray starts);
join the cluster when there is one (cluster.address, or a `ray job`'s RAY_ADDRESS) and size the
learners from it, else from this machine; check the actors fit; refuse to resume a stage folder with
other training settings (learners/run_identity.py); build the tiny model / task sets on the fly when
no path is given; load and encode each stage's data (launch/stage_inputs.py); start the local Ray
(127.0.0.1 only, launch/ray_session.py); run the stages in order, each one starting from the
previous one's final checkpoint when its `init_from` says `previous`.
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
from learners.train_config import ConfigError, TrainConfig, from_dict, size_cluster, validate_resources

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


def typed(cfg: DictConfig, check_paths: bool = True) -> TrainConfig:
    """The typed, validated config (check_paths=False: paths that live on a cluster, not here)."""
    try:
        values = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except Exception as exc:  # a ??? left in a config group, e.g. model=qwen2_5_vl_7b without model.path
        raise ConfigError(f"{exc}; set it on the command line (e.g. model.path=/models/Qwen2.5-VL-7B-Instruct)") from exc
    return from_dict(values, check_paths=check_paths)


def resolved_config(cfg: DictConfig) -> dict:
    """The whole composed config (every group) as plain values: what a stage folder records."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)


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
    if c.num_gpus is not None:
        gpus = c.num_gpus
    else:
        import torch

        gpus = torch.cuda.device_count()
    return gpus, c.num_cpus or os.cpu_count() or 1


def check_fits(config: TrainConfig, stage_cfg: DictConfig, gpus: int, cpus: int, joined: bool = False) -> int:
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
    check_plan_fits(plan, gpus, cpus if joined else max(cpus, plan.cpus))
    return plan.cpus


def check_cluster_paths(config: TrainConfig, address: str) -> None:
    """On a cluster every path is written by one node and read by others: it must be absolute and shared."""
    if not Path(config.output_dir).is_absolute():
        raise ConfigError(
            f"output_dir={config.output_dir} is relative, and this run joins the Ray cluster at {address}: a job's "
            "working directory is a temporary copy removed when the job ends, and learners on other nodes would "
            "write their checkpoints elsewhere. Set output_dir to an absolute path on a file system every node "
            "mounts, e.g. output_dir=/shared/thyme/run1")
    # Caches built on the fly (tiny model, generated task set) go beside the run when given relative.
    for section, key in ((config.model, "tiny_dir"), (config.data, "generate_dir")):
        if not Path(getattr(section, key)).is_absolute():
            setattr(section, key, str(Path(config.output_dir) / Path(getattr(section, key)).name))


# ---- run ----------------------------------------------------------------------------------------
def run(stage_cfgs: list[DictConfig]) -> list:
    """Validate, prepare and train every stage; returns their StageResults."""
    from launch.ray_session import RaySession
    from learners.run_identity import check_resume, unused_sections
    from learners.wandb_run import keep_files_out_of_home

    configs = [typed(c) for c in stage_cfgs]
    check_pipeline(configs)
    resolved = [resolved_config(c) for c in stage_cfgs]
    session = RaySession(configs[0].cluster.address)
    try:
        if session.joined:  # joining is quick: size and check against the real cluster before the slow work
            for config in configs:
                check_cluster_paths(config, session.address)
            session.start()
        cpus_needed = 0
        for config, stage_cfg, values in zip(configs, stage_cfgs, resolved):
            gpus, cpus = available_resources(config)
            size_cluster(config, gpus, cpus)
            values["cluster"].update(num_learners=config.cluster.num_learners,
                                     gpus_per_learner=config.cluster.gpus_per_learner)
            cpus_needed = max(cpus_needed, check_fits(config, stage_cfg, gpus, cpus, session.joined))
            check_resume(config.stage_dir, values, config.checkpoint.resume, ignore=unused_sections(config.stage.trainer))
        keep_files_out_of_home()
        base_model = ensure_model(configs[0])
        prepared = [prepare_stage(c, s, base_model) for c, s in zip(configs, stage_cfgs)]
        gpus, cpus = available_resources(configs[0])
        # Logical CPUs: at least one per actor plus the driver, even on a 2-core laptop.
        session.start(num_cpus=max(cpus, cpus_needed + 1), num_gpus=gpus)
        results = []
        for config, values, inputs in zip(configs, resolved, prepared):
            model_path = results[-1].hf_dir if config.stage.init_from == "previous" and results else \
                (config.model.path or base_model)
            log.info("stage %s starts from %s (%s)", config.stage.name, model_path, inputs.describe())
            trainer = inputs.trainer(config, model_path)
            trainer.resolved = values  # the full config the stage folder records (learners/run_identity.py)
            result = trainer.run()
            results.append(result)
            log.info("stage %s done: %d steps, %s %.4f -> %.4f, model at %s", result.stage, result.steps, result.metric,
                     result.first_loss or float("nan"), result.last_loss or float("nan"), result.hf_dir)
    finally:
        session.stop()
    out = Path(configs[0].output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_result.json").write_text(json.dumps([asdict(r) for r in results], indent=1))
    return results


@hydra.main(version_base=None, config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    # Logging is Hydra's (conf/config.yaml hydra.job_logging): the console and <run dir>/train.log.
    from launch.sweep import multirun_job_dir, record_failure, with_output_dir

    overrides = list(HydraConfig.get().overrides.task)
    job_dir = multirun_job_dir()
    if job_dir is not None:  # a sweep job: its own folder, never the output_dir every job shares
        overrides = with_output_dir(overrides, job_dir)
        cfg.output_dir = job_dir
    try:
        results = run(compose_stages(cfg, overrides))
    except ConfigError as exc:
        if job_dir is not None:
            return record_failure(job_dir, exc)
        log.error("configuration refused: %s", exc)
        sys.exit(2)
    except Exception as exc:
        if job_dir is not None:  # one broken job must not lose the rest of the sweep
            return record_failure(job_dir, exc)
        raise
    for r in results:
        print(f"{r.stage}: {r.steps} steps, {r.metric} {r.first_loss:.4f} -> {r.last_loss:.4f}; model: {r.hf_dir}")


def precheck(args: list[str], check_paths: bool = True) -> None:
    """Before Hydra: typos answered with "did you mean", and every job of a sweep validated up front."""
    from hydra import compose, initialize_config_dir

    from launch.overrides_check import check_overrides, job_overrides

    if any(a.startswith("-") and a not in ("-m", "--multirun") for a in args):
        return  # --help, --cfg, -cp ...: Hydra's own business
    overrides = [a for a in args if not a.startswith("-")]
    check_overrides(overrides)
    if "-m" in args or "--multirun" in args:
        jobs = job_overrides(overrides)
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            for job in jobs:
                try:
                    stages = compose_stages(compose(config_name="config", overrides=job), job)
                    check_pipeline([typed(c, check_paths) for c in stages])
                except ConfigError as exc:
                    raise ConfigError(f"sweep job {' '.join(job)}: {exc}") from None


def cli() -> None:
    try:
        precheck(sys.argv[1:])
    except ConfigError as exc:
        print(f"configuration refused: {exc}", file=sys.stderr)
        sys.exit(2)
    main()


if __name__ == "__main__":
    cli()

"""The SFT driver for one stage: plans the batches, feeds the learners, logs, checkpoints, resumes.

Folder of a stage: <output_dir>/<stage>/checkpoints/step_NNNNNNNN/{hf/, deepspeed/, rng/, trainer_state.json}.
`hf/` loads with transformers / vLLM (and policy.model.load_policy); the rest resumes training at the
exact step: the batch plan is a pure function of (seed, epoch), so step -> (epoch, index) is all the
data position there is; optimizer, scheduler and RNG come back from the DeepSpeed and RNG files.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from learners import run_identity
from learners.batching import BatchGeometry, collate, plan_epoch, steps_per_epoch
from learners.checkpoint_io import commit, latest_checkpoint, prune, temp_dir_for
from learners.learner import LearnerSettings
from learners.learner_actor import LearnerGroup
from learners.sft_masking import IGNORE_INDEX
from learners.train_config import ConfigError, TrainConfig
from learners.train_logging import TrainLogger, step_metrics
from learners.wandb_run import pipeline_group

log = logging.getLogger(__name__)
STATE_FILE = "trainer_state.json"


@dataclass
class StageResult:
    stage: str
    steps: int
    checkpoint: str  # the final checkpoint folder
    hf_dir: str  # its Hugging Face model folder (the next stage's starting point)
    first_loss: float | None  # the stage's first and last figure of `metric` (SFT: loss; GRPO: mean reward)
    last_loss: float | None
    losses: list  # the loss of every step
    metric: str = "loss"


def _trained(example: dict) -> int:
    # The loss scores labels[1:] (token t+1 predicted at t); the first token is always prompt.
    return sum(label != IGNORE_INDEX for label in example["labels"][1:])


class SFTTrainer:
    def __init__(self, config: TrainConfig, model_path: str, examples: list[dict], pad_id: int, image_pad_id: int,
                 resolved: dict | None = None):
        self.config, self.model_path, self.examples = config, model_path, examples
        # The full resolved config (every Hydra group) that the stage folder records; the typed one if not given.
        self.resolved = resolved if resolved is not None else asdict(config)
        self.pad_id, self.image_pad_id = pad_id, image_pad_id
        s, c = config.stage, config.cluster
        self.geometry = BatchGeometry(s.global_batch, s.micro_batch, c.num_learners)
        self.steps_per_epoch = steps_per_epoch(len(examples), self.geometry)
        if self.steps_per_epoch == 0:
            raise ConfigError(f"{len(examples)} samples make no full global batch of {s.global_batch}; "
                              "lower stage.global_batch or add data")
        total = s.epochs * self.steps_per_epoch
        self.total_steps = min(total, s.max_steps) if s.max_steps else total
        self.lengths = [len(e["input_ids"]) for e in examples]
        self.checkpoint_dir = config.stage_dir / "checkpoints"
        self._plans: dict[int, list] = {}

    # ---- plan ---------------------------------------------------------------------------------
    def plan_for(self, step: int):
        epoch, index = divmod(step, self.steps_per_epoch)
        if epoch not in self._plans:
            self._plans = {epoch: plan_epoch(self.lengths, self.geometry, seed=self.config.seed, epoch=epoch,
                                             group_window=self.config.data.group_window)}
        return self._plans[epoch][index]

    def step_batches(self, step: int) -> tuple[list[list[dict]], float, int]:
        """Per rank, its collated micro batches; the global trained-token count; the sample count."""
        plan = self.plan_for(step)
        per_rank = [[collate([self.examples[i] for i in micro], self.pad_id, self.image_pad_id) for micro in rank_plan]
                    for rank_plan in plan]
        indices = [i for rank_plan in plan for micro in rank_plan for i in micro]
        return per_rank, float(sum(_trained(self.examples[i]) for i in indices)), len(indices)

    # ---- learners -----------------------------------------------------------------------------
    def learner_settings(self) -> dict:
        s, m = self.config.stage, self.config.model
        return asdict(LearnerSettings(
            model_path=self.model_path, total_steps=self.total_steps, accumulation_steps=self.geometry.accumulation_steps,
            micro_batch=s.micro_batch, lr=s.lr, warmup_ratio=s.warmup_ratio, min_lr_ratio=s.min_lr_ratio,
            weight_decay=s.weight_decay, adam_betas=tuple(s.adam_betas), adam_eps=s.adam_eps, grad_clip=s.grad_clip,
            zero_stage=s.zero_stage, precision=s.precision, loss=s.loss, freeze_vision=m.freeze_vision,
            gradient_checkpointing=m.gradient_checkpointing, max_pixels=m.max_pixels, seed=self.config.seed))

    def start_learners(self) -> LearnerGroup:
        c = self.config.cluster
        return LearnerGroup(c.num_learners, c.gpus_per_learner, c.cpus_per_learner, self.learner_settings(),
                            strategy=c.placement_strategy)

    # ---- checkpoints --------------------------------------------------------------------------
    def _state(self, step: int, losses: list) -> dict:
        return {"stage": self.config.stage.name, "step": step, "total_steps": self.total_steps,
                "steps_per_epoch": self.steps_per_epoch, "epoch": step // self.steps_per_epoch,
                "num_samples": len(self.examples), "geometry": asdict(self.geometry), "seed": self.config.seed,
                "model_path": self.model_path, "losses": losses}

    def save(self, group: LearnerGroup, step: int, losses: list) -> Path:
        tmp = temp_dir_for(self.checkpoint_dir, step)
        group.call_all("save_checkpoint", str(tmp))
        (tmp / STATE_FILE).write_text(json.dumps(self._state(step, losses), indent=1))
        final = commit(tmp, step)
        prune(self.checkpoint_dir, self.config.checkpoint.keep_last)
        return final

    def resume(self, group: LearnerGroup) -> tuple[int, list]:
        latest = latest_checkpoint(self.checkpoint_dir) if self.config.checkpoint.resume else None
        if latest is None:
            return 0, []
        state = json.loads((latest / STATE_FILE).read_text())
        for key in ("num_samples", "geometry", "seed", "total_steps"):
            current = self._state(0, [])[key]
            if state[key] != current:
                raise ConfigError(f"{latest} was written with {key}={state[key]}, this run has {current}; resuming "
                                  f"would not continue the same run. Use another output_dir or checkpoint.resume=false")
        steps = group.call_all("load_checkpoint", str(latest))
        log.info("resumed %s from %s (step %d)", self.config.stage.name, latest, state["step"])
        if any(s != state["step"] for s in steps):
            raise RuntimeError(f"learners resumed at steps {steps} but {latest} is step {state['step']}")
        return state["step"], state.get("losses", [])

    def completed(self) -> StageResult | None:
        """The stage's result when its final checkpoint already exists (a re-run resumes to nothing)."""
        latest = latest_checkpoint(self.checkpoint_dir) if self.config.checkpoint.resume else None
        if latest is None:
            return None
        state = json.loads((latest / STATE_FILE).read_text())
        if state["step"] < self.total_steps or state["total_steps"] != self.total_steps:
            return None
        log.info("stage %s is already complete at %s", self.config.stage.name, latest)
        losses = state.get("losses", [])
        return StageResult(self.config.stage.name, state["step"], str(latest), str(latest / "hf"),
                           losses[0] if losses else None, losses[-1] if losses else None, losses)

    # ---- the loop -----------------------------------------------------------------------------
    def run(self, group: LearnerGroup | None = None, stop_at: int | None = None) -> StageResult:
        """Train to the end of the stage (or stop after step `stop_at`, keeping the schedule of the
        full stage, as a preempted job would) and write the final checkpoint."""
        cfg = self.config
        fingerprint = run_identity.data_fingerprint(self.examples)
        run_identity.check_resume(cfg.stage_dir, self.resolved, cfg.checkpoint.resume,
                                  ignore=run_identity.UNUSED_BY_SFT, fingerprint=fingerprint)
        done = self.completed()
        if done is not None:
            return done
        record = run_identity.begin(cfg.stage_dir, cfg.stage.name, self.resolved, cfg.checkpoint.resume, fingerprint)
        own_group = group is None
        group = group or self.start_learners()
        try:
            start, losses = self.resume(group)
            logger = TrainLogger(cfg.logging.wandb_mode, cfg.logging.project, cfg.logging.run_name, cfg.stage.name,
                                 self.total_steps, start, config=self.resolved, wandb_dir=str(cfg.stage_dir),
                                 run_id=record.wandb_run_id, job_type=cfg.stage.loss,
                                 group=pipeline_group(cfg.output_dir, cfg.logging.run_name))
            saved_at = start if start else None
            try:
                end = min(self.total_steps, stop_at) if stop_at else self.total_steps
                for step in range(start, end):
                    batches, global_tokens, samples = self.step_batches(step)
                    per_rank = group.call("train_step", batches, [global_tokens] * len(batches))
                    metrics = step_metrics(per_rank, samples)
                    losses.append(metrics["loss"])
                    every = cfg.logging.every_steps
                    logger.log_step(step + 1, metrics, print_line=(step + 1) % every == 0 or step + 1 == end)
                    if cfg.checkpoint.every_steps and (step + 1) % cfg.checkpoint.every_steps == 0:
                        self.save(group, step + 1, losses)
                        saved_at = step + 1
                if saved_at != end:
                    self.save(group, end, losses)
                logger.log_summary({"final_loss": losses[-1] if losses else None, "steps": end})
            finally:
                logger.close()
            final = latest_checkpoint(self.checkpoint_dir)
            return StageResult(cfg.stage.name, end, str(final), str(final / "hf"),
                               losses[0] if losses else None, losses[-1] if losses else None, losses)
        finally:
            if own_group:
                group.shutdown()

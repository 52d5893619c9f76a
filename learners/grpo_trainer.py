"""The GRPO-ATS driver for one stage: rollouts, rewards, advantages, log-probs, update, new weights.

One step, top to bottom (`_train_step`):
  1. the step's prompts (a pure function of seed and step) go to the rollout engines, G episodes
     each (agent loop + ATS + sandbox pool), then to the reward actor;
  2. rollouts made with weights older than `max_staleness` versions are regenerated; episodes that
     cannot be trained are set apart; rewards become group-normalised advantages; with
     `zero_variance: drop`, groups with equal rewards are dropped and refilled with new prompts;
  3. reference log-probs (a separate reference group; a colocated one runs inside the learners);
  4. the learners take the step (learners/grpo_learner.py; old log-probs recomputed there);
  5. the new weights go to every engine (learners/weight_sync.py); version = steps taken.
With `overlap`, step k+1's rollouts are submitted before step k's update, so they are generated
with the weights of step k (one version old) while the learners train.

Folder of a stage: <output_dir>/<stage>/checkpoints/step_NNNNNNNN/{hf, deepspeed, rng,
trainer_state.json} as SFT, and <output_dir>/<stage>/metrics.jsonl (one line per step). Resuming
reloads learners, pushes the checkpoint's weights to the engines and continues at the exact step
with the same prompts and episode seeds (with overlap off, the same rollouts too).
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path

import ray

from learners import run_identity
from learners.checkpoint_io import commit, latest_checkpoint, prune, temp_dir_for
from learners.grpo_batch import build_trajectories, deal, model_token_counts
from learners.grpo_config import grpo_settings
from learners.grpo_learner import GRPOLearnerOptions
from learners.grpo_metrics import PHASES, format_line, learner_metrics, rollout_metrics
from learners.grpo_rollouts import PendingRollouts, StepRollouts, step_prompt_dicts
from learners.learner import LearnerSettings
from learners.rl_data import episode_seed, refill_prompts, step_prompts
from learners.sft_trainer import StageResult
from learners.train_config import ConfigError, TrainConfig
from learners.train_logging import TrainLogger, emit
from learners.wandb_run import pipeline_group
from learners.weight_sync import make_weight_sync

log = logging.getLogger(__name__)
STATE_FILE = "trainer_state.json"
METRICS_FILE = "metrics.jsonl"
_IDENTITY = ("num_prompts", "global_batch", "group_size", "seed", "total_steps", "model_path")
SANDBOX_RETRIES = 2  # rounds of re-running groups the sandbox failed under


class GRPOTrainer:
    def __init__(self, config: TrainConfig, model_path: str, prompts: list[dict], *, rollout: dict, sandbox: dict,
                 reward: dict | None = None, judge: dict | None = None, prompt: dict | None = None,
                 show_progress: bool = True):
        from policy.multimodal import PolicyProcessor

        self.config, self.model_path, self.prompts = config, model_path, prompts
        self.sandbox_cfg, self.reward_cfg, self.judge_cfg, self.prompt_cfg = sandbox, reward, judge, prompt
        self.show_progress = show_progress
        s, c = config.stage, config.cluster
        self.grpo = grpo_settings(s.grpo, s.global_batch, s.micro_batch, c.num_learners)
        self.prompts_per_step = s.global_batch // self.grpo.group_size
        self.steps_per_epoch = len(prompts) // self.prompts_per_step
        if self.steps_per_epoch == 0:
            raise ConfigError(f"{len(prompts)} RL prompts make no step of {self.prompts_per_step} prompts (stage."
                              f"global_batch={s.global_batch} / group_size={self.grpo.group_size}); lower "
                              "stage.global_batch or add prompts")
        total = s.epochs * self.steps_per_epoch
        self.total_steps = min(total, s.max_steps) if s.max_steps else total
        self.accumulation = s.global_batch // (self.grpo.mini_batches * s.micro_batch * c.num_learners)
        self.reference_mode = "none" if self.grpo.kl_beta == 0 else c.reference
        sampling = {**(rollout.get("sampling") or {}), **self.grpo.sampling}
        self.rollout_cfg = {**rollout, "sampling": sampling}
        self.engine_kind = rollout.get("engine", "hf")
        processor = PolicyProcessor.from_pretrained(model_path, max_pixels=config.model.max_pixels)
        self.vision_ids = {processor.vision_start_id, processor.vision_end_id, processor.image_pad_id}
        self.checkpoint_dir = config.stage_dir / "checkpoints"
        self.metrics_path = config.stage_dir / METRICS_FILE
        # The full resolved config the stage folder records (launch.train sets every Hydra group).
        self.resolved = asdict(config)

    # ---- actors ---------------------------------------------------------------------------------
    def learner_settings(self, role: str = "learner") -> dict:
        s, m, g = self.config.stage, self.config.model, self.grpo
        options = GRPOLearnerOptions(loss=g.loss_options(), code_tokens=g.code_tokens,
                                     reference=self.reference_mode, reference_path=self.model_path)
        return asdict(LearnerSettings(
            model_path=self.model_path, total_steps=self.total_steps * g.mini_batches,
            accumulation_steps=self.accumulation, micro_batch=s.micro_batch, lr=s.lr, warmup_ratio=s.warmup_ratio,
            min_lr_ratio=s.min_lr_ratio, weight_decay=s.weight_decay, adam_betas=tuple(s.adam_betas),
            adam_eps=s.adam_eps, grad_clip=s.grad_clip, zero_stage=s.zero_stage, precision=s.precision, loss="grpo",
            freeze_vision=m.freeze_vision, gradient_checkpointing=m.gradient_checkpointing and role == "learner",
            max_pixels=m.max_pixels, seed=self.config.seed, grpo=asdict(options)))

    def start_workers(self):
        from actors.rl_workers import RLWorkers

        return RLWorkers(self.config.cluster, self.learner_settings(), self.model_path, rollout=self.rollout_cfg,
                         sandbox=self.sandbox_cfg, reward=self.reward_cfg, judge=self.judge_cfg, prompt=self.prompt_cfg,
                         reference_settings=self.learner_settings("reference") if self.reference_mode == "separate" else None)

    # ---- checkpoints ----------------------------------------------------------------------------
    def _state(self, step: int, history: list) -> dict:
        return {"stage": self.config.stage.name, "step": step, "weight_version": step, "total_steps": self.total_steps,
                "num_prompts": len(self.prompts), "global_batch": self.config.stage.global_batch,
                "group_size": self.grpo.group_size, "seed": self.config.seed, "model_path": self.model_path,
                "history": history}

    def save(self, workers, step: int, history: list) -> Path:
        tmp = temp_dir_for(self.checkpoint_dir, step)
        workers.learners.call_all("save_checkpoint", str(tmp))
        (tmp / STATE_FILE).write_text(json.dumps(self._state(step, history), indent=1))
        final = commit(tmp, step)
        prune(self.checkpoint_dir, self.config.checkpoint.keep_last)
        return final

    def _latest_state(self) -> tuple[Path | None, dict | None]:
        latest = latest_checkpoint(self.checkpoint_dir) if self.config.checkpoint.resume else None
        return (latest, json.loads((latest / STATE_FILE).read_text())) if latest else (None, None)

    def resume(self, workers) -> tuple[int, list]:
        latest, state = self._latest_state()
        if latest is None:
            return 0, []
        current = self._state(0, [])
        for key in _IDENTITY:
            if state.get(key) != current[key]:
                raise ConfigError(f"{latest} was written with {key}={state.get(key)}, this run has {current[key]}; "
                                  "resuming would not continue the same run. Use another output_dir or "
                                  "checkpoint.resume=false")
        workers.learners.call_all("load_checkpoint", str(latest))
        log.info("resumed %s from %s (step %d)", self.config.stage.name, latest, state["step"])
        return state["step"], state["history"]

    def completed(self) -> StageResult | None:
        latest, state = self._latest_state()
        if latest is None or state["step"] < self.total_steps or state["total_steps"] != self.total_steps:
            return None
        log.info("stage %s is already complete at %s", self.config.stage.name, latest)
        return self._result(state["step"], latest, state["history"])

    def _result(self, steps: int, checkpoint: Path, history: list) -> StageResult:
        rewards = [h["reward"] for h in history]
        return StageResult(self.config.stage.name, steps, str(checkpoint), str(checkpoint / "hf"),
                           rewards[0] if rewards else None, rewards[-1] if rewards else None,
                           [h["loss"] for h in history], metric="reward")

    # ---- one step -------------------------------------------------------------------------------
    def _submit(self, workers, step: int, indices: list[int], salt: int = 0) -> PendingRollouts:
        prompts = step_prompt_dicts(self.prompts, indices, seed=self.config.seed, step=step, salt=salt)
        label = f"step {step + 1} rollouts" if salt == 0 else f"step {step + 1} refill {salt}"
        return PendingRollouts(workers.engines, prompts, self.grpo.group_size, self.rollout_cfg["sampling"], label)

    def submit_step(self, workers, step: int) -> PendingRollouts:
        indices = step_prompts(len(self.prompts), self.prompts_per_step, seed=self.config.seed, step=step)
        return self._submit(workers, step, indices)

    def _collect(self, workers, pending: PendingRollouts) -> StepRollouts:
        return pending.collect(workers.reward, self.show_progress, recover=lambda engine: self._recover(workers, engine))

    def _recover(self, workers, engine) -> None:
        """A restarted engine holds the stage's first weights: once it is up, it gets the current ones."""
        self.sync.reload(engine, self.version)

    def _retry_lost_sandboxes(self, workers, step: int, rollouts: StepRollouts, counts: dict) -> StepRollouts:
        """Groups in which the sandbox itself failed (a sandbox actor died under them) run again, same seeds."""
        from learners.grpo_batch import prompt_id

        for attempt in range(1, SANDBOX_RETRIES + 1):
            lost = sorted({prompt_id(r["id"]) for r in rollouts.records if r.get("sandbox_failed")})
            if not lost:
                break
            log.warning("step %d: the sandbox failed under %d group(s); running them again (attempt %d)",
                        step + 1, len(lost), attempt)
            counts["sandbox_retried_groups"] = counts.get("sandbox_retried_groups", 0) + len(lost)
            again = PendingRollouts(workers.engines, [rollouts.prompts[g] for g in lost], self.grpo.group_size,
                                    self.rollout_cfg["sampling"], f"step {step + 1} sandbox retry {attempt}")
            rollouts.replace_groups(self._collect(workers, again))
        return rollouts

    def _fresh(self, workers, step: int, rollouts: StepRollouts, counts: dict) -> StepRollouts:
        """Regenerate rollouts made with weights more than max_staleness versions behind `step`."""
        oldest = min(rollouts.versions)
        if step - oldest <= self.grpo.max_staleness:
            counts["staleness"] = step - oldest
            return rollouts
        log.warning("step %d: rollouts from weight version %d are %d versions old (max_staleness=%d): regenerating",
                    step + 1, oldest, step - oldest, self.grpo.max_staleness)
        counts["stale_regenerated"] = len(rollouts.records)
        counts["staleness"] = 0
        return self._collect(workers, self.submit_step(workers, step))

    def _trainable(self, workers, step: int, rollouts: StepRollouts, counts: dict):
        """Trajectories with advantages; with zero_variance=drop, dropped groups refilled from new prompts."""
        g = self.grpo
        build = dict(vision_ids=self.vision_ids, max_tokens=g.max_train_tokens, untrainable=g.untrainable,
                     zero_variance=g.zero_variance)
        outcome = build_trajectories(rollouts.records, [r["total"] for r in rollouts.rewards], **build)
        counts.update(zero_variance_groups=outcome.zero_variance_groups, groups=outcome.groups)
        trajectories, untrainable = list(outcome.trajectories), outcome.untrainable
        missing = len(outcome.dropped_groups)
        for round_ in range(1, g.refill_rounds + 1 if g.zero_variance == "drop" else 1):
            if missing == 0:
                break
            indices = refill_prompts(len(self.prompts), missing, seed=self.config.seed, step=step, round_=round_)
            extra = self._collect(workers, self._submit(workers, step, indices, salt=round_))
            rollouts.generate_s += extra.generate_s
            rollouts.reward_s += extra.reward_s
            more = build_trajectories(extra.records, [r["total"] for r in extra.rewards], **build)
            counts["refilled_groups"] = counts.get("refilled_groups", 0) + more.groups - len(more.dropped_groups)
            trajectories += more.trajectories
            untrainable += more.untrainable
            missing = len(more.dropped_groups)
        counts["untrainable"] = sum(untrainable.values())
        counts.update({f"untrainable/{k}": v for k, v in untrainable.items()})
        return trajectories[:self.config.stage.global_batch]

    def _reference_logprobs(self, workers, trajectories) -> float:
        """Attach reference log-probs from the separate reference group (a colocated one needs nothing)."""
        if workers.reference is None or not trajectories:
            return 0.0
        started = time.perf_counter()
        ranks, micro = len(workers.reference.actors), self.config.stage.micro_batch
        per_rank = -(-len(trajectories) // (ranks * micro))
        dealt = deal(trajectories, mini_batches=1, num_ranks=ranks, micro_batches_per_rank=per_rank,
                     micro_batch=micro, seed=0)[0]
        results = workers.reference.call("trajectory_logprobs", dealt)
        by_id = {t.id: t for t in trajectories}
        for rank_micros, rank_out in zip(dealt, results):
            for micro_trajs, micro_out in zip(rank_micros, rank_out):
                for t, logprobs in zip(micro_trajs, micro_out):
                    if t.id in by_id:
                        by_id[t.id].ref_logprobs = logprobs.tolist()
        return time.perf_counter() - started

    def _update(self, workers, step: int, trajectories) -> list[dict]:
        c, s = self.config.cluster, self.config.stage
        dealt = deal(trajectories, mini_batches=self.grpo.mini_batches, num_ranks=c.num_learners,
                     micro_batches_per_rank=self.accumulation, micro_batch=s.micro_batch,
                     seed=episode_seed(self.config.seed, step, -1))
        tokens = model_token_counts(dealt)
        per_rank = [[dealt[m][rank] for m in range(len(dealt))] for rank in range(c.num_learners)]
        return workers.learners.call("grpo_step", per_rank, [tokens] * c.num_learners)

    def _train_step(self, workers, step: int, rollouts: StepRollouts, next_step=None) -> tuple[dict, object]:
        counts: dict = {"engine_restarts": rollouts.engine_restarts}
        rollouts = self._fresh(workers, step, rollouts, counts)
        rollouts = self._retry_lost_sandboxes(workers, step, rollouts, counts)
        trajectories = self._trainable(workers, step, rollouts, counts)
        pending = next_step() if next_step else None  # overlap: the next step generates while this one trains
        if not trajectories:
            log.warning("step %d: no trainable trajectory (%s); the update is skipped", step + 1, counts)
            per_rank, update_s, logprob_s = None, 0.0, 0.0
        else:
            logprob_s = self._reference_logprobs(workers, trajectories)
            started = time.perf_counter()
            per_rank = self._update(workers, step, trajectories)
            update_s = time.perf_counter() - started
            # The learners' own old/reference passes are log-prob time, not update time.
            inner = max(r["ref_old_logprob_s"] for r in per_rank)
            logprob_s, update_s = logprob_s + inner, update_s - inner
        metrics = rollout_metrics(rollouts.records, rollouts.rewards)
        metrics.update(counts, generate_s=rollouts.generate_s, sandbox_s=rollouts.sandbox_s, reward_s=rollouts.reward_s,
                       logprob_s=logprob_s, update_s=update_s,
                       judge_failures=float(rollouts.reward_stats.get("judge_unavailable", 0)
                                            + rollouts.reward_stats.get("deadline_cut", 0)),
                       trajectories=float(len(trajectories)))
        if per_rank:
            metrics.update(learner_metrics(per_rank))
            metrics["loss"] = metrics["pg_loss"] + self.grpo.kl_beta * (0.0 if math.isnan(metrics["kl"]) else metrics["kl"])
        else:
            metrics.update(loss=math.nan, lr=math.nan, update_skipped=1.0)
        return metrics, pending

    # ---- the loop -------------------------------------------------------------------------------
    def run(self, workers=None, stop_at: int | None = None) -> StageResult:
        """Train to the end of the stage (or stop after step `stop_at`, keeping the full stage's
        schedule, as a preempted job would) and write the final checkpoint."""
        cfg = self.config
        fingerprint = run_identity.prompts_fingerprint(self.prompts)
        run_identity.check_resume(cfg.stage_dir, self.resolved, cfg.checkpoint.resume,
                                  ignore=run_identity.UNUSED_BY_GRPO, fingerprint=fingerprint)
        done = self.completed()
        if done is not None:
            return done
        self.record = run_identity.begin(cfg.stage_dir, cfg.stage.name, self.resolved, cfg.checkpoint.resume, fingerprint)
        own = workers is None
        workers = workers or self.start_workers()
        try:
            return self._run(workers, stop_at)
        finally:
            if own:
                workers.shutdown()

    def _run(self, workers, stop_at: int | None) -> StageResult:
        cfg = self.config
        start, history = self.resume(workers)
        self.version = start
        self.sync = sync = make_weight_sync(self.engine_kind, workers.learners, workers.engines,
                                            cfg.cluster.gpus_per_engine, self.grpo.weight_sync_bucket_mb)
        if start:  # the engines start from the stage's first weights: give them the checkpoint's
            sync.push(start)
        self._rewrite_metrics(history)
        end = min(self.total_steps, stop_at) if stop_at else self.total_steps
        logger = TrainLogger(cfg.logging.wandb_mode, cfg.logging.project, cfg.logging.run_name, cfg.stage.name,
                             self.total_steps, start, config={**self.resolved, "grpo": asdict(self.grpo)},
                             wandb_dir=str(cfg.stage_dir), run_id=self.record.wandb_run_id, job_type="grpo",
                             group=pipeline_group(cfg.output_dir, cfg.logging.run_name))
        saved_at = start if start else None
        try:
            pending = self.submit_step(workers, start) if start < end else None
            for step in range(start, end):
                started = time.perf_counter()
                rollouts = self._collect(workers, pending)
                overlap = self.grpo.overlap and step + 1 < end
                next_step = (lambda s=step + 1: self.submit_step(workers, s)) if overlap else None
                metrics, pending = self._train_step(workers, step, rollouts, next_step)
                # With overlap the engines are busy with the next step: they load the weights after it.
                metrics["sync_s"] = sync.push(step + 1, wait=not self.grpo.overlap)
                self.version = step + 1
                if pending is None and step + 1 < end:
                    pending = self.submit_step(workers, step + 1)
                metrics["step_s"] = time.perf_counter() - started
                metrics["other_s"] = max(0.0, metrics["step_s"] - sum(metrics[p] for p in PHASES))
                metrics["tokens_per_s"] = metrics["generated_tokens"] / metrics["generate_s"] if metrics["generate_s"] else math.nan
                metrics["step"] = step + 1
                history.append(metrics)
                with open(self.metrics_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(metrics) + "\n")
                every = cfg.logging.every_steps
                if (step + 1) % every == 0 or step + 1 == end:
                    emit(format_line(cfg.stage.name, step + 1, self.total_steps, metrics))
                logger.log_step(step + 1, metrics, print_line=False)
                if cfg.checkpoint.every_steps and (step + 1) % cfg.checkpoint.every_steps == 0:
                    self.save(workers, step + 1, history)
                    saved_at = step + 1
            sync.wait()
            if saved_at != end:
                self.save(workers, end, history)
            logger.log_summary({"final_reward": history[-1]["reward"] if history else None, "steps": end})
        finally:
            logger.close()
        return self._result(end, latest_checkpoint(self.checkpoint_dir), history)

    def _rewrite_metrics(self, history: list) -> None:
        """metrics.jsonl holds exactly the steps of the checkpoint resumed from (a crash may have left more)."""
        self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.metrics_path, "w", encoding="utf-8") as f:
            for metrics in history:
                f.write(json.dumps(metrics) + "\n")

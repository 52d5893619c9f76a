"""GRPO on a local Ray cluster on CPU with every actor type real: rollout actor (HF engine, tiny model),
sandbox pool, reward actor with the loopback judge over HTTP, 2 DeepSpeed learners, a separate
reference worker. 2 steps + resume + 1 step equals 3 straight steps; after a weight sync the
engine's weights equal the learner's bit for bit; the learners' step does not depend on how the
trajectories are split over ranks and micro batches."""
from __future__ import annotations

import json

import pytest
import torch

from learners.grpo_trainer import GRPOTrainer
from learners.train_config import from_dict
from learners.warm_start import CODE_REPLY, QUESTION, TEST_PROMPT, ensure_warm_started
from rewards.loopback_judge import LoopbackJudgeServer

pytestmark = pytest.mark.slow
REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def warm_policy(tiny_model_dir):
    return ensure_warm_started(tiny_model_dir, REPO / ".cache")


@pytest.fixture(scope="module")
def judge():
    # verdict False: the rules pass the right colour ("red" == "red") and leave a wrong one ("green" for
    # "red") to the judge, which must then say wrong -- a judge that always says right would give every
    # group the same reward, and the run would have nothing to learn.
    with LoopbackJudgeServer(mode="prose", verdict=False) as server:
        yield server


def _prompts(images: dict[str, str]) -> list[dict]:
    """Six prompts: half start the reply with `<answer>` (the policy names a colour: right or wrong),
    half with a code block the sandbox runs first."""
    colours = sorted(images)
    return [{"id": f"p{i}", "question": QUESTION, "image_paths": [images[colours[i % 3]]], "answer": colours[i % 3],
             "category": "direct" if i % 2 else "computation",
             "assistant_prefix": "<answer>" if i % 2 else CODE_REPLY} for i in range(6)]


def _config(out, max_steps: int, every: int = 0):
    return from_dict({
        "output_dir": str(out), "seed": 5,
        "stage": {"name": "grpo", "trainer": "grpo", "loss": "grpo", "data": "rl", "lr": 2e-4, "warmup_ratio": 0.0,
                  "min_lr_ratio": 1.0, "epochs": 1, "max_steps": max_steps, "global_batch": 8, "micro_batch": 2,
                  "zero_stage": 2, "precision": "fp32",
                  "grpo": {"group_size": 4, "kl_beta": 0.05, "kl_estimator": "k3", "mini_batches": 2}},
        "cluster": {"num_learners": 2, "gpus_per_learner": 0, "cpus_per_learner": 1, "reference": "separate",
                    "reference_workers": 1, "rollout_engines": 1, "sandbox_actors": 1},
        "logging": {"wandb_mode": "disabled"}, "checkpoint": {"every_steps": every, "keep_last": 2},
    })


def _trainer(config, model_dir, prompts, judge_url: str) -> GRPOTrainer:
    rollout = {"max_new_tokens_per_round": 16, "max_turns": 3, "max_total_tokens": 4096,
               "sandbox_batch_wait_s": 30.0, "engine_options": {"torch_threads": 1}}
    judge = {"backend": "openai", "consistency": True,
             "openai": {"url": judge_url, "api_key_env": None, "timeout_s": 10, "max_retries": 0}}
    return GRPOTrainer(config, str(model_dir), prompts, rollout=rollout, sandbox={}, judge=judge, prompt=TEST_PROMPT, show_progress=False)


def _weights(checkpoint: str) -> dict:
    from safetensors.torch import load_file

    return load_file(f"{checkpoint}/hf/model.safetensors")


def test_grpo_resume_equals_straight_and_sync_is_exact(ray_cluster, warm_policy, judge, scratch_dir):
    model_dir, images = warm_policy
    prompts = _prompts(images)

    # Three straight steps, on workers we hold so the engine can be inspected afterwards; a checkpoint
    # after every step.
    straight_dir = scratch_dir / "grpo-straight"
    straight_trainer = _trainer(_config(straight_dir, 3, every=1), model_dir, prompts, judge.url)
    workers = straight_trainer.start_workers()
    try:
        straight = straight_trainer.run(workers)
        engine = ray_cluster.get(workers.engines[0].engine_weights.remote())
        learner = workers.learners.call_all("full_state_dict")[0]
        assert sorted(engine) == sorted(learner)
        assert all(torch.equal(engine[k], learner[k]) for k in learner), "the engine's weights differ from the learner's"
        assert ray_cluster.get(workers.engines[0].rollout.remote(prompts[:1], 1))[0]["weight_version"] == 3
    finally:
        workers.shutdown()
    history = json.loads(open(f"{straight.checkpoint}/trainer_state.json").read())["history"]
    assert [h["step"] for h in history] == [1, 2, 3]
    # The run did real work: rewards differed within groups, code ran in the sandbox, the judge was asked.
    assert any(h["zero_variance_groups"] < h["groups"] for h in history)
    assert sum(h["code_use_rate"] for h in history) > 0
    assert max(h["code_success_rate"] for h in history if h["code_use_rate"] > 0) > 0
    assert judge.requests > 0 and all(h["judge_failures"] == 0 for h in history)
    assert all(h["logprob_gap_max"] < 1e-3 for h in history), "rollout and learner log-probs disagree on CPU fp32"
    assert history[-1]["kl"] > 0  # the policy moved away from the reference

    # A job that stopped after step 2 (its folder holds what the straight run had then), resumed by a new
    # process with new actors, to the end of the same schedule.
    import shutil

    resumed_dir = scratch_dir / "grpo-resumed"
    checkpoints = resumed_dir / "grpo" / "checkpoints"
    checkpoints.mkdir(parents=True)
    shutil.copytree(straight_dir / "grpo" / "checkpoints" / "step_00000002", checkpoints / "step_00000002")
    second = _trainer(_config(resumed_dir, 3, every=1), model_dir, prompts, judge.url).run()
    resumed = json.loads(open(f"{second.checkpoint}/trainer_state.json").read())["history"]
    assert [h["step"] for h in resumed] == [1, 2, 3]
    for key in ("reward", "generated_tokens", "code_use_rate", "trajectories", "pg_loss", "kl", "entropy", "clip_fraction"):
        assert resumed[2][key] == pytest.approx(history[2][key], rel=1e-5, abs=1e-9), key
    start = _weights_from_dir(model_dir)
    a, b = _weights(straight.checkpoint), _weights(second.checkpoint)
    update = torch.cat([(a[k] - start[k]).flatten() for k in sorted(a)])
    assert update.norm() > 1e-3  # training moved the weights: the comparison below is not trivially true
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-6) for k in a)
    lines = (resumed_dir / "grpo" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]


def _weights_from_dir(folder) -> dict:
    from safetensors.torch import load_file

    return load_file(f"{folder}/model.safetensors")


@pytest.fixture(scope="module")
def trajectories(warm_policy):
    """Eight real episodes of the warm policy (agent loop + sandbox, no Ray) as trainable trajectories,
    with fixed advantages (this is about the learners' arithmetic, not the rewards)."""
    from envs.sandbox import Sandbox
    from learners.grpo_batch import build_trajectories
    from policy.agent_config import RolloutConfig
    from policy.agent_loop import AgentLoop
    from policy.hf_engine import HFEngine
    from actors.rollout_actor import episode_inputs

    model_dir, images = warm_policy
    engine = HFEngine(model_dir)
    from policy.prompts import PromptConfig

    loop_config = RolloutConfig(max_new_tokens_per_round=24, max_turns=3)
    with Sandbox() as sandbox, AgentLoop(engine, sandbox, loop_config, prompt=PromptConfig(**TEST_PROMPT)) as loop:
        # p0's reply opens a code block the policy writes itself (greedily, ATS); p1's starts free.
        prompts = [dict(p, seed=11 + i, assistant_prefix=prefix)
                   for i, (p, prefix) in enumerate(zip(_prompts(images)[:2], ["<code>\n", ""]))]
        records = [r.to_dict() for r in loop.run(episode_inputs(prompts, 4))]
    vision = {engine.processor.vision_start_id, engine.processor.vision_end_id, engine.processor.image_pad_id}
    out = build_trajectories(records, [float(i % 4) for i in range(8)], vision_ids=vision, max_tokens=4096)
    assert len(out.trajectories) == 8 and all(t.advantage for t in out.trajectories)
    assert len({len(t.token_ids) for t in out.trajectories}) > 1  # lengths differ: padding is exercised
    return out.trajectories


def _one_step(model_dir, trajectories, learners: int, zero: int):
    from dataclasses import asdict

    from learners.grpo_batch import deal, model_token_counts
    from learners.grpo_learner import GRPOLearnerOptions
    from learners.learner import LearnerSettings
    from learners.learner_actor import GRPOLearnerActor, LearnerGroup

    accumulation = 8 // (2 * learners)
    options = GRPOLearnerOptions(loss={"kl_beta": 0.1, "eps_low": 0.2, "eps_high": 0.2}, reference="colocated",
                                 code_tokens="mask")  # code tokens out of the sum, still in the token count
    settings = asdict(LearnerSettings(
        model_path=str(model_dir), total_steps=1, accumulation_steps=accumulation, micro_batch=2, lr=1e-4,
        warmup_ratio=0.0, min_lr_ratio=1.0, weight_decay=0.0, adam_betas=(0.9, 0.999), adam_eps=1e-8, grad_clip=1e9,
        zero_stage=zero, precision="fp32", loss="grpo", grpo=asdict(options)))
    group = LearnerGroup(learners, 0, 1, settings, actor_class=GRPOLearnerActor)
    try:
        dealt = deal(trajectories, mini_batches=1, num_ranks=learners, micro_batches_per_rank=accumulation,
                     micro_batch=2, seed=3)
        tokens = model_token_counts(dealt)
        out = group.call("grpo_step", [[dealt[0][r]] for r in range(learners)], [tokens] * learners)
        return out, group.call_all("full_state_dict")[0]
    finally:
        group.shutdown()


def test_learner_step_does_not_depend_on_the_split(ray_cluster, warm_policy, trajectories):
    """One ZeRO-2 learner with 4 micro batches and two ZeRO-3 learners with 2 each take the same step:
    every micro loss is its token sum over the step's model-token count, over all ranks."""
    model_dir, _images = warm_policy
    one, weights_one = _one_step(model_dir, trajectories, learners=1, zero=2)
    two, weights_two = _one_step(model_dir, trajectories, learners=2, zero=3)

    def total(out, key):
        return sum(m[key] for rank in out for mini in rank["mini_batches"] for m in [mini])
    for key in ("pg_sum", "kl_sum", "trained_tokens", "model_tokens"):
        assert total(one, key) == pytest.approx(total(two, key), rel=1e-5, abs=1e-8), key
    assert 0 < total(one, "trained_tokens") < total(one, "model_tokens")  # the code tokens were masked
    # The gradient norm (before clipping, over the whole model) is the same: a normalisation off by the
    # learner count or the accumulation steps would change it by that factor.
    norm_one, norm_two = one[0]["mini_batches"][0]["grad_norm"], two[0]["mini_batches"][0]["grad_norm"]
    assert norm_one > 0 and norm_one == pytest.approx(norm_two, rel=1e-4)
    from transformers import Qwen2_5_VLForConditionalGeneration

    start = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(model_dir)).state_dict()
    update_one = torch.cat([(weights_one[k] - start[k]).flatten() for k in sorted(start)])
    update_two = torch.cat([(weights_two[k] - start[k]).flatten() for k in sorted(start)])
    assert update_one.norm() > 0
    assert (update_one - update_two).norm() <= 1e-3 * update_one.norm()

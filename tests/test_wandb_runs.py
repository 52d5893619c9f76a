"""W&B as the issue asks for it, on real offline runs: a resumed stage continues its run (same id), a
fresh start in the same folder is a new one; runs carry the pipeline group and the stage name; an
eval of a training checkpoint joins that pipeline's group; the saved dashboard shows only keys the
trainers and the eval log."""
from __future__ import annotations

import json
import re
import shutil

import pytest

from launch.eval_wandb import eval_run_name
from launch.wandb_dashboard import build_workspace, load_definition, panel_keys
from learners.run_identity import RECORD_FILE, begin, wandb_run_id
from learners.wandb_run import pipeline_group, training_group_of


def _offline_runs(stage_dir):
    return sorted((stage_dir / "wandb").glob("offline-run-*"))


@pytest.mark.slow
def test_a_resumed_stage_continues_its_wandb_run(ray_cluster, tiny_model_dir, sft_rows_file, tmp_path):
    from envs.data import load_sft_rows
    from learners.batching import LengthFilter
    from learners.sft_data import encode_rows
    from learners.sft_masking import MaskRules
    from learners.sft_trainer import SFTTrainer
    from learners.train_config import from_dict
    from policy.multimodal import PolicyProcessor

    processor = PolicyProcessor.from_pretrained(tiny_model_dir)
    rows, _ = load_sft_rows(sft_rows_file)
    examples, _ = encode_rows(rows, processor, "system", MaskRules(True), LengthFilter(1024, "truncate", processor.image_pad_id))

    def trainer(resume: bool) -> SFTTrainer:
        config = from_dict({"output_dir": str(tmp_path), "stage": {"name": "sft", "lr": 1e-3, "max_steps": 2, "global_batch": 4,
                                                                     "micro_batch": 2, "zero_stage": 0, "precision": "fp32"},
                            "logging": {"wandb_mode": "offline", "run_name": "pipe"},
                            "checkpoint": {"every_steps": 1, "resume": resume}})
        return SFTTrainer(config, str(tiny_model_dir), examples, processor.tokenizer.pad_token_id or 0,
                          processor.image_pad_id)

    first = trainer(True)
    group = first.start_learners()
    try:
        first.run(group, stop_at=1)  # preempted after step 1
        trainer(True).run(group)  # resumed: steps 2..
        trainer(False).run(group)  # checkpoint.resume=false: the stage trains afresh in the same folder
    finally:
        group.shutdown()
    stage_dir = tmp_path / "sft"
    ids = [run.name.split("-", 3)[-1] for run in _offline_runs(stage_dir)]
    expected = wandb_run_id(stage_dir, "sft", 0)
    assert ids == [expected, expected, wandb_run_id(stage_dir, "sft", 1)], ids
    assert json.loads((stage_dir / RECORD_FILE).read_text())["generation"] == 1
    # The run record of each holds the group (logging.run_name) and the stage name.
    for run in _offline_runs(stage_dir):
        data = next(run.glob("*.wandb")).read_bytes()
        assert b"pipe" in data and b"pipe-sft" in data


def test_ids_groups_and_names_are_deterministic(tmp_path):
    stage = tmp_path / "run" / "sft"
    assert wandb_run_id(stage, "sft", 0) == wandb_run_id(tmp_path / "run" / ".." / "run" / "sft", "sft", 0)
    assert wandb_run_id(stage, "sft", 0) != wandb_run_id(tmp_path / "other" / "sft", "sft", 0)
    assert re.fullmatch(r"[A-Za-z0-9_-]+", wandb_run_id(stage, "sft math/1", 3))
    first = begin(stage, "sft", {"stage": {"lr": 1.0}}, resume=True)
    again = begin(stage, "sft", {"stage": {"lr": 1.0}}, resume=True)  # no checkpoint yet: a fresh start again
    assert (first.generation, again.generation) == (0, 1) and first.wandb_run_id != again.wandb_run_id
    # An eval of a checkpoint of this run joins the run's group and is named after stage and step.
    hf = stage / "checkpoints" / "step_00000003" / "hf"
    hf.mkdir(parents=True)
    assert training_group_of(hf) == pipeline_group(str(tmp_path / "run"), None) == f"{tmp_path.name}/run"
    assert eval_run_name(str(hf)) == "eval-sft-step_00000003"
    shutil.rmtree(stage)
    assert training_group_of(hf.parent.parent.parent.parent) is None


def test_the_saved_dashboard_shows_keys_that_are_logged():
    from launch.eval import summarise
    from learners.grpo_metrics import PHASES, learner_metrics, rollout_metrics
    from learners.train_logging import step_metrics

    # The keys come from the functions that compute what is logged, fed one minimal step each.
    sft = step_metrics([{"nll_sum": 1.0, "trained_tokens": 1.0, "tokens": 2, "padded_tokens": 2, "seconds": 1.0,
                         "lr": 1e-3, "grad_norm": 1.0}], samples=1)
    grpo = {**rollout_metrics([{"code_runs": [], "loss_mask": [1], "stop_reason": "answer", "turns": 1,
                                "response_text": ""}], [{"total": 1.0, "format": 1.0, "result": 1.0, "consistency": 0.0}]),
            **learner_metrics([{"mini_batches": [{"grad_norm": 1.0, "lr": 1e-3}], "logprob_gap_tokens": 0,
                                "logprob_gap_sum": 0.0, "logprob_gap_max": 0.0}])}
    # ... plus what GRPOTrainer._train_step/_run add around them.
    grpo_extra = {*PHASES, "judge_failures", "zero_variance_groups", "untrainable", "tokens_per_s", "step_s", "loss"}
    row = {"category": "direct", "correct": True, "well_formed": True, "code_blocks": 0, "code_successes": 0,
           "turns": 1, "undecided": False, "error": None}
    eval_keys = {f"eval/{k}" for k in summarise([row])["all"]} | {"eval/categories", "eval/transcripts"}
    definition = load_definition()
    for key in panel_keys(definition):
        stage, metric = key.split("/", 1)
        assert (stage in ("sft", "sft_math") and metric in sft) or (stage == "grpo" and metric in {*grpo, *grpo_extra}) \
            or key in eval_keys, key
    workspace = build_workspace(definition, "someone", "thyme-rl")  # builds offline; .save() would send it
    assert [s.name for s in workspace.sections] == [s["name"] for s in definition["sections"]]
    assert sum(len(s.panels) for s in workspace.sections) == sum(len(s["panels"]) for s in definition["sections"])

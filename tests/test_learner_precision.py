"""The learners' bf16 settings: gradients accumulate in fp32 under ZeRO (DeepSpeed would use bf16)."""
from learners.learner import LearnerSettings, deepspeed_config


def settings(zero_stage: int) -> LearnerSettings:
    return LearnerSettings(model_path="m", total_steps=1, accumulation_steps=4, micro_batch=1, lr=1e-5, warmup_ratio=0.0,
                           min_lr_ratio=0.1, weight_decay=0.0, adam_betas=(0.9, 0.95), adam_eps=1e-8, grad_clip=1.0,
                           zero_stage=zero_stage, precision="auto")


def test_bf16_under_zero_accumulates_gradients_in_fp32():
    for stage in (1, 2, 3):
        config = deepspeed_config(settings(stage), world_size=2, use_bf16=True)
        assert config["bf16"] == {"enabled": True} and config["data_types"] == {"grad_accum_dtype": "fp32"}
    # DeepSpeed 0.19 has no fp32 accumulation for bf16 weights without ZeRO ("unsupported mix"), and fp32 needs none.
    assert "data_types" not in deepspeed_config(settings(0), world_size=1, use_bf16=True)
    assert "data_types" not in deepspeed_config(settings(2), world_size=1, use_bf16=False)


def test_deepspeed_reads_the_setting_as_fp32():
    """DeepSpeed's own config parser turns it into the dtype its engine accumulates in (runtime/config.py)."""
    import torch
    from deepspeed.runtime.config import DeepSpeedConfig, DtypeEnum  # what runtime/engine.py get_data_types reads

    parsed = DeepSpeedConfig(deepspeed_config(settings(2), world_size=1, use_bf16=True))
    assert DtypeEnum(parsed.grad_accum_dtype).value == torch.float32 and parsed.bfloat16_config.enabled

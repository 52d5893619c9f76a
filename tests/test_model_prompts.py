"""The Thyme prompt contract: config validation, Hydra composition, and the prompt as model input."""
import pytest
from PIL import Image

from envs.protocol import CODE_CLOSE, CODE_OPEN, SANDBOX_OPEN
from policy.prompts import PROMPT_CONF_DIR, PromptConfig, load_prompt_config


def test_default_prompt_states_the_contract():
    prompt = load_prompt_config("thyme")
    for piece in (CODE_OPEN, CODE_CLOSE, SANDBOX_OPEN, "```python", "processed_path"):
        assert piece in prompt.system
    user = prompt.user_text("  What does the sign say? ", "/data/img/42.jpg", 2048, 1536)
    assert user.startswith("What does the sign say?") and "/data/img/42.jpg" in user and "2048x1536" in user
    assert "<think>" in user and "<answer>" in user


def test_hydra_composes_the_prompt_group():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(PROMPT_CONF_DIR.parent), version_base=None):
        cfg = compose(overrides=["+prompt=thyme", "prompt.user_template='{question} at {image_path} ({width}x{height}) <think> <answer>'"])
    prompt = PromptConfig(**cfg.prompt)
    assert prompt.user_text("Q?", "/p.png", 3, 4) == "Q? at /p.png (3x4) <think> <answer>"


def test_bad_prompt_configs_are_refused_with_reasons(tmp_path):
    system = load_prompt_config().system
    with pytest.raises(ValueError, match=r"missing \['height', 'width'\]"):
        PromptConfig(system=system, user_template="{question} {image_path} <think> <answer>")
    with pytest.raises(ValueError, match=r"unknown \['path'\]"):
        PromptConfig(system=system, user_template="{question} {image_path} {path} {width}x{height} <think> <answer>")
    with pytest.raises(ValueError, match="<code>"):
        PromptConfig(system="Solve it.", user_template="{question} {image_path} {width}x{height} <think> <answer>")
    with pytest.raises(FileNotFoundError, match="available"):
        load_prompt_config("nope")


def test_the_demo_prompt_does_not_name_the_image_file():
    """Its user turn is the same text for an image in the SFT set and in the held-out set: a path there
    names the data set's folder and split, which a tiny model reads as a feature (docs/training.md)."""
    prompt = load_prompt_config("demo")
    train = prompt.user_text("What colour is the circle?", "/o/demo/data/sft/images/train-direct-s11-000007.png", 64, 48)
    held_out = prompt.user_text("What colour is the circle?", "/o/demo/data/eval/images/eval-direct-s999-000003.png", 64, 48)
    assert train == held_out and "64x48" in train


def test_prompt_becomes_model_input(tiny_model_dir):
    from policy.multimodal import PolicyProcessor

    processor = PolicyProcessor.from_pretrained(tiny_model_dir)
    prompt = load_prompt_config()
    image = Image.new("RGB", (2048, 1536))
    ids = processor.chat_prompt_ids(prompt.system, prompt.user_text("Q?", "/x.jpg", 2048, 1536), [image])
    text = processor.tokenizer.decode(ids)
    assert text.endswith("<|im_start|>assistant\n") and "2048x1536" in text
    processor.check_prompt(ids, [image])

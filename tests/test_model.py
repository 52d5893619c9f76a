"""The tiny Qwen2.5-VL and the loading path shared with real checkpoints, without torchvision."""
import json
import shutil

import pytest
import torch
from PIL import Image

from envs.protocol import ANSWER_CLOSE, CODE_CLOSE, CODE_OPEN, SANDBOX_OPEN
from policy.model import load_policy
from policy.multimodal import PolicyProcessor


@pytest.fixture(scope="module")
def policy(tiny_model_dir):
    return load_policy(tiny_model_dir)


def test_tiny_model_size_and_files(tiny_model_dir, policy):
    model, processor = policy
    params = sum(p.numel() for p in model.parameters())
    assert 1_000_000 <= params <= 20_000_000
    for name in ("config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json", "generation_config.json"):
        assert (tiny_model_dir / name).is_file(), name
    assert model.config.model_type == "qwen2_5_vl"


def test_tags_are_several_tokens(policy):
    tokenizer = policy[1].tokenizer
    for tag in (CODE_OPEN, CODE_CLOSE, SANDBOX_OPEN, ANSWER_CLOSE):
        ids = tokenizer.encode(tag, add_special_tokens=False)
        assert len(ids) > 1 and tokenizer.decode(ids) == tag


def test_tag_tokens_option_makes_each_tag_one_token(tmp_path):
    # the demo's model (docs/training.md "Single-token tags"); the default keeps them split, as above
    from launch.stage_inputs import ensure_model
    from learners.train_config import ConfigError, ModelConfig, TrainConfig
    from policy.tiny_model import THYME_TAGS, TinyModelConfig, built_config

    config = TrainConfig(model=ModelConfig(tiny_dir=str(tmp_path / "tiny"), tiny_tag_tokens=True))
    folder = ensure_model(config)
    assert built_config(folder) == TinyModelConfig(tag_tokens=True)
    tokenizer = PolicyProcessor.from_pretrained(folder).tokenizer
    for tag in THYME_TAGS:
        assert len(tokenizer.encode(tag, add_special_tokens=False)) == 1, tag
    text = "<think>look</think>\n<code>\n```python\nprint(3)\n```\n</code><sandbox_output>3</sandbox_output>\n<answer>3</answer>"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text and tokenizer.decode(ids, skip_special_tokens=True) == text
    # reusing that folder with other settings is refused rather than silently training the other model
    config.model.tiny_tag_tokens = False
    with pytest.raises(ConfigError, match="model.tiny_tag_tokens=False"):
        ensure_model(config)


def test_copy_pretraining_trains_and_saves_the_trained_weights(tmp_path):
    # policy/tiny_pretrain.py (docs/training.md "Copying"). The copy itself forms after ~200 steps (0.02 at
    # 100, 0.92-1.00 at 300 for seeds 0-1, 0.20 for seed 2: 75 s, in every demo's copy_pretrain.json); here 30 steps must lower
    # the loss on copy texts, and the folder must hold the trained weights and their measured accuracy.
    import random

    from policy.tiny_model import COPY_PRETRAIN_FILE, TinyModelConfig, copy_words, make_tiny_model
    from policy.tiny_pretrain import copy_accuracy

    folder = make_tiny_model(tmp_path / "tiny", cfg=TinyModelConfig(tag_tokens=True, copy_pretrain_steps=30))
    report = json.loads((folder / COPY_PRETRAIN_FILE).read_text())
    assert report["loss_first"] > 7.5 and report["loss_last"] < 0.75 * report["loss_first"], report
    assert report["copy_accuracy_before"] < 0.1
    model, processor = load_policy(folder)
    after = copy_accuracy(model, processor.tokenizer, copy_words(), random.Random(1))
    assert after == pytest.approx(report["copy_accuracy_after"])
    # the random model built with the same seed is another model: the saved weights are not the init
    fresh = make_tiny_model(tmp_path / "fresh", cfg=TinyModelConfig(tag_tokens=True))
    fresh_model, _ = load_policy(fresh)
    assert not torch.equal(fresh_model.lm_head.weight, model.lm_head.weight)


def test_every_answer_word_is_one_token(policy):
    # a word split into pieces ("purple" = p|u|r|p|le) is one more thing the tiny model must learn
    # before an answer can be right (docs/training.md "Tokenizer fit and copying")
    from policy.tiny_model import answer_words

    tokenizer = policy[1].tokenizer
    words = answer_words()
    assert {"purple", "orange", "triangle"} <= set(words)
    for word in words:
        for text in (word, " " + word):
            assert len(tokenizer.encode(text, add_special_tokens=False)) == 1, repr(text)


def test_processor_works_without_torchvision(policy):
    processor = policy[1]
    try:
        import torchvision  # noqa: F401
        expect_pil = False
    except ImportError:
        expect_pil = True
    assert (type(processor.image_processor).__name__ == "Qwen2VLImageProcessorPil") == expect_pil
    big = Image.new("RGB", (2048, 1536), "white")
    n = processor.num_image_tokens(big)
    assert 4 <= n <= processor.max_pixels // (28 * 28)
    pixels = processor.pixel_inputs([big, Image.new("L", (100, 60))])
    grid = pixels["image_grid_thw"]
    assert grid.tolist()[0] == [1, processor.resized_size(big)[1] // 14, processor.resized_size(big)[0] // 14]
    assert int(grid[0].prod()) // 4 == n and pixels["pixel_values"].shape[0] == int(grid.prod(dim=1).sum())


def test_chat_prompt_ids_match_the_chat_template(policy):
    """Our id builder equals the saved chat template with each image placeholder expanded."""
    processor = policy[1]
    tok = processor.tokenizer
    image = Image.new("RGB", (640, 480))
    messages = [{"role": "system", "content": "Sys."},
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is <here>?"}]}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    text = text.replace("<|image_pad|>", "<|image_pad|>" * processor.num_image_tokens(image))
    assert processor.chat_prompt_ids("Sys.", "What is <here>?", [image]) == tok.encode(text, add_special_tokens=False)


def test_save_and_reload_give_the_same_outputs(policy, scratch_dir):
    model, processor = policy
    out = scratch_dir / "tiny-resaved"
    model.save_pretrained(str(out))
    processor.save_pretrained(out)
    model2, processor2 = load_policy(out)
    ids = torch.tensor([processor.chat_prompt_ids(None, "hello")])
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, model2(input_ids=ids).logits)
    assert processor2.max_pixels == processor.max_pixels


def test_pixel_budget_override(tiny_model_dir):
    _, processor = load_policy(tiny_model_dir, max_pixels=28 * 28 * 16)
    assert processor.num_image_tokens(Image.new("RGB", (2048, 2048))) == 16
    with pytest.raises(ValueError, match="min_pixels"):
        processor.set_pixel_budget(min_pixels=10**9)


def test_same_seed_same_model(tmp_path):
    from policy.tiny_model import make_tiny_model

    a, b = make_tiny_model(tmp_path / "a", seed=3), make_tiny_model(tmp_path / "b", seed=3)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()


# A Qwen2.5-VL-7B-Instruct config.json in the hub's flat format, shrunk (layers, widths, vocab) so it
# builds in a second; every key and the mrope/vision structure are those of the real file.
REAL_STYLE_CONFIG = {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"], "attention_dropout": 0.0,
    "bos_token_id": 151643, "eos_token_id": 151645, "vision_start_token_id": 151652, "vision_end_token_id": 151653,
    "vision_token_id": 151654, "image_token_id": 151655, "video_token_id": 151656, "hidden_act": "silu",
    "hidden_size": 256, "initializer_range": 0.02, "intermediate_size": 512, "max_position_embeddings": 128000,
    "max_window_layers": 28, "model_type": "qwen2_5_vl", "num_attention_heads": 2, "num_hidden_layers": 2,
    "num_key_value_heads": 1, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.41.2", "use_cache": True,
    "use_sliding_window": False,
    "vision_config": {"depth": 2, "hidden_act": "silu", "hidden_size": 64, "intermediate_size": 128, "num_heads": 2,
                      "in_chans": 3, "out_hidden_size": 256, "patch_size": 14, "spatial_merge_size": 2,
                      "spatial_patch_size": 14, "window_size": 112, "fullatt_block_indexes": [1],
                      "tokens_per_second": 2, "temporal_patch_size": 2},
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}, "vocab_size": 4096,
}
REAL_PREPROCESSOR = {
    "min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
    "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor",
}


def test_real_qwen25vl_checkpoint_layout_loads(tiny_model_dir, tmp_path):
    """A checkpoint folder laid out like the released ones (flat config, mrope rope_scaling, min/max_pixels)
    loads through load_policy, runs an image forward and generates with the HF engine."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from policy.engine import GenerationRequest, SamplingSettings
    from policy.hf_engine import HFEngine

    folder = tmp_path / "qwen-like"
    folder.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(tiny_model_dir / name, folder / name)
    tok = PolicyProcessor.from_pretrained(tiny_model_dir).tokenizer
    config = dict(REAL_STYLE_CONFIG)  # point the special ids at this tokenizer's (the 7B's are 151652...)
    for key, token in (("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"),
                       ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>")):
        config[key] = tok.convert_tokens_to_ids(token)
    torch.manual_seed(0)
    Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**config)).save_pretrained(str(folder))
    (folder / "config.json").write_text(json.dumps(config))  # the hub's flat format, not transformers 5's nested one
    (folder / "preprocessor_config.json").write_text(json.dumps(REAL_PREPROCESSOR))

    model, processor = load_policy(folder, dtype="float32")
    assert model.config.text_config.hidden_size == 256 and model.config.vision_config.depth == 2
    assert processor.max_pixels == 12845056 and processor.min_pixels == 3136
    image = Image.new("RGB", (112, 84), "green")
    engine = HFEngine(model=model, processor=processor)
    ids = processor.chat_prompt_ids("sys", "Describe.", [image])
    result = engine.generate([GenerationRequest(ids, [image], SamplingSettings(max_new_tokens=5, seed=0))])[0]
    assert len(result.token_ids) == 5 and all(lp <= 0 for lp in result.logprobs)


def test_missing_or_wrong_model_folder_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="make_tiny_model"):
        load_policy(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="qwen2_5_vl"):
        load_policy(tmp_path)

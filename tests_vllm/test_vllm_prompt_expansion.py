"""vLLM expands our collapsed image placeholders back to the ids we record.

vLLM's Qwen2-VL processor replaces each `<|image_pad|>` with grid_t*grid_h*grid_w / merge_size^2 pads
(vllm/model_executor/models/qwen2_vl.py:1236-1269, a PromptReplacement) and applies the replacements
with its prompt-update machinery (vllm/multimodal/processing/processor.py:1699 `_apply_prompt_updates`,
:836 `apply_token_matches`). The first test runs that machinery on our prompts with the grid our image
processor computes; the second runs vLLM's whole Qwen2-VL processor, which needs torchvision
(qwen2_vl.py:43 imports transformers' torchvision image processor): it runs on GPU machines
(`pip install .[vllm]` brings torchvision) and is skipped here, where PyPI's torchvision is a CUDA build
that cannot load on CPU torch.
"""
import importlib.util
from functools import partial

import pytest
from PIL import Image

from policy.multimodal import PolicyProcessor
from policy.vllm_engine import tokens_prompt

IMAGES = [Image.new("RGB", (640, 480), "red"), Image.new("RGB", (90, 300), "blue"), Image.new("RGB", (28, 28))]


def has_torchvision() -> bool:
    if importlib.util.find_spec("torchvision") is None:
        return False
    try:
        import torchvision.transforms.v2  # noqa: F401
        return True
    except Exception:  # noqa: BLE001  (a CUDA build on CPU torch fails while registering its ops)
        return False


@pytest.fixture(scope="module", params=["tiny", "qwen"])
def processor(request, tiny_model_dir, qwen_tokenizer_dir):
    from transformers import AutoTokenizer

    tiny = PolicyProcessor.from_pretrained(tiny_model_dir)
    if request.param == "tiny":
        return tiny
    return PolicyProcessor(tokenizer=AutoTokenizer.from_pretrained(str(qwen_tokenizer_dir)),
                           image_processor=tiny.image_processor)


def episode_ids(processor):
    """A prompt with two images, then a sandbox reply with a third (as the agent loop builds it)."""
    ids = processor.chat_prompt_ids("sys", "What is it?", IMAGES[:2])
    ids += processor.text_ids("Zoom.<code>\n```python\nprint(1)\n```\n</code><sandbox_output>")
    ids += processor.image_token_ids(IMAGES[2]) + processor.text_ids("</sandbox_output>")
    return ids


def test_vllms_prompt_updates_expand_our_prompt_to_our_ids(processor):
    from vllm.multimodal.processing.processor import PromptReplacement, apply_token_matches

    ids = episode_ids(processor)
    sent = tokens_prompt(ids, IMAGES, processor)["prompt_token_ids"]
    assert len(sent) < len(ids)
    grids = processor.pixel_inputs(IMAGES)["image_grid_thw"]
    merge = processor.image_processor.merge_size ** 2
    pad = processor.image_pad_id

    def replacement(item_idx: int, modality: str):  # qwen2_vl.py:1254-1260, with our image processor's grid
        return [pad] * (int(grids[item_idx].prod()) // merge)

    update = PromptReplacement(modality="image", target=[pad], replacement=partial(replacement, modality="image"))
    expanded, _ = apply_token_matches(sent, {"image": [[update.resolve(i)] for i in range(len(IMAGES))]})
    assert expanded == ids


@pytest.mark.skipif(not has_torchvision(), reason="vLLM's Qwen2-VL processor imports torchvision (qwen2_vl.py:43); "
                    "PyPI's torchvision is a CUDA build that cannot load here: runs where `.[vllm]` is installed")
def test_vllms_qwen2_vl_processor_expands_our_prompt(tiny_model_dir):
    from vllm.config import ModelConfig
    from vllm.multimodal import MULTIMODAL_REGISTRY

    processor = PolicyProcessor.from_pretrained(tiny_model_dir)
    ids = episode_ids(processor)
    budget = {"min_pixels": processor.min_pixels, "max_pixels": processor.max_pixels}
    model_config = ModelConfig(model=str(tiny_model_dir), dtype="float32", mm_processor_kwargs=budget)
    from vllm.multimodal.processing.context import TimingContext
    from vllm.multimodal.processing.inputs import ProcessorInputs

    mm_processor = MULTIMODAL_REGISTRY.create_processor(model_config)
    prompt = tokens_prompt(ids, IMAGES, processor)
    items = mm_processor.info.parse_mm_data(prompt["multi_modal_data"])  # context.py:628
    inputs = ProcessorInputs(prompt=prompt["prompt_token_ids"], mm_data_items=items,  # inputs.py:21
                             hf_processor_mm_kwargs=budget)
    out = mm_processor.apply(inputs, TimingContext(enabled=False))  # processor.py:1811
    assert out["prompt_token_ids"] == ids

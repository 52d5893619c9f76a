"""Our phase plan as vLLM's real SamplingParams and prompts (vllm/sampling_params.py, vllm/inputs/llm.py)."""
from PIL import Image

from policy.ats import TokenBytes
from policy.engine import GenerationRequest, SamplingSettings
from policy.sequence_monitor import SequenceMonitor
from policy.vllm_engine import to_sampling_params, tokens_prompt
from policy.vllm_phases import PhasedRequest


def phased(request, tokenizer):
    return PhasedRequest(request, SequenceMonitor(request.sampling, TokenBytes(tokenizer), frozenset({2}),
                                                  request.stop, request.in_code))


def test_text_and_code_phases_are_valid_sampling_params(tiny_tokenizer):
    """SamplingParams.__post_init__ validates (sampling_params.py:556); temperature 0 is greedy (:864)."""
    from vllm.sampling_params import RepetitionDetectionParams, SamplingType

    request = GenerationRequest([1, 2], sampling=SamplingSettings(seed=3, top_k=0, repetition_penalty=1.05,
                                                                  max_new_tokens=64), stop=["</code>", "</answer>"])
    state = phased(request, tiny_tokenizer)
    text = to_sampling_params(state.sampling_kwargs())
    assert text.sampling_type == SamplingType.RANDOM_SEED and text.temperature == 1.0 and text.max_tokens == 64
    assert text.stop == ["</code>", "</answer>", "<code>"] and text.include_stop_str_in_output
    assert text.output_text_buffer_length == 0  # nothing held back: the text equals the ids' decode
    assert text.logprobs == 0 and not text.skip_special_tokens and text.repetition_penalty == 1.05
    assert isinstance(text.repetition_detection, RepetitionDetectionParams)
    assert (text.repetition_detection.min_pattern_size, text.repetition_detection.max_pattern_size,
            text.repetition_detection.min_count) == (24, 170, 6)
    ids = tiny_tokenizer.encode("so <code>", add_special_tokens=False)
    state.absorb(ids, [0.0] * len(ids), "stop", "<code>")
    code = to_sampling_params(state.sampling_kwargs())
    assert code.sampling_type == SamplingType.GREEDY and code.stop == ["</code>", "</answer>"]
    assert code.max_tokens == 64 - len(ids)
    greedy = to_sampling_params(phased(GenerationRequest([1], sampling=SamplingSettings.greedy(8)), tiny_tokenizer)
                                .sampling_kwargs())
    assert greedy.sampling_type == SamplingType.GREEDY


def test_our_prompt_is_a_tokens_prompt_with_parsed_images(tiny_model_dir):
    """vllm/inputs/llm.py:111 TokensPrompt; vllm/renderers/inputs/preprocess.py:129 parses it as tokens;
    vllm/multimodal/parse.py reads its images."""
    from vllm.inputs import TokensPrompt
    from vllm.multimodal.parse import MultiModalDataParser
    from vllm.renderers.inputs.preprocess import parse_dec_only_prompt

    from policy.multimodal import PolicyProcessor

    processor = PolicyProcessor.from_pretrained(tiny_model_dir)
    images = [Image.new("RGB", (300, 200)), Image.new("L", (64, 90))]
    prompt = tokens_prompt(processor.chat_prompt_ids("s", "q", images), images, processor)
    assert set(prompt) <= set(TokensPrompt.__annotations__) | {"multi_modal_data"}
    assert parse_dec_only_prompt(prompt) is prompt
    items = MultiModalDataParser().parse_mm_data(prompt["multi_modal_data"])
    assert items.get_count("image") == 2

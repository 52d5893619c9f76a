"""VLLMEngine's pure parts without vLLM: prompt conversion, the ATS phase plan and its replay
(policy/vllm_phases.py), the weight-transfer bookkeeping. The same code against vLLM's real classes is
in tests_vllm/ (make test-vllm). Where vLLM and a GPU are, the last test runs the real engine."""
import importlib.util

import pytest
import torch
from PIL import Image

from policy.ats import TokenBytes
from policy.engine import GenerationRequest, SamplingSettings
from policy.repetition import RepetitionConfig
from policy.sequence_monitor import SequenceMonitor
from policy.vllm_engine import (VLLM_INSTALL_HINT, WORKER_EXTENSION, collapse_image_placeholders, tokens_prompt,
                                weight_transfer_init_info, weight_update_info)
from policy.vllm_phases import PhasedRequest, chosen_logprobs, first_difference, vllm_repetition_detection
from policy.vllm_weight_transfer import bucket_metadata, dtype_name, plan_buckets, receiver_ranks

HAS_VLLM = importlib.util.find_spec("vllm") is not None


@pytest.fixture(scope="module")
def processor(tiny_model_dir):
    from policy.multimodal import PolicyProcessor

    return PolicyProcessor.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def table(processor):
    return TokenBytes(processor.tokenizer)


def phased(request, table, eos=frozenset({2})):
    return PhasedRequest(request, SequenceMonitor(request.sampling, table, eos, request.stop, request.in_code))


def ids(processor, text):
    return processor.tokenizer.encode(text, add_special_tokens=False)


def test_image_placeholders_are_collapsed_for_vllm(processor):
    images = [Image.new("RGB", (500, 300)), Image.new("RGB", (64, 64))]
    prompt_ids = processor.chat_prompt_ids("s", "q", images)
    prompt = tokens_prompt(prompt_ids, images, processor)
    collapsed = prompt["prompt_token_ids"]
    assert collapsed.count(processor.image_pad_id) == 2 and len(prompt["multi_modal_data"]["image"]) == 2
    expanded, k = [], 0  # re-expanding each single pad by the same pixel budget gives back the original ids
    for t in collapsed:
        if t == processor.image_pad_id:
            expanded += [t] * processor.num_image_tokens(images[k])
            k += 1
        else:
            expanded.append(t)
    assert expanded == prompt_ids
    assert collapse_image_placeholders([5, 1, 7, 7, 7, 2, 7, 7], 1, 7, 2) == [5, 1, 7, 2, 7, 7]  # pads outside stay
    assert "." in WORKER_EXTENSION and ":" not in WORKER_EXTENSION  # vLLM splits the qualname on the last "."


def test_a_round_is_a_text_phase_then_a_code_phase(processor, table):
    request = GenerationRequest([1, 2], sampling=SamplingSettings(max_new_tokens=50, seed=4),
                                stop=["</code>", "</answer>"])
    state = phased(request, table)
    text = state.sampling_kwargs()
    assert text["temperature"] == 1.0 and text["stop"] == ["</code>", "</answer>", "<code>"]
    assert text["seed"] == 4 and text["max_tokens"] == 50 and text["logprobs"] == 0 and text["include_stop_str_in_output"]
    assert not text["skip_special_tokens"] and text["repetition_detection"]["min_pattern_size"] == 24
    first = ids(processor, "look closer <code>")
    state.absorb(first, [-0.5] * len(first), "stop", "<code>")
    assert not state.done and state.monitor.in_code and state.prompt_ids() == [1, 2] + first
    code = state.sampling_kwargs()
    assert code["temperature"] == 0.0 and code["stop"] == ["</code>", "</answer>"]
    assert code["max_tokens"] == 50 - len(first) and code["seed"] not in (None, 4)
    second = ids(processor, "\nx = 1\n</code>")
    state.absorb(second, [-0.25] * len(second), "stop", "</code>")
    result = state.result(processor.tokenizer.decode)
    assert state.done and result.finish_reason == "stop" and result.stop_string == "</code>" and not result.in_code
    assert result.token_ids == first + second and result.logprobs == [-0.5] * len(first) + [-0.25] * len(second)


def test_phase_plans_for_eval_resumed_code_and_greedy_text(processor, table):
    greedy = phased(GenerationRequest([1], sampling=SamplingSettings.greedy(20), stop=["</answer>"]), table)
    assert not greedy.switching and greedy.sampling_kwargs()["stop"] == ["</answer>"]  # one phase does it all
    assert greedy.sampling_kwargs()["temperature"] == 0.0
    resumed = phased(GenerationRequest([1], sampling=SamplingSettings(), stop=["</answer>"], in_code=True), table)
    assert resumed.sampling_kwargs()["temperature"] == 0.0 and resumed.sampling_kwargs()["stop"] == ["</answer>", "</code>"]
    # Greedy text with sampled code: the phases make it possible (one vLLM temperature could not).
    mixed = phased(GenerationRequest([1], sampling=SamplingSettings(temperature=0.0, code_temperature=0.6)), table)
    assert mixed.sampling_kwargs()["temperature"] == 0.0
    mixed.absorb(ids(processor, "a <code>"), [0.0] * len(ids(processor, "a <code>")), "stop", "<code>")
    assert mixed.sampling_kwargs()["temperature"] == 0.6
    off = RepetitionConfig(enabled=False)
    assert phased(GenerationRequest([1], sampling=SamplingSettings(repetition_stop=off)), table).sampling_kwargs()[
        "repetition_detection"] is None


def test_replay_cuts_where_the_monitor_fires_and_accepts_vllms_own_stops(processor, table):
    loop_cfg = RepetitionConfig(ngram=2, min_repeats=3, window=16)
    looping = phased(GenerationRequest([1], sampling=SamplingSettings(repetition_stop=loop_cfg, ats=False)), table)
    looping.absorb([5, 6] * 5, [-1.0] * 10, "repetition", "repetition_detected")
    assert looping.result(str).token_ids == [5, 6] * 3 and looping.finish_reason == "repetition"  # our detector's cut
    vllm_rep = phased(GenerationRequest([1], sampling=SamplingSettings(ats=False)), table)
    vllm_rep.absorb([5, 6, 7], [-1.0] * 3, "repetition", "repetition_detected")
    assert vllm_rep.finish_reason == "repetition" and len(vllm_rep.result(str).token_ids) == 3
    model_len = phased(GenerationRequest([1], sampling=SamplingSettings(max_new_tokens=99)), table)
    model_len.absorb([5, 6], [-1.0, -1.0], "length", None)
    assert model_len.finish_reason == "length"
    eos = phased(GenerationRequest([1], sampling=SamplingSettings()), table)
    eos.absorb([9, 2, 9], [-1.0] * 3, "stop", 2)
    assert eos.finish_reason == "eos" and eos.result(str).token_ids == [9, 2]
    with pytest.raises(RuntimeError, match="did not see the tag"):
        phased(GenerationRequest([1]), table).absorb([9, 9], [0.0, 0.0], "stop", "<code>")
    with pytest.raises(RuntimeError, match="stop tokens differ"):
        phased(GenerationRequest([1]), table).absorb([9, 9], [0.0, 0.0], "stop", 77)
    with pytest.raises(RuntimeError, match="no tokens"):
        phased(GenerationRequest([1]), table).absorb([], [], "length", None)


def test_failed_request_is_an_error_result_and_ids_differences_are_named(table):
    state = phased(GenerationRequest([1, 2, 3]), table)
    state.fail("ids differ")
    result = state.result(str)
    assert result.finish_reason == "error" and result.error == "ids differ" and result.token_ids == []
    assert "first difference at 2" in first_difference([1, 2, 3, 4], [1, 2, 9, 4])
    assert chosen_logprobs([4, 7], [{4: -0.25}, {7: -1.5, 3: -0.1}]) == [-0.25, -1.5]
    with pytest.raises(RuntimeError, match="logprobs=0"):
        chosen_logprobs([4], None)


def test_repetition_mapping_covers_exactly_our_detectors_range():
    cfg = RepetitionConfig(ngram=20, min_repeats=5, window=1024)
    assert vllm_repetition_detection(cfg) == {"min_pattern_size": 20, "max_pattern_size": 204, "min_count": 5}
    assert vllm_repetition_detection(cfg, max_pattern=64)["max_pattern_size"] == 64
    assert vllm_repetition_detection(cfg, max_pattern=5)["max_pattern_size"] == 20  # never below ngram
    assert vllm_repetition_detection(RepetitionConfig(enabled=False)) is None


def test_weight_transfer_bookkeeping():
    bucket = [("model.language_model.embed_tokens.weight", torch.zeros(8, 4, dtype=torch.bfloat16)),
              ("lm_head.weight", torch.zeros(8, 4))]
    meta = bucket_metadata(bucket)
    assert meta == [("model.language_model.embed_tokens.weight", (8, 4), "bfloat16"), ("lm_head.weight", (8, 4), "float32")]
    assert getattr(torch, dtype_name(torch.bfloat16)) is torch.bfloat16  # how vLLM's receiver reads it back
    assert weight_update_info(meta) == {"names": [m[0] for m in meta], "dtype_names": ["bfloat16", "float32"],
                                        "shapes": [[8, 4], [8, 4]]}
    assert weight_transfer_init_info("10.0.0.1", 29500, 3, 5) == {
        "master_address": "10.0.0.1", "master_port": 29500, "rank_offset": 3, "world_size": 5, "packed": False}
    params = [("a", (10,), torch.float32), ("b", (10,), torch.float32), ("c", (100,), torch.float32), ("d", (1,), torch.float32)]
    assert plan_buckets(params, max_bytes=80) == [["a", "b"], ["c"], ["d"]]
    assert receiver_ranks([1, 2, 2]) == ([1, 2, 4], 6)


def test_vllm_engine_needs_vllm_or_runs_for_real(tiny_model_dir):
    from policy.vllm_engine import VLLMEngine, VLLMEngineConfig

    if not HAS_VLLM or not torch.cuda.is_available():
        if not HAS_VLLM:
            with pytest.raises(RuntimeError) as info:
                VLLMEngine(tiny_model_dir)
            assert str(info.value) == VLLM_INSTALL_HINT and "pip install" in VLLM_INSTALL_HINT
        return
    # GPU machine with vLLM: the real engine's log-probs must agree with an HF forward of the same
    # tokens (random tiny-model logits are near ties, so greedy token equality across kernels is not asked).
    from policy.hf_engine import HFEngine, HFEngineConfig

    vllm_engine = VLLMEngine(tiny_model_dir, VLLMEngineConfig(dtype="bfloat16", gpu_memory_utilization=0.3, max_model_len=4096))
    hf = HFEngine(tiny_model_dir, HFEngineConfig(dtype="bfloat16", device="cuda"))
    image = Image.new("RGB", (300, 200), "red")
    prompt = hf.processor.chat_prompt_ids("s", "What?", [image])
    request = GenerationRequest(prompt, [image], SamplingSettings(max_new_tokens=16, seed=0), in_code=True)
    results = [vllm_engine.generate([request])[0] for _ in range(2)]
    assert results[0].finish_reason != "error", results[0].error  # the prompt-ids guard passed
    assert results[0].token_ids == results[1].token_ids  # in_code: greedy whatever the seed state
    model, p = hf.model, hf.processor
    full = torch.tensor([prompt + results[0].token_ids], device="cuda")
    extra = {k: v.to("cuda") for k, v in p.pixel_inputs([image]).items()}
    extra["pixel_values"] = extra["pixel_values"].to(torch.bfloat16)
    with torch.no_grad():
        logits = model(input_ids=full, mm_token_type_ids=(full == p.image_pad_id).int(), **extra).logits[0].float()
    expected = torch.log_softmax(logits[len(prompt) - 1:-1], -1).gather(1, full[0, len(prompt):, None]).squeeze(1).cpu()
    assert torch.allclose(torch.tensor(results[0].logprobs), expected, atol=0.05)


def test_a_request_the_engine_could_not_run_ends_only_its_episode(tiny_model_dir, scratch_dir):
    """What the prompt-ids guard returns (an "error" result) ends that episode with the engine's message;
    the HF engine stands in for vLLM here, failing one request exactly as PhasedRequest.fail does."""
    from envs.sandbox import Sandbox
    from policy.agent_config import load_rollout_config
    from policy.agent_loop import AgentLoop, EpisodeInput
    from policy.hf_engine import HFEngine

    class GuardedEngine(HFEngine):
        def generate(self, requests):
            results = super().generate(requests)
            failed = phased(requests[0], TokenBytes(self.tokenizer))
            failed.fail("vLLM expanded the prompt to other ids (test)")
            return [failed.result(self.tokenizer.decode)] + results[1:]

    path = scratch_dir / "guard.png"
    Image.new("RGB", (64, 64), "red").save(path)
    config = load_rollout_config(overrides={"max_new_tokens_per_round": 4, "max_turns": 1})
    with Sandbox() as sandbox, AgentLoop(GuardedEngine(tiny_model_dir), sandbox, config) as loop:
        bad, good = loop.run([EpisodeInput("Q", [str(path)]), EpisodeInput("Q", [str(path)])], SamplingSettings.greedy())
    assert bad.stop_reason == "error" and "other ids" in bad.error and bad.spans("model") == []
    assert good.stop_reason != "error" and good.spans("model")

"""HFEngine against the engine contract on the real tiny Qwen2.5-VL: log-probs, batching, stops, EOS,
repetition, images (mrope), weight loading."""
import math

import pytest
import torch
from PIL import Image

from policy.engine import GenerationRequest, GenerationResult, SamplingSettings
from policy.repetition import RepetitionConfig, RepetitionDetector

NO_LOOP_STOP = RepetitionConfig(enabled=False)


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    from policy.hf_engine import HFEngine, HFEngineConfig

    return HFEngine(tiny_model_dir, HFEngineConfig(seed=0, torch_threads=1))


@pytest.fixture(scope="module")
def prompts(engine):
    """Prompts of different lengths, with zero, one and two images of different sizes."""
    p = engine.processor
    small, wide = Image.new("RGB", (300, 200), (200, 30, 30)), Image.radial_gradient("L").resize((900, 400))
    return [
        (p.chat_prompt_ids("Be brief.", "What color is it?", [small]), [small]),
        (p.chat_prompt_ids(None, "How many cars are on the left side of the street?"), []),
        (p.chat_prompt_ids("Think.", "Compare the two.", [wide, small]), [wide, small]),
        (p.chat_prompt_ids(None, "Hi"), []),
    ]


def forward_logprobs(engine, prompt_ids, images, generated):
    """Log-probs of `generated` after `prompt_ids` from one plain forward pass (what a learner computes)."""
    model, p = engine.model, engine.processor
    ids = torch.tensor([prompt_ids + generated])
    extra = p.pixel_inputs(images)
    if images:
        extra["mm_token_type_ids"] = (ids == p.image_pad_id).int()
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), **extra).logits[0].float()
    logprobs = torch.log_softmax(logits[len(prompt_ids) - 1:-1], dim=-1)
    return logprobs.gather(1, torch.tensor(generated)[:, None]).squeeze(1)


def test_logprobs_match_a_separate_forward_pass(engine, prompts):
    # Sampled at T=0.7 with top-k: the reported log-probs are still those of the untempered policy.
    settings = SamplingSettings(temperature=0.7, top_k=20, max_new_tokens=24, seed=5, repetition_stop=NO_LOOP_STOP)
    requests = [GenerationRequest(ids, images, settings) for ids, images in prompts]
    for (ids, images), result in zip(prompts, engine.generate(requests)):
        # a random model may sample its end-of-turn token early; otherwise it runs to the length limit
        assert (len(result.token_ids), result.finish_reason) == (24, "length") or (
            result.finish_reason == "eos" and result.token_ids[-1] in engine.eos_ids)
        expected = forward_logprobs(engine, ids, images, result.token_ids)
        assert torch.allclose(torch.tensor(result.logprobs), expected, atol=2e-4), (result.logprobs[:4], expected[:4])


def test_batched_equals_unbatched_greedy(engine, prompts):
    settings = SamplingSettings.greedy(20, repetition_stop=NO_LOOP_STOP)
    requests = [GenerationRequest(ids, images, settings) for ids, images in prompts]
    batched = engine.generate(requests)
    for request, together in zip(requests, batched):
        alone = engine.generate([request])[0]
        assert together.token_ids == alone.token_ids
        assert max(abs(a - b) for a, b in zip(together.logprobs, alone.logprobs)) < 1e-4


def test_seeded_sampling_is_reproducible_and_seeds_differ(engine, prompts):
    ids, images = prompts[0]
    run = lambda seed: engine.generate([GenerationRequest(ids, images, SamplingSettings(max_new_tokens=16, seed=seed))])[0]
    assert run(11).token_ids == run(11).token_ids
    assert run(11).token_ids != run(12).token_ids


def test_stop_string_spanning_tokens_ends_generation(engine, prompts):
    ids, images = prompts[1]
    greedy = SamplingSettings.greedy(30, repetition_stop=NO_LOOP_STOP)
    free = engine.generate([GenerationRequest(ids, images, greedy)])[0]
    pieces = [engine.token_bytes[t] for t in free.token_ids]
    # A stop string made of the end of token 7 and the start of token 8 (it crosses a token boundary).
    k = next(i for i in range(7, 25) if len(pieces[i]) >= 1 and len(pieces[i + 1]) >= 1)
    stop = (pieces[k][-1:] + pieces[k + 1][:1]).decode("utf-8", errors="strict")
    text = b"".join(pieces)
    first_end = text.find(stop.encode()) + len(stop.encode())
    # Generation must end at the first token whose bytes complete the earliest occurrence.
    cut = next(i for i in range(len(pieces)) if len(b"".join(pieces[:i + 1])) >= first_end)
    stopped = engine.generate([GenerationRequest(ids, images, greedy, stop=["never-appears", stop])])[0]
    assert stopped.finish_reason == "stop" and stopped.stop_string == stop
    assert stopped.token_ids == free.token_ids[:cut + 1]
    assert stop in stopped.text


def test_repetition_stop_cuts_a_looping_greedy_generation(engine, prompts):
    ids, images = prompts[3]
    loose = engine.generate([GenerationRequest(ids, images, SamplingSettings.greedy(300, repetition_stop=NO_LOOP_STOP))])[0]
    cfg = RepetitionConfig(ngram=6, min_repeats=4, window=128)
    detector = RepetitionDetector(cfg)
    fires = next((i for i, t in enumerate(loose.token_ids) if detector.push(t)), None)
    assert fires is not None, "the tiny random model's greedy output is expected to loop: " + loose.text[-200:]
    stopped = engine.generate([GenerationRequest(ids, images, SamplingSettings.greedy(300, repetition_stop=cfg))])[0]
    assert stopped.finish_reason == "repetition"
    assert stopped.token_ids == loose.token_ids[:fires + 1]


def test_eos_and_load_weights(engine, prompts, tiny_model_dir):
    """Zeroing the final norm makes every logit equal: argmax is token 0, <|endoftext|>, an EOS."""
    from safetensors.torch import load_file

    norm = "model.language_model.norm.weight"
    original = engine.model.state_dict()[norm].clone()
    assert 0 in engine.eos_ids
    ids, images = prompts[0]
    try:
        engine.load_weights({norm: torch.zeros_like(original)})
        result = engine.generate([GenerationRequest(ids, images, SamplingSettings.greedy(10))])[0]
        assert result.finish_reason == "eos" and result.token_ids == [0]
        assert math.isclose(result.logprobs[0], -math.log(engine.model.config.text_config.vocab_size), rel_tol=1e-4)
    finally:
        engine.load_weights(load_file(str(tiny_model_dir / "model.safetensors")).items())
    assert torch.equal(engine.model.state_dict()[norm], original)
    with pytest.raises(KeyError, match="not in the policy model"):
        engine.load_weights({"no.such.weight": original})
    with pytest.raises(ValueError, match="shape mismatch"):
        engine.load_weights({norm: original[:3]})


def test_mismatched_image_placeholders_are_refused(engine, prompts):
    ids, images = prompts[0]
    with pytest.raises(ValueError, match="image placeholders"):
        engine.generate([GenerationRequest(ids, [], SamplingSettings(max_new_tokens=2))])


def test_result_contract_is_validated():
    with pytest.raises(ValueError, match="finish_reason"):
        GenerationResult(token_ids=[1], logprobs=[0.0], finish_reason="done")
    with pytest.raises(ValueError, match="top_p"):
        SamplingSettings(top_p=0)
    with pytest.raises(ValueError, match="prompt_ids"):
        GenerationRequest(prompt_ids=[])


def test_repetition_penalty_changes_choices_not_logprobs(engine, prompts):
    ids, images = prompts[1]
    settings = SamplingSettings.greedy(15, repetition_penalty=1e6, repetition_stop=NO_LOOP_STOP)
    result = engine.generate([GenerationRequest(ids, images, settings)])[0]
    # A huge penalty makes every already seen token (prompt or output) lose to unseen ones.
    assert len(set(result.token_ids)) == 15 and not set(result.token_ids) & set(ids)
    expected = forward_logprobs(engine, ids, images, result.token_ids)
    assert torch.allclose(torch.tensor(result.logprobs), expected, atol=2e-4)
    # Left padding is not "seen": batched with a longer prompt, the penalised choices do not change.
    longer = GenerationRequest(prompts[2][0], prompts[2][1], settings)
    assert engine.generate([GenerationRequest(ids, images, settings), longer])[0].token_ids == result.token_ids

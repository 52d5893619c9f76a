"""A phase's result as vLLM returns it (vllm/outputs.py RequestOutput / CompletionOutput, vllm/logprobs.py
Logprob): replayed, and checked against the prompt ids we recorded."""
from vllm.logprobs import Logprob
from vllm.outputs import CompletionOutput, RequestOutput

from policy.ats import TokenBytes
from policy.engine import GenerationRequest, SamplingSettings
from policy.sequence_monitor import SequenceMonitor
from policy.vllm_phases import PhasedRequest


def output(prompt_ids, token_ids, finish_reason, stop_reason):
    completion = CompletionOutput(index=0, text="", token_ids=token_ids, cumulative_logprob=None,
                                  logprobs=[{t: Logprob(logprob=-0.1 * (k + 1))} for k, t in enumerate(token_ids)],
                                  finish_reason=finish_reason, stop_reason=stop_reason)
    return RequestOutput(request_id="0", prompt=None, prompt_token_ids=prompt_ids, prompt_logprobs=None,
                         outputs=[completion], finished=True)


def state_for(tokenizer, prompt):
    request = GenerationRequest(prompt, sampling=SamplingSettings(max_new_tokens=40), stop=["</code>", "</answer>"])
    return PhasedRequest(request, SequenceMonitor(request.sampling, TokenBytes(tokenizer), frozenset({151645}),
                                                  request.stop, False))


def test_phases_from_real_outputs(qwen_tokenizer):
    prompt = qwen_tokenizer.encode("<|im_start|>assistant\n", add_special_tokens=False)
    state = state_for(qwen_tokenizer, prompt)
    text = qwen_tokenizer.encode("Zoom.<code>", add_special_tokens=False)
    state.absorb_output(output(prompt, text, "stop", "<code>"))
    assert not state.done and state.monitor.in_code
    code = qwen_tokenizer.encode("\nprint(1)\n</code>", add_special_tokens=False)
    state.absorb_output(output(prompt + text, code, "stop", "</code>"))
    result = state.result(qwen_tokenizer.decode)
    assert result.finish_reason == "stop" and result.token_ids == text + code and result.text.endswith("</code>")
    assert result.logprobs[:2] == [-0.1, -0.2] and len(result.logprobs) == len(text) + len(code)


def test_prompt_ids_guard_fails_the_request_with_the_difference(qwen_tokenizer):
    prompt = [151652, 151655, 151655, 151653, 42]
    state = state_for(qwen_tokenizer, prompt)
    state.absorb_output(output([151652, 151655, 151655, 151655, 151653, 42], [9], "stop", None))  # one pad more
    result = state.result(qwen_tokenizer.decode)
    assert result.finish_reason == "error" and result.token_ids == []
    assert "first difference at 3" in result.error and "pixel budget" in result.error

"""ATS on vLLM without a logits processor: each round is a chain of text and code phases.

vLLM samples a request at one temperature. GRPO-ATS wants temperature 1 for text and 0 inside
`<code>`. So VLLMEngine runs a request as phases: a text phase at `temperature` stops at `<code>`
(or at a request stop string); the code phase is the same request resubmitted from the ids so far at
`code_temperature`, stopping at `</code>`; then text again, until a request stop, EOS, the token
budget or the repetition stop. With prefix caching the resubmission only prefills its last partial
KV block. This is what the reference release does (stop at `<code>`, regenerate at T=0 to
`</code>`), and it needs nothing from vLLM's runner internals: it works on the V2 model runner,
under async scheduling and with CUDA graphs. (A logits processor reading tokens in `update_state`
sees async scheduling's `-1` placeholders instead: vllm/v1/worker/gpu_input_batch.py, the real ids
are swapped in later in gpu_model_runner.py `_sample`.)

Every phase's tokens are replayed through one SequenceMonitor per request, the same one the HF
engine drives token by token: request stop strings, EOS, the budget, our repetition detector and the
`<code>` tracker decide, so both engines cut and label rounds identically. vLLM's own stops only end
a phase early; where vLLM says more than the monitor (its repetition detection fired, or the model
length ran out) the replay accepts vLLM's reason.

Pure Python over plain data: tested without vLLM (tests/test_engine_vllm.py) and against vLLM's real
SamplingParams and detokenizer (tests_vllm/).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from envs.protocol import CODE_CLOSE, CODE_OPEN
from policy.engine import GenerationRequest, GenerationResult
from policy.repetition import RepetitionConfig
from policy.sequence_monitor import SequenceMonitor

_SEED_STRIDE = 1_000_003  # phase k of a seeded request samples with seed + k * stride (distinct streams)


def vllm_repetition_detection(config: RepetitionConfig, max_pattern: int | None = None) -> dict[str, int] | None:
    """Our repetition stop as vLLM's `RepetitionDetectionParams` fields (vllm/sampling_params.py:169).

    vLLM's check (vllm/v1/core/sched/utils.py:28, check_sequence_repetition) fires when the output
    ends in `min_count` back-to-back copies of a block of `min_pattern_size..max_pattern_size`
    tokens. With block sizes from `ngram` (copies of a shorter loop are copies of a longer block too,
    so nothing is missed) to `window // min_repeats`, every such tail is also `min_repeats`
    non-overlapping copies of an `ngram` run within `window` tokens: our detector has fired at or
    before vLLM's stop, so vLLM only ends the phase early and never cuts where we would not.

    vLLM runs the check in Python for every request at every step, one pass per block size: measured
    here (2 busy cores) ~134 us per request per step for sizes 20..204, ~34 us for 20..64, i.e. ~34 ms
    vs ~9 ms of scheduler time per step at 256 running requests. `max_pattern` caps the block size;
    longer loops are then still cut by our monitor in the replay, only not stopped early.
    """
    if not config.enabled:
        return None
    top = config.window // config.min_repeats
    if max_pattern is not None:
        top = max(config.ngram, min(top, max_pattern))
    return {"min_pattern_size": config.ngram, "max_pattern_size": top, "min_count": config.min_repeats}


def _dedupe(items: list[str]) -> list[str]:
    return list(dict.fromkeys(s for s in items if s))


@dataclass
class PhasedRequest:
    """One request's progress through its phases; `monitor` holds every token generated so far."""

    request: GenerationRequest
    monitor: SequenceMonitor
    phases: int = 0
    max_pattern: int | None = None  # cap of vLLM's repetition block size (vllm_repetition_detection)
    finish_reason: str | None = None  # set when the request is done
    error: str | None = None
    _expected_flip: bool | None = field(default=None, repr=False)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    @property
    def switching(self) -> bool:
        """ATS splits this request into phases (off, or equal temperatures: one phase does it all)."""
        s = self.request.sampling
        return s.ats and s.code_temperature != s.temperature

    def prompt_ids(self) -> list[int]:
        """The next phase's prompt: the request's prompt plus everything generated so far."""
        return list(self.request.prompt_ids) + self.monitor.token_ids

    def sampling_kwargs(self) -> dict[str, Any]:
        """vllm.SamplingParams keyword arguments of the next phase (vllm/sampling_params.py:276).

        `logprobs=0` returns the sampled token's log-prob only; the engine's `logprobs_mode=
        "raw_logprobs"` makes it the untempered one. `include_stop_str_in_output` and no skipping of
        special tokens keep vLLM's text equal to the decode of its token ids.
        """
        s = self.request.sampling
        in_code = self.monitor.in_code
        stops = list(self.request.stop)
        if self.switching:
            stops.append(CODE_CLOSE if in_code else CODE_OPEN)
        seed = None if s.seed is None else (s.seed + self.phases * _SEED_STRIDE) % (1 << 63)
        return dict(
            temperature=self.monitor.next_temperature(), top_p=s.top_p, top_k=s.top_k,
            repetition_penalty=s.repetition_penalty, seed=seed,
            max_tokens=s.max_new_tokens - len(self.monitor.token_ids),
            stop=_dedupe(stops), include_stop_str_in_output=True, logprobs=0,
            skip_special_tokens=False, spaces_between_special_tokens=False,
            repetition_detection=vllm_repetition_detection(s.repetition_stop, self.max_pattern),
        )

    def absorb(self, token_ids: list[int], logprobs: list[float], finish_reason: str | None,
               stop_reason: Any) -> None:
        """Replay one phase's output (vLLM's CompletionOutput fields) and decide what comes next."""
        if not token_ids:
            raise RuntimeError(f"vLLM returned no tokens for a phase (finish_reason={finish_reason!r}); "
                               "is max_model_len smaller than the rollout's max_total_tokens?")
        was_in_code = self.monitor.in_code
        self.phases += 1
        for token, logprob in zip(token_ids, logprobs):
            if self.monitor.push(token, logprob) is not None:
                self.finish_reason = self.monitor.finish_reason
                return
        if finish_reason == "repetition":  # vLLM's detector (FinishReason.REPETITION, vllm/v1/engine/__init__.py:66)
            self.finish_reason = "repetition"
        elif finish_reason == "length":  # only max_model_len can end a phase before the monitor's budget
            self.finish_reason = "length"
        elif finish_reason == "stop" and self.switching and stop_reason in (CODE_OPEN, CODE_CLOSE):
            if self.monitor.in_code == was_in_code:
                raise RuntimeError(
                    f"vLLM stopped a phase at {stop_reason!r} but the code tracker did not see the tag "
                    f"complete (tokens {token_ids[-4:]}): vLLM's stop-string matching and "
                    "policy.ats.CodeSpanTracker disagree")
        else:
            raise RuntimeError(
                f"vLLM ended a phase with finish_reason={finish_reason!r}, stop_reason={stop_reason!r} after "
                f"{len(token_ids)} tokens, where the request's own stops ({self.request.stop}, EOS, budget "
                f"{self.request.sampling.max_new_tokens}) did not fire: vLLM's stop tokens differ from the engine's")

    def absorb_output(self, output) -> None:
        """One phase's vllm RequestOutput (vllm/outputs.py:129; its CompletionOutput, outputs.py:51):
        the prompt-ids guard, then the replay."""
        expected, got = self.prompt_ids(), list(output.prompt_token_ids or [])
        if got != expected:
            self.fail("vLLM expanded the prompt to other ids than the ones recorded for training ("
                      + first_difference(expected, got) + "): check that vLLM's image processor uses "
                      "the same pixel budget as PolicyProcessor (VLLMEngineConfig.min_pixels/max_pixels)")
            return
        completion = output.outputs[0]
        ids = list(completion.token_ids)
        self.absorb(ids, chosen_logprobs(ids, completion.logprobs), completion.finish_reason, completion.stop_reason)

    def fail(self, message: str) -> None:
        self.finish_reason, self.error = "error", message

    def result(self, decode) -> GenerationResult:
        m = self.monitor
        if self.finish_reason == "error":
            return GenerationResult(token_ids=[], logprobs=[], finish_reason="error", error=self.error,
                                    in_code=self.request.in_code)
        return GenerationResult(token_ids=m.token_ids, logprobs=m.logprobs, finish_reason=self.finish_reason,
                                text=decode(m.token_ids), stop_string=m.stop_string, in_code=m.in_code)


def chosen_logprobs(token_ids: Sequence[int], per_token: Sequence[Mapping[int, Any]] | None) -> list[float]:
    """The chosen token's log-prob from vLLM's per-position {token_id: Logprob} dicts (vllm/logprobs.py)."""
    if per_token is None or len(per_token) != len(token_ids):
        raise RuntimeError("vLLM returned no per-token log-probs: requests must set logprobs=0")
    return [float(getattr(d[t], "logprob", d[t])) for t, d in zip(token_ids, per_token)]


def first_difference(ours: list[int], theirs: list[int]) -> str:
    """A short description of where two id lists part (for the prompt-ids guard's error)."""
    n = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
    return (f"{len(ours)} ids recorded, {len(theirs)} from vLLM, first difference at {n}: "
            f"ours {ours[n:n + 5]}, vLLM {theirs[n:n + 5]}")

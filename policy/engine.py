"""The engine contract: what the agent loop asks of a generation engine (HF on CPU/GPU, vLLM on GPU).

Token in, token out. A request is a prompt as token ids (images already expanded into their
`<|vision_start|><|image_pad|>*n<|vision_end|>` placeholders, see policy/multimodal.py) plus the
images it references, in order. A result is the generated token ids, one log-prob per generated
token, and why generation stopped. Nothing here tokenises text the caller already holds.

Adaptive temperature sampling (ATS, the "-ATS" of GRPO-ATS) lives inside the engine: per sequence,
tokens sampled while the text is inside an open `<code>` block use `code_temperature` (0 = argmax),
everything else uses `temperature`. `in_code` says the prompt already ends inside an open `<code>`
block, so a generation resumed mid-code stays greedy until `</code>`.

Log-probs are always those of the chosen token under the *untempered* policy: log_softmax of the raw
model logits (temperature 1, no top-k/top-p, no repetition penalty). That is the distribution GRPO's
importance ratio and KL are defined on, and what the learner recomputes with a plain forward pass, so
the two agree whatever temperature actually picked the token (the reference release also scores every
token at temperature 1).
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from policy.repetition import RepetitionConfig

if TYPE_CHECKING:  # PIL and torch are only needed by implementations
    import torch
    from PIL import Image

FINISH_REASONS = ("stop", "length", "eos", "repetition", "error")


@dataclass
class SamplingSettings:
    """How to sample one request. Defaults are GRPO-ATS rollouts: T=1 text, greedy code.

    temperature: for text outside `<code>` blocks (0 = greedy).
    code_temperature: inside open `<code>` blocks when `ats` is on (0 = greedy).
    ats: switch to `code_temperature` inside code; off = `temperature` everywhere.
    top_p / top_k: nucleus and top-k filtering of sampled (non-greedy) tokens; 1.0 / 0 = off
        (note: Hugging Face's own default top_k is 50; ours is off).
    repetition_penalty: CTRL-style penalty on tokens already in prompt or output (1.0 = off;
        the paper's RL uses 1.05). Affects which token is chosen, never the reported log-probs.
    max_new_tokens: generation budget of this request.
    seed: per-request seed; the same seed and prompt give the same tokens (on one engine/device).
    repetition_stop: the looping-generation detector (policy/repetition.py).
    """

    temperature: float = 1.0
    code_temperature: float = 0.0
    ats: bool = True
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    max_new_tokens: int = 512
    seed: int | None = None
    repetition_stop: RepetitionConfig = field(default_factory=RepetitionConfig)

    def __post_init__(self) -> None:
        if isinstance(self.repetition_stop, Mapping):  # built from a Hydra/YAML node
            self.repetition_stop = RepetitionConfig(**self.repetition_stop)
        problems = []
        if self.temperature < 0 or self.code_temperature < 0:
            problems.append(f"temperatures must be >= 0 (got {self.temperature}, code {self.code_temperature})")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1] (got {self.top_p})")
        if self.top_k < 0:
            problems.append(f"top_k must be >= 0, 0 = off (got {self.top_k})")
        if self.repetition_penalty <= 0:
            problems.append(f"repetition_penalty must be > 0, 1.0 = off (got {self.repetition_penalty})")
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be >= 1 (got {self.max_new_tokens})")
        if problems:
            raise ValueError("invalid sampling settings: " + "; ".join(problems))

    def temperature_for(self, in_code: bool) -> float:
        """The temperature of the next token, given whether the text is inside an open <code> block."""
        return self.code_temperature if (self.ats and in_code) else self.temperature

    @classmethod
    def greedy(cls, max_new_tokens: int = 512, **overrides: Any) -> "SamplingSettings":
        """Evaluation decoding: argmax everywhere, ATS off."""
        return cls(temperature=0.0, code_temperature=0.0, ats=False, max_new_tokens=max_new_tokens, **overrides)


@dataclass
class GenerationRequest:
    """One sequence to continue.

    prompt_ids: the full prompt, images already expanded into placeholder tokens.
    images: every image the prompt's placeholders refer to, in order of appearance (PIL images).
    stop: stop strings; generation ends right after the token that completes one of them.
    in_code: the prompt already ends inside an open `<code>` block (ATS state carries over).
    """

    prompt_ids: list[int]
    images: list["Image.Image"] = field(default_factory=list)
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    stop: list[str] = field(default_factory=list)
    in_code: bool = False

    def __post_init__(self) -> None:
        if not self.prompt_ids:
            raise ValueError("GenerationRequest.prompt_ids is empty: a prompt needs at least one token")


@dataclass
class GenerationResult:
    """What one request produced.

    token_ids: every generated token, including the one that completed a stop string or the EOS.
        Because tokens span several characters, the decoded text of the last token may run past
        the stop string: `text` is the decode of all `token_ids`, the stop string is not cut off.
    logprobs: one per token in token_ids, under the untempered (T=1) policy; see the module doc.
    finish_reason: "stop" (a stop string), "eos" (an end-of-sequence token), "length"
        (max_new_tokens), "repetition" (the looping detector fired) or "error" (this request could
        not be run, `error` says why; no tokens; the other requests of the batch go on).
    stop_string: which stop string matched, for finish_reason "stop".
    in_code: whether the text (prompt state + generated) ends inside an open `<code>` block.
    """

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str
    text: str = ""
    stop_string: str | None = None
    in_code: bool = False
    error: str | None = None

    def __post_init__(self) -> None:
        if self.finish_reason not in FINISH_REASONS:
            raise ValueError(f"finish_reason {self.finish_reason!r} is not one of {FINISH_REASONS}")
        if len(self.logprobs) != len(self.token_ids):
            raise ValueError(f"{len(self.logprobs)} log-probs for {len(self.token_ids)} tokens")


class Engine(abc.ABC):
    """A batched generation engine. Implementations: HFEngine (policy/hf_engine.py), VLLMEngine."""

    @abc.abstractmethod
    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """Continue every request (batched internally); results come back in request order."""

    @abc.abstractmethod
    def load_weights(self, weights: Mapping[str, "torch.Tensor"] | Iterable[tuple[str, "torch.Tensor"]]) -> None:
        """Replace the policy's weights with these named tensors (a state_dict or (name, tensor) pairs).

        Names are those of the Hugging Face model's state_dict (`model.language_model...`) or of a saved
        checkpoint (`model.layers...`, `visual...`); a subset updates only those tensors.
        """

    @property
    @abc.abstractmethod
    def tokenizer(self):
        """The tokenizer (a transformers PreTrainedTokenizerBase)."""

    @property
    @abc.abstractmethod
    def processor(self):
        """The PolicyProcessor (policy/multimodal.py): image placeholders, pixel inputs, chat prompts."""

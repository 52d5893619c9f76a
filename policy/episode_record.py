"""What one agent-loop episode leaves behind: the token sequence, its masks, log-probs and the story of it.

The sequence is `token_ids[:prompt_len]` (chat prompt + any forced assistant prefix), then model
rounds and sandbox replies. `loss_mask` is 1 exactly on tokens the model generated and 0 on prompt,
prefix and sandbox tokens (the `<sandbox_output>` tags included); `logprobs` hold the sampling-time
log-prob of each model token and 0.0 elsewhere. `segments` say which span is which.

`to_dict` gives plain Python / numpy / bytes (cheap to ship through Ray); `from_dict` inverts it.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

STOP_REASONS = (
    "answer",        # the model closed </answer>
    "eos",           # the model ended its reply (end-of-sequence token) without an answer
    "max_turns",     # the turn limit was reached with code still to run
    "round_tokens",  # one round used max_new_tokens_per_round without stopping
    "total_tokens",  # the sequence reached max_total_tokens
    "repetition",    # the looping detector stopped the generation
    "error",         # the episode could not go on (e.g. its input image could not be opened)
)
SEGMENT_KINDS = ("prompt", "prefix", "model", "sandbox")


@dataclass
class CodeRun:
    """One code block and what the sandbox made of it."""

    turn: int
    code: str
    ok: bool
    stdout: str = ""
    error: str | None = None
    image_paths: list[str] = field(default_factory=list)  # images the sandbox returned (saved copies if configured)
    images_shown: int = 0        # how many of them the model got as image inputs (the episode limit may cut)
    timed_out: bool = False
    fixes: list[str] = field(default_factory=list)
    duration_s: float = 0.0
    sandbox_failed: bool = False  # the sandbox itself failed (server gone), not the model's code


@dataclass
class EpisodeRecord:
    id: str
    question: str
    token_ids: list[int]
    loss_mask: list[int]
    logprobs: list[float]
    prompt_len: int
    segments: list[tuple[str, int, int]]   # (kind, start, end) in token positions, in order
    images: list[Any]                       # PIL images in placeholder order, as the model saw them (resized)
    image_paths: list[str]                  # where each image came from (input path or saved sandbox output)
    stop_reason: str
    turns: int                              # model generation rounds
    code_runs: list[CodeRun] = field(default_factory=list)
    response_text: str = ""                 # decoded text after the prompt (model + sandbox replies)
    answer: str | None = None               # the last <answer> the model wrote, if any
    reference: str | None = None            # the expected answer, when the caller gave one
    meta: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)  # engine_s, sandbox_s, wait_s, total_s (see agent_loop)
    error: str | None = None
    sandbox_failed: bool = False  # the sandbox itself failed under this episode (start or a code run)

    def __post_init__(self) -> None:
        n = len(self.token_ids)
        if not (len(self.loss_mask) == len(self.logprobs) == n):
            raise ValueError(f"episode {self.id}: {n} tokens, {len(self.loss_mask)} mask values, "
                             f"{len(self.logprobs)} log-probs: they must be the same length")
        if self.stop_reason not in STOP_REASONS:
            raise ValueError(f"episode {self.id}: stop reason {self.stop_reason!r} is not one of {STOP_REASONS}")

    # ---- counts the trainer and the eval table log --------------------------------------------
    @property
    def code_blocks(self) -> int:
        return len(self.code_runs)

    @property
    def code_successes(self) -> int:
        return sum(r.ok for r in self.code_runs)

    @property
    def repairs(self) -> int:
        """Code runs the sandbox had to fix before running (autopep8, crop clamping, path mapping...)."""
        return sum(bool(r.fixes) for r in self.code_runs)

    @property
    def timeouts(self) -> int:
        return sum(r.timed_out for r in self.code_runs)

    @property
    def model_tokens(self) -> int:
        return int(sum(self.loss_mask))

    def spans(self, kind: str) -> list[tuple[int, int]]:
        return [(s, e) for k, s, e in self.segments if k == kind]

    # ---- shipping -----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Plain data: int32/float32 arrays for the sequence, PNG bytes for the images."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["token_ids"] = np.asarray(self.token_ids, dtype=np.int32)
        out["loss_mask"] = np.asarray(self.loss_mask, dtype=np.int8)
        out["logprobs"] = np.asarray(self.logprobs, dtype=np.float32)
        out["segments"] = [list(s) for s in self.segments]
        out["images"] = [_png_bytes(im) for im in self.images]
        out["code_runs"] = [vars(r).copy() for r in self.code_runs]
        out["counts"] = {"code_blocks": self.code_blocks, "code_successes": self.code_successes,
                         "repairs": self.repairs, "timeouts": self.timeouts, "model_tokens": self.model_tokens}
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "EpisodeRecord":
        from PIL import Image

        kwargs = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        kwargs["token_ids"] = [int(t) for t in data["token_ids"]]
        kwargs["loss_mask"] = [int(m) for m in data["loss_mask"]]
        kwargs["logprobs"] = [float(x) for x in data["logprobs"]]
        kwargs["segments"] = [tuple(s) for s in data["segments"]]
        kwargs["images"] = [Image.open(io.BytesIO(b)).convert("RGB") for b in data["images"]]
        kwargs["code_runs"] = [CodeRun(**r) for r in data.get("code_runs", [])]
        return cls(**kwargs)


def _png_bytes(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()

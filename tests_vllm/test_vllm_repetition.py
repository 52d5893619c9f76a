"""vLLM's repetition detection with the parameters we derive from our RepetitionConfig never stops a
generation our own detector would not have stopped by then (vllm/v1/core/sched/utils.py:28)."""
import random

from vllm.sampling_params import RepetitionDetectionParams
from vllm.v1.core.sched.utils import check_sequence_repetition

from policy.repetition import RepetitionConfig, RepetitionDetector
from policy.vllm_phases import vllm_repetition_detection


def test_vllm_fires_only_after_our_detector():
    rng = random.Random(0)
    fired_both = 0
    for cfg in (RepetitionConfig(ngram=20, min_repeats=5, window=1024), RepetitionConfig(ngram=4, min_repeats=3, window=60)):
        params = RepetitionDetectionParams(**vllm_repetition_detection(cfg))
        for _ in range(40):
            period = rng.randint(1, 2 * params.max_pattern_size)
            block = [rng.randrange(50) for _ in range(period)]
            stream = [rng.randrange(1000, 2000) for _ in range(rng.randint(0, 50))] + block * 12
            ours, ours_at = RepetitionDetector(cfg), None
            for i, token in enumerate(stream[:3000]):
                if ours.push(token) and ours_at is None:
                    ours_at = i
                if check_sequence_repetition(stream[:i + 1], params):  # what the scheduler checks each step
                    assert ours_at is not None and ours_at <= i, (period, i)
                    fired_both += 1
                    break
    assert fired_both > 20  # loops within the detectable periods were caught by both


def test_healthy_text_never_trips_vllms_detector():
    rng = random.Random(1)
    params = RepetitionDetectionParams(**vllm_repetition_detection(RepetitionConfig()))
    stream = [rng.randrange(5000) for _ in range(2000)] + [7] * 30  # a run of one token shorter than ngram * repeats
    assert not any(check_sequence_repetition(stream[:i], params) for i in range(1, len(stream) + 1, 7))

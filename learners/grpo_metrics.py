"""The figures of one GRPO step (what docs/grpo.md explains) and its console line (pure)."""
from __future__ import annotations

import math
from collections import Counter

import numpy as np

from rewards.format import check_format


def _mean(values) -> float:
    values = list(values)
    return float(sum(values) / len(values)) if values else math.nan


def rollout_metrics(records: list[dict], rewards: list[dict]) -> dict:
    """Reward and its parts, accuracy, format, code use and success, turns, length, sandbox latency."""
    runs = [run for r in records for run in r.get("code_runs", [])]
    durations = [run.get("duration_s", 0.0) for run in runs]
    model_tokens = [int(np.sum(r["loss_mask"])) for r in records]
    stops = Counter(r["stop_reason"] for r in records)
    return {
        "reward": _mean(x["total"] for x in rewards),
        "reward_format": _mean(x["format"] for x in rewards),
        "reward_result": _mean(x["result"] for x in rewards),
        "reward_consistency": _mean(x["consistency"] for x in rewards),
        "accuracy": _mean(float(x["result"] > 0) for x in rewards),
        "format_rate": _mean(float(check_format(r.get("response_text") or "")[0]) for r in records),
        "code_use_rate": _mean(float(bool(r.get("code_runs"))) for r in records),
        "code_success_rate": _mean(float(bool(run.get("ok"))) for run in runs) if runs else math.nan,
        "turns": _mean(r["turns"] for r in records),
        "response_tokens": _mean(model_tokens),
        "generated_tokens": float(sum(model_tokens)),
        "sandbox_p50_s": float(np.percentile(durations, 50)) if durations else math.nan,
        "sandbox_p95_s": float(np.percentile(durations, 95)) if durations else math.nan,
        "episodes": float(len(records)),
        **{f"stop/{reason}": float(n) for reason, n in stops.items()},
    }


def learner_metrics(per_rank: list[dict]) -> dict:
    """KL, clip fraction, entropy, loss parts, grad norm and the rollout/learner log-prob gap, over ranks."""
    minis = [mini for rank in per_rank for mini in rank["mini_batches"]]
    trained = sum(m.get("trained_tokens", 0.0) for m in minis)
    model = sum(m.get("model_tokens", 0.0) for m in minis)
    gap_tokens = sum(r["logprob_gap_tokens"] for r in per_rank)
    first = per_rank[0]["mini_batches"]
    out = {
        "pg_loss": sum(m.get("pg_sum", 0.0) for m in minis) / trained if trained else math.nan,
        "kl": sum(m.get("kl_sum", 0.0) for m in minis) / trained if trained else math.nan,
        "clip_fraction": sum(m.get("clipped_tokens", 0.0) for m in minis) / trained if trained else math.nan,
        "entropy": sum(m.get("entropy_sum", 0.0) for m in minis) / model if model else math.nan,
        "trained_tokens": trained,
        "logprob_gap_mean": sum(r["logprob_gap_sum"] for r in per_rank) / gap_tokens if gap_tokens else math.nan,
        "logprob_gap_max": max(r["logprob_gap_max"] for r in per_rank),
        "grad_norm": first[-1]["grad_norm"],
        "lr": first[0]["lr"],
        "update_tokens": float(sum(m.get("tokens", 0) for m in minis)),
    }
    if any("tis_weight_sum" in m for m in minis):
        out["tis_weight_mean"] = sum(m.get("tis_weight_sum", 0.0) for m in minis) / trained if trained else math.nan
        out["tis_capped_fraction"] = sum(m.get("tis_capped", 0.0) for m in minis) / trained if trained else math.nan
    return out


PHASES = ("generate_s", "reward_s", "logprob_s", "update_s", "sync_s")


def format_line(stage: str, step: int, total: int, m: dict) -> str:
    """One console line per step: the numbers a person watching the run wants."""
    def f(key, spec=".3f"):
        value = m.get(key, math.nan)
        return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)
    return (f"[{stage}] step {step:>5}/{total} | reward {f('reward')} acc {f('accuracy', '.2f')} "
            f"fmt {f('format_rate', '.2f')} code {f('code_use_rate', '.2f')}/{f('code_success_rate', '.2f')} | "
            f"kl {f('kl', '.4f')} clip {f('clip_fraction', '.3f')} ent {f('entropy', '.2f')} "
            f"gap {f('logprob_gap_mean', '.1e')} | zero-var {int(m.get('zero_variance_groups', 0))} "
            f"dropped {int(m.get('untrainable', 0))} | gen {f('generate_s', '.1f')}s upd {f('update_s', '.1f')}s "
            f"sync {f('sync_s', '.2f')}s step {f('step_s', '.1f')}s")

"""From a step's rollouts to what the learners train on (pure Python, driver side).

Records (EpisodeRecord.to_dict(), as the rollout actors return them) are grouped by prompt (episode
id `prompt#k`), episodes that cannot be trained are set apart with a reason, rewards become
group-normalised advantages, and the trajectories are dealt to mini-batches, learner ranks and micro
batches. Every rank gets the same number of micro batches with at least one trajectory each: ZeRO-3
gathers parameters inside the forward, so every rank must run the same modules the same number of
times. A slot with nothing left to fill gets a zero-weight copy of a trajectory (its loss is exactly 0).
"""
from __future__ import annotations

import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from learners.grpo_loss import group_advantages

UNTRAINABLE = ("no_model_tokens", "image_placeholders", "overlong", "sandbox_failed")


def prompt_id(episode_id: str) -> str:
    """`prompt#k` -> `prompt` (the group an episode belongs to)."""
    return episode_id.rsplit("#", 1)[0]


def untrainable_reason(record: dict, vision_ids: set[int], max_tokens: int) -> str | None:
    """Why an episode cannot be trained on, or None.

    - sandbox failed: the sandbox itself failed under it (could not start it, or died under a code
      run), so it says nothing about the model (the trainer first runs such groups again);
    - no model tokens: the episode never reached the model (a missing or corrupt input image);
    - image placeholders: the model wrote `<|vision_start|>` / `<|image_pad|>` itself; the learner
      cannot feed those without pixels;
    - overlong: longer than the learner takes (stage.grpo.max_train_tokens).
    """
    mask = record["loss_mask"]
    ids = record["token_ids"]
    if record.get("sandbox_failed") or any(run.get("sandbox_failed") for run in record.get("code_runs", [])):
        return "sandbox_failed"
    if not any(int(m) for m in mask):  # not sum(): the serialised mask is int8 and 256 model tokens sum to 0
        return "no_model_tokens"
    if any(m and int(t) in vision_ids for t, m in zip(ids, mask)):
        return "image_placeholders"
    if len(ids) > max_tokens:
        return "overlong"
    return None


def reward_sample(record: dict) -> dict:
    """What the reward actor scores for one episode."""
    return {"text": record.get("response_text") or "", "reference": record.get("reference") or "",
            "question": record.get("question", ""), "image_paths": list(record.get("image_paths") or [])[:1],
            "sample_id": record["id"]}


@dataclass
class Trajectory:
    """One trainable episode, as plain data the learners collate (see learners/rollout_collate.py)."""

    id: str
    token_ids: list[int]
    loss_mask: list[int]
    rollout_logprobs: list[float]
    segments: list
    images: list[bytes]
    advantage: float
    reward: float
    weight: float = 1.0  # 0: a filler copy in an otherwise empty micro batch
    ref_logprobs: list[float] | None = None  # from a separate reference group (len(token_ids) - 1 values)

    @classmethod
    def from_record(cls, record: dict, advantage: float, reward: float) -> "Trajectory":
        return cls(id=record["id"], token_ids=[int(t) for t in record["token_ids"]],
                   loss_mask=[int(m) for m in record["loss_mask"]],
                   rollout_logprobs=[float(x) for x in record["logprobs"]], segments=[list(s) for s in record["segments"]],
                   images=list(record["images"]), advantage=advantage, reward=reward)

    @property
    def model_tokens(self) -> int:
        return sum(self.loss_mask) if self.weight else 0

    def filler(self) -> "Trajectory":
        return Trajectory(self.id + "/filler", self.token_ids, self.loss_mask, self.rollout_logprobs, self.segments,
                          self.images, 0.0, self.reward, weight=0.0, ref_logprobs=self.ref_logprobs)


@dataclass
class GroupOutcome:
    """A step's trajectories after grouping and advantages, with what was set apart and why."""

    trajectories: list[Trajectory] = field(default_factory=list)
    untrainable: Counter = field(default_factory=Counter)
    groups: int = 0
    zero_variance_groups: int = 0
    dropped_groups: list[str] = field(default_factory=list)  # zero-variance groups left out (dynamic sampling)


def build_trajectories(records: list[dict], rewards: list[float], *, vision_ids: set[int], max_tokens: int,
                       untrainable: str = "drop", zero_variance: str = "keep", eps: float = 1e-6) -> GroupOutcome:
    """Group by prompt, set apart untrainable episodes, compute advantages.

    untrainable: "drop" (left out of the group before its mean and std) or "zero_weight" (scored and
    kept in the group's statistics, but never trained on). zero_variance: "keep" (trained with
    advantage 0: only the KL term moves them) or "drop" (left out; the caller may refill the batch).
    """
    if untrainable not in ("drop", "zero_weight") or zero_variance not in ("keep", "drop"):
        raise ValueError(f"untrainable={untrainable!r} (drop|zero_weight), zero_variance={zero_variance!r} (keep|drop)")
    groups: dict[str, list[tuple[dict, float, str | None]]] = defaultdict(list)
    for record, reward in zip(records, rewards):
        reason = untrainable_reason(record, vision_ids, max_tokens)
        groups[prompt_id(record["id"])].append((record, float(reward), reason))
    out = GroupOutcome(groups=len(groups))
    for gid, members in groups.items():
        for _record, _reward, reason in members:
            if reason:
                out.untrainable[reason] += 1
        in_stats = [m for m in members if m[2] is None or untrainable == "zero_weight"]
        advantages, flat = group_advantages([reward for _r, reward, _reason in in_stats], eps)
        if flat:
            out.zero_variance_groups += 1
            if zero_variance == "drop":
                out.dropped_groups.append(gid)
                continue
        for (record, reward, reason), advantage in zip(in_stats, advantages):
            if reason is None:
                out.trajectories.append(Trajectory.from_record(record, advantage, reward))
    return out


# ---- dealing to mini-batches, ranks and micro batches ---------------------------------------------
def deal(trajectories: list[Trajectory], *, mini_batches: int, num_ranks: int, micro_batches_per_rank: int,
         micro_batch: int, seed: int) -> list[list[list[list[Trajectory]]]]:
    """[mini-batch][rank][micro batch] -> trajectories, each rank with exactly micro_batches_per_rank
    micro batches of 1..micro_batch trajectories.

    Trajectories are shuffled (seeded) into mini-batches; within one, sorted by length so a micro
    batch holds similar lengths (little padding), and micro batches are dealt to ranks in a snake
    order so every rank gets a similar number of tokens. Empty slots get a zero-weight filler.
    """
    if not trajectories:
        raise ValueError("no trainable trajectories to deal")
    capacity = num_ranks * micro_batches_per_rank * micro_batch
    if len(trajectories) > capacity * mini_batches:
        raise ValueError(f"{len(trajectories)} trajectories exceed the step's {capacity * mini_batches} slots")
    order = list(trajectories)
    random.Random(seed).shuffle(order)
    per_mini = -(-len(order) // mini_batches)
    out = []
    for m in range(mini_batches):
        chunk = order[m * per_mini:(m + 1) * per_mini] or [order[m % len(order)].filler()]
        chunk = sorted(chunk, key=lambda t: (-len(t.token_ids), t.id))
        slots = num_ranks * micro_batches_per_rank
        # As many trajectories per micro batch as needed to use every slot at most once.
        per_micro = max(1, -(-len(chunk) // slots))
        micros = [chunk[k:k + per_micro] for k in range(0, len(chunk), per_micro)]
        while len(micros) < slots:  # fewer trajectories than slots: fillers keep every rank in step
            micros.append([micros[len(micros) % len(micros)][0].filler()])
        ranks: list[list[list[Trajectory]]] = [[] for _ in range(num_ranks)]
        for k, micro in enumerate(micros):
            lap, pos = divmod(k, num_ranks)
            ranks[pos if lap % 2 == 0 else num_ranks - 1 - pos].append(micro)
        out.append(ranks)
    return out


def model_token_counts(dealt: list[list[list[list[Trajectory]]]]) -> list[float]:
    """N of each mini-batch: its model tokens over every rank (fillers count 0)."""
    return [float(sum(t.model_tokens for rank in mini for micro in rank for t in micro)) for mini in dealt]

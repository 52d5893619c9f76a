"""A short text pre-training of the tiny model: restating what a tool printed.

A pre-trained VLM, the paper's starting point, already repeats a value it has just read in its context;
the tiny random model has no such skill, and a demo's SFT cannot give it one: each trajectory holds a
single token whose prediction needs the copy (the first word after "The code printed"), and ten minutes
of SFT form no copying circuit (docs/training.md "Copying"). This pre-training gives it that one skill
on synthetic text only, no images and no tasks: runs of `<sandbox_output>W</sandbox_output>` followed
by a sentence that restates W, for random words and numbers W, with language-model loss on every token.
"""
from __future__ import annotations

import random
import time

from envs.protocol import SANDBOX_CLOSE, render_sandbox_output

# Restatements of the printed value, as trajectories phrase them (and a few they do not).
TEMPLATES = (
    "The code printed {w}, so the answer is {w}.",
    "The code printed {w}.",
    "It printed {w}, which answers the question.",
    "The output is {w}.",
)


def copy_episode(rng: random.Random, words: list[str]) -> str:
    word = rng.choice(words) if rng.random() < 0.8 else str(rng.randint(0, 99))
    return f"{render_sandbox_output(word)}\n{rng.choice(TEMPLATES).format(w=word)}"


def copy_texts(n: int, words: list[str], rng: random.Random, episodes: int = 12) -> list[str]:
    """`n` texts of `episodes` restatements each, with filler words between, so the distance from the
    value to its restatement is not always the same and the copy must find the value by its tag."""
    texts = []
    for _ in range(n):
        parts = []
        for _ in range(episodes):
            filler = " ".join(rng.choice(words) for _ in range(rng.randint(0, 6)))
            parts.append(f"{filler}\n{copy_episode(rng, words)}\n")
        texts.append("".join(parts))
    return texts


def pretrain_copying(model, tokenizer, words: list[str], steps: int, seed: int, batch: int = 16,
                     lr: float = 3e-3) -> dict[str, float]:
    """Train `model` in place for `steps` AdamW steps on copy texts; returns the copy accuracy (greedy
    next token after each restatement's first word position) on fresh texts before and after, and the
    first and last step's loss. The copy forms late and not for every seed: 0.02 after 100 steps, 0.92-1.00
    after 300 (seeds 0 and 1), 0.20 for seed 2 (docs/training.md "Copying")."""
    import torch

    rng = random.Random(seed)
    torch.manual_seed(seed)
    before = copy_accuracy(model, tokenizer, words, random.Random(seed + 1))
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    started, losses = time.perf_counter(), []
    for step in range(1, steps + 1):
        ids = _batch(tokenizer, copy_texts(batch, words, rng))
        loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss
        losses.append(loss.item())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for group in optimiser.param_groups:  # linear decay to 10%: the last steps settle the circuit
            group["lr"] = lr * (1 - 0.9 * step / steps)
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)
        if step % max(1, steps // 5) == 0 or step == steps:
            print(f"[tiny pre-training] step {step}/{steps} loss {losses[-1]:.3f} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
    model.eval()
    after = copy_accuracy(model, tokenizer, words, random.Random(seed + 1))
    return {"copy_accuracy_before": before, "copy_accuracy_after": after, "loss_first": losses[0],
            "loss_last": losses[-1], "seconds": round(time.perf_counter() - started, 1)}


def copy_accuracy(model, tokenizer, words: list[str], rng: random.Random, n: int = 32) -> float:
    """Share of restatements whose first copied token the model predicts greedily, on unseen texts."""
    import torch

    hits = total = 0
    for text in copy_texts(n, words, rng, episodes=4):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = torch.tensor([enc["input_ids"]])
        with torch.no_grad():
            predicted = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0].argmax(-1)
        for start in _restatement_starts(text):
            at = next(i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > start)  # token holding it
            if at > 0:
                hits += int(predicted[at - 1] == ids[0, at])
                total += 1
    return hits / max(total, 1)


def _restatement_starts(text: str) -> list[int]:
    """Character offsets of the first restated word (the space before it) of each episode."""
    closing = SANDBOX_CLOSE + "\n"
    starts, pos = [], 0
    while (close := text.find(closing, pos)) != -1:
        value = text[text.rfind(">", 0, close) + 1:close]
        at = text.find(" " + value, close + len(closing))
        if at != -1:
            starts.append(at)
        pos = close + 1
    return starts


def _batch(tokenizer, texts: list[str]):
    import torch

    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    width = min(len(r) for r in rows)  # cut to the shortest: no padding, every token trained
    return torch.tensor([r[:width] for r in rows])

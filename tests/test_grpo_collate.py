"""What the learners train on, built from real token ids of the tiny tokenizer: prompt, sandbox
replies and their tags never trained; code tokens found exactly where ATS sampled them greedily."""
from __future__ import annotations

import pytest
import torch

from learners.grpo_batch import Trajectory
from learners.rollout_collate import code_token_mask, collate_trajectories
from policy.ats import TokenBytes


@pytest.fixture(scope="module")
def processor(tiny_model_dir):
    from policy.multimodal import PolicyProcessor

    return PolicyProcessor.from_pretrained(tiny_model_dir)


def _episode(processor):
    """prompt | model: thought + code | sandbox reply | model: more code + answer, as the agent loop lays it out."""
    encode = lambda text: processor.tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    parts = [("prompt", encode("<|im_start|>user\nHow many?<|im_end|>\n<|im_start|>assistant\n")),
             ("model", encode("<think>count</think><code>\n```python\nprint(3)\n```\n</code>")),
             ("sandbox", encode("<sandbox_output>3\n</sandbox_output>")),
             ("model", encode("Check.<code>print(1)</code>")),
             ("sandbox", encode("<sandbox_output>1</sandbox_output>")),
             ("model", encode("<answer>3</answer><|im_end|>"))]
    ids, mask, segments = [], [], []
    for kind, piece in parts:
        segments.append([kind, len(ids), len(ids) + len(piece)])
        ids += piece
        mask += [int(kind == "model")] * len(piece)
    return ids, mask, segments


def _expected_code(processor, ids, segments):
    """Independent definition: a model token is code when the text of its round before it has an open <code>."""
    expected = [0] * len(ids)
    for kind, start, end in segments:
        if kind != "model":
            continue
        for i in range(start, end):
            before = processor.tokenizer.decode(ids[start:i], skip_special_tokens=False)
            expected[i] = int(before.rfind("<code>") > before.rfind("</code>"))
    return expected


def test_masks_exclude_prompt_and_sandbox_and_find_code(processor):
    ids, mask, segments = _episode(processor)
    code = code_token_mask(ids, segments, TokenBytes(processor.tokenizer))
    assert code == _expected_code(processor, ids, segments)
    assert sum(code) > 0 and all(mask[i] for i, c in enumerate(code) if c)  # only model tokens are code tokens

    t = Trajectory("e#0", ids, mask, [-0.5] * len(ids), segments, [], advantage=1.0, reward=1.0)
    pad = processor.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    short = Trajectory("e#1", ids[:-3], mask[:-3], [-0.5] * (len(ids) - 3), segments, [], advantage=-1.0, reward=0.0)
    batch = collate_trajectories([t, short], processor, pad)
    # Position p scores token p + 1: the masks are the token masks shifted by one.
    assert batch["model_mask"][0].tolist() == [float(m) for m in mask[1:]]
    assert batch["train_mask"][0].tolist() == [float(m) for m in mask[1:]]
    for kind, start, end in segments:
        if kind != "model":  # no prompt or sandbox token (tags included) is trained or counted
            assert batch["train_mask"][0, max(0, start - 1):end - 1].sum() == 0
    assert batch["train_mask"][1, len(ids) - 4:].sum() == 0  # padding
    assert batch["advantages"].tolist() == [1.0, -1.0]

    masked = collate_trajectories([t], processor, pad, TokenBytes(processor.tokenizer), code_tokens="mask")
    trained = masked["train_mask"][0]
    assert trained.tolist() == [float(m and not c) for m, c in zip(mask[1:], code[1:])]
    assert masked["model_mask"][0].sum() == batch["model_mask"][0].sum()  # code still counts in N

    filler = collate_trajectories([t.filler()], processor, pad)
    assert filler["train_mask"].sum() == 0 and filler["model_mask"].sum() == 0
    assert torch.equal(filler["input_ids"], batch["input_ids"][:1])

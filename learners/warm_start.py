"""A few plain-torch SFT steps that turn the tiny random model into a policy whose sampled replies are
short Thyme replies naming one of several answers, and sometimes a code block first: GRPO groups then
get rewards that differ, and rollouts exercise the sandbox.

For tests and benchmarks of the RL machinery only (a random model's rewards are all 0: every group has
zero variance and nothing would train). The prompt is built exactly as the agent loop builds it
(PolicyProcessor.chat_prompt_ids over the prompt contract's user text), so rollouts see the context
that was trained; only the reply tokens are trained.
"""
from __future__ import annotations

import hashlib
import os
import random
import shutil
import tempfile
from pathlib import Path

import torch
from PIL import Image

from envs.protocol import SANDBOX_CLOSE, SANDBOX_OPEN

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 60, 220)}
QUESTION = "What color is the image?"
CODE_REPLY = "<code>\n```python\nprint(2 + 3)\n```\n</code>"
CODE_OUTPUT = "5\n"  # what the sandbox prints for CODE_REPLY (stdout, as the agent loop shows it)
RECIPE = {"sequences": 54, "steps": 120, "lr": 3e-3, "batch": 8, "seed": 0, "version": 7}


def colour_images(folder: str | Path, size: tuple[int, int] = (112, 84)) -> dict[str, str]:
    """One plain image per colour under `folder`: {colour: path}."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, rgb in COLOURS.items():
        path = folder / f"{name}.png"
        if not path.exists():
            Image.new("RGB", size, rgb).save(path)
        paths[name] = str(path)
    return paths


# A short prompt contract for RL tests: the sequences stay short, so a few seconds of training make
# a policy that answers in the format (the Thyme system prompt is ~10x longer).
TEST_PROMPT = {"system": "Write Python in <code></code>; its output comes back in <sandbox_output>.",
               "user_template": "{question} Image {image_path}, {width}x{height}. Reply <think> then <answer>."}


def _sequences(processor, images: dict[str, str], n: int, rng: random.Random, prompt) -> list[tuple[list[int], list[int], str]]:
    """(ids, trained flags, image path) triples: the agent loop's prompt for a colour image, then a reply
    that names a colour, either at once or after a code block and the sandbox's reply to it (whose
    tokens are not trained: the sandbox wrote them). Balanced: every image is paired with every colour,
    with and without the code block, equally often (then shuffled), so the policy's answer is ~1/3 right
    whatever the image and the floats of the machine that trained it, on direct and on code-first
    prompts alike -- GRPO groups of both kinds get rewards that differ."""
    kinds = [(path, colour, code) for path in images.values() for colour in sorted(COLOURS) for code in (False, True)]
    plan = [kinds[i % len(kinds)] for i in range(n)]
    rng.shuffle(plan)
    encode = lambda text: processor.tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    # The sandbox's reply as the agent loop appends it (plain text, special tokens split).
    sandbox = processor.tokenizer.encode(f"{SANDBOX_OPEN}{CODE_OUTPUT}{SANDBOX_CLOSE}", add_special_tokens=False,
                                         split_special_tokens=True)
    out = []
    for path, colour, code in plan:
        image = Image.open(path).convert("RGB")
        user = prompt.user_text(QUESTION, path, image.width, image.height)
        ids = processor.chat_prompt_ids(prompt.system, user, [image])
        trained = [0] * len(ids)
        if code:
            ids, trained = ids + encode(CODE_REPLY) + sandbox, trained + [1] * len(encode(CODE_REPLY)) + [0] * len(sandbox)
        # `<answer>` tokenised on its own, as the agent loop tokenises a forced `<answer>` prefix: the
        # colour then follows the same tokens in training and in rollouts.
        answer = encode("<answer>") + encode(f"{colour}</answer><|im_end|>")
        out.append((ids + answer, trained + [1] * len(answer), path))
    return out


def warm_start(model_dir: str | Path, out_dir: str | Path, images_dir: str | Path, prompt: dict | None = None,
               **recipe) -> Path:
    """Train `model_dir` on replies about the colour images in `images_dir` (RL prompts should show
    the same paths), under `prompt` (PromptConfig fields; default TEST_PROMPT: rollouts must use the
    same), and save it to `out_dir`."""
    from learners.losses import next_token_logprobs
    from policy.model import load_policy
    from policy.prompts import PromptConfig

    r = {**RECIPE, **recipe}
    torch.manual_seed(r["seed"])
    model, processor = load_policy(model_dir)
    images = colour_images(images_dir)
    data = _sequences(processor, images, r["sequences"], random.Random(r["seed"]), PromptConfig(**(prompt or TEST_PROMPT)))
    pixels = {path: processor.pixel_inputs([Image.open(path).convert("RGB")]) for path in images.values()}
    pad = processor.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    optimizer = torch.optim.AdamW(model.parameters(), lr=r["lr"])
    model.train()
    for step in range(r["steps"]):
        chunk = [data[(step * r["batch"] + k) % len(data)] for k in range(r["batch"])]
        width = max(len(ids) for ids, _, _ in chunk)
        ids = torch.full((len(chunk), width), pad)
        mask = torch.zeros_like(ids)
        trained = torch.zeros((len(chunk), width - 1))
        for row, (seq, flags, _path) in enumerate(chunk):
            ids[row, :len(seq)] = torch.tensor(seq)
            mask[row, :len(seq)] = 1
            trained[row, :len(seq) - 1] = torch.tensor(flags[1:], dtype=torch.float)  # position t predicts token t + 1
        inputs = {"input_ids": ids, "attention_mask": mask,
                  "pixel_values": torch.cat([pixels[path]["pixel_values"] for _, _, path in chunk]),
                  "image_grid_thw": torch.cat([pixels[path]["image_grid_thw"] for _, _, path in chunk]),
                  "mm_token_type_ids": (ids == processor.image_pad_id).int()}
        logprobs = next_token_logprobs(model(**inputs).logits, ids)
        loss = -(logprobs * trained).sum() / trained.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    out_dir = Path(out_dir)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    processor.save_pretrained(out_dir)
    return out_dir


def ensure_warm_started(model_dir: str | Path, cache_root: str | Path) -> tuple[Path, dict[str, str]]:
    """warm_start(model_dir) under TEST_PROMPT, cached under cache_root (keyed on the model folder and
    the recipe), and the colour images it was trained on ({colour: path})."""
    images = colour_images(Path(cache_root) / "colour-images")
    key = hashlib.sha256(f"{Path(model_dir).resolve()}|{sorted(RECIPE.items())}|{TEST_PROMPT}".encode()).hexdigest()[:12]
    target = Path(cache_root) / f"warm-start-{key}"
    if (target / "config.json").is_file():
        return target, images
    tmp = Path(tempfile.mkdtemp(prefix=".warm-build-", dir=cache_root))
    warm_start(model_dir, tmp, Path(cache_root) / "colour-images")
    try:
        os.rename(tmp, target)
    except OSError:  # another session finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return target, images

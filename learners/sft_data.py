"""SFT rows (the released Thyme format, which our task generator also writes) -> training examples.

The prompt is built exactly as the agent loop builds it at inference: our system prompt
(conf/prompt), then the user turn with the image placeholder(s) and the question text. Released rows
name their input images with `<image>` in the question; a question without one has its single
input image put first, as PolicyProcessor.chat_prompt_ids does.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from tqdm import tqdm

from learners.batching import LengthFilter
from learners.sft_masking import (
    END_OF_TURN, IMAGE_MARKUP, RELEASED_IMAGE_PLACEHOLDER, MaskRules, SampleError, encode_sample,
)

IM_START = "<|im_start|>"


def prompt_text(system: str | None, question: str) -> str:
    """The chat-template text of the prompt, ending with the assistant header.

    A released-format `<image>` placeholder and the newline after it become the image markup with the
    text right behind it, which is how the agent loop's prompt (PolicyProcessor.chat_prompt_ids) reads.
    """
    if RELEASED_IMAGE_PLACEHOLDER in question:
        user = re.sub(re.escape(RELEASED_IMAGE_PLACEHOLDER) + r"\n?", IMAGE_MARKUP, question)
    else:
        user = IMAGE_MARKUP + question
    head = f"{IM_START}system\n{system}{END_OF_TURN}\n" if system else ""
    return f"{head}{IM_START}user\n{user}{END_OF_TURN}\n{IM_START}assistant\n"


@dataclass
class EncodeReport:
    kept: int = 0
    skipped: Counter = None
    trained_tokens: int = 0
    tokens: int = 0
    truncated: int = 0

    def __post_init__(self):
        self.skipped = self.skipped or Counter()

    @property
    def masked_share(self) -> float:
        return 0.0 if not self.tokens else 1 - self.trained_tokens / self.tokens

    def summary(self) -> str:
        skipped = ", ".join(f"{k}={v}" for k, v in sorted(self.skipped.items())) or "none"
        return (f"kept {self.kept} samples ({self.tokens} tokens, {self.masked_share:.1%} masked); "
                f"truncated {self.truncated}; skipped {sum(self.skipped.values())} ({skipped})")


def encode_row(row, processor, system: str | None, rules: MaskRules) -> dict:
    """One SftRow -> {input_ids, labels, pixel_values, image_grid_thw, id, category}. SampleError when unusable."""
    try:
        images = row.pil_images()
    except ValueError as exc:
        raise SampleError("bad_image", str(exc)) from exc
    counts = [processor.num_image_tokens(image) for image in images]
    encoded = encode_sample(prompt_text(system, row.question), row.response, processor.tokenizer, counts, rules)
    example = {"input_ids": encoded.input_ids, "labels": encoded.labels, "id": row.id, "category": row.category}
    if images:
        pixels = processor.pixel_inputs(images)
        merge = processor.image_processor.merge_size ** 2
        grid_tokens = [int(t * h * w) // merge for t, h, w in pixels["image_grid_thw"].tolist()]
        if grid_tokens != counts:  # would make the model's image features and tokens disagree
            raise SampleError("image_tokens", f"image processor made {grid_tokens} tokens, placeholders {counts}")
        example.update(pixels)
    return example


def encode_rows(rows, processor, system: str | None, rules: MaskRules, length_filter: LengthFilter,
                desc: str = "encoding SFT rows") -> tuple[list[dict], EncodeReport]:
    """Every usable row as an example; unusable and over-long ones are counted, never fatal."""
    report = EncodeReport()
    examples = []
    # disable=None: a bar on a terminal, nothing in a log file (a job's log, train.log)
    for row in tqdm(rows, desc=desc, unit="row", leave=False, disable=None):
        try:
            example = encode_row(row, processor, system, rules)
        except SampleError as exc:
            report.skipped[exc.reason] += 1
            continue
        fitted = length_filter.apply(example["input_ids"], example["labels"])
        if fitted is None:
            continue
        example["input_ids"], example["labels"] = fitted
        examples.append(example)
        report.kept += 1
        report.tokens += len(example["input_ids"])
        report.trained_tokens += sum(label != -100 for label in example["labels"])
    report.truncated = length_filter.counts.pop("truncated", 0)
    report.skipped.update(length_filter.counts)
    return examples, report

"""Which tokens of an SFT sample the model is trained on (SPEC.md, "SFT rules"). Pure: no torch, no Ray.

A sample is a prompt (system + user, already in the chat template and ending with the assistant
header) followed by the model's response and the end-of-turn token. The rules, in every stage:
- the prompt is never trained;
- `<sandbox_output>` ... `</sandbox_output>` (tags and body) is never trained: the sandbox wrote it;
- image stage (`last_round_only`): when the response ran code two or more times, everything up to
  the end of the last `</sandbox_output>` is masked and only the final round is learned;
- math annealing stage: all rounds are trained (still without the sandbox parts).

Tags are several tokens in a BPE vocabulary, so the rules are applied to character spans of the text.
The text is then cut at every place where the rule changes, and at every sandbox reply of earlier
(untrained) rounds too, and each piece is tokenised on its own: no token straddles a trained and an
untrained character, and the token boundaries at `</code>` | `<sandbox_output>` and
`</sandbox_output>` | next round are the ones the agent loop produces at inference (it tokenises the
sandbox reply separately from what the model generated), so SFT ids equal the loop's ids.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from envs.protocol import SANDBOX_CLOSE, SANDBOX_OPEN

IGNORE_INDEX = -100  # label of a token the loss skips (the value Hugging Face models use)

# Qwen2.5-VL's chat template tokens. An image is one <|image_pad|> in the text, expanded here to as
# many pads as the vision tower yields tokens for that image (grid_t * grid_h * grid_w / merge^2).
IMAGE_PAD = "<|image_pad|>"
VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"
IMAGE_MARKUP = VISION_START + IMAGE_PAD + VISION_END
END_OF_TURN = "<|im_end|>"
RELEASED_IMAGE_PLACEHOLDER = "<image>"  # how the released Thyme SFT rows mark an image in text


class SampleError(ValueError):
    """A sample that cannot be turned into a training example; the data loader counts and skips it."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class MaskRules:
    last_round_only: bool = True  # image stage True, math annealing False
    min_rounds_for_last_round: int = 2  # "samples with 2+ rounds": rounds = sandbox replies


@dataclass
class Piece:
    """A run of text with one training decision; `kind` names the rule, for tests and statistics."""

    text: str
    trained: bool
    kind: str  # prompt | model | sandbox | earlier_round | end


@dataclass
class EncodedSample:
    input_ids: list[int]
    labels: list[int]  # the token id where trained, IGNORE_INDEX elsewhere (unshifted)
    pieces: list[Piece] = field(default_factory=list)
    token_kinds: list[str] = field(default_factory=list)  # the Piece.kind of every token

    @property
    def num_trained(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)

    def __len__(self) -> int:
        return len(self.input_ids)


def sandbox_spans(response: str) -> list[tuple[int, int]]:
    """Character spans [start, end) of every <sandbox_output>...</sandbox_output>, tags included.

    An opening tag without its closing tag runs to the end of the text: a cut-off sandbox reply is
    still the sandbox's text, never the model's. A stray closing tag is left as model text.
    """
    spans = []
    pos = 0
    while True:
        start = response.find(SANDBOX_OPEN, pos)
        if start < 0:
            return spans
        close = response.find(SANDBOX_CLOSE, start + len(SANDBOX_OPEN))
        end = len(response) if close < 0 else close + len(SANDBOX_CLOSE)
        spans.append((start, end))
        pos = end


def response_pieces(response: str, rules: MaskRules) -> list[Piece]:
    """The response cut into model / sandbox / earlier_round pieces (empty pieces dropped)."""
    spans = sandbox_spans(response)
    learn_from = 0
    if rules.last_round_only and len(spans) >= rules.min_rounds_for_last_round:
        learn_from = spans[-1][1]
    pieces: list[Piece] = []

    def add(start: int, end: int, kind: str) -> None:
        if end > start:
            pieces.append(Piece(response[start:end], kind == "model", kind))

    cursor = 0
    for start, end in spans:
        # Earlier rounds are untrained too, but still cut at every sandbox reply: the agent loop
        # tokenises the model's text and the sandbox's reply separately, and Qwen's BPE merges
        # across `</code>` | `<sandbox_output>` (`><`), so one piece would give other ids.
        # The loop also tokenises a reply's closing tag on its own (after any images), so cut there too.
        earlier = end <= learn_from
        add(cursor, start, "earlier_round" if earlier else "model")
        close = end - len(SANDBOX_CLOSE) if response.endswith(SANDBOX_CLOSE, start, end) else end
        add(start, close, "earlier_round" if earlier else "sandbox")
        add(close, end, "earlier_round" if earlier else "sandbox")
        cursor = end
    add(cursor, len(response), "model")
    return pieces


def sample_pieces(prompt_text: str, response: str, rules: MaskRules) -> list[Piece]:
    """The whole sample: prompt (untrained), the response pieces, the trained end-of-turn token."""
    return [Piece(prompt_text, False, "prompt"), *response_pieces(response, rules), Piece(END_OF_TURN, True, "end")]


def to_image_markup(text: str) -> str:
    """Released-format `<image>` placeholders as Qwen2.5-VL image markup (text already in markup is kept)."""
    return text.replace(RELEASED_IMAGE_PLACEHOLDER, IMAGE_MARKUP)


def encode_pieces(pieces: list[Piece], tokenizer, image_token_counts: list[int]) -> EncodedSample:
    """Tokenise each piece on its own and label its tokens by the piece's decision.

    `image_token_counts[i]` is how many <|image_pad|> tokens the i-th image in reading order takes;
    every <|image_pad|> in the text must have one (SampleError otherwise).
    """
    total_pads = sum(piece.text.count(IMAGE_PAD) for piece in pieces)
    if total_pads != len(image_token_counts):
        raise SampleError(
            "image_count_mismatch",
            f"the text has {total_pads} image placeholder(s) but the sample has {len(image_token_counts)} image(s)",
        )
    counts = iter(image_token_counts)
    sample = EncodedSample([], [], pieces)
    for piece in pieces:
        text = piece.text
        if IMAGE_PAD in text:
            parts = text.split(IMAGE_PAD)
            text = parts[0] + "".join(IMAGE_PAD * next(counts) + part for part in parts[1:])
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        sample.input_ids.extend(ids)
        sample.labels.extend(ids if piece.trained else [IGNORE_INDEX] * len(ids))
        sample.token_kinds.extend([piece.kind] * len(ids))
    return sample


def encode_sample(prompt_text: str, response: str, tokenizer, image_token_counts: list[int], rules: MaskRules) -> EncodedSample:
    """Prompt text (chat template, ends with the assistant header) + response -> ids and labels."""
    pieces = sample_pieces(to_image_markup(prompt_text), to_image_markup(response), rules)
    sample = encode_pieces(pieces, tokenizer, image_token_counts)
    if sample.num_trained <= 1:  # only the end-of-turn token: nothing the model would learn from
        raise SampleError("nothing_trained", "the response has no model-written text to train on")
    return sample

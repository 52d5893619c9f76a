"""A tiny random Qwen2.5-VL with its own tokenizer, built offline in seconds, for tests and the CPU demo.

The architecture is the real one (transformers' Qwen2_5_VLForConditionalGeneration: vision tower,
patch merger, mrope text decoder), only small. The tokenizer is a byte-level BPE trained here on text
we generate ourselves (prompts, tags, the kind of Python image code Thyme trajectories contain, digits,
words), with Qwen's special tokens and a Qwen2.5-VL-style chat template. By default the Thyme tags come
out as several tokens each, as with Qwen2.5-VL's tokenizer, so code paths that must not assume
single-token tags are exercised; `tag_tokens=True` makes each tag one token instead (the demo's model,
see TinyModelConfig).
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from envs.protocol import (ANSWER_CLOSE, ANSWER_OPEN, CODE_CLOSE, CODE_OPEN, SANDBOX_CLOSE, SANDBOX_OPEN, THINK_CLOSE,
                           THINK_OPEN, render_sandbox_output)

# Qwen2.5-VL's special tokens, in its order (ids differ here: the vocabulary is small).
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]

THYME_TAGS = [THINK_OPEN, THINK_CLOSE, CODE_OPEN, CODE_CLOSE, SANDBOX_OPEN, SANDBOX_CLOSE, ANSWER_OPEN, ANSWER_CLOSE]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or 'image' in part %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass
class TinyModelConfig:
    """Sizes of the tiny model. head_dim = text_hidden / text_heads; mrope_section sums to head_dim / 2.
    max_pixels keeps images cheap: a 2048x2048 image becomes at most max_pixels / 28^2 tokens."""

    vocab_size: int = 4096
    text_hidden: int = 128
    text_layers: int = 2
    text_heads: int = 4
    text_kv_heads: int = 2
    text_intermediate: int = 384
    mrope_section: tuple[int, int, int] = (4, 6, 6)
    vision_hidden: int = 64
    vision_depth: int = 2
    vision_heads: int = 2
    vision_intermediate: int = 128
    patch_size: int = 14
    merge_size: int = 2
    min_pixels: int = 28 * 28 * 4
    max_pixels: int = 28 * 28 * 64
    max_position_embeddings: int = 32768
    corpus_samples: int = 1500
    # Each Thyme tag one token. With the byte-level BPE `<answer>` is `<` `answer` `>` and ends in the
    # same two tokens as `</answer>`, after which the turn always ends: on an answer it cannot read, the
    # demo's 2M model then ended its turn right after `<answer>` in some runs (docs/training.md
    # "Single-token tags"). A token of its own per tag removes that tie and gives the printed value in
    # `<sandbox_output>X` a one-token left neighbour to be found by.
    tag_tokens: bool = False
    # Steps of copy pre-training after the random init (policy/tiny_pretrain.py): the demo's model must
    # restate what the sandbox printed, a skill a pre-trained VLM brings and its SFT cannot form
    # (docs/training.md "Copying"). 0: the random model as it is.
    copy_pretrain_steps: int = 0

    def __post_init__(self) -> None:
        head_dim = self.text_hidden // self.text_heads
        if sum(self.mrope_section) * 2 != head_dim:
            raise ValueError(f"mrope_section {self.mrope_section} must sum to head_dim/2 = {head_dim // 2}")
        if self.copy_pretrain_steps < 0:
            raise ValueError(f"copy_pretrain_steps {self.copy_pretrain_steps} must be >= 0")
        if self.text_heads % self.text_kv_heads:
            raise ValueError(f"text_heads {self.text_heads} must be a multiple of text_kv_heads {self.text_kv_heads}")


# ---- corpus ---------------------------------------------------------------------------------------
_WORDS = (
    "the a an of in on at to is are was what which where how many color sign text number left right top bottom "
    "small large red green blue yellow black white person car dog cat building window door table chart value "
    "region image picture photo crop zoom rotate contrast brighten enlarge detail corner center area object "
    "answer question think first step look closer clearly visible read count compute total sum difference "
    "because so therefore then now the result shows it looks like upside down dark faint tiny label price year"
).split()
_QUESTIONS = [
    "What is written on the {w} sign?", "How many {o}s are in the image?", "What color is the {o} on the {s}?",
    "What is the {w} number shown near the {s}?", "Which {o} is larger, the left or the right one?",
    "What is the value of {a} + {b} * {a}?", "Read the text in the {s} corner.", "Is the {o} {w}?",
]
_CODE_SNIPPETS = [
    "import cv2\nimage = cv2.imread(image_path)\nx1, y1, x2, y2 = {a}, {b}, {c}, {d}\ncropped = image[y1:y2, x1:x2]\n"
    "processed_path = '/mnt/data/temp_processed_images/crop_{a}.png'\ncv2.imwrite(processed_path, cropped)\nprint(processed_path)",
    "from PIL import Image\nimg = Image.open(image_path)\nbox = ({a}, {b}, {c}, {d})\nregion = img.crop(box)\n"
    "region = region.resize((region.width * 2, region.height * 2))\nprocessed_path = 'zoom_{b}.png'\nregion.save(processed_path)\nprint(processed_path)",
    "import cv2\nimage = cv2.imread(image_path)\nrotated = cv2.rotate(image, cv2.ROTATE_180)\n"
    "processed_path = 'rotated.png'\ncv2.imwrite(processed_path, rotated)\nprint(processed_path)",
    "from PIL import Image, ImageEnhance\nimg = Image.open(image_path)\nenhanced = ImageEnhance.Contrast(img).enhance({e})\n"
    "processed_path = 'contrast.png'\nenhanced.save(processed_path)\nprint(processed_path)",
    "import numpy as np\nvalues = np.array([{a}, {b}, {c}, {d}])\nresult = values.sum() / {e}\nprint(round(float(result), 3))",
    "import math\nangle = math.atan2({b}, {a})\nprint(math.degrees(angle))",
]


TINY_CONFIG_FILE = "tiny_model.json"  # the TinyModelConfig a folder was built with
COPY_PRETRAIN_FILE = "copy_pretrain.json"  # copy accuracy before and after the copy pre-training
EXPERTS_DIR = Path(__file__).resolve().parents[1] / "envs" / "tasks" / "experts"


def expert_phrases() -> list[str]:
    """Every string literal (and literal part of an f-string) in the task experts' source: the wording
    and code idioms of the trajectories the tiny model trains on. A real tokenizer has seen such English
    and OpenCV/PIL code countless times and gives `IMREAD_GRAYSCALE` or `downscaled` a few tokens; ours
    would spell them letter by letter: expert responses came out 1.4x as long, and harder for a 2M model."""
    import ast

    phrases = []
    for path in sorted(EXPERTS_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and len(node.value) > 2:
                phrases.append(node.value)
    return phrases


# The task generators' answer words: colour names, shape names, the words on signs, list items.
ANSWER_SOURCES = [Path(__file__).resolve().parents[1] / "envs" / "tasks" / f for f in ("drawing.py", "generators/direct.py")]


def answer_words() -> list[str]:
    """The words tasks are answered with, each of which should be one token, with and without a leading
    space: the demo's direct answers go from the sandbox's printout ("purple") into the thought
    (" purple") and the answer, and a word spelt in pieces ('p','u','r','p','le') is one more thing the
    tiny model must learn before an answer is right (docs/training.md "Tokenizer fit and copying")."""
    from envs.tasks.drawing import COLOURS, ITEMS, WORDS
    from envs.tasks.generators.direct import SHAPES

    return [*COLOURS, *SHAPES, *WORDS, *ITEMS]


def copy_words() -> list[str]:
    """What the copy pre-training's tool prints and the model restates: the answer words and filler words
    (numbers it draws itself)."""
    return sorted(set(answer_words()) | set(_WORDS))


def expert_code(rng: random.Random) -> str:
    """One snippet as the experts write it (envs/tasks/experts/snippets.py), with random numbers."""
    from envs.tasks.experts import snippets

    n = lambda: rng.randint(0, 3000)  # noqa: E731
    out = f"/mnt/data/temp_processed_images/{rng.randint(0, 999999):06d}_{rng.choice(['zoom', 'upright', 'enhanced'])}.png"
    load = rng.choice(["", f'image_path = "/data/images/{rng.randint(0, 99999)}.jpg"\n'])
    zoom, factor = rng.choice([0.5, 1, 2, 3, 4]), round(rng.uniform(2, 6), 1)
    return rng.choice([
        lambda: snippets.crop_cv2((n(), n(), n(), n()), zoom, out, load=load),
        lambda: snippets.crop_pil((n(), n(), n(), n()), zoom, out, load=load),
        lambda: snippets.rotate_right_angle_cv2(rng.choice([90, 180, 270]), out, load=load),
        lambda: snippets.rotate_pil(rng.randint(-175, 175), out, load=load),
        lambda: snippets.rotate_cv2_affine(rng.randint(-175, 175), out, load=load),
        lambda: snippets.contrast_pil(factor, out, load=load),
        lambda: snippets.contrast_cv2(factor, out, load=load),
        lambda: snippets.contrast_numpy(factor, out, load=load),
    ])()


def build_corpus(samples: int, seed: int) -> list[str]:
    """Deterministic training text for the tokenizer: prompts, trajectories with tags, code, numbers,
    and the experts' own wording and code (so their words and idioms become tokens)."""
    from policy.prompts import load_prompt_config

    rng = random.Random(seed)
    prompt = load_prompt_config()
    texts = [prompt.system, " ".join(_WORDS), " ".join(str(i) for i in range(2049))]
    texts += expert_phrases() * 5
    words = answer_words()
    texts += [" ".join(words), "\n".join(words)] * 20  # both forms frequent enough to be merged whole
    texts += [expert_code(rng) for _ in range(samples // 2)]
    for _ in range(samples):
        nums = {k: rng.randint(0, 2048) for k in "abcd"}
        fill = dict(w=rng.choice(_WORDS), o=rng.choice(_WORDS), s=rng.choice(_WORDS), e=round(rng.uniform(1.2, 3), 1), **nums)
        question = rng.choice(_QUESTIONS).format(**fill)
        words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(5, 30)))
        code = rng.choice(_CODE_SNIPPETS).format(**fill)
        user = prompt.user_text(question, f"/data/images/{rng.randint(0, 99999)}.jpg", nums["a"], nums["b"])
        reply = f"{THINK_OPEN}{words}{THINK_CLOSE}\n"
        if rng.random() < 0.7:
            output = rng.choice([f"zoom_{nums['b']}.png", str(nums["c"]), "Error: index out of range"])
            reply += f"{CODE_OPEN}\n```python\n{code}\n```\n{CODE_CLOSE}{render_sandbox_output(output)}\n"
        reply += f"{ANSWER_OPEN}{rng.choice(_WORDS)} {nums['d']}{ANSWER_CLOSE}"
        texts.append(f"<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{user}<|im_end|>\n"
                     f"<|im_start|>assistant\n{reply}<|im_end|>")
    return texts


# ---- builders -------------------------------------------------------------------------------------
def build_tokenizer(cfg: TinyModelConfig, seed: int):
    """Byte-level BPE trained on our corpus, wrapped as a transformers fast tokenizer."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(build_corpus(cfg.corpus_samples, seed), trainer=trainer)
    if cfg.tag_tokens:  # plain added tokens (not special): they decode as text and are never skipped
        tok.add_tokens([AddedToken(tag, normalized=False, special=False) for tag in THYME_TAGS])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None,
        additional_special_tokens=SPECIAL_TOKENS[1:], chat_template=CHAT_TEMPLATE, padding_side="left",
        clean_up_tokenization_spaces=False,
    )


def build_image_processor(cfg: TinyModelConfig):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(
        min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels, patch_size=cfg.patch_size,
        merge_size=cfg.merge_size, temporal_patch_size=2,
    )


def build_model_config(cfg: TinyModelConfig, tokenizer):
    from transformers import Qwen2_5_VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = dict(
        vocab_size=len(tokenizer), hidden_size=cfg.text_hidden, intermediate_size=cfg.text_intermediate,
        num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads, num_key_value_heads=cfg.text_kv_heads,
        max_position_embeddings=cfg.max_position_embeddings, max_window_layers=cfg.text_layers,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": list(cfg.mrope_section)},
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
    )
    vision = dict(
        depth=cfg.vision_depth, hidden_size=cfg.vision_hidden, intermediate_size=cfg.vision_intermediate,
        num_heads=cfg.vision_heads, patch_size=cfg.patch_size, spatial_merge_size=cfg.merge_size,
        out_hidden_size=cfg.text_hidden, fullatt_block_indexes=[cfg.vision_depth - 1],
        window_size=cfg.patch_size * cfg.merge_size * 4,
    )
    return Qwen2_5_VLConfig(
        text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False,
    )


def make_tiny_model(out: str | Path, seed: int = 0, cfg: TinyModelConfig | None = None) -> Path:
    """Build and save (tokenizer, image processor, config, weights, generation config) into `out`."""
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration

    from policy.multimodal import PolicyProcessor

    cfg = cfg or TinyModelConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(cfg, seed)
    processor = PolicyProcessor(tokenizer=tokenizer, image_processor=build_image_processor(cfg))
    config = build_model_config(cfg, tokenizer)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    eos = [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=eos[1], bos_token_id=eos[1])
    if cfg.copy_pretrain_steps:
        from policy.tiny_pretrain import pretrain_copying

        report = pretrain_copying(model, tokenizer, copy_words(), cfg.copy_pretrain_steps, seed)
        print(f"[tiny pre-training] copy accuracy on unseen texts {report['copy_accuracy_before']:.2f} -> "
              f"{report['copy_accuracy_after']:.2f}", flush=True)
        (out / COPY_PRETRAIN_FILE).write_text(json.dumps(report, indent=1))
    model.save_pretrained(str(out))
    processor.save_pretrained(out)
    (out / TINY_CONFIG_FILE).write_text(json.dumps(asdict(cfg), indent=1))
    return out


def built_config(model_dir: str | Path) -> TinyModelConfig | None:
    """The TinyModelConfig a tiny model folder was built with (None: not built by make_tiny_model, or
    built before it recorded its settings)."""
    path = Path(model_dir) / TINY_CONFIG_FILE
    if not path.is_file():
        return None
    values = json.loads(path.read_text())
    values["mrope_section"] = tuple(values["mrope_section"])
    return TinyModelConfig(**values)


def fingerprint(cfg: TinyModelConfig | None = None) -> str:
    """Changes whenever the builder, the prompt text its corpus uses, or the sizes change."""
    from policy.prompts import PROMPT_CONF_DIR

    digest = hashlib.sha256(Path(__file__).read_bytes())
    digest.update((Path(__file__).parent / "tiny_pretrain.py").read_bytes())
    for path in [*sorted(EXPERTS_DIR.glob("*.py")), *ANSWER_SOURCES]:  # the tokenizer corpus quotes them
        digest.update(path.read_bytes())
    digest.update((PROMPT_CONF_DIR / "thyme.yaml").read_bytes())
    digest.update(repr(asdict(cfg or TinyModelConfig())).encode())
    return digest.hexdigest()[:12]


def ensure_tiny_model(cache_root: str | Path, seed: int = 0) -> Path:
    """The tiny model under cache_root/tiny-model-<fingerprint>, built once per machine.

    Built in a temporary folder and renamed into place, so concurrent test sessions never see half a model.
    """
    cache_root = Path(cache_root)
    target = cache_root / f"tiny-model-{fingerprint()}-s{seed}"
    if (target / "config.json").is_file():
        return target
    cache_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-build-", dir=cache_root))
    make_tiny_model(tmp, seed=seed)
    try:
        os.rename(tmp, target)
    except OSError:  # another session finished first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return target

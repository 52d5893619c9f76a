"""The system and user prompts of the Thyme contract (SPEC.md), configured in conf/prompt/<name>.yaml.

The user prompt carries the question, the image's path (the sandbox reads the image from there) and
its size as "WxH", plus the required output format <think>...</think> <answer>...</answer>; the system
prompt explains the <code> + ```python fence + </code> convention and the <sandbox_output> replies.
"""
from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path

from envs.protocol import ANSWER_OPEN, CODE_CLOSE, CODE_OPEN, SANDBOX_OPEN, THINK_OPEN

PROMPT_CONF_DIR = Path(__file__).resolve().parents[1] / "conf" / "prompt"
_USER_FIELDS = {"question", "image_path", "width", "height"}
# {image_path} may be left out: the sandbox presets `image_path`, so code needs no literal path, and a
# path in the prompt names where the data set lives (its folder, its split, the task id): text that
# differs between training and held-out prompts while meaning nothing (docs/training.md "The image path").
_REQUIRED_FIELDS = _USER_FIELDS - {"image_path"}


@dataclass
class PromptConfig:
    """system: the system prompt. user_template: the user turn, with {question} {width} {height} and
    optionally {image_path} placeholders (the size is needed to write crop boxes; the path only by code
    that names the file instead of the preset `image_path`)."""

    system: str
    user_template: str

    def __post_init__(self) -> None:
        fields = {name for _, name, _, _ in string.Formatter().parse(self.user_template) if name}
        missing, unknown = _REQUIRED_FIELDS - fields, fields - _USER_FIELDS
        if missing or unknown:
            raise ValueError(
                f"prompt user_template must use the placeholders {sorted(_REQUIRED_FIELDS)} (and may use "
                f"{{image_path}}); "
                f"missing {sorted(missing)}, unknown {sorted(unknown)} (escape literal braces as {{{{ }}}})"
            )
        for tag in (CODE_OPEN, CODE_CLOSE, SANDBOX_OPEN):
            if tag not in self.system:
                raise ValueError(f"prompt system text must explain the {tag} tag the model and sandbox use")
        if THINK_OPEN not in self.user_template or ANSWER_OPEN not in self.user_template:
            raise ValueError(f"prompt user_template must state the {THINK_OPEN}/{ANSWER_OPEN} output format")

    def user_text(self, question: str, image_path: str, width: int, height: int) -> str:
        """The user turn's text (the image placeholder tokens go before it, see PolicyProcessor)."""
        return self.user_template.format(question=question.strip(), image_path=image_path, width=width, height=height)


def load_prompt_config(name: str = "thyme", conf_dir: str | Path = PROMPT_CONF_DIR) -> PromptConfig:
    """Read conf/prompt/<name>.yaml and validate it (same node Hydra composes as `prompt=<name>`)."""
    from omegaconf import OmegaConf

    path = Path(conf_dir) / f"{name}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in Path(conf_dir).glob("*.yaml"))
        raise FileNotFoundError(f"no prompt config {path}; available: {available}")
    node = OmegaConf.merge(OmegaConf.structured(PromptConfig), OmegaConf.load(path))
    return PromptConfig(**OmegaConf.to_container(node, resolve=True))

"""The prompt texts rows are written with: the project's Thyme prompt contract, read from
conf/prompt/<name>.yaml (the same file the policy uses), so SFT questions and RL messages match what
the model sees at rollout time. Read as plain YAML here: envs/ does not import policy/."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from envs.data.response_tags import IMAGE_PLACEHOLDER

PROMPT_CONF_DIR = Path(__file__).resolve().parents[2] / "conf" / "prompt"


@dataclass(frozen=True)
class PromptTexts:
    system: str
    user_template: str   # placeholders {question} {width} {height}, optionally {image_path}

    @property
    def shows_image_path(self) -> bool:
        """Whether the user turn names the image's file (code may then copy that path)."""
        return "{image_path}" in self.user_template

    def user_text(self, question: str, image_path: str, width: int, height: int) -> str:
        return self.user_template.format(question=question.strip(), image_path=image_path, width=width, height=height)

    def sft_question(self, question: str, image_path: str, width: int, height: int) -> str:
        """The released SFT `question` field: the image placeholder, then the full user text."""
        return f"{IMAGE_PLACEHOLDER}\n{self.user_text(question, image_path, width, height)}"


def load_prompt_texts(name: str = "thyme", conf_dir: str | Path = PROMPT_CONF_DIR) -> PromptTexts:
    """conf/prompt/<name>.yaml, or `name` itself when it is a .yaml file (a composed prompt written out)."""
    from omegaconf import OmegaConf

    path = Path(name) if name.endswith(".yaml") else Path(conf_dir) / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no prompt config {path}; the policy's prompt contract lives in conf/prompt/")
    node = OmegaConf.load(path)
    for key in ("system", "user_template"):
        if not isinstance(node.get(key), str):
            raise ValueError(f"{path}: field {key!r} must be a string")
    return PromptTexts(system=node.system, user_template=node.user_template)

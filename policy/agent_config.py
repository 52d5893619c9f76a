"""Typed settings of the agent loop (conf/rollout/) and of evaluation (conf/eval/), validated on load."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from policy.engine import SamplingSettings

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
ENGINES = ("hf", "vllm")


@dataclass
class RolloutConfig:
    """One field per line of conf/rollout/default.yaml, which documents each of them."""

    max_turns: int = 6
    max_new_tokens_per_round: int = 1024
    max_total_tokens: int = 8192
    max_images_per_episode: int = 8
    max_sandbox_chars: int = 2048
    stop_strings: list[str] = field(default_factory=lambda: ["</code>", "</answer>"])
    empty_output_text: str = "Code ran without printing anything."
    sandbox_threads: int = 16
    sandbox_batch_wait_s: float = 1.0
    engine: str = "hf"
    engine_options: dict = field(default_factory=dict)
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    seed: int | None = None
    save_images_dir: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.sampling, dict):
            self.sampling = SamplingSettings(**self.sampling)
        self.stop_strings = list(self.stop_strings)
        problems = []
        for name in ("max_turns", "max_new_tokens_per_round", "max_total_tokens", "max_images_per_episode",
                     "max_sandbox_chars", "sandbox_threads"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1 (got {getattr(self, name)})")
        if self.sandbox_batch_wait_s < 0:
            problems.append(f"sandbox_batch_wait_s must be >= 0 (got {self.sandbox_batch_wait_s})")
        if self.engine not in ENGINES:
            problems.append(f"engine must be one of {ENGINES} (got {self.engine!r})")
        if "</code>" not in self.stop_strings:
            problems.append("stop_strings must contain '</code>': the loop runs code when a round stops there")
        if problems:
            raise ValueError("invalid rollout config (conf/rollout): " + "; ".join(problems))


@dataclass
class EvalConfig:
    """One field per line of conf/eval/default.yaml, which documents each of them."""

    batch_size: int = 16
    limit: int | None = None
    split: str | None = None
    out_dir: str = "runs/eval"
    device: str = "cpu"
    dtype: str = "float32"
    max_new_tokens_per_round: int = 512
    max_turns: int = 4
    wandb_mode: str = "offline"
    wandb_project: str = "thyme-rl"
    wandb_samples: int = 12

    def __post_init__(self) -> None:
        problems = []
        if self.wandb_mode not in ("online", "offline", "disabled"):
            problems.append(f"wandb_mode must be online, offline or disabled (got {self.wandb_mode!r})")
        if self.wandb_samples < 0:
            problems.append(f"wandb_samples must be >= 0 (got {self.wandb_samples})")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1 (got {self.batch_size})")
        if self.limit is not None and self.limit < 1:
            problems.append(f"limit must be >= 1 or null (got {self.limit})")
        if self.max_new_tokens_per_round < 1 or self.max_turns < 1:
            problems.append("max_new_tokens_per_round and max_turns must be >= 1")
        if problems:
            raise ValueError("invalid eval config (conf/eval): " + "; ".join(problems))


def _load(group: str, cls, name: str, overrides: dict[str, Any] | None, conf_dir: Path):
    from omegaconf import OmegaConf

    path = Path(conf_dir) / group / f"{name}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in (Path(conf_dir) / group).glob("*.yaml"))
        raise FileNotFoundError(f"no {group} config {path}; available: {available}")
    # Overrides merge into nested nodes: {"sampling": {"temperature": 0}} keeps the other sampling keys.
    merged = OmegaConf.merge(OmegaConf.load(path), OmegaConf.create(overrides or {}))
    raw = OmegaConf.to_container(merged, resolve=True) or {}
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"{path}: unknown {group} setting(s) {unknown}; known: {sorted(known)}")
    return cls(**raw)


def load_rollout_config(name: str = "default", overrides: dict[str, Any] | None = None,
                        conf_dir: str | Path = CONF_DIR) -> RolloutConfig:
    """conf/rollout/<name>.yaml (+ overrides, e.g. {"max_turns": 2}) as a validated RolloutConfig."""
    return _load("rollout", RolloutConfig, name, overrides, Path(conf_dir))


def load_eval_config(name: str = "default", overrides: dict[str, Any] | None = None,
                     conf_dir: str | Path = CONF_DIR) -> EvalConfig:
    """conf/eval/<name>.yaml (+ overrides) as a validated EvalConfig."""
    return _load("eval", EvalConfig, name, overrides, Path(conf_dir))

"""Is this folder a model? Checked before anything loads, so a wrong path gets a message that names the
folder to use instead (not transformers' guess that sentencepiece is missing).

A model folder is a Hugging Face folder: config.json, weights (*.safetensors or *.bin) and a
tokenizer; a Qwen2.5-VL one also has preprocessor_config.json. launch.train writes one per
checkpoint as <output_dir>/<stage>/checkpoints/step_NNNNNNNN/hf, and users often give a folder above it.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

_STEP = re.compile(r"^step_\d{8}$")
EXAMPLE = ("a checkpoint's hf folder (<output_dir>/<stage>/checkpoints/step_NNNNNNNN/hf), a downloaded "
           "Qwen2.5-VL-7B-Instruct, or a tiny model from `python -m launch.make_tiny_model --out DIR`")


def _latest_step(checkpoints: Path) -> Path | None:
    steps = sorted(p for p in checkpoints.iterdir() if _STEP.match(p.name) and (p / "hf" / "config.json").is_file())
    return steps[-1] / "hf" if steps else None


def suggested_model_dir(path: Path) -> Path | None:
    """The model folder a user most likely meant when giving a folder of a training run."""
    if (path / "hf" / "config.json").is_file():  # a step_N checkpoint folder
        return path / "hf"
    if _STEP.match(path.name) is None and path.is_dir():
        if any(_STEP.match(p.name) for p in path.iterdir()):  # the checkpoints folder
            return _latest_step(path)
        if (path / "checkpoints").is_dir():  # a stage folder
            return _latest_step(path / "checkpoints")
        result = path / "train_result.json"  # a run's output_dir
        if result.is_file():
            try:
                return Path(json.loads(result.read_text())[-1]["hf_dir"])
            except (OSError, ValueError, KeyError, IndexError, TypeError):
                return None
    return None


def model_dir_problem(path: str | Path, setting: str) -> str | None:
    """Why PATH is not a usable model folder, with what to give instead; None when it is one."""
    p = Path(path)
    given = f"{setting} {path}" if setting.startswith("-") else f"{setting}={path}"
    if not p.exists():
        return f"{given} does not exist; give {EXAMPLE}"
    if p.is_file():
        return f"{given} is a file; give the model's folder: {EXAMPLE}"
    if not (p / "config.json").is_file():
        better = suggested_model_dir(p)
        if better is not None:
            meant = f"{setting} {better}" if setting.startswith("-") else f"{setting}={better}"
            return f"{given} is not a model folder (no config.json); did you mean {meant}?"
        return f"{given} is not a model folder (no config.json); give {EXAMPLE}"
    if not any(p.glob("*.safetensors")) and not any(p.glob("*.bin")):
        return f"{given} has config.json but no weights (*.safetensors or *.bin): the download or copy is incomplete"
    if not (p / "tokenizer.json").is_file() and not (p / "tokenizer_config.json").is_file():
        return (f"{given} has no tokenizer (tokenizer.json / tokenizer_config.json): copy the tokenizer "
                "files of the base model into it")
    return None

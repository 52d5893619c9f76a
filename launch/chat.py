"""Ask the policy one question about an image and watch it think, write code, read the sandbox, answer.

    python -m launch.chat --model DIR --image IMG "question" [--out DIR] [--device cuda --dtype bfloat16]

The flags are this command's fixed interface; every other setting (limits, sampling, ATS) comes from
conf/rollout/default.yaml, changed with `--set key=value` (e.g. --set max_turns=3
--set sampling.temperature=0), and the sandbox's from conf/sandbox/default.yaml, changed with
`--sandbox key=value` (e.g. --sandbox max_image_pixels=60000000 for a larger trusted image).
The images and the model folder are checked before the model loads.
"""
from __future__ import annotations

import argparse
import sys

from launch.input_checks import image_problem, staged_paths_to_user_paths
from policy.agent_config import load_rollout_config
from policy.agent_engine import make_engine
from policy.agent_loop import AgentLoop, EpisodeInput
from policy.agent_transcript import format_transcript
from policy.model_dir import model_dir_problem


def parse_overrides(items: list[str]) -> dict:
    """["a=1", "sampling.temperature=0"] -> nested dict, values parsed as YAML (numbers, bools, null)."""
    from omegaconf import OmegaConf

    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist(items)) if items else {}
    except Exception as exc:  # noqa: BLE001  (omegaconf raises several kinds)
        raise SystemExit(f"bad --set value in {items}: {exc}; use key=value, e.g. --set max_turns=3") from None


def sandbox_settings(items: list[str]):
    """conf/sandbox/default.yaml with `--sandbox key=value` overrides, refused with the reason when invalid."""
    from envs.sandbox.config import load_sandbox_config

    try:
        return load_sandbox_config(items)
    except Exception as exc:  # noqa: BLE001  (omegaconf and the config's own validation raise several kinds)
        raise SystemExit(f"bad --sandbox setting in {items}: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("question")
    parser.add_argument("--model", required=True, help="local model folder (tiny or a Qwen2.5-VL checkpoint)")
    parser.add_argument("--image", required=True, action="append", help="input image (repeat for several)")
    parser.add_argument("--out", default="runs/chat", help="folder for the images the code produces")
    parser.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: the engine config's)")
    parser.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16")
    parser.add_argument("--greedy", action="store_true", help="temperature 0 everywhere (ATS off)")
    parser.add_argument("--prefix", default="", help="force the start of the reply (e.g. a <code> block to run)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--prompt", default="thyme", help="conf/prompt/<name>.yaml: the prompt contract the model was trained with")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a conf/rollout setting")
    parser.add_argument("--sandbox", dest="sandbox_overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a conf/sandbox setting (e.g. --sandbox max_image_pixels=60000000)")
    parser.add_argument("--no-colour", action="store_true")
    args = parser.parse_args(argv)

    # Every input is checked before the model loads: a mistake costs a second, not a model load.
    sandbox_config = sandbox_settings(args.sandbox_overrides)
    for path in args.image:
        problem = image_problem(path, sandbox_config)
        if problem:
            raise SystemExit(problem)
    problem = model_dir_problem(args.model, "--model")
    if problem:
        raise SystemExit(problem)
    from policy.prompts import load_prompt_config

    try:
        prompt = load_prompt_config(args.prompt)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"--prompt {args.prompt}: {exc}") from None
    overrides = parse_overrides(args.overrides)
    overrides["save_images_dir"] = args.out
    if args.greedy:
        overrides.setdefault("sampling", {}).update(temperature=0.0, code_temperature=0.0, ats=False)
    try:
        config = load_rollout_config(overrides=overrides)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        raise SystemExit(f"bad --set value: {exc}") from None
    engine = make_engine(args.model, config.engine, device=args.device, dtype=args.dtype,
                         options=config.engine_options)
    from envs.sandbox import Sandbox

    episode = EpisodeInput(question=args.question, image_paths=args.image, id="chat",
                           assistant_prefix=args.prefix, seed=args.seed)
    with Sandbox(sandbox_config) as sandbox, AgentLoop(engine, sandbox, config, prompt) as loop:
        [record] = loop.run([episode])
    colour = sys.stdout.isatty() and not args.no_colour
    # The sandbox reports its staged copy of an input; the user knows their own file.
    print(staged_paths_to_user_paths(format_transcript(record, engine.tokenizer, colour=colour), args.image))
    # Exit 1 only when the conversation could not start (input, sandbox); an episode the model itself
    # ended badly (e.g. by writing image placeholder tokens) is a finished chat whose transcript says why.
    return 1 if record.error is not None and record.model_tokens == 0 else 0


if __name__ == "__main__":
    sys.exit(main())

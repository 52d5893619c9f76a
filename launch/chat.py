"""Ask the policy one question about an image and watch it think, write code, read the sandbox, answer.

    python -m launch.chat --model DIR --image IMG "question" [--out DIR] [--device cuda --dtype bfloat16]

The flags are this command's fixed interface; every other setting (limits, sampling, ATS) comes from
conf/rollout/default.yaml, changed with `--set key=value` (e.g. --set max_turns=3
--set sampling.temperature=0).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from policy.agent_config import load_rollout_config
from policy.agent_engine import make_engine
from policy.agent_loop import AgentLoop, EpisodeInput
from policy.agent_transcript import format_transcript


def parse_overrides(items: list[str]) -> dict:
    """["a=1", "sampling.temperature=0"] -> nested dict, values parsed as YAML (numbers, bools, null)."""
    from omegaconf import OmegaConf

    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist(items)) if items else {}
    except Exception as exc:  # noqa: BLE001  (omegaconf raises several kinds)
        raise SystemExit(f"bad --set value in {items}: {exc}; use key=value, e.g. --set max_turns=3") from None


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
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a conf/rollout setting")
    parser.add_argument("--no-colour", action="store_true")
    args = parser.parse_args(argv)

    for path in args.image:
        if not Path(path).is_file():
            raise SystemExit(f"--image {path}: no such file")
    overrides = parse_overrides(args.overrides)
    overrides["save_images_dir"] = args.out
    if args.greedy:
        overrides.setdefault("sampling", {}).update(temperature=0.0, code_temperature=0.0, ats=False)
    config = load_rollout_config(overrides=overrides)
    engine = make_engine(args.model, config.engine, device=args.device, dtype=args.dtype,
                         options=config.engine_options)
    from envs.sandbox import Sandbox

    episode = EpisodeInput(question=args.question, image_paths=args.image, id="chat",
                           assistant_prefix=args.prefix, seed=args.seed)
    with Sandbox() as sandbox, AgentLoop(engine, sandbox, config) as loop:
        [record] = loop.run([episode])
    colour = sys.stdout.isatty() and not args.no_colour
    print(format_transcript(record, engine.tokenizer, colour=colour))
    # Exit 1 only when the conversation could not start (input, sandbox); an episode the model itself
    # ended badly (e.g. by writing image placeholder tokens) is a finished chat whose transcript says why.
    return 1 if record.error is not None and record.model_tokens == 0 else 0


if __name__ == "__main__":
    sys.exit(main())

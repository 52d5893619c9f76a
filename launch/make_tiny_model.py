"""Build the tiny random Qwen2.5-VL (tests, CPU demo): `python -m launch.make_tiny_model --out DIR [--seed S]`."""
from __future__ import annotations

import argparse

from policy.tiny_model import TinyModelConfig, make_tiny_model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, help="folder to save the model, tokenizer and image processor into")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the tokenizer corpus")
    parser.add_argument("--tag-tokens", action="store_true", help="make each Thyme tag one token (the demo's model)")
    parser.add_argument("--copy-pretrain-steps", type=int, default=0,
                        help="steps of copy pre-training after the random init (the demo's model: 300)")
    args = parser.parse_args(argv)
    cfg = TinyModelConfig(tag_tokens=args.tag_tokens, copy_pretrain_steps=args.copy_pretrain_steps)
    out = make_tiny_model(args.out, seed=args.seed, cfg=cfg)
    print(f"tiny Qwen2.5-VL saved to {out}; load it with policy.model.load_policy({str(out)!r})")


if __name__ == "__main__":
    main()

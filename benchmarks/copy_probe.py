"""Does a model copy what the sandbox printed? Teacher-forced direct trajectories with the printed value swapped.

    .venv/bin/python benchmarks/copy_probe.py --model MODEL_DIR --rows SFT_ROWS.jsonl [--prompt demo] [--limit 60]

SFT_ROWS: expert trajectories of measured direct questions (`python -m envs.tasks generate --category direct
--set direct.kinds=[colour,count,shape] direct.measure_share=1 --trajectories ...`): each prints a colour,
count or shape, then says "The code printed X". For every such row and every candidate value V the row is
encoded exactly as the SFT learner encodes it (learners/sft_data.py) with V in the sandbox output, and the
model's next token after "The code printed" read. Prints per kind: P(V) averaged over the swaps (chance
when the printed value does not matter), how often the argmax is V, and how often it is the row's own
answer although another value was printed (a constant answer scores its value's share of the rows; more
than that on trained rows means memorised).
Measured on the demo's tiny model (docs/training.md "Tokenizer fit and copying"): chance after SFT.
"""
from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vision_probe import CANDIDATES  # noqa: E402  (the sibling probe's answers; this folder is on sys.path)

PRINTED = re.compile(r"<sandbox_output>(\w+)</sandbox_output>\nThe code printed ")


def main(argv: list[str] | None = None) -> int:
    import torch

    from envs.data import load_sft_rows
    from learners.sft_data import encode_row
    from learners.sft_masking import MaskRules
    from policy.model import load_policy
    from policy.prompts import load_prompt_config

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--rows", required=True, help="SFT rows (.jsonl) with measured direct trajectories")
    parser.add_argument("--prompt", default="demo")
    parser.add_argument("--limit", type=int, default=60, help="rows per kind")
    args = parser.parse_args(argv)
    model, processor = load_policy(args.model)
    system = load_prompt_config(args.prompt).system
    tokenizer = processor.tokenizer
    # the answer's first token after "The code printed" (each candidate is one token: policy/tiny_model.py)
    firsts = {kind: [tokenizer.encode(" " + c, add_special_tokens=False)[0] for c in cands]
              for kind, cands in CANDIDATES.items()}
    stats: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for row in load_sft_rows(args.rows)[0]:
        match = PRINTED.search(row.response) if row.category == "direct" else None
        kind = next((k for k, c in CANDIDATES.items() if match and match.group(1) in c), None)
        if kind is None or stats[kind]["rows"] >= args.limit:
            continue
        truth, cands = match.group(1), CANDIDATES[kind]
        stats[kind]["rows"] += 1
        for value in cands:
            swapped = row.response[:match.start()] + match.group(0).replace(f">{truth}<", f">{value}<") + row.response[match.end():]
            example = encode_row(dataclasses.replace(row, response=swapped), processor, system, MaskRules())
            ids = example["input_ids"]
            pieces = tokenizer.convert_ids_to_tokens(ids)
            at = max(i for i, t in enumerate(pieces) if "printed" in t)  # the answer is the next token
            x = torch.tensor([ids])
            images = {k: example[k] for k in ("pixel_values", "image_grid_thw") if k in example}
            with torch.no_grad():
                logits = model(input_ids=x, attention_mask=torch.ones_like(x),
                               mm_token_type_ids=(x == processor.image_pad_id).int(), **images).logits[0, at]
            p = torch.softmax(logits.float(), -1)[firsts[kind]]
            p = p / p.sum()
            best = cands[int(p.argmax())]
            stats[kind]["swaps"] += 1
            stats[kind]["p_copy"] += p[cands.index(value)].item()
            stats[kind]["copies"] += best == value
            stats[kind]["memorised"] += best == truth and value != truth
            stats[kind]["swapped"] += value != truth
    if not stats:
        raise SystemExit(f"no measured direct colour/shape/count trajectories in {args.rows}")
    print(f"{'kind':<8} {'rows':>5} {'P(printed)':>10} {'chance':>7} {'argmax=printed':>14} {'argmax=own answer':>17}")
    for kind, s in sorted(stats.items()):
        print(f"{kind:<8} {int(s['rows']):>5} {s['p_copy'] / s['swaps']:>10.2f} {1 / len(CANDIDATES[kind]):>7.2f} "
              f"{s['copies'] / s['swaps']:>14.2f} {s['memorised'] / max(s['swapped'], 1):>17.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

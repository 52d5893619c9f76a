"""DeepSpeed's CPU communication op, prepared in the driver under a spinner before CPU learners start.

On CPU, `deepspeed.init_distributed` JIT-compiles a shared-memory op (deepspeed_shm_comm) when it is
missing or stale: 1-4 minutes on a laptop, silently, inside each learner. Loading it here first, on
the same node and into the same TORCH_EXTENSIONS_DIR the local learners use, turns that silence into
a message with a spinner; the learners then load the cached op in a second. Ninja decides whether to
rebuild (a cached op whose build flags changed is stale too), so the op is always loaded here, which
costs the DeepSpeed import the learners pay anyway. GPU learners use NCCL and need no op.
"""
from __future__ import annotations

import os

from learners.spinner import spinner


def ensure_cpu_comm_op() -> None:
    """Load (compiling when needed) the op now; call before starting CPU learners on this node."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")  # these are CPU learners: no "unable to detect" warning
    from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder

    builder = ShareMemCommBuilder()
    if not builder.is_compatible(verbose=False):
        return  # DeepSpeed falls back to plain gloo collectives itself
    where = os.environ.get("TORCH_EXTENSIONS_DIR", "~/.cache/torch_extensions")
    with spinner(f"preparing DeepSpeed's CPU communication op (compiled on first use: 1-4 min; cached in {where})"):
        builder.load(verbose=False)


if __name__ == "__main__":  # `make setup` compiles it at install time, so a first demo or test does not
    from learners.wandb_run import keep_files_out_of_home

    keep_files_out_of_home()  # the repo's .cache/torch_extensions, where launch.train and the tests look
    try:
        ensure_cpu_comm_op()
    except Exception as exc:  # noqa: BLE001  (no compiler, say): set-up goes on; the first run retries
        print(f"warning: DeepSpeed's CPU communication op did not build now ({exc}); "
              "the first training run will try again", flush=True)

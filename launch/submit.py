"""Submit training or evaluation to a Ray cluster as a job, and follow it to its end.

    python -m launch.submit [--address http://HEAD:8265] [--no-wait] train [overrides ...]
    python -m launch.submit [--address http://HEAD:8265] [--gpus 1] eval --model /shared/... --tasks /shared/... --out /shared/...

The job ships this checkout (launch/runtime_env.yaml: the working dir minus caches and outputs, and
a few env vars); the nodes need the project's dependencies installed already. Train overrides are
checked and every stage's config validated here first (typos get "did you mean"; relative paths,
which would land in the job's temporary working dir, are refused), so a mistake costs a second and
not an upload and a cluster start-up. Without a `cluster=` override the job runs with
cluster=ray_cluster (learners sized from the cluster). The entrypoint itself joins the cluster through
the RAY_ADDRESS the job gets and validates the learners against it.

Following prints the job's log as it grows (the step lines are in it) and returns 0 when the job
SUCCEEDED, 1 otherwise; Ctrl-C stops following, not the job (`ray job stop ID` does that).
The address is --address, else RAY_ADDRESS when it is an http(s) URL, else http://127.0.0.1:8265.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
import time
from pathlib import Path

from launch.ray_session import job_runtime_env
from learners.train_config import ConfigError

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def default_address() -> str:
    env = os.environ.get("RAY_ADDRESS", "")
    return env if env.startswith(("http://", "https://")) else "http://127.0.0.1:8265"


def check_train(overrides: list[str]) -> list[str]:
    """Validate a train job's overrides as its entrypoint will (on a cluster); returns them, completed."""
    from hydra import compose, initialize_config_dir

    from launch.overrides_check import job_overrides
    from launch.train import CONF_DIR, compose_stages, precheck, typed

    if not any(o.split("=", 1)[0].lstrip("+") == "cluster" for o in overrides):
        overrides = ["cluster=ray_cluster", *overrides]
    precheck(overrides, check_paths=False)  # data and model paths are the cluster's, not this machine's
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        for job in job_overrides([o for o in overrides if not o.startswith("-")]):
            stages = compose_stages(compose(config_name="config", overrides=job), job)
            for config in (typed(c, check_paths=False) for c in stages):
                if not Path(config.output_dir).is_absolute():
                    raise ConfigError(
                        f"output_dir={config.output_dir} is relative: on the cluster it would land in the job's "
                        "temporary working dir, removed when the job ends. Give an absolute path on a file system "
                        "every node mounts, e.g. output_dir=/shared/thyme/run1")
    return overrides


def check_eval(args: list[str]) -> None:
    """Eval's path flags must be absolute: relative ones would point into the job's temporary working dir."""
    for flag in ("--model", "--tasks", "--out"):
        if flag in args[:-1]:
            value = args[args.index(flag) + 1]
            if not Path(value).is_absolute():
                raise ConfigError(f"{flag} {value} is relative: on the cluster it would point into the job's temporary "
                                  f"working dir. Give an absolute path on the shared file system, e.g. {flag} /shared/...")
    if "--out" not in args:
        raise ConfigError("eval on a cluster needs --out /shared/...: its default (runs/eval) is in the job's temporary "
                          "working dir, removed when the job ends")


async def _print_logs(client, job_id: str) -> None:
    async for lines in client.tail_job_logs(job_id):
        print(lines, end="", flush=True)


def follow(client, job_id: str) -> str:
    """Print the job's log until it ends; returns its final status."""
    try:
        asyncio.run(_print_logs(client, job_id))
    except KeyboardInterrupt:
        print(f"\nstopped following; job {job_id} goes on (`ray job logs -f {job_id}` to follow again, "
              f"`ray job stop {job_id}` to stop it)", file=sys.stderr)
        return "RUNNING"
    status = str(client.get_job_status(job_id).value)
    while status not in TERMINAL:  # the log stream can end a moment before the status is final
        time.sleep(1)
        status = str(client.get_job_status(job_id).value)
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", default=default_address(), help="the Ray dashboard/job server URL")
    parser.add_argument("--no-wait", action="store_true", help="submit and return; do not follow the job")
    parser.add_argument("--gpus", type=float, default=None, help="GPUs for the entrypoint (eval on a GPU node)")
    parser.add_argument("--submission-id", default=None, help="a job id of your own (default: Ray picks one)")
    parser.add_argument("command", choices=("train", "eval"))
    parser.add_argument("args", nargs=argparse.REMAINDER, help="overrides (train) or flags (eval)")
    args = parser.parse_args(argv)

    try:
        if args.command == "train":
            job_args = check_train(list(args.args))
        else:
            check_eval(list(args.args))
            job_args = list(args.args)
    except ConfigError as exc:
        print(f"configuration refused: {exc}", file=sys.stderr)
        return 2
    entrypoint = f"python -m launch.{args.command} {shlex.join(job_args)}".strip()

    import logging

    from ray.job_submission import JobSubmissionClient

    # Ray's SDK logs every packaging step and websocket event at INFO; our own lines say what happened.
    logging.getLogger("ray").setLevel(logging.ERROR)

    try:
        client = JobSubmissionClient(args.address)
        job_id = client.submit_job(entrypoint=entrypoint, runtime_env=job_runtime_env(), submission_id=args.submission_id,
                                   entrypoint_num_gpus=args.gpus, metadata={"thyme": args.command})
    except (ConnectionError, RuntimeError, ValueError) as exc:
        print(f"could not submit to the Ray job server at {args.address}: {exc}\nStart a head with its dashboard "
              "(`ray start --head` with ray[default] installed, see README: GPU clusters) or pass "
              "--address http://HEAD:8265", file=sys.stderr)
        return 1
    print(f"submitted job {job_id} to {args.address}: {entrypoint}", flush=True)
    if args.no_wait:
        print(f"follow it with `ray job logs -f {job_id} --address {args.address}`; stop it with `ray job stop {job_id}`")
        return 0
    status = follow(client, job_id)
    print(f"job {job_id}: {status}", flush=True)
    return 0 if status == "SUCCEEDED" else 1


if __name__ == "__main__":
    sys.exit(main())

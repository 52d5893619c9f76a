"""Run code files in the sandbox and print one JSON result per file per line.

    python -m envs.sandbox --image in.jpg [--image more.png] [--timeout S] [--same-episode] a.py b.py

Each FILE runs in its own episode, or with --same-episode all in order in one (names persist).
Failing code is data (exit 0); bad arguments exit 2 with a message. The sandbox's work dirs go when
the command ends; output images are kept (copied under --outputs DIR, by default a new folder that
the command names on stderr), so the paths it prints stay valid. --keep DIR keeps everything.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m envs.sandbox", description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+", metavar="FILE", help="Python code files (a model's <code> block is fine too)")
    p.add_argument("--image", action="append", default=[], metavar="PATH", help="input image (repeatable)")
    p.add_argument("--timeout", type=float, default=None, metavar="S", help="wall-clock limit per file, seconds")
    p.add_argument("--same-episode", action="store_true", help="run all files in order in one episode")
    p.add_argument("--isolation", choices=["auto", "bwrap", "process"], default=None)
    p.add_argument("--keep", metavar="DIR", default=None,
                   help="keep work dirs and output images under DIR (default: a temporary folder, removed)")
    p.add_argument("--outputs", metavar="DIR", default=None,
                   help="where output images are kept (default: a new thyme-sandbox-outputs-* folder in the "
                        "system's temporary folder, named on stderr)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.timeout is not None and args.timeout <= 0:
        parser.error(f"--timeout must be positive, got {args.timeout}")
    for path in args.files:
        if not os.path.isfile(path):
            parser.error(f"code file {path!r} does not exist")
    for path in args.image:
        if not os.path.isfile(path):
            parser.error(f"image {path!r} does not exist")
    codes = []
    for path in args.files:
        with open(path, encoding="utf-8", errors="replace") as f:
            codes.append(f.read())

    from .errors import InputImageError
    from .sandbox import Sandbox

    overrides = {}
    if args.timeout is not None:
        overrides["timeout_s"] = args.timeout
    if args.isolation:
        overrides["isolation"] = args.isolation
    if args.keep:
        overrides["work_root"] = os.path.abspath(args.keep)
    try:
        sandbox = Sandbox(overrides)
    except ValueError as exc:
        parser.error(str(exc))
    kept_dir = [os.path.abspath(args.outputs) if args.outputs else None, False]  # folder, named yet

    def keep(images: list[str]) -> list[str]:
        """Copies of the output images that outlive the sandbox's work dirs (removed at exit)."""
        if args.keep or not images:
            return images
        if kept_dir[0] is None:
            kept_dir[0] = tempfile.mkdtemp(prefix="thyme-sandbox-outputs-")
        os.makedirs(kept_dir[0], exist_ok=True)
        if not kept_dir[1]:
            kept_dir[1] = True
            print(f"python -m envs.sandbox: output images are kept in {kept_dir[0]}", file=sys.stderr)
        copies = []
        for image in images:
            target = os.path.join(kept_dir[0], os.path.basename(image))
            stem, ext = os.path.splitext(target)
            n = 1
            while os.path.exists(target):
                n += 1
                target = f"{stem}-{n}{ext}"
            shutil.copyfile(image, target)
            copies.append(target)
        return copies

    with sandbox:
        def emit(path, result):
            result.images = keep(result.images)
            print(json.dumps({**result.to_dict(), "file": path}), flush=True)

        try:
            if args.same_episode:
                ep = sandbox.episode(images=args.image)
                try:
                    for path, code in zip(args.files, codes):
                        emit(path, ep.run(code))
                finally:
                    ep.close(remove_files=not args.keep)
            else:
                for path, code in zip(args.files, codes):
                    ep = sandbox.episode(images=args.image)
                    try:
                        emit(path, ep.run(code))
                    finally:
                        ep.close(remove_files=not args.keep)
        except InputImageError as exc:
            print(f"python -m envs.sandbox: error: {exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

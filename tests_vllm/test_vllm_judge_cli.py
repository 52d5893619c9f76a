"""The judge's `vllm serve` command line (actors/judge_vllm.py) parsed by vLLM 0.32's own serve parser
(vllm/entrypoints/cli/serve.py:161 subparser_init, vllm/entrypoints/openai/cli_args.py make_arg_parser),
run as `python -m vllm.entrypoints.cli.main` (vllm/entrypoints/cli/main.py:39, :125)."""
import pytest

from actors.vllm_serve import vllm_serve_command
from rewards.config import VLLMJudgeConfig


@pytest.fixture(scope="module")
def serve_parser():
    # vLLM's CLI does this itself for `vllm bench` on machines without an accelerator (cli/main.py:73-86):
    # its engine-argument defaults need a platform to build.
    from vllm import platforms
    from vllm.platforms.cpu import CpuPlatform

    if platforms.current_platform.is_unspecified():
        platforms.current_platform = CpuPlatform()
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    ServeSubcommand().subparser_init(parser.add_subparsers(dest="subparser"))
    return parser


def test_serve_command_parses_with_vllms_parser(serve_parser):
    import importlib

    cfg = VLLMJudgeConfig(model_path="/models/judge", tensor_parallel_size=2, gpus=4, extra_args=("--enforce-eager",))
    cmd = vllm_serve_command(cfg, 8123, python="py")
    assert cmd[1:3] == ["-m", "vllm.entrypoints.cli.main"] and callable(importlib.import_module(cmd[2]).main)
    args = serve_parser.parse_args(cmd[3:])
    assert args.subparser == "serve" and args.model_tag == "/models/judge" and args.port == 8123
    assert args.tensor_parallel_size == 2 and args.served_model_name == [cfg.served_model_name]
    assert args.gpu_memory_utilization == cfg.gpu_memory_utilization and args.max_model_len == cfg.max_model_len
    assert args.enforce_eager and args.host == "0.0.0.0"

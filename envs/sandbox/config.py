"""Sandbox settings: one dataclass, mirrored by conf/sandbox/default.yaml, validated on load."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
ISOLATION_MODES = ("auto", "bwrap", "process")
CGROUP_MODES = ("auto", "require", "off")


@dataclass
class SandboxConfig:
    # Wall-clock limit of one run, enforced from outside by killing the episode's processes (paper: 10 s).
    timeout_s: float = 10.0
    # Address space the code may add on top of the pre-imported libraries (RLIMIT_AS = warm size + this).
    memory_mb: int = 1024
    # CPU seconds one run may use (RLIMIT_CPU soft limit, re-armed each run) and one episode in total (hard).
    cpu_time_s: int = 20
    episode_cpu_time_s: int = 600
    # Processes + threads per episode (RLIMIT_NPROC; counted per uid, so every episode gets its own uid).
    max_processes: int = 32
    max_file_mb: int = 64            # RLIMIT_FSIZE: largest file the code may write
    # Checked after every run: an episode over either limit loses its files and variables.
    max_episode_disk_mb: int = 512
    max_episode_files: int = 5000
    max_episode_depth: int = 64      # folders nested deeper are over the quota too
    max_open_files: int = 128        # RLIMIT_NOFILE
    max_output_bytes: int = 16384    # printed text kept per run; the rest is replaced by a marker
    max_code_bytes: int = 65536      # longer code is refused before it runs
    max_image_pixels: int = 40_000_000   # inputs and outputs above this are refused (decompression bombs)
    max_image_bytes: int = 64 * 1024 * 1024
    max_images_per_run: int = 8      # output images reported per run
    # Seconds the server may spend checking (decoding) one run's output images, in slices between
    # other episodes' requests; an image not decided within it is refused.
    output_check_s: float = 2.0
    # Per-episode cgroup (memory for all its processes together, CPU rate and total, process count):
    # auto = use it where cgroups are writable, else per-process rlimits only (warns once);
    # require = refuse to start without; off = never.
    cgroup: str = "auto"
    episode_cpus: float = 1.0        # CPU cores one episode may use at once (its cgroup's quota)
    # auto: bubblewrap if it works here, else process-level layers only (warns once);
    # bwrap: refuse to start without it; process: never use it.
    isolation: str = "auto"
    seccomp: bool = True             # syscall filter through pyseccomp where the library is available
    # Landlock (kernel >= 5.13): each episode may write only its work dir, read only the system, the
    # interpreter and its inputs, execute nothing, and (ABI >= 6) signal nothing outside itself.
    landlock: bool = True
    n_servers: int = 1               # warm server processes (episodes are spread across them)
    # Where work dirs and input copies live; null = a fresh temporary folder per Sandbox (removed on close).
    work_root: str | None = None
    # First uid of the per-episode uids (used when the sandbox runs as root); each server gets uids_per_server.
    uid_base: int = 200000
    uids_per_server: int = 4096
    max_live_episodes: int = 1024    # per server; start_episode beyond it is refused
    decode_cache_mb: int = 512       # decoded input images kept per server (G rollouts share one decode)
    server_start_timeout_s: float = 60.0
    # Modules imported in the warm server so children do not pay for them (and find them when the
    # interpreter's own files are not readable by the episode uid).
    preload_modules: list[str] = field(default_factory=lambda: [
        "cv2", "numpy", "PIL.Image", "PIL.ImageEnhance", "PIL.ImageOps", "PIL.ImageFilter", "PIL.ImageDraw",
        "PIL.ImageFont", "PIL.ImageStat", "math", "json", "re", "collections", "itertools", "functools",
        "statistics", "fractions", "decimal", "random", "string", "textwrap", "io", "base64", "copy",
        "datetime", "heapq", "bisect", "operator", "glob", "shutil", "pathlib", "traceback"])

    def validate(self) -> "SandboxConfig":
        problems = []
        for name in ("timeout_s", "memory_mb", "cpu_time_s", "episode_cpu_time_s", "max_processes", "max_file_mb",
                     "max_episode_disk_mb", "max_episode_files",
                     "max_open_files", "max_output_bytes", "max_code_bytes", "max_image_pixels",
                     "max_image_bytes", "max_images_per_run", "output_check_s", "episode_cpus",
                     "max_episode_depth", "n_servers", "uids_per_server",
                     "max_live_episodes", "server_start_timeout_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                problems.append(f"sandbox.{name} must be a positive number, got {value!r}")
        if self.cgroup not in CGROUP_MODES:
            problems.append(f"sandbox.cgroup must be one of {CGROUP_MODES}, got {self.cgroup!r}")
        if self.isolation not in ISOLATION_MODES:
            problems.append(f"sandbox.isolation must be one of {ISOLATION_MODES}, got {self.isolation!r}")
        if isinstance(self.max_open_files, int) and self.max_open_files < 16:
            problems.append("sandbox.max_open_files must be at least 16 (Python itself needs a few descriptors)")
        if isinstance(self.max_processes, int) and self.max_processes < 2:
            problems.append("sandbox.max_processes must be at least 2 (the episode process itself counts)")
        if self.decode_cache_mb < 0:
            problems.append(f"sandbox.decode_cache_mb must be >= 0, got {self.decode_cache_mb}")
        if self.uid_base < 1000:
            problems.append(f"sandbox.uid_base must be >= 1000 (not a system account), got {self.uid_base}")
        if self.max_live_episodes > self.uids_per_server:
            problems.append("sandbox.max_live_episodes cannot exceed sandbox.uids_per_server (one uid per live episode)")
        if self.cpu_time_s > self.episode_cpu_time_s:
            problems.append("sandbox.cpu_time_s (per run) cannot exceed sandbox.episode_cpu_time_s (per episode)")
        if problems:
            raise ValueError("invalid sandbox config:\n  " + "\n  ".join(problems)
                             + f"\n(see {CONF_DIR / 'sandbox' / 'default.yaml'} for the meaning of each field)")
        return self


def load_sandbox_config(overrides: dict[str, Any] | list[str] | None = None,
                        yaml_path: str | Path | None = None) -> SandboxConfig:
    """The YAML defaults merged with overrides ({"timeout_s": 5} or ["timeout_s=5"]), typed and validated.

    Unknown keys and wrongly typed values fail here with OmegaConf's message naming the key.
    """
    schema = OmegaConf.structured(SandboxConfig)
    yaml_path = Path(yaml_path) if yaml_path else CONF_DIR / "sandbox" / "default.yaml"
    layers = [schema]
    if yaml_path.exists():
        layers.append(OmegaConf.load(yaml_path))
    if isinstance(overrides, dict):
        layers.append(OmegaConf.create(overrides))
    elif overrides:
        layers.append(OmegaConf.from_dotlist(list(overrides)))
    merged = OmegaConf.merge(*layers)
    return config_from_dict(OmegaConf.to_container(merged, resolve=True))


def config_from_dict(values: dict[str, Any]) -> SandboxConfig:
    """Build and validate from a plain dict (e.g. a Hydra node turned into a container)."""
    known = {f.name for f in dataclasses.fields(SandboxConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown sandbox config keys {unknown}; known keys: {sorted(known)}")
    return SandboxConfig(**values).validate()

"""Command-line overrides checked before Hydra sees them: a typo gets "did you mean", not Hydra's
advice to append it with `+key` (which our typed configs would then refuse anyway).

    check_overrides(["stage.learning_rate=1e-4"])  ->  ConfigError: unknown setting stage.learning_rate;
                                                        did you mean stage.lr? ...

Checks every key against the composed config, every config-group choice against conf/<group>/, and
the stage names of `pipeline=[...]`; sweep values (`-m stage=sft,sft_math`) are checked one by one.
`job_overrides` expands a multirun into its jobs so launch.train can validate each job's whole
config before the first one starts.
"""
from __future__ import annotations

import difflib
from pathlib import Path

from learners.train_config import ConfigError

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
# Names users bring from other trainers, mapped to ours (difflib cannot guess these).
ALIASES = {"learning_rate": "lr", "lr_rate": "lr", "batch_size": "global_batch", "train_batch_size": "global_batch",
           "micro_batch_size": "micro_batch", "num_epochs": "epochs", "warmup": "warmup_ratio", "steps": "max_steps",
           "gpus": "num_gpus", "learners": "num_learners", "zero": "zero_stage", "wandb": "wandb_mode"}


def config_groups(conf_dir: Path = CONF_DIR) -> dict[str, list[str]]:
    """{group: [option, ...]} for every folder of YAML files under conf/."""
    return {d.name: sorted(p.stem for p in d.glob("*.yaml")) for d in sorted(conf_dir.iterdir())
            if d.is_dir() and any(d.glob("*.yaml"))}


def did_you_mean(word: str, candidates, prefix: str = "") -> str:
    """' did you mean X?' for the closest candidate (aliases first), or ''."""
    candidates = list(candidates)
    alias = ALIASES.get(word)
    if alias in candidates:
        return f" did you mean {prefix}{alias}?"
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.5)
    return f" did you mean {prefix}{close[0]}?" if close else ""


def _values(override) -> list:
    """The value(s) of one override: a sweep's every choice, else the single value."""
    if override.is_sweep_override():
        return list(override.sweep_iterator())
    return [override.value()]


def _parse(args: list[str]):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(args)


def _free_form(node) -> bool:
    """Dict settings whose keys are free (e.g. rollout.engine_options): `+key` may add to them."""
    from omegaconf import DictConfig

    return isinstance(node, DictConfig) and len(node) == 0


def check_overrides(args: list[str], conf_dir: Path = CONF_DIR) -> None:
    """Refuse (ConfigError) unknown settings, config-group options and pipeline stages, with a suggestion."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    try:
        overrides = _parse(args)
    except Exception:  # noqa: BLE001 - a syntax error: Hydra's own message says where, let it speak
        return
    groups = config_groups(conf_dir)
    choices = []
    for o in overrides:
        key = o.key_or_group
        if key in groups:
            for value in _values(o):
                if str(value) not in groups[key]:
                    raise ConfigError(f"{key}={value}: there is no conf/{key}/{value}.yaml;"
                                      f"{did_you_mean(str(value), groups[key], key + '=')} "
                                      f"(the {key} options are {', '.join(groups[key])})")
            if not o.is_delete():
                choices.append(f"{key}={_values(o)[0]}")
        elif key == "pipeline":
            for value in _values(o):
                for stage in value if isinstance(value, list) else [value]:
                    if str(stage) not in groups.get("stage", []):
                        raise ConfigError(f"pipeline stage {stage!r}: there is no conf/stage/{stage}.yaml;"
                                          f"{did_you_mean(str(stage), groups['stage'])} "
                                          f"(the stages are {', '.join(groups['stage'])})")
    with initialize_config_dir(config_dir=str(conf_dir), version_base=None):
        cfg = compose(config_name="config", overrides=choices)
    for o in overrides:
        key = o.key_or_group
        if key in groups or key == "pipeline" or key.startswith("hydra") or o.is_delete():
            continue
        parent_key, _, leaf = key.rpartition(".")
        parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
        if parent is not None and not OmegaConf.is_dict(parent):  # e.g. seed.x: seed is a number
            raise ConfigError(f"unknown setting {key}: {parent_key} is a single value, not a section; "
                              f"set it as {parent_key}=VALUE")
        # keys(), not `in`: a `???` setting (model.path of qwen2_5_vl_7b) is "not in" its node for OmegaConf.
        if parent is not None and (leaf in list(parent.keys()) or (o.is_add() or o.is_force_add()) and _free_form(parent)):
            continue
        if parent is None:
            sections = list(cfg.keys())
            raise ConfigError(f"unknown setting {key}: there is no section {parent_key};"
                              f"{did_you_mean(parent_key.split('.')[-1], sections)} "
                              f"(the sections are {', '.join(sections)})")
        siblings = list(parent.keys())
        where = f"{parent_key}." if parent_key else ""
        hint = did_you_mean(leaf, siblings, where) or _anywhere(leaf, cfg)
        raise ConfigError(f"unknown setting {key};{hint or ' no setting has a similar name'} "
                          f"(the settings{' of ' + parent_key if parent_key else ''} are {', '.join(siblings)})")


def _anywhere(leaf: str, cfg) -> str:
    """' did you mean a.b.LEAF?' when a setting of that name (or its alias) lives in some section."""
    from omegaconf import OmegaConf

    wanted = {leaf, ALIASES.get(leaf)}
    flat = OmegaConf.to_container(cfg, resolve=False, throw_on_missing=False)
    stack, found = [("", flat)], []
    while stack:
        prefix, node = stack.pop()
        for k, v in (node.items() if isinstance(node, dict) else ()):
            dotted = f"{prefix}{k}"
            if k in wanted and prefix:
                found.append(dotted)
            if isinstance(v, dict):
                stack.append((dotted + ".", v))
    return f" did you mean {sorted(found)[0]}?" if found else ""


def job_overrides(args: list[str]) -> list[list[str]]:
    """The override list of every job a multirun of ARGS launches (one list for a single run)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    batches = BasicSweeper.split_arguments(_parse(args), max_batch_size=None)
    return [list(job) for batch in batches for job in batch]

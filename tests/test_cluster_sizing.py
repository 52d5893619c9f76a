"""cluster=ray_cluster sizes its learners from the joined cluster (one per GPU, as many as split the
global batch; one CPU learner without GPUs), a cluster config is checked against the cluster it
joins, and paths a cluster would lose are refused or moved beside the run."""
from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir

from launch.ray_session import joined_address
from launch.train import CONF_DIR, check_cluster_paths, check_fits, typed
from learners.train_config import ConfigError, size_cluster


def _config(*overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose(config_name="config", overrides=["cluster=ray_cluster", "stage=sft", *overrides])
    return typed(cfg), cfg


@pytest.mark.parametrize("gpus, learners, gpus_each", [(32, 32, 1), (8, 8, 1), (6, 4, 1), (0, 1, 0)])
def test_learners_are_sized_from_the_cluster(gpus, learners, gpus_each):
    config, cfg = _config()
    assert config.cluster.num_learners is None and config.cluster.gpus_per_learner is None
    size_cluster(config, gpus, 512)
    assert (config.cluster.num_learners, config.cluster.gpus_per_learner) == (learners, gpus_each)
    check_fits(config, cfg, gpus, 512, joined=True)  # what it asked for fits


def test_a_cluster_config_is_checked_against_the_joined_cluster():
    config, cfg = _config("cluster.num_learners=16", "cluster.gpus_per_learner=1")
    size_cluster(config, 8, 512)
    with pytest.raises(ConfigError, match=r"asked for 16 GPU\(s\).* but the cluster has 8; lower cluster.num_learners to 8"):
        check_fits(config, cfg, 8, 512, joined=True)


def test_paths_a_cluster_would_lose(monkeypatch, tmp_path):
    config, _ = _config("output_dir=runs/x")
    with pytest.raises(ConfigError, match="output_dir=runs/x is relative, and this run joins the Ray cluster"):
        check_cluster_paths(config, "auto")
    config, _ = _config(f"output_dir={tmp_path}")
    check_cluster_paths(config, "auto")
    assert config.model.tiny_dir == str(tmp_path / "tiny_model") and config.data.generate_dir == str(tmp_path / "sft_data")
    # A job's entrypoint has no cluster.address of its own but RAY_ADDRESS: it joins, it does not start a Ray.
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert joined_address(None) is None
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert joined_address(None) == "127.0.0.1:6379" and joined_address("auto") == "auto"

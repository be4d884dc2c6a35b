"""conf/serve.yaml mirrors serve.py's typed config: the same keys, the same defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from data.config import ConfigError, key_paths
from serving.config import LoopConfig, ServeConfig

CONF = Path(__file__).resolve().parents[2] / "conf"


def composed(overrides: list[str] | None = None) -> dict:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="serve", overrides=overrides or [])
    return OmegaConf.to_container(cfg, resolve=True)


def leaves(values: dict, prefix: str = "") -> list[str]:
    return [p for k, v in values.items()
            for p in (leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"])]  # fmt: skip


def test_serve_yaml_has_every_key_of_the_typed_config_with_its_default():
    values = composed()
    # every field is in the yaml, so that serve.KEY=VALUE works without a +
    assert sorted(leaves(values)) == sorted(p for p in key_paths(ServeConfig) if p not in ("serve", "risk"))
    assert ServeConfig.from_dict(values) == ServeConfig()


def test_the_poll_interval_floor_is_one_second_on_a_real_exchange_and_0_01_on_loopback():
    with pytest.raises(ConfigError, match="against a real exchange poll at least every 1 s"):
        ServeConfig(serve=LoopConfig(poll_seconds=0.5))
    with pytest.raises(ConfigError, match="against a real exchange"):
        ServeConfig(api_url="https://testnet.binancefuture.com", serve=LoopConfig(poll_seconds=0.5))
    for local in ("http://127.0.0.1:8080", "http://localhost:1", "http://[::1]:9"):
        assert ServeConfig(api_url=local, serve=LoopConfig(poll_seconds=0.01)).loopback
        with pytest.raises(ConfigError, match="against a loopback stand-in poll at least every 0.01 s"):
            ServeConfig(api_url=local, serve=LoopConfig(poll_seconds=0.0))
    assert ServeConfig(serve=LoopConfig(poll_seconds=1.0)).serve.poll_seconds == 1.0
    # an operator command polls nothing: the floor does not apply to it
    assert ServeConfig(command="status", serve=LoopConfig(poll_seconds=0.0)).command == "status"

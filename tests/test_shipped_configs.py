"""Every accelerate config shipped in potstill/configs parses with accelerate's own loader."""

from __future__ import annotations

from pathlib import Path

import pytest

import potstill

CONFIGS = sorted((Path(potstill.__file__).parent / "configs").glob("accelerate_*.yaml"))


def test_the_configs_are_shipped() -> None:
    assert {p.name for p in CONFIGS} >= {"accelerate_deepspeed_zero3.yaml", "accelerate_fsdp.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads_with_accelerate(path: Path) -> None:
    from accelerate.commands.config.config_args import ClusterConfig

    cfg = ClusterConfig.from_yaml_file(path)
    assert cfg.num_processes >= 2 and cfg.mixed_precision == "bf16"
    if "deepspeed" in path.name:
        assert str(cfg.distributed_type).endswith("DEEPSPEED") and cfg.deepspeed_config["zero_stage"] == 3
    else:
        assert str(cfg.distributed_type).endswith("FSDP") and cfg.fsdp_config["fsdp_version"] == 2

from pathlib import Path

import pytest

from pipeline.config import Config, load_config


def test_precedence_defaults_yaml_env_cli(tmp_path: Path) -> None:
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("tile_px: 512\nstain: macenko\nmax_attempts: 5\n")
    env = {"NUCLEI_TILE_PX": "768", "NUCLEI_SAVE_PROBABILITIES": "yes"}
    config = load_config(yaml_file, {"max_attempts": 2, "reader": None}, environ=env)
    assert config.tile_px == 768  # env beats YAML
    assert config.stain == "macenko"  # YAML beats default
    assert config.max_attempts == 2  # command line beats YAML
    assert config.save_probabilities is True
    assert config.reader == Config().reader  # an unset option keeps the default


def test_bad_values_and_unknown_keys_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tile_px"):
        load_config(None, {"tile_px": 100}, environ={})
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("tile_size: 512\n")
    with pytest.raises(ValueError, match="unknown config keys: tile_size"):
        load_config(yaml_file, environ={})

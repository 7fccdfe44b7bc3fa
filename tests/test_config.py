from pathlib import Path

import pytest

from pipeline.config import Config, load_config
from tests.conftest import SPECIAL_FILES, bounded_cli, special_file


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


@pytest.mark.parametrize("kind", SPECIAL_FILES)
def test_config_that_is_no_regular_file_is_refused(kind: str, tmp_path: Path, blob_model: Path) -> None:
    """``--config`` a FIFO, a device or a folder: exit 2 and one line, at once (the size ``stat``
    reports for a device is 0: the limit is on the bytes read)."""
    manifest = tmp_path / "m.csv"
    manifest.write_text("slide_path\na.svs\n")
    path = special_file(kind, tmp_path)
    result = bounded_cli(
        "pipeline.run", str(manifest), "--config", str(path), "--out", str(tmp_path / "out"), "--model", str(blob_model)
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr[-2000:]
    assert str(path) in result.stderr and "not a regular file" in result.stderr

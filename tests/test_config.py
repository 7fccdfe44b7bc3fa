from pathlib import Path

import pytest

from pipeline.config import Config, load_config
from tests.conftest import (
    SPECIAL_FILES,
    bounded_cli,
    manifest_of,
    one_line_error,
    run_cli,
    special_file,
)


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


# Settings a real node cannot carry are refused up front, each naming its bound and why (before: a
# MemoryError per slide, a run without progress, 145 processes on two cores, endless worker restarts).
@pytest.mark.parametrize(
    ("overrides", "env", "expected"),
    [
        ({"halo_px": 100000}, {}, "halo_px=100000 must be at most 1024"),
        ({"halo_px": 512, "tile_px": 256}, {}, "must not exceed the tile core"),
        ({}, {"NUCLEI_MAX_NUCLEUS_PX": "100000"}, "max_nucleus_px=100000 must be between 1 and 256"),
        ({"n_workers": 200}, {}, "n_workers=200: this machine has 2 usable core(s), at most 2"),
        ({"n_workers": 2, "threads_per_worker": 64}, {}, "at most 4 task threads"),
        ({}, {"NUCLEI_MEMORY_LIMIT": "1kB"}, "memory_limit='1kB' gives a worker 0.98 kiB, under the 1.00 GiB"),
        ({}, {"NUCLEI_MEMORY_LIMIT": "0.001"}, "gives a worker 16.38 MiB"),
        ({"dashboard": "127.0.0.1:99999"}, {}, "a port is a number from 0 (any free port) to 65535"),
        ({}, {"NUCLEI_TILEPX": "512"}, "unknown environment variable NUCLEI_TILEPX"),
    ],
)
def test_settings_beyond_what_a_node_can_carry_are_refused(
    overrides: dict, env: dict[str, str], expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipeline.config as config_module

    monkeypatch.setattr(config_module, "usable_cores", lambda: 2)
    monkeypatch.setattr(config_module, "total_memory_bytes", lambda: 16 << 30)
    with pytest.raises(ValueError) as err:
        load_config(None, overrides, environ=env)
    assert expected in str(err.value)


def test_settings_at_their_bounds_and_other_nuclei_variables_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.config as config_module

    monkeypatch.setattr(config_module, "usable_cores", lambda: 2)
    monkeypatch.setattr(config_module, "total_memory_bytes", lambda: 16 << 30)
    env = {"NUCLEI_RMM_POOL": "0.8", "NUCLEI_CACHE": "/tmp/c", "NUCLEI_REQUIRE_TORCH": "1"}
    env["NUCLEI_MEMORY_LIMIT"] = "1GiB"
    config = load_config(
        None, {"halo_px": 1024, "max_nucleus_px": 256, "n_workers": 2, "threads_per_worker": 2}, environ=env
    )
    assert (config.halo_px, config.max_nucleus_px, config.n_workers) == (1024, 256, 2)
    for memory in ("auto", "0", "0.5", "4GB"):
        load_config(None, {"memory_limit": memory}, environ={})
    # port 0: the system picks a free port (several runs on one node, the tests), printed at start
    assert load_config(None, {"dashboard": "127.0.0.1:0"}, environ={}).dashboard == "127.0.0.1:0"
    # an existing scheduler's workers are not this machine's
    assert load_config(None, {"scheduler": "tcp://node:8786", "n_workers": 200}, environ={}).n_workers == 200


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--workers", "-1"], {}, "n_workers"),
        ([], {"NUCLEI_N_WORKERS": "-3"}, "n_workers"),
        (["--threads", "-2"], {}, "threads_per_worker"),
        ([], {"NUCLEI_N_WORKERS": "two"}, "NUCLEI_N_WORKERS"),
        ([], {"NUCLEI_HALF": "maybe"}, "NUCLEI_HALF"),
        ([], {"NUCLEI_TILE_PX": "512.5"}, "NUCLEI_TILE_PX"),
        ([], {"NUCLEI_DEFAULT_MPP": "-1"}, "default_mpp"),
        ([], {"NUCLEI_MEMORY_LIMIT": "lots"}, "memory_limit"),
    ],
)
def test_bad_settings_refuse_with_one_line(
    args: list[str], env: dict[str, str], named: str, tmp_path: Path, blob_model: Path
) -> None:
    manifest = manifest_of(tmp_path, ["a.svs,a,BRCA"])
    # refused before any worker starts: a run with no workers would wait for them forever
    result = run_cli(str(manifest), "--out", str(tmp_path / "out"), *args, env=env, timeout=60, small=False)
    assert named in one_line_error(result)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--tile-px", "100000"], {}, "tile_px"),
        (["--tile-px", "32"], {}, "tile_px"),
        (["--workers", "1.5"], {}, "--workers"),  # a float where a whole number is expected
        (["--max-mpp", "50"], {}, "max_mpp"),  # would plan tiles of a few pixels each
        ([], {"NUCLEI_DEFAULT_MPP": "0.02"}, "default_mpp"),  # finer than any scanner
        ([], {"NUCLEI_DEFAULT_MPP": "3"}, "default_mpp"),  # coarser than max_mpp: every such slide refused
        # beyond what a node can carry (before: a MemoryError per slide, a run without progress, 145
        # processes on two cores, endless worker restarts)
        (["--halo-px", "100000"], {}, "halo_px=100000 must be at most 1024"),
        (["--workers", "200"], {}, "n_workers=200"),
        (["--dashboard", "127.0.0.1:99999"], {}, "to 65535"),
        ([], {"NUCLEI_MEMORY_LIMIT": "1kB"}, "memory_limit='1kB'"),
        ([], {"NUCLEI_MAX_NUCLEUS_PX": "100000"}, "max_nucleus_px=100000"),
        ([], {"NUCLEI_WORKERS": "4"}, "unknown environment variable NUCLEI_WORKERS"),
    ],
)
def test_bad_bounds_refuse_with_one_line(
    args: list[str],
    env: dict[str, str],
    named: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """As above, in this process (the same main(); checked before any cluster starts; capfd: the
    run enables faulthandler, which needs stderr's file descriptor)."""
    from pipeline.cli.run import main

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    manifest = manifest_of(tmp_path, ["a.svs,a,BRCA"])
    try:
        code = main([str(manifest), "--out", str(tmp_path / "out"), "--no-progress", *args])
    except SystemExit as exc:  # argument errors
        code = int(exc.code or 0)
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and named in lines[0], err
    assert not (tmp_path / "out").exists()


def test_yaml_floats_are_not_truncated_to_ints(tmp_path: Path) -> None:
    from pipeline.config import load_config

    config_file = tmp_path / "c.yaml"
    config_file.write_text("tiles_per_task: 2.7\n")
    with pytest.raises(ValueError, match=r"c.yaml: tiles_per_task=2.7 is not a whole number"):
        load_config(config_file, environ={})


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("- tile_px\n- 512\n", "not a list"),
        ("model: !!python/object/apply:os.system ['echo hacked']\n", "not a readable YAML"),
        ("a: &a [x, x]\nb: &b [*a, *a]\nc: &c [*b, *b]\nstain: *c\n", "aliases"),
        ("tile_px: [1, 2]\n", "tile_px"),
        ("stain: {a: 1}\n", "stain"),
    ],
)
def test_bad_config_files_refuse_with_one_line(text: str, named: str, tmp_path: Path, blob_model: Path) -> None:
    config_file = tmp_path / "bad.yaml"
    config_file.write_text(text)
    manifest = manifest_of(tmp_path, ["a.svs,a,BRCA"])
    result = run_cli(str(manifest), "--out", str(tmp_path / "out"), "--config", str(config_file), timeout=60)
    line = one_line_error(result)
    assert named in line and "bad.yaml" in line
    assert "hacked" not in result.stdout + result.stderr

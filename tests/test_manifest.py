from pathlib import Path

import pytest

from pipeline.manifest import MAX_ID_LENGTH, ManifestError, read_manifest
from tests.conftest import (
    SPECIAL_FILES,
    bounded_cli,
    manifest_of,
    one_line_error,
    run_cli,
    special_file,
)


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "manifest.csv"
    p.write_text(text)
    return p


def test_defaults_aliases_and_relative_paths(tmp_path: Path) -> None:
    p = write(tmp_path, "WSI-ID,slide_path,CancerType,mpp\nA1,slides/a.svs,BRCA,0.25\n,b.tiff,,\n")
    a, b = read_manifest(p)
    assert a.slide_id == "A1" and a.cancer_type == "BRCA" and a.mpp == 0.25
    assert a.slide_path == (tmp_path / "slides" / "a.svs").resolve()
    assert b.slide_id == "b" and b.cancer_type == "UNKNOWN" and b.mpp is None


def test_every_bad_row_is_named(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "slide_path,slide_id,mpp\n"
        "a.svs,a,0.25\n"
        ",empty,\n"  # row 3: no path
        "b.svs,a,\n"  # row 4: duplicate id
        "c.svs,c,abc\n"  # row 5: bad mpp
        "d.svs,../evil,\n"  # row 6: unsafe id
        "e.svs,e\n",  # row 7: too few fields
    )
    with pytest.raises(ManifestError) as err:
        read_manifest(p)
    message = str(err.value)
    for row in ("row 3", "row 4", "row 5", "row 6", "row 7"):
        assert row in message
    assert "row 2:" not in message


def test_header_without_slide_path_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no slide_path"):
        read_manifest(write(tmp_path, "file,id\na.svs,a\n"))


def test_missing_and_empty_manifest(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(tmp_path / "nope.csv")
    with pytest.raises(ManifestError, match="no slides"):
        read_manifest(write(tmp_path, "slide_path\n"))


@pytest.mark.parametrize("kind", SPECIAL_FILES)
def test_manifest_that_is_no_regular_file_is_refused(kind: str, tmp_path: Path, blob_model: Path) -> None:
    """A FIFO, a device or a folder given as the manifest: exit 2 and one line, at once (no hang,
    no read without end)."""
    path = special_file(kind, tmp_path)
    result = bounded_cli("pipeline.run", str(path), "--out", str(tmp_path / "out"), "--model", str(blob_model))
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr[-2000:]
    assert str(path) in result.stderr and "not a regular file" in result.stderr
    assert not (tmp_path / "out").exists()


def test_manifest_over_the_byte_limit_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.manifest

    p = write(tmp_path, "slide_path\n" + "a.svs\n" * 100)
    monkeypatch.setattr(pipeline.manifest, "MAX_MANIFEST_BYTES", 500)
    with pytest.raises(ManifestError, match=r"manifest\.csv: more than 500 bytes"):
        read_manifest(p)


def test_latin1_manifest_names_file_row_and_what_to_do(tmp_path: Path) -> None:
    p = tmp_path / "manifest.csv"
    p.write_bytes("slide_path,slide_id,cancer_type\na.svs,a,LUAD\nb.svs,b,Sélection\n".encode("latin-1"))
    with pytest.raises(ManifestError) as err:
        read_manifest(p)
    message = str(err.value)
    assert str(p) in message and "row 3" in message and "UTF-8" in message and "\n" not in message


def test_tab_separated_manifest_names_file_row_and_what_to_do(tmp_path: Path) -> None:
    p = write(tmp_path, "slide_path\tslide_id\tcancer_type\na.svs\ta\tLUAD\n")
    with pytest.raises(ManifestError, match=r"manifest\.csv: row 1: .*tabs.*comma") as err:
        read_manifest(p)
    assert "\n" not in str(err.value)
    p = write(tmp_path, "slide_path,slide_id\na.svs\ta\n")
    with pytest.raises(ManifestError, match=r"row 2: 1 fields, header has 2 \(separated by tabs\? .*comma"):
        read_manifest(p)


def test_cancer_types_are_one_text_each(tmp_path: Path) -> None:
    """Cancer types that look the same are the same group: NFC and NFD spellings of one name are
    one type; a bidirectional control character (which makes text show in another order than it
    is) is refused, naming the row."""
    p = write(tmp_path, "slide_path,cancer_type\na.svs,Caf\u00e9\nb.svs,Cafe\u0301\n")
    a, b = read_manifest(p)
    assert a.cancer_type == b.cancer_type == "Caf\u00e9"
    p = write(tmp_path, "slide_path,cancer_type\na.svs,LUAD\nb.svs,\u202eDAUL\n")
    with pytest.raises(ManifestError, match=r"row 3: cancer_type .*U\+202E"):
        read_manifest(p)


def test_overlong_slide_id_is_a_manifest_error_naming_the_row(tmp_path: Path) -> None:
    long_id = "L" * 240
    path = manifest_of(tmp_path, ["a.svs,g1,BRCA", f"b.svs,{long_id},BRCA", f"c.svs,{'x' * MAX_ID_LENGTH},BRCA"])
    with pytest.raises(ManifestError) as err:
        read_manifest(path)
    message = str(err.value)
    assert "row 3" in message and "240 characters" in message and f"at most {MAX_ID_LENGTH}" in message
    assert "row 4" not in message  # the longest allowed id is fine
    # a default id (the file's stem) is held to the same limit
    path = manifest_of(tmp_path, [f"{'s' * 250}.svs,,BRCA"])
    with pytest.raises(ManifestError, match="row 2"):
        read_manifest(path)


def test_overlong_slide_id_run_refuses_with_exit_2(tmp_path: Path, blob_model: Path) -> None:
    manifest = manifest_of(tmp_path, ["a.svs,g1,BRCA", f"b.svs,{'L' * 240},BRCA"])
    result = run_cli(str(manifest), "--out", str(tmp_path / "out"), "--model", str(blob_model))
    line = one_line_error(result)
    assert "row 3" in line or "row 3" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("header", "row", "named"),
    [
        ("slide_path,slide_id,WSI-ID", "a.svs,a,b", ["slide_id", "WSI-ID"]),  # an alias of a column given too
        ("slide_path,mpp,cancer_type,mpp", "a.svs,0.25,BRCA,0.5", ["mpp"]),
        ("slide_path,path", "a.svs,b.svs", ["slide_path", "path"]),
    ],
)
def test_duplicated_manifest_column_is_refused_naming_it(
    header: str, row: str, named: list[str], tmp_path: Path
) -> None:
    """Two columns that mean the same thing: which one wins would be a silent guess."""
    path = manifest_of(tmp_path, [row], header=header)
    with pytest.raises(ManifestError) as err:
        read_manifest(path)
    message = str(err.value)
    assert "manifest.csv" in message and all(f"'{n}'" in message for n in named), message


def test_duplicated_manifest_column_run_refuses_with_exit_2(tmp_path: Path, blob_model: Path) -> None:
    manifest = manifest_of(tmp_path, ["a.svs,a,BRCA,b"], header="slide_path,slide_id,cancer_type,wsi_id")
    line = one_line_error(run_cli(str(manifest), "--out", str(tmp_path / "out"), "--model", str(blob_model)))
    assert "manifest.csv" in line and "'wsi_id'" in line
    assert not (tmp_path / "out").exists()

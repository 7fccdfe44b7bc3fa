"""Publishing a slide's folder (pipeline.io.outputs.publish): stale working folders are cleaned
for exactly one slide."""

from __future__ import annotations

from pathlib import Path


def test_stale_work_cleanup_matches_exactly_one_slide(tmp_path: Path) -> None:
    """Cleaning ``S1`` leaves ``S1.rescan``'s live working folder (and every other name) alone."""
    from pipeline.io.outputs.publish import new_partial_dir, remove_stale_partials, slides_dir

    mine = [new_partial_dir(tmp_path, "S1"), new_partial_dir(tmp_path, "S1")]
    others = [new_partial_dir(tmp_path, "S1.rescan"), new_partial_dir(tmp_path, "S1.2"), new_partial_dir(tmp_path, "S")]
    keep = [slides_dir(tmp_path) / "S1", slides_dir(tmp_path) / ".S1.notes.partial"]
    for p in keep:
        p.mkdir()
    assert remove_stale_partials(tmp_path, "S1") == 2
    assert not any(p.exists() for p in mine)
    assert all(p.exists() for p in others + keep)
    assert remove_stale_partials(tmp_path, "S1.rescan") == 1 and others[1].exists() and others[2].exists()

"""``python -m pipeline.qc``: bad folders and options end with exit 2 and one line."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import qc_cli


def test_qc_of_a_folder_that_is_not_a_run_is_refused_with_one_line(tmp_path: Path, qc_cohort: Path) -> None:
    code, err = qc_cli(tmp_path / "nowhere")
    assert code == 2 and err.startswith("error:") and len(err.strip().splitlines()) == 1 and "nowhere" in err
    (qc_cohort / "qc").write_text("a file where the qc folder goes")
    code, err = qc_cli(qc_cohort)
    assert code == 2 and err.startswith("error:") and "Traceback" not in err and str(qc_cohort / "qc") in err, err
    for option, value in (("--n-patches", "1.5"), ("--n-patches", "0"), ("--outer-percent", "200"), ("--workers", "0")):
        code, err = qc_cli(qc_cohort, option, value)
        assert code == 2 and err.startswith("error:") and option in err and len(err.strip().splitlines()) == 1, err

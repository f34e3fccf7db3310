"""Beyond one process: Parquet results, and Ray for batches (a local Ray cluster on this machine)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from neurosono.cli import app
from neurosono.data.format import Dataset
from neurosono.pipeline.batch import RESULT_COLUMNS, ResultsFile

runner = CliRunner()


def _row(case_id: str, p: str = "0.1234", error: str = "") -> dict[str, str]:
    row = dict.fromkeys(RESULT_COLUMNS, "")
    row.update(
        case_id=case_id, p_abnormal="" if error else p, decision="" if error else "normal", error=error
    )
    return row


def test_parquet_results_resume_from_their_journal_and_keep_numbers_typed(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    path = tmp_path / "results.parquet"
    stopped = ResultsFile(path)
    stopped.write(_row("a"))
    stopped.write(_row("b", error="b_tv.png: not an image"))
    # never closed, as in a run that was killed: the journal holds what was done
    assert not path.exists()
    assert ResultsFile(path).done_case_ids() == {"a"}
    with ResultsFile(path) as resumed:
        resumed.write(_row("b", p="0.9000"))
    table = pq.read_table(path)
    assert table.schema.field("p_abnormal").type == "double"
    assert {r["case_id"]: r["p_abnormal"] for r in table.to_pylist()} == {"a": 0.1234, "b": 0.9}
    assert not list(tmp_path.glob(".*partial*"))  # the journal went into the Parquet file
    assert ResultsFile(path).done_case_ids() == {"a", "b"}


def test_results_must_be_csv_or_parquet_with_our_columns(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"results\.json: results must be a \.csv or a \.parquet file"):
        ResultsFile(tmp_path / "results.json")
    other = tmp_path / "other.csv"
    other.write_text("id,score\n1,2\n")
    with pytest.raises(ValueError, match="not those of this version's results"):
        ResultsFile(other).done_case_ids()
    not_parquet = tmp_path / "broken.parquet"
    not_parquet.write_text("not parquet")
    with pytest.raises(ValueError, match=r"broken\.parquet: not a readable Parquet file"):
        ResultsFile(not_parquet).done_case_ids()


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray cluster for the module's tests (starting one takes seconds)."""
    from neurosono.core.cluster import start_ray

    ray = start_ray(cpus=2)
    yield ray
    ray.shutdown()


def _scans(tiny_cohort: Path, folder: Path, cases: int) -> Path:
    folder.mkdir(exist_ok=True)
    for case in Dataset.load(tiny_cohort).cases[:cases]:
        for plane in ("tv", "tc"):
            shutil.copy(tiny_cohort / case.image(plane), folder / f"{case.case_id}_{plane}.png")
    return folder


@pytest.mark.slow
def test_ray_batch_equals_the_local_engine_resumes_and_reports_bad_files(
    ray_cluster, tiny_cohort: Path, tmp_path: Path
) -> None:
    folder = _scans(tiny_cohort, tmp_path / "scans", 3)
    (folder / "broken_tv.png").write_text("not an image")
    local, distributed = tmp_path / "local.csv", tmp_path / "ray.parquet"
    base = ["predict", "--batch", str(folder)]
    first = runner.invoke(app, [*base, "--out", str(local)])
    assert first.exit_code == 4, first.output  # finished, one case failed
    ray = runner.invoke(app, [*base, "--out", str(distributed), "--engine", "ray", "--workers", "2"])
    assert ray.exit_code == 4, ray.output
    assert "broken" in ray.output and "1 failed of 4 predicted now" in ray.output
    expected = {row["case_id"]: row for row in ResultsFile(local).rows()}
    got = {row["case_id"]: row for row in ResultsFile(distributed).rows()}
    assert set(got) == set(expected) and len(got) == 4
    for case_id, row in expected.items():
        if row["error"]:
            assert got[case_id]["error"] and not got[case_id]["p_abnormal"]
            continue
        for column in RESULT_COLUMNS:
            if row[column] and column in ("p_abnormal", "threshold", "support", "hc_mm", "bpd_mm", "ofd_mm"):
                assert float(got[case_id][column]) == pytest.approx(float(row[column]), abs=1e-4), column
            else:
                assert got[case_id][column] == row[column], column
    # Two more cases arrive: only they (and the broken file, retried) are predicted.
    _scans(tiny_cohort, folder, 5)
    again = runner.invoke(app, [*base, "--out", str(distributed), "--engine", "ray", "--workers", "2"])
    assert again.exit_code == 4 and "(3 already in it); 1 failed of 3 predicted now" in again.output
    rows = ResultsFile(distributed).rows()
    assert len(rows) == 6 and {r["case_id"]: r for r in rows}.keys() >= got.keys()
    assert {r["case_id"]: r["p_abnormal"] for r in rows if not r["error"]} == {
        **{k: r["p_abnormal"] for k, r in got.items() if not r["error"]},
        **{r["case_id"]: r["p_abnormal"] for r in rows[4:] if not r["error"]},
    }


@pytest.mark.slow
def test_synth_on_ray_writes_the_cohort_the_local_engine_writes(ray_cluster, tmp_path: Path) -> None:
    base = ["synth", "--cases", "6", "--seed", "41", "--size", "128", "--centers", "2"]
    assert runner.invoke(app, [*base, "--out", str(tmp_path / "local"), "--workers", "1"]).exit_code == 0
    ray = runner.invoke(app, [*base, "--out", str(tmp_path / "ray"), "--engine", "ray"])
    assert ray.exit_code == 0, ray.output
    local_files = sorted(p.relative_to(tmp_path / "local") for p in (tmp_path / "local").rglob("*"))
    ray_files = sorted(p.relative_to(tmp_path / "ray") for p in (tmp_path / "ray").rglob("*"))
    assert local_files == ray_files and len(local_files) > 20
    for rel in local_files:
        if (tmp_path / "local" / rel).is_file():
            assert (tmp_path / "local" / rel).read_bytes() == (tmp_path / "ray" / rel).read_bytes(), rel


def test_engine_options_need_a_batch(tmp_path: Path) -> None:
    result = runner.invoke(app, ["predict", "--tv", str(tmp_path / "a.png"), "--engine", "ray"])
    assert result.exit_code == 2 and "go with --batch" in result.output
    result = runner.invoke(app, ["synth", "--out", str(tmp_path / "c"), "--address", "auto"])
    assert result.exit_code == 2 and "--address goes with --engine ray" in result.output
    assert not (tmp_path / "c").exists()

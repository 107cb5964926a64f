"""``python -m repro.data show``: writes under runs/data/ (or ``--out``), never into the current folder,
and says where; its documented defaults are its real ones."""
import re

import pytest

from repro import paths
from repro.data import __main__ as cli


@pytest.fixture
def fake_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "RUNS_DIR", tmp_path / "runs")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return tmp_path / "runs", cwd


def test_show_writes_under_runs_not_cwd(fake_runs, capsys, one_thread):
    runs, cwd = fake_runs
    cli.main(["show", "R", "--online", "--n", "4"])
    out = capsys.readouterr().out.strip().splitlines()[-1]
    png = runs / "data" / "R_online_samples.png"
    assert png.is_file() and png.stat().st_size > 1000 and str(png) in out
    assert not list(cwd.iterdir())


def test_show_out_file_or_folder(fake_runs, tmp_path, capsys, one_thread):
    cli.main(["show", "R", "--online", "--n", "2", "--out", str(tmp_path / "x.png")])
    assert (tmp_path / "x.png").is_file()
    (tmp_path / "d").mkdir()
    cli.main(["show", "R", "--online", "--n", "2", "--out", str(tmp_path / "d")])
    assert (tmp_path / "d" / "R_online_samples.png").is_file()


def test_docstring_defaults_match_the_parser():
    doc_n = int(re.search(r"--n (\d+)", cli.__doc__).group(1))
    assert doc_n == cli.SHOW_N
    assert "runs/data" in cli.__doc__

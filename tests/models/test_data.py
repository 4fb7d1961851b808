"""Finding the reference data: `BBVI_DATA`, an explicit path, and clear errors where it is absent."""

from __future__ import annotations

import pytest

from bbvi.models import _data


def test_explicit_path_wins(tmp_path, monkeypatch):
    monkeypatch.setenv(_data.DATA_ENV, str(tmp_path / "elsewhere"))
    (tmp_path / "a.csv").write_text("1,2\n")
    assert _data.data_file("a.csv", path=tmp_path) == (tmp_path / "a.csv").resolve()


def test_environment_variable_overrides_default(tmp_path, monkeypatch):
    (tmp_path / "a.csv").write_text("1,2\n")
    monkeypatch.setenv(_data.DATA_ENV, str(tmp_path))
    assert _data.data_dir() == tmp_path.resolve()
    assert _data.data_file("a.csv") == (tmp_path / "a.csv").resolve()


def test_missing_folder_names_where_it_looked(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere"
    monkeypatch.setenv(_data.DATA_ENV, str(missing))
    with pytest.raises(_data.DataNotFoundError, match=f"looked in: {missing}.*set BBVI_DATA"):
        _data.data_dir()
    with pytest.raises(FileNotFoundError):  # a DataNotFoundError is a FileNotFoundError
        _data.data_file("old_faithful.csv")


def test_missing_file_names_it(tmp_path, monkeypatch):
    monkeypatch.setenv(_data.DATA_ENV, str(tmp_path))
    with pytest.raises(_data.DataNotFoundError, match="old_faithful.csv is not in"):
        _data.data_file("old_faithful.csv")

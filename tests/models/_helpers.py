"""Shared machinery for the model tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from bbvi.models._data import DataNotFoundError, data_file


def data_file_or_skip(name: str) -> Path:
    """The reference data file `name`, or a skip that says where it was looked for."""
    try:
        return data_file(name)
    except DataNotFoundError as err:
        pytest.skip(str(err))

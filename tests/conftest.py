"""Test-session settings shared by every test module."""

from __future__ import annotations

import os

from bbvi.models._data import DATA_ENV, DataNotFoundError, data_dir

# Notebooks run in kernels whose working directory is a temporary copy of notebooks/: pin the data
# folder found from here, so they see the same data as the tests (or skip alike where it is absent).
if not os.environ.get(DATA_ENV):
    try:
        os.environ[DATA_ENV] = str(data_dir())
    except DataNotFoundError:
        pass

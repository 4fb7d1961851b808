"""Where the reference data live: `../shared/data` unless `BBVI_DATA` names another folder.

The files are never copied into the repository or downloaded; code that needs one asks for it by
name with `data_file`, which raises `DataNotFoundError` (a `FileNotFoundError`) naming every place it
looked, so tests and notebooks can skip with that message.
"""

from __future__ import annotations

import os
from pathlib import Path

#: The environment variable that overrides where the data are looked for.
DATA_ENV = "BBVI_DATA"
DEFAULT_DATA_DIR = Path("..") / "shared" / "data"
_SOURCE_ROOT = Path(__file__).resolve().parents[2]  # the checkout, for an editable install


class DataNotFoundError(FileNotFoundError):
    """A reference data file is not where bbvi looked for it."""


def _candidates(path) -> list[Path]:
    if path is not None:
        return [Path(path)]
    if os.environ.get(DATA_ENV):
        return [Path(os.environ[DATA_ENV])]
    # Relative to the working directory (the project root, by the README's commands), then to the
    # source checkout, so notebooks running elsewhere still find the data of an editable install.
    return [Path.cwd() / DEFAULT_DATA_DIR, _SOURCE_ROOT / DEFAULT_DATA_DIR]


def data_dir(path=None) -> Path:
    """The data folder: `path` if given, else `$BBVI_DATA`, else `../shared/data`."""
    candidates = _candidates(path)
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    looked = ", ".join(str(c) for c in candidates)
    raise DataNotFoundError(
        f"bbvi's reference data folder was not found (looked in: {looked}); "
        f"set {DATA_ENV} to the folder holding posteriordb_dev.json, german_credit_numeric.txt, ..."
    )


def data_file(name: str, path=None) -> Path:
    """The path of the reference data file `name`, with a clear error if it is absent."""
    folder = data_dir(path)
    file = folder / name
    if not file.is_file():
        raise DataNotFoundError(f"{name} is not in bbvi's reference data folder {folder}")
    return file

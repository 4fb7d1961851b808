"""Reading the reference JSON files once, and one clear error for a posterior that is not in them."""

from __future__ import annotations

import functools
import json

from bbvi.models._data import data_file


def locate(name: str, path=None) -> str:
    """The resolved path of the reference file `name`: the key `parse` caches on."""
    return str(data_file(name, path).resolve())


@functools.lru_cache(maxsize=8)
def parse(file: str) -> dict:
    """The parsed JSON file at `file` (cached: each file is parsed once; do not mutate the result)."""
    with open(file) as f:
        return json.load(f)


def check_name(name, known, source: str) -> str:
    """`name` if it is one of `known`, else a `ValueError` that lists them."""
    if not isinstance(name, str) or name not in known:
        listed = "\n  ".join(known)
        raise ValueError(f"unknown {source} posterior {name!r}; the known ones are:\n  {listed}")
    return name

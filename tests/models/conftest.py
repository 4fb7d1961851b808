"""Each model's tests share expensive module-scoped fits: keep a module on one xdist worker, so a
fit is computed (and compiled) once rather than once per worker (`--dist loadgroup`)."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        if item.path.parent.name == "models" and item.path.parent.parent.name == "tests":
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))

"""Clear errors, raised before anything is compiled, for what `fit` is given."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from bbvi.subsampled import Subsampled


def check_num_steps(num_steps, name="num_steps") -> int:
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise ValueError(f"{name} must be a positive int, got {num_steps!r}")
    return int(num_steps)


def check_optimizer(optimizer):
    if not (callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))):
        raise TypeError(f"optimizer must be an optax GradientTransformation, got {optimizer!r}")


def average_from(average, num_steps: int) -> int:
    """The first step whose iterate enters the Polyak average of the last `average` of the run."""
    if average is None:
        return num_steps
    if isinstance(average, bool) or not isinstance(average, (int, float)) or not 0 < average <= 1:
        raise ValueError(
            f"average must be a fraction in (0, 1] of the run to average the iterates over, got {average!r}"
        )
    return num_steps - max(1, math.ceil(average * num_steps))


def check_data(data, batch_size):
    if data is None:
        if batch_size is not None:
            raise ValueError("batch_size needs data to draw minibatches from")
        return None, None
    data = jax.tree.map(jnp.asarray, data)
    rows = {x.shape[0] if x.ndim else None for x in jax.tree.leaves(data)}
    if not rows or None in rows or len(rows) != 1:
        raise ValueError(
            f"data must be a pytree of arrays sharing a leading axis of data points, got shapes "
            f"{jax.tree.map(jnp.shape, data)}"
        )
    if batch_size is not None:
        (num_rows,) = rows
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
            raise TypeError(f"batch_size must be an int, got {batch_size!r}")
        if not 1 <= batch_size <= num_rows:
            raise ValueError(
                f"batch_size must be in [1, {num_rows}] (the number of data points), got {batch_size}"
            )
        batch_size = int(batch_size)
    return data, batch_size


def check_model(log_joint, data):
    """A `Subsampled` model learns its number of data points from `data`."""
    if not isinstance(log_joint, Subsampled):
        if not callable(log_joint):
            raise TypeError(f"log_joint must be callable or a bbvi.Subsampled model, got {log_joint!r}")
        return log_joint
    if data is None:
        raise ValueError("a Subsampled model needs its data: pass fit(..., data=...)")
    num_data = jax.tree.leaves(data)[0].shape[0]
    if log_joint.num_data not in (None, num_data):
        raise ValueError(f"Subsampled: num_data is {log_joint.num_data} but data has {num_data} rows")
    return dataclasses.replace(log_joint, num_data=num_data)

"""How one step's randomness is laid out: a key per sample and slot, and shared Gaussian noise.

On CPU every random-number call compiles to a small loop, which dominates a tiny model's step.
So a step splits its key once, into one key per sample and *slot*, and the pathwise leaves drawn
from standard-normal noise (`Family.noise_shape`) share slot 0: one normal draw per sample for all
of them. Every other leaf has a slot, and so a key, of its own.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from bbvi.families.base import Family


def is_stratified(family) -> bool:
    """Whether the family draws several weighted points per sample (a mixture)."""
    return type(family).stratified_sample is not Family.stratified_sample


def sample_keys(key, num_samples: int, num_slots: int):
    """`num_slots` keys per sample, shape `(num_samples, num_slots)`, from one split.

    A single split is one random-number call per step; on CPU each call is a small loop, which
    dominates the step of a tiny model. With one sample and one slot the key is used as it is.
    """
    if num_samples * num_slots == 1:
        return key[None, None]
    return jax.random.split(key, (num_samples, num_slots))


class Layout:
    """Which key slot each leaf draws with, and how the shared noise splits among the leaves."""

    def __init__(self, bases, pathwise, relaxed):
        self.noisy = [
            pw and not rl and not is_stratified(b) and b.noise_shape is not None
            for b, pw, rl in zip(bases, pathwise, relaxed)
        ]
        self.shapes = [b.noise_shape if n else () for b, n in zip(bases, self.noisy)]
        self.ends = np.cumsum([math.prod(shape) if n else 0 for shape, n in zip(self.shapes, self.noisy)])
        own_slots = iter(range(1 if any(self.noisy) else 0, len(bases) + 1))
        #: `slots[i]` is leaf i's key among a sample's `num_slots` keys.
        self.slots = [0 if n else next(own_slots) for n in self.noisy]
        self.num_slots = max(self.slots) + 1

    def noise(self, key) -> list:
        """The standard-normal noise of every noise-drawn leaf of a sample (else None), in one draw."""
        if not any(self.noisy):
            return [None] * len(self.noisy)
        flat = jax.random.normal(key, (int(self.ends[-1]),), jnp.result_type(float))
        pieces = jnp.split(flat, self.ends[:-1])
        return [
            piece.reshape(shape) if n else None for piece, shape, n in zip(pieces, self.shapes, self.noisy)
        ]

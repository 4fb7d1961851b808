"""Minibatches of data rows, drawn on device without replacement, in O(B log B)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def minibatch(data, key, batch_size):
    """`batch_size` rows drawn without replacement, on device, from every leaf of `data`."""
    rows = sample_rows(key, jax.tree.leaves(data)[0].shape[0], batch_size)
    return jax.tree.map(lambda x: x[rows], data)


def sample_rows(key, num_rows: int, batch_size: int) -> jax.Array:
    """`batch_size` distinct rows of `num_rows`, uniformly without replacement, in O(B log B).

    `jax.random.choice(replace=False)` permutes all N rows (a sort, O(N log N)) to keep B of them:
    seconds per step at N = 10^7. Here: draw 2B rows with replacement and keep the first B distinct
    ones in draw order. Drawing until B distinct rows are seen is sequential sampling without
    replacement, so the result is uniform over ordered B-subsets; and since the event "fewer than B
    distinct among 2B" treats every row alike, retrying in that case (a while loop) keeps it so.
    With N > 4B, 2B draws hold about 1.6B distinct rows: the retry essentially never runs. Small N,
    where the permutation is cheap, uses `choice`.
    """
    if num_rows <= 4 * batch_size:
        return jax.random.choice(key, num_rows, (batch_size,), replace=False)
    draws = 2 * batch_size

    def attempt(key):
        rows = jax.random.randint(key, (draws,), 0, num_rows)
        order = jnp.argsort(rows, stable=True)  # stable: a row's first draw comes first
        ordered = rows[order]
        first_sorted = jnp.concatenate([jnp.ones(1, bool), ordered[1:] != ordered[:-1]])
        first = jnp.zeros(draws, bool).at[order].set(first_sorted)  # back in draw order
        slot = jnp.where(first, jnp.cumsum(first) - 1, draws)  # rank among the distinct draws
        kept = jnp.zeros(batch_size, rows.dtype).at[slot].set(rows, mode="drop")
        return kept, jnp.sum(first) >= batch_size

    def retry(carry):
        key, _, _ = carry
        key, sub = jax.random.split(key)
        return (key, *attempt(sub))

    key, sub = jax.random.split(key)
    _, rows, _ = jax.lax.while_loop(lambda carry: ~carry[2], retry, (key, *attempt(sub)))
    return rows

"""Fitting: the compiled loop that drives an ELBO gradient estimator with an optax optimiser.

- `driver`: `fit()`, its host side: the program cache, the progress bar, pausing.
- `start`: the state a run starts from (new, warm-started or resumed) and the error when its first
  step is not finite.
- `loop`: the jitted program: steps that skip non-finite updates, blocks that check convergence.
- `convergence`: the stopping rule (Stan ADVI's relative ELBO change).
- `result`: `FitResult` and the `FitState` that continues a fit exactly.
- `checkpoint`: `save` / `load` of a result, atomic, with a structure check.
- `minibatch`: minibatches drawn on device without replacement in O(B log B).
- `arguments`: the clear errors for what `fit` is given.
"""

from bbvi.fit.checkpoint import Leaves, load, save
from bbvi.fit.convergence import Convergence
from bbvi.fit.driver import DEFAULT_NUM_SAMPLES, DEFAULT_OPTIMIZER, FitError, fit
from bbvi.fit.minibatch import sample_rows
from bbvi.fit.result import FitResult, FitState

__all__ = [
    "DEFAULT_NUM_SAMPLES",
    "DEFAULT_OPTIMIZER",
    "Convergence",
    "FitError",
    "FitResult",
    "FitState",
    "Leaves",
    "fit",
    "load",
    "sample_rows",
    "save",
]

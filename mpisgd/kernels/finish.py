"""The step's gradient finish in one pass: the mean over the step's rows, the L2 term, and
whether every entry came out finite.

In NumPy this was three passes and a boolean-mask gather (``grad *= 1/count``,
``grad[mask] += l2 * theta[mask]``, ``np.isfinite(grad).all()``): 100 us on the 47,109
entries a rank finishes of the 94,218-parameter MLP (1,024 rows, 2 ranks), a sixth of the
time outside its gradient; here one loop over the vector.
"""

from __future__ import annotations

import numpy as np

from mpisgd.kernels.options import njit


@njit
def _finish(grad, inv, theta, l2, mask):
    finite = True
    for i in range(grad.shape[0]):
        g = grad[i] * inv
        if l2 != 0 and mask[i]:   # l2 = 0 reads no theta: 0 * inf would be NaN
            g += l2 * theta[i]
        grad[i] = g
        finite &= np.isfinite(g)
    return finite


def finish_mean(grad: np.ndarray, count: float, theta: np.ndarray, l2: float,
                mask: np.ndarray) -> bool:
    """``grad`` (a sum over ``count`` rows) -> its mean plus ``l2 * theta`` where ``mask``,
    in place, in ``grad``'s dtype; returns whether every entry is finite.

    ``grad``, ``theta`` and ``mask`` are 1-D of one length (slices of the whole vectors
    are fine: the rule is elementwise); ``grad`` and ``theta`` of one float dtype.
    """
    if not (grad.ndim == theta.ndim == mask.ndim == 1
            and grad.shape == theta.shape == mask.shape and grad.dtype == theta.dtype
            and grad.dtype in (np.float32, np.float64) and mask.dtype == np.bool_):
        raise ValueError(f"finish_mean needs 1-D float grad and theta of one dtype and a "
                         f"bool mask, all of one length. Got grad {grad.dtype}{grad.shape}, "
                         f"theta {theta.dtype}{theta.shape}, mask {mask.dtype}{mask.shape}.")
    one = grad.dtype.type(1.0)
    return bool(_finish(grad, one / grad.dtype.type(count), theta, grad.dtype.type(l2), mask))

"""Optimizers and schedules against hand-written references (torch.optim.SGD rules)."""

import math

import numpy as np
import pytest

from mpisgd.config import OptimizerConfig
from mpisgd.optim import learning_rate, make_optimizer


@pytest.mark.parametrize("momentum, nesterov", [(0.0, False), (0.9, False), (0.9, True)])
def test_sgd_matches_reference(momentum, nesterov):
    cfg = OptimizerConfig(momentum=momentum, nesterov=nesterov)
    rng = np.random.default_rng(0)
    grads = rng.normal(size=(5, 4))
    theta = np.ones(4)
    opt = make_optimizer(cfg, 4, np.float64)
    ref, buf = np.ones(4), np.zeros(4)
    for g in grads:
        opt.step(theta, g, 0.1)
        if momentum:
            buf = momentum * buf + g
            ref = ref - 0.1 * (g + momentum * buf if nesterov else buf)
        else:
            ref = ref - 0.1 * g
    np.testing.assert_allclose(theta, ref, rtol=1e-14)


def test_schedules():
    c = OptimizerConfig(lr=1.0, schedule="invscaling", decay=0.5, power=0.5)
    assert learning_rate(c, 6, 0, 100) == pytest.approx(1 / math.sqrt(4))
    c = OptimizerConfig(lr=1.0, schedule="step", step_epochs=2, gamma=0.5)
    assert [learning_rate(c, 0, e, 10) for e in range(5)] == [1, 1, 0.5, 0.5, 0.25]
    c = OptimizerConfig(lr=2.0, schedule="cosine")
    assert learning_rate(c, 0, 0, 10) == pytest.approx(2.0)
    assert learning_rate(c, 5, 0, 10) == pytest.approx(1.0)
    assert learning_rate(c, 10, 0, 10) == pytest.approx(0.0)
    assert learning_rate(OptimizerConfig(lr=0.3), 99, 9, 100) == 0.3

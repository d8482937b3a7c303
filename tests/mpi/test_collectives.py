"""Collective helpers at several world sizes, each launched under mpiexec with a timeout."""

from pathlib import Path

import pytest

SCRIPT = str(Path(__file__).with_name("agree_script.py"))


@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_error_agreement_at_size(launch, size):
    result = launch(size, [SCRIPT], module=False, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"OK {size}" in result.stdout


@pytest.mark.parametrize("size, per_node", [(4, 2), (5, 2), (6, 3)])
def test_emulated_nodes(launch, size, per_node):
    result = launch(size, [SCRIPT, str(per_node)], module=False, timeout=60,
                    env={"MPISGD_RANKS_PER_NODE": str(per_node)})
    assert result.returncode == 0, result.stderr
    assert f"OK {size}" in result.stdout


def test_poller_spins_and_sleeps(launch):
    """The parameter server's wait (comm.p2p.Poller), spinning and backing off."""
    result = launch(2, [str(Path(__file__).with_name("poller_script.py"))], module=False,
                    timeout=60)
    assert result.returncode == 0, result.stderr
    assert "OK poller" in result.stdout

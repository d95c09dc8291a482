"""My routing, tested with smg-testbed's pytest plugin: copy this file into your tests and run ``pytest``.

The plugin comes with ``pip install smg-testbed``; nothing to configure. ``pytest --smg-gateway`` puts the real
``smg`` behind ``testbed_stack``; ``--smg-bin PATH`` (or ``SMG_BIN``) chooses which smg binary.
"""

import pytest

from sim.pytest_plugin import run_scenario


def test_the_routing_key_keeps_each_session_on_its_worker():
    # in process (transport "direct"): a few hundred ms, the same figures as over HTTP for a seed
    on = run_scenario("default", policy="manual", assignment_mode="min_load", sessions=8, seed=0)
    off = run_scenario("default", policy="manual", assignment_mode="min_load", sessions=8, seed=0, routing_key=False)
    assert on.errors == 0 and on.stickiness == 1.0
    assert on.kv_reuse > off.kv_reuse + 0.2  # the key is what makes the prefix cache pay
    assert on.gateway_branches["manual"]["vacant"] == on.sessions  # one placement per session, then hits


def test_a_gateway_flag_is_checked_before_it_runs():
    with pytest.raises(ValueError):
        run_scenario("default", policy="cache_aware", gateway_args=["--cache-treshold", "0.5"])


@pytest.mark.testbed_stack(workers=3, gateway_args=["--policy", "consistent_hashing"])
def test_against_a_running_stack(testbed_stack):
    # workers, gateway and session server are processes on loopback, stopped after the test
    result = run_scenario("default", sessions=4, seed=0, stack=testbed_stack)
    assert result.errors == 0
    assert result.policy == "consistent_hashing"  # what the gateway says it routed with
    assert result.stickiness == 1.0


@pytest.mark.real_smg  # skipped where the smg binary is missing
def test_the_real_smg_binary(smg_bin):
    assert smg_bin.version.startswith("smg ")

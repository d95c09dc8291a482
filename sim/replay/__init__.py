"""Trace replay: Mooncake traces (open loop, straight to the gateway) and recorded agent sessions
(closed loop, through the session server), with reuse baselines computed from the trace alone.

- ``sim.replay.mooncake``: Mooncake loading, block ids -> token ids, the derived routing key.
- ``sim.replay.sessions``: our sessions JSONL schema, TRIE / LLMServingSim converters, plans.
- ``sim.replay.baselines``: ``single_pool_reuse`` and the exact ``random_baseline_reuse``.
- ``sim.replay.driver``: the Mooncake open-loop driver (direct cores or HTTP gateway).
- ``sim.replay.run``: ``load_trace``, ``run_one``, ``write_outputs`` (used by ``smg-testbed replay``).

See ``docs/replay.md``.
"""

"""The workload: what the agents of an experiment do, drawn up front from a scenario's seed.

``scenario`` (the TOML format, its distributions; documented in ``docs/scenarios.md``), ``plans`` (each
session's turns), ``framing`` (the chat template's tokens around messages), ``texts`` (the system, task and tool
texts), ``seeds`` (the named random streams all of them draw from).
"""

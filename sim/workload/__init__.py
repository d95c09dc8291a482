"""The workload: what the agents of an experiment do, drawn up front from a scenario's seed.

``scenario`` (the TOML format, its distributions), ``plans`` (each session's turns), ``texts`` (the system, task
and tool texts), ``seeds`` (the named random streams all of them draw from).
"""

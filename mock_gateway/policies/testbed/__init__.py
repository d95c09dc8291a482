"""The testbed's own routing rules, not SMG's (docs/beyond-smg.md): refused when the gateway
is the real ``smg`` (``sim/real_smg.py``).

- ``bounded_load.py``: ``--policy bounded_load``, consistent hashing with bounded loads;
- ``min_kv.py``: ``--policy manual --assignment-mode min_kv``, KV-aware key placement with re-pins
  (``--kv-repin-load-epsilon`` adds the load trigger: the ``min_kv+load`` configuration of the benchmarks);
- ``session_kv.py``: the projected session KV both measure.
"""

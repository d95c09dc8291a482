"""Calibration: fit a worker's ``LatencyModel`` coefficients to what a user measured with SGLang.

``sources`` reads SGLang's own outputs (``bench_one_batch`` and ``bench_serving`` result files, the worker
log's batch lines) into timed prefill and decode points; ``fit`` fits the latency forms of
``sim.engine.latency`` to those points (shared/specs/latency-profiles.md section 5). Both are pure.
"""

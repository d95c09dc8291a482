"""Mock SGLang workers: a pure core (``core.WorkerCore``), its FastAPI app (``app.create_app``), a CLI.

The core's rooms: ``request`` (validation), ``answers`` (bodies, streams, logprobs), ``reply`` (the reply and
error shapes), ``faults``, ``documents`` (registration), ``metrics`` (``/v1/loads``, Prometheus).
"""

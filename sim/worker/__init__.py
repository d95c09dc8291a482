"""Mock SGLang workers: a pure core (``core.WorkerCore``), its FastAPI app (``app.create_app``), a CLI."""

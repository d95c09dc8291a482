"""``python -m sim.worker``: the same as ``smg-testbed worker``."""

from sim.worker.cli import main

raise SystemExit(main())

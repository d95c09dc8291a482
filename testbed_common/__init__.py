"""Leaf utilities shared by every part of the testbed; they import nothing else of the project.

``tokenizer`` (the word-level tokenizer and chat template), ``vtime`` (the virtual-time wire protocol),
``fastjson`` (JSON codec), ``http_client`` (HTTP client pools), ``asgi_fastpath`` (FastAPI past its
per-request machinery), ``procs`` (servers on loopback ports, started and stopped by PID). The three servers
(``mock_gateway``, ``session_server``, ``sim.worker``) import these; ``sim`` imports the servers.
"""

"""``smg-testbed``: one console script, one subcommand per component.

Each subcommand lives in its own module and owns its own argument parser (``main(argv)``); this
file only dispatches, so components stay independent of one another. Ctrl-C ends any command with one line and
exit status 130 (the servers a command started are stopped as the interrupt unwinds through their ``with`` blocks;
what uvicorn would log of the requests it tears down on the way is silenced, since the interrupt is the news).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import signal
import sys
import threading
from collections.abc import Sequence

# subcommand -> (module with ``main(argv) -> int | None``, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "worker": ("sim.worker.cli", "run N mock SGLang workers on consecutive loopback ports"),
    "gateway": ("mock_gateway.cli", "run the mock SMG gateway (takes `smg launch` flags)"),
    "l3-store": ("sim.commands.l3_store", "run the pool's shared HiCache L3 store on a loopback port"),
    "session-server": ("session_server.cli", "run the miles-compatible session server"),
    "demo": ("sim.demo", "a short multi-turn run that prints KV reuse"),
    "run": ("sim.commands.run", "run one configuration of a scenario"),
    "compare": ("sim.commands.compare", "KV reuse with and without the routing key, per policy"),
    "sweep": ("sim.commands.sweep", "sweep a grid of gateway flags and scenario knobs"),
    "replay": ("sim.commands.replay", "replay a Mooncake or sessions trace under a policy"),
    "conformance": ("sim.commands.conformance", "the same workload through the mock and the real smg"),
    "check": ("sim.commands.check", "fail when results regress against a stored baseline"),
    "profiles": ("sim.commands.profiles", "the shipped hardware and model profiles (latency, KV capacity)"),
    "calibrate": ("sim.commands.calibrate", "fit a profile's latency coefficients to SGLang benchmarks and logs"),
    "validate-profile": ("sim.commands.validate_profile", "a profile's predicted vs measured TTFT and TPOT"),
}


def _available() -> dict[str, tuple[str, str]]:
    out = {}
    for name, (module, text) in COMMANDS.items():
        try:
            if importlib.util.find_spec(module) is not None:
                out[name] = (module, text)
        except ModuleNotFoundError:
            continue
    return out


def _usage(commands: dict[str, tuple[str, str]]) -> str:
    lines = ["usage: smg-testbed COMMAND [ARGS...]", "", "commands:"]
    width = max((len(n) for n in commands), default=0)
    for name, (_, text) in commands.items():
        lines.append(f"  {name.ljust(width)}  {text}")
    lines.append("")
    lines.append("`smg-testbed COMMAND --help` describes a command's flags.")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    commands = _available()
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage(commands))
        return 0
    name, rest = args[0], args[1:]
    if name not in commands:
        print(f"smg-testbed: unknown command {name!r}\n\n{_usage(commands)}", file=sys.stderr)
        return 2
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, _interrupt)
    try:
        module = importlib.import_module(commands[name][0])
        result = module.main(rest)
    except KeyboardInterrupt:
        print(f"smg-testbed {name}: interrupted; servers stopped", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    return int(result or 0)


def _interrupt(signum: int, frame: object) -> None:
    """Ctrl-C: the in-process servers stop under requests still in flight (a connection torn down mid-connect, a
    held answer dropped); their error log of it would bury the one line this command prints."""
    logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)
    raise KeyboardInterrupt


if __name__ == "__main__":
    raise SystemExit(main())

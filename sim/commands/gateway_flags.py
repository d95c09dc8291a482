"""The gateway argv of every configuration, checked before anything runs (one rule for all commands).

Known flags are the mock gateway's parser's (``mock_gateway.config``) plus SMG's own that the mock does not model
(``sim.commands.smg_launch_flags``). ``check_gateway_argv`` raises ``ValueError`` with one line naming the fix for
an unknown flag (with "did you mean"), a value the flag does not take (``--disable-retries true``), a value of the
wrong type or choice, and ``--assignment-mode`` with a policy other than manual; it returns the SMG flags the mock
ignores, for a warning. ``switch_args`` turns a ``--grid`` value of a switch (``true``/``false``, ``on``/``off``,
``1``/``0``, ``yes``/``no``) into the flag or nothing.
"""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Sequence

from mock_gateway.config import build_parser
from sim.commands import smg_launch_flags

ON, OFF = ("true", "on", "1", "yes"), ("false", "off", "0", "no")


def _mock_parser() -> argparse.ArgumentParser:
    p = build_parser()
    p.exit_on_error = False  # errors come back as ArgumentError, not as usage text and SystemExit
    return p


def _mock_switches(p: argparse.ArgumentParser) -> set[str]:
    return {o for a in p._actions if a.nargs == 0 for o in a.option_strings}


def known_flags() -> list[str]:
    return sorted({o for a in _mock_parser()._actions for o in a.option_strings if o.startswith("--")}
                  | smg_launch_flags.WITH_VALUE | smg_launch_flags.SWITCHES)


def is_switch(flag: str) -> bool:
    """Whether ``--flag`` takes no value (a store_true flag of the mock or an SMG switch)."""
    return flag in _mock_switches(_mock_parser()) or flag in smg_launch_flags.SWITCHES


def unknown_flag(flag: str) -> str:
    close = difflib.get_close_matches(flag, known_flags(), n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"unknown gateway flag {flag}{hint}; `smg-testbed gateway --help` lists the flags"


def switch_args(flag: str, value: str) -> tuple[str, ...]:
    """``--grid FLAG=VALUE`` for a switch: ``(--FLAG,)`` for on, ``()`` for off; ValueError for anything else."""
    v = value.strip().lower()
    if v in ON:
        return (flag,)
    if v in OFF:
        return ()
    raise ValueError(f"{flag} is a switch: give it {'/'.join(f'{a},{b}' for a, b in zip(ON, OFF, strict=True))}, "
                     f"not {value!r}")


def check_gateway_argv(argv: Sequence[str]) -> list[str]:
    """Raise ValueError (one line) unless the mock gateway can apply every flag of ``argv``; the SMG flags it
    does not model (ignored, worth a warning)."""
    argv = list(argv)
    p = _mock_parser()
    try:
        ns, unknown = p.parse_known_args(argv)
    except argparse.ArgumentError as e:
        raise ValueError(f"gateway flag {e}") from None
    ignored: list[str] = []
    i = 0
    while i < len(unknown):
        item = unknown[i]
        flag, eq, _ = item.partition("=")
        if not item.startswith("-"):
            # the occurrence argparse left over: after a switch if there is one (``--seed 1 --disable-retries 1``)
            befores = [argv[j - 1] if j else "" for j, a in enumerate(argv) if a == item]
            before = next((b for b in befores if b.startswith("--") and is_switch(b.partition("=")[0])), befores[0])
            if before.startswith("--") and is_switch(before.partition("=")[0]):
                raise ValueError(f"{before} is a switch and takes no value ({item!r}): write {before} for on, "
                                 "leave it out for off")
            raise ValueError(f"stray gateway argument {item!r} (after {before or 'nothing'}): it follows no flag "
                             "that takes a value")
        if flag in smg_launch_flags.WITH_VALUE:
            if not eq and i + 1 < len(unknown) and not unknown[i + 1].startswith("-"):
                i += 1
        elif flag in smg_launch_flags.SWITCHES:
            if eq:
                raise ValueError(f"{flag} is a switch and takes no value ({item!r})")
        else:
            raise ValueError(unknown_flag(flag))
        if flag not in ignored:
            ignored.append(flag)
        i += 1
    if ns.assignment_mode is not None and ns.policy != "manual":
        raise ValueError(f"--assignment-mode {ns.assignment_mode} applies to --policy manual only, "
                         f"not {ns.policy!r}; drop it or use manual")
    return ignored

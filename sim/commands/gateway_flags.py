"""The gateway argv of every configuration, checked before anything runs, by the gateway's own parser.

``check_gateway_argv`` is ``mock_gateway.config.parse_args``: it raises ``GatewayFlagError`` (a ``ValueError``, one
line naming the fix) for an unknown flag (with "did you mean"), a value a switch does not take, a value of the wrong
type or choice, a stray value and a flag the chosen policy does not read; it returns the SMG flags the mock does not
model (ignored, worth a warning). ``switch_args`` turns a ``--grid`` value of a switch (``true``/``false``,
``on``/``off``, ``1``/``0``, ``yes``/``no``) into the flag or nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

from mock_gateway.config import parse_args, switch_flags

ON, OFF = ("true", "on", "1", "yes"), ("false", "off", "0", "no")


def is_switch(flag: str) -> bool:
    """Whether ``--flag`` takes no value (a switch of the mock gateway or an SMG switch it does not model)."""
    return flag in switch_flags()


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
    """Raise ``GatewayFlagError`` (a ValueError, one line) unless the mock gateway can apply every flag of ``argv``;
    the SMG flags it does not model (ignored, worth a warning)."""
    return parse_args(list(argv)).ignored

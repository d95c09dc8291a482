"""``smg-testbed profiles``: the shipped hardware and model profiles (sim.profiles), or one profile's TOML."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rich.table import Table

from sim.commands.common import console_for, fail
from sim.profiles.catalog import load_profile, shipped_names
from sim.profiles.profile import ProfileError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="smg-testbed profiles",
                                description="List the shipped profiles, or print one profile (name or path) as TOML. "
                                            "Basis: [V] read in a source, [D] derived by arithmetic from one, "
                                            "[I] inferred (calibrate before trusting).")
    p.add_argument("profile", nargs="?", default=None, metavar="NAME|PATH", help="print this profile's TOML")
    return p


def profiles_table() -> Table:
    t = Table(title="shipped profiles (scenario: \\[workers] profile = NAME; run/compare/sweep: --profile NAME)")
    for c, justify in (("name", "left"), ("model", "left"), ("gpu", "left"), ("tp", "right"),
                       ("KV capacity (tokens)", "right"), ("KV B/token/GPU", "right"), ("basis", "left")):
        t.add_column(c, justify=justify)  # type: ignore[arg-type]
    for name in shipped_names():
        p = load_profile(name)
        t.add_row(p.name, p.model, p.gpu, str(p.tp), f"{p.kv_capacity_tokens:,}", f"{p.kv_bytes_per_token:,}",
                  p.basis.replace("[", "\\["))
    return t


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.profile is None:
        console_for().print(profiles_table())
        return 0
    try:
        text = load_profile(args.profile).to_toml()
    except ProfileError as e:
        return fail(str(e))
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

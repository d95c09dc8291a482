"""Defaults and help texts say what the commands do."""

from __future__ import annotations

from pathlib import Path

import pytest

from sim.commands import compare, conformance, replay, run, sweep
from sim.demo import __doc__ as demo_doc

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("module", [run, compare, sweep, replay])
def test_direct_is_the_default_transport_and_help_says_so(module):
    parser = module.build_parser()
    assert parser.get_default("transport") == "direct"
    [action] = [a for a in parser._actions if "--transport" in a.option_strings]
    assert action.help.startswith("direct: ") and "(default" in action.help and "http" in action.help


def test_make_demo_runs_the_main_job_over_http():
    demo = (ROOT / "Makefile").read_text().split("\ndemo:", 1)[1].split("\n\n", 1)[0]
    assert "smg-testbed compare --transport http" in demo
    assert "make demo" in compare.build_parser().format_help()


def test_demo_help_does_not_claim_to_be_make_demo():
    assert "``make demo`` runs the main job instead" in demo_doc


def test_conformance_help_names_its_default_scenario():
    parser = conformance.build_parser()
    assert parser.get_default("scenario") == "conformance"
    [action] = [a for a in parser._actions if "--scenario" in a.option_strings]
    assert "(default: conformance)" in action.help

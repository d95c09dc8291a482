"""Scenario files: what the loader would otherwise ignore or misread is refused, in one line that names the key's
full path and the fix, and that line survives the console's rich markup."""

from __future__ import annotations

import pytest
from rich.text import Text

from sim.cli import main as cli_main
from sim.workload.framing import TURN_FRAMING
from sim.workload.plans import plan_sessions
from sim.workload.scenario import DIST_PARAMS, Scenario, ScenarioError, load_scenario


def load_text(tmp_path, text: str):
    f = tmp_path / "mine.toml"
    f.write_text(text)
    return load_scenario(str(f))


def refusal(tmp_path, text: str) -> str:
    with pytest.raises(ScenarioError) as e:
        load_text(tmp_path, text)
    return str(e.value)


def test_a_parameter_of_another_kind_is_refused_naming_the_kinds_parameters(tmp_path):
    msg = refusal(tmp_path, '[turns]\ncount = {dist="lognormal", mean=12, sigma=0.4}\n')
    assert msg.startswith("turns.count: lognormal takes median, sigma") and "not mean" in msg


@pytest.mark.parametrize("kind", list(DIST_PARAMS))
def test_every_kind_refuses_the_parameters_of_the_others(tmp_path, kind):
    foreign = next(p for params in DIST_PARAMS.values() for p in params if p not in DIST_PARAMS[kind])
    own = {"constant": "value=1", "uniform": "low=1, high=2", "lognormal": "median=3, sigma=0.1",
           "exponential": "mean=2", "normal": "mean=3, std=1", "choice": "values=[2, 3]"}[kind]
    msg = refusal(tmp_path, f'[turns]\ntool_latency = {{dist="{kind}", {own}, {foreign}=1}}\n')
    assert msg.startswith(f"turns.tool_latency: {kind} takes {', '.join(DIST_PARAMS[kind])}")
    assert load_text(tmp_path, f'[turns]\ntool_latency = {{dist="{kind}", {own}, min=0, max=9}}\n')


@pytest.mark.parametrize(("spec", "expected"), [
    ('{dist="lognormal", median=12}', "turns.count: lognormal takes median, sigma"),  # sigma missing
    ('{median=12, sigma=0.4}', "turns.count: a distribution table needs dist ="),  # no kind: not a constant 0
    ('{dist="lognormel", median=12, sigma=0.4}', "did you mean 'lognormal'?"),
    ('{dist="uniform", low=2, high=nan}', "turns.count.high must be a finite number"),
    ('{dist="choice", values=[2, "x"]}', "turns.count.values must be a finite number"),
])
def test_a_distribution_says_what_it_lacks(tmp_path, spec, expected):
    assert expected in refusal(tmp_path, f"[turns]\ncount = {spec}\n")


def test_an_unknown_table_is_named_with_a_suggestion(tmp_path):
    msg = refusal(tmp_path, '[arrival]\npattern = "poisson"\nrate = 2.0\n')
    assert msg.startswith("unknown table 'arrival' (did you mean 'arrivals'?)")
    assert refusal(tmp_path, 'sede = 3\n').startswith("unknown key 'sede' (did you mean 'seed'?)")


@pytest.mark.parametrize(("text", "expected"), [
    ('[workers]\ncolor = 1\n', "workers.color: unknown key"),
    ('[sessions]\ngroups_size = 4\n', "sessions.groups_size: unknown key (did you mean 'group_size'?)"),
    ('[arrivals]\nrate = 2.0\n', "arrivals.rate applies only to pattern = 'poisson'"),  # rollout ignores a rate
    ('[arrivals]\npattern = "poisson"\nconcurrency = 8\n', "arrivals.concurrency applies only to pattern"),
    ('[arrivals]\npattern = "poison"\n', "did you mean 'poisson'?"),
    ('[workers]\ncount = 2\nslowdown = [1.0, 1.0, 3.0]\n', "workers.slowdown has 3 entries for 2 workers"),
    ('[workers]\ncount = "8"\n', "workers.count must be a finite number, got '8'"),
    ('[workers]\ncount = 2.5\n', "workers.count must be an integer"),
    ('[workers]\nmax_running_requests = 0\n', "workers.max_running_requests must be >= 1"),
    ('[workers]\nkv_capacity_tokens = nan\n', "workers.kv_capacity_tokens must be a number"),
    ('[sessions]\nretry_rate = inf\n', "sessions.retry_rate must be a finite number"),
    ('[sessions]\ntask_prompt_tokens = -1\n', "sessions.task_prompt_tokens must be >= 0"),
    ('seed = nan\n', "seed must be a finite number"),
    ('name = 5\n', "name must be a string"),
    ('workers = 8\n', "workers must be a table"),
])
def test_siblings_are_refused_with_the_keys_full_path(tmp_path, text, expected):
    assert expected in refusal(tmp_path, text)


def test_a_context_too_small_for_a_second_turn_is_refused_with_the_numbers(tmp_path):
    msg = refusal(tmp_path, "[sessions]\nmax_context_tokens = 100\n")
    assert msg.startswith("sessions.max_context_tokens = 100 leaves no room for a second turn")
    assert f"first prompt {Scenario().first_prompt_tokens}: system 2000 + task 400 + 8 framing" in msg
    assert "needs at least 2437 tokens" in msg and msg.endswith("raise it to 2437 or shrink the prompts")


def test_the_smallest_context_that_fits_a_second_turn_gives_second_turns(tmp_path):
    body = ("[sessions]\nsystem_prompt_tokens = 100\ntask_prompt_tokens = 20\nmax_context_tokens = {}\n"
            "[turns]\ncount = 5\noutput_tokens = 10\ntool_output_tokens = 7\n")
    first = 100 + 20 + 8
    need = first + 10 + TURN_FRAMING + 7 + 10
    assert f"at least {need} tokens" in refusal(tmp_path, body.format(need - 1))
    plans = plan_sessions(load_text(tmp_path, body.format(need)))
    assert all(len(p.turns) == 2 for p in plans)


def test_turn_counts_that_never_exceed_one_are_refused(tmp_path):
    assert refusal(tmp_path, "[turns]\ncount = 1\n").startswith("turns.count draws at most 1 turn")
    assert "at most 1 turn" in refusal(tmp_path, '[turns]\ncount = {dist="uniform", low=0, high=1.4}\n')
    assert load_text(tmp_path, '[turns]\ncount = {dist="uniform", low=0, high=1.6}\n')


@pytest.mark.parametrize("text", ['[workers]\ncolor = 1\n', '[arrival]\npattern = "poisson"\n',
                                  '[turns]\ncount = {dist="lognormal", mean=12, sigma=0.4}\n',
                                  '[sessions]\nretry_rate = 2\n', "[sessions]\nmax_context_tokens = 100\n"])
def test_errors_survive_the_consoles_markup(tmp_path, text, capsys):
    msg = refusal(tmp_path, text)
    assert Text.from_markup(msg).plain == msg
    assert cli_main(["run", "--scenario", str(tmp_path / "mine.toml")]) == 2
    printed = " ".join(capsys.readouterr().err.split())  # (the console wraps at its width)
    assert printed == " ".join(f"error: {msg}".split())

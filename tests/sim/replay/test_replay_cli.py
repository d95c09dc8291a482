"""``smg-testbed replay``: results in the compare schema with the two trace baselines; clear errors."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from mock_gateway.policies.factory import POLICY_BUILDERS
from sim.cli import main as cli_main
from sim.commands.replay import build_parser, main, parse_policies
from sim.replay.samples import SAMPLES, sample_path
from sim.results import RESULTS_VERSION
from sim.runner import COMPARE_POLICIES, PolicyConfig

CONV = sample_path("conversation")
RUN_KEYS = {
    "label",
    "policy",
    "assignment_mode",
    "routing_key",
    "gateway_args",
    "transport",
    "seed",
    "kv_reuse",
    "oracle_reuse",
    "eligible_reuse",
    "stickiness",
    "prefill_tokens",
    "ttft_p50",
    "ttft_p99",
    "e2e_p50",
    "makespan",
    "imbalance",
    "requests",
    "errors",
    "workers",
    "gateway_branches",
    "single_pool_reuse",
    "random_baseline_reuse",
}


def test_mooncake_slice_writes_compare_schema_with_baselines(tmp_path):
    out = tmp_path / "out"
    rc = cli_main(
        [
            "replay",
            str(CONV),
            "--policy",
            "random",
            "--policy",
            "cache_aware",
            "--workers",
            "4",
            "--limit",
            "120",
            "--out",
            str(out),
            "--no-plots",
        ]
    )
    assert rc == 0
    doc = json.loads((out / "results.json").read_text())
    assert set(doc) >= {"scenario", "runs", "single_pool_reuse", "random_baseline_reuse", "trace"}
    assert doc["results_version"] == RESULTS_VERSION
    assert [r["policy"] for r in doc["runs"]] == ["random", "cache_aware"]
    for r in doc["runs"]:
        assert set(r) >= RUN_KEYS
        assert r["requests"] == 120 and r["errors"] == 0 and r["transport"] == "direct" and r["routing_key"]
        assert r["single_pool_reuse"] == doc["single_pool_reuse"]
        assert r["random_baseline_reuse"] == doc["random_baseline_reuse"]
        assert len(r["workers"]) == 4
        # nothing routed over unbounded caches beats one cache that sees everything
        assert r["kv_reuse"] <= r["oracle_reuse"] + 1e-12 <= doc["single_pool_reuse"] + 1e-9
    assert 0 < doc["random_baseline_reuse"] < doc["single_pool_reuse"]
    assert doc["trace"]["requests"] == 120 and doc["trace"]["format"] == "mooncake"
    assert doc["scenario"]["kv_capacity_tokens"] is None and doc["scenario"]["workers"] == 4
    report = (out / "report.md").read_text()
    assert "single_pool_reuse" in report and "random_baseline_reuse" in report


def test_routing_key_off_and_bounded_kv(tmp_path):
    out = tmp_path / "o"
    assert (
        main(
            [
                str(CONV),
                "--policy",
                "consistent_hashing",
                "--workers",
                "3",
                "--limit",
                "40",
                "--routing-key",
                "off",
                "--kv-capacity-tokens",
                "200000",
                "--out",
                str(out),
                "--no-plots",
            ]
        )
        == 0
    )
    run = json.loads((out / "results.json").read_text())["runs"][0]
    assert run["routing_key"] is False and run["requests"] == 40
    assert all(w.get("peak_kv_tokens", 0) <= 200_000 for w in run["workers"])


def test_without_out_nothing_is_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main([str(CONV), "--policy", "round_robin", "--workers", "2", "--limit", "10"]) == 0
    assert list(tmp_path.iterdir()) == []
    assert "random_baseline_reuse" in capsys.readouterr().out


def test_policy_parsing():
    assert parse_policies(None, None) == list(COMPARE_POLICIES)
    assert parse_policies(["random,manual/min_group", "manual"], "random") == [
        PolicyConfig("random"),
        PolicyConfig("manual", "min_group"),
        PolicyConfig("manual", "random"),
    ]
    for bad in (["nope"], ["manual/sideways"], ["random/min_load"]):
        with pytest.raises(ValueError):
            parse_policies(bad, None)


@pytest.mark.parametrize(
    "args, msg",
    [
        (["--policy", "nope"], "unknown policy"),
        (["--workers", "0"], "--workers"),
        (["--kv-capacity-tokens", "lots"], "kv_capacity_tokens"),
        (["--limit", "0"], "--limit"),
    ],
)
def test_bad_flags_exit_2_with_a_message(args, msg, capsys):
    assert main([str(CONV), *args]) == 2
    assert msg in capsys.readouterr().err


def test_bad_traces_exit_2(tmp_path, capsys):
    assert main([str(tmp_path / "missing.jsonl")]) == 2
    assert "not found" in capsys.readouterr().err
    odd = tmp_path / "odd.jsonl"
    odd.write_text('{"what": 1}\n')
    assert main([str(odd)]) == 2
    assert "--format" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"timestamp": 0, "input_length": 5000, "output_length": 1, "hash_ids": [0]}\n')
    assert main([str(bad), "--policy", "random"]) == 2
    assert "does not fit" in capsys.readouterr().err


def test_write_sessions_converts_trie(tmp_path):
    trie = tmp_path / "trie.jsonl"
    trie.write_text(
        json.dumps(
            {
                "num_turns": 2,
                "input_prompt_length": 500,
                "assistant_response_length": [50, 40],
                "tool_call_output_length": [200],
                "tool_call_latency": [1.0],
            }
        )
        + "\n"
    )
    out = tmp_path / "s.jsonl"
    assert main([str(trie), "--write-sessions", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert rec["initial_prompt_tokens"] == 500
    assert [t["input_tokens"] for t in rec["turns"]] == [0, 200]
    res = tmp_path / "r"
    assert main([str(out), "--policy", "manual/min_load", "--workers", "2", "--out", str(res), "--no-plots"]) == 0
    run = json.loads((res / "results.json").read_text())["runs"][0]
    assert run["prompt_tokens"] == 500 + 500 + 50 + 200 and run["stickiness"] == 1.0
    assert main([str(CONV), "--write-sessions", str(tmp_path / "x.jsonl")]) == 2


ROOT = Path(__file__).parents[3]


def code_blocks(md: Path) -> list[list[str]]:
    """The fenced code blocks of a markdown file, backslash-continued lines joined."""
    blocks, current = [], None
    for line in md.read_text().splitlines():
        if line.startswith("```"):
            if current is None:
                current = []
            else:
                blocks.append(current)
                current = None
        elif current is not None:
            if current and current[-1].endswith("\\"):
                current[-1] = current[-1][:-1] + " " + line.strip()
            else:
                current.append(line)
    return blocks


def command_lines(md: Path) -> list[tuple[list[str], list[str], int]]:
    """(smg-testbed argv, the block's comment lines, the block's number) for every command line of ``md``."""
    out = []
    for n, block in enumerate(code_blocks(md)):
        comments = [ln for ln in block if ln.lstrip().startswith("#")]
        for ln in block:
            words = shlex.split(ln, comments=True) if "smg-testbed " in ln else []
            if words and words[0].endswith("smg-testbed"):
                out.append((words[1:], comments, n))
    return out


def in_clone(path: str) -> bool:
    """``path`` (relative to the repository's root) exists and does not leave the repository."""
    full = (ROOT / path).resolve()
    return full.is_relative_to(ROOT.resolve()) and full.exists()


def test_the_readme_replay_example_runs_from_a_fresh_clone(capsys, monkeypatch):
    [argv] = [argv for argv, _, _ in command_lines(ROOT / "README.md") if argv[:1] == ["replay"]]
    assert argv[1] in SAMPLES or in_clone(argv[1])
    monkeypatch.chdir(ROOT)
    assert cli_main([*argv, "--transport", "direct", "--limit", "30", "--no-plots"]) == 0
    assert "random_baseline_reuse" in capsys.readouterr().out


@pytest.mark.parametrize("md", [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))], ids=lambda p: p.name)
def test_command_lines_name_only_files_a_fresh_clone_has(md):
    """Input paths exist in the repository, or the block's comments say where they come from (a comment naming the
    file and its site, or that the user measures it on their cluster), or an earlier line of the same block writes
    them (``--out DIR``, ``> FILE``); outputs, URLs, policy/mode names and synopsis placeholders aside."""
    written: dict[int, list[str]] = {}
    for argv, comments, block in command_lines(md):
        outs = written.setdefault(block, [])
        for prev, word in zip(["", *argv[:-1]], argv, strict=True):
            if prev in ("--out", "--write-sessions", ">") or word.startswith(("http", "-", "[", ">")) or "|" in word:
                continue
            if word.split("/")[0] in POLICY_BUILDERS or any(Path(word).is_relative_to(d) for d in outs):
                continue
            if "/" in word or word.endswith((".jsonl", ".json", ".toml", ".csv", ".log", ".txt")):
                sourced = any(Path(word).name in c and ("github.com" in c or "your cluster" in c) for c in comments)
                assert in_clone(word) or sourced, f"{md.name}: {' '.join(argv)}: {word} is not in the clone"
        outs += [word for prev, word in zip(["", *argv[:-1]], argv, strict=True) if prev in ("--out", ">")]


def test_a_sample_name_replays_the_packaged_sample_and_a_near_miss_names_the_samples(capsys):
    assert main(["conversation", "--policy", "round_robin", "--workers", "2", "--limit", "10"]) == 0
    capsys.readouterr()
    assert main(["conversaton", "--policy", "round_robin"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "trace file not found: conversaton (did you mean the sample 'conversation'?)" in err
    assert all(name in build_parser().format_help() for name in SAMPLES)


def test_plots_of_one_configuration_show_only_its_panels_and_the_trace_baselines(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    drawn: dict[str, Figure] = {}
    save = Figure.savefig

    def keep(fig: Figure, path, *args, **kwargs):
        drawn[Path(path).name] = fig
        return save(fig, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    out = tmp_path / "p"
    assert main([str(CONV), "--policy", "manual/min_load", "--workers", "2", "--limit", "60", "--out", str(out)]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert set(drawn) == {"reuse.png", "ttft.png", "workers.png"}
    assert [ax.get_title() for ax in drawn["ttft.png"].axes] == ["key on"]  # no empty "key off" panel
    reuse = drawn["reuse.png"].axes[0]
    lines = {line.get_label(): line.get_ydata()[0] for line in reuse.get_lines()}
    assert lines["single pool (trace)"] == doc["single_pool_reuse"]
    assert lines["random routing (expected)"] == doc["random_baseline_reuse"]
    legend = [t.get_text() for t in reuse.get_legend().get_texts()]
    assert "key on" in legend and "key off" not in legend

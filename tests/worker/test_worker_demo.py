"""``smg-testbed demo``: real mock workers over HTTP; sticky routing reuses more KV than round-robin."""

from __future__ import annotations

from sim import demo


def test_sticky_routing_reuses_more_kv_than_round_robin():
    kw = {"workers": 3, "sessions": 4, "turns": 4, "seed": 1, "kv_capacity_tokens": None}
    sticky = demo.run_mode("sticky", **kw)
    rr = demo.run_mode("round-robin", **kw)
    assert all(len(set(s.workers)) == 1 for s in sticky.sessions)
    assert all(len(set(s.workers)) > 1 for s in rr.sessions)
    assert sticky.prompt_tokens == rr.prompt_tokens  # the same conversations either way
    assert sticky.kv_reuse > rr.kv_reuse
    # a sticky session finds most of its prompt cached (the history grows each turn)
    for s in sticky.sessions:
        assert s.reuse > 0.5


def test_demo_command_prints_both_routings(capsys):
    assert demo.main(["--workers", "2", "--sessions", "3", "--turns", "3"]) == 0
    out = capsys.readouterr().out
    assert "sticky" in out
    assert "round-robin" in out
    assert "KV reuse" in out

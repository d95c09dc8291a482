"""Policy plugins: entry points of ``smg_testbed.policies`` plug a policy in without editing the project.

Specification (docs/policies.md): a ``--policy`` name that is not built in is looked up among the installed
entry points of the group; the entry point is a ``Policy`` subclass or a builder taking the ``PolicyContext``,
and ``GatewayCore`` routes with what it builds (wrapped by ``--routing-key-override`` like any policy but
manual and consistent_hashing). A plugin that does not load or build a ``Policy`` is a one-line error naming
the entry point; built-in names win; a misspelled name suggests the closest built-in or installed one.
Each test installs a tiny distribution (a module and its ``*.dist-info``) on a temporary ``sys.path`` entry.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from mock_gateway.cli import main
from mock_gateway.config import GatewayFlagError, parse_args
from mock_gateway.core import Decision
from mock_gateway.policies.factory import PolicyPluginError
from mock_gateway.policies.sticky import StickyOverride
from mock_gateway.testing import chat, make_core, urls

DOC = Path(__file__).resolve().parents[3] / "docs" / "policies.md"
W = urls(3)


def doc_block(language: str) -> str:
    (block,) = re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), re.S)
    return block


def install(root: Path, modules: dict[str, str], entry_points: dict[str, str], monkeypatch) -> None:
    """A distribution on ``root``: the modules and a dist-info declaring ``entry_points`` (name -> object)."""
    for name, source in modules.items():
        (root / f"{name}.py").write_text(source)
    info = root / "test_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: test-plugin\nVersion: 0.1\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[smg_testbed.policies]\n{lines}")
    monkeypatch.syspath_prepend(str(root))


def route(core, key: str | None = None) -> str | None:
    return core.select("chat", {"x-smg-routing-key": key} if key else {}, chat("hi")).url


def test_the_documented_example_routes_through_the_gateway_core(tmp_path, monkeypatch):
    entry_points = tomllib.loads(doc_block("toml"))["project"]["entry-points"]["smg_testbed.policies"]
    install(tmp_path, {"my_policies": doc_block("python")}, entry_points, monkeypatch)
    assert entry_points == {"fewest_in_flight": "my_policies:FewestInFlightPolicy"}
    core = make_core("--policy", "fewest_in_flight")
    assert type(core.policy).__name__ == "FewestInFlightPolicy" and core.policy.name == "fewest_in_flight"
    assert route(core) == W[0]
    core.begin(Decision(W[0], "chat", "fewest_in_flight"))
    assert route(core) == W[1]
    core.begin(Decision(W[1], "chat", "fewest_in_flight"))
    assert route(core) == W[2]


def test_a_builder_plugin_gets_the_context_and_its_policy_the_entry_point_name(tmp_path, monkeypatch):
    source = """
from mock_gateway.policies.base import Choice, Policy


class Last(Policy):
    def select(self, workers, req):
        return Choice(workers[-1].url if workers else None)


def build(ctx):
    assert ctx.config.policy == "last_worker"
    return Last(ctx)
"""
    install(tmp_path, {"builder_plugin": source}, {"last_worker": "builder_plugin:build"}, monkeypatch)
    core = make_core("--policy", "last_worker")
    assert core.policy.name == "last_worker"
    assert {route(core) for _ in range(5)} == {W[2]}


def test_a_plugin_is_wrapped_by_the_routing_key_override(tmp_path, monkeypatch):
    install(tmp_path, {"wrapped_plugin": doc_block("python")}, {"fewest": "wrapped_plugin:FewestInFlightPolicy"},
            monkeypatch)
    core = make_core("--policy", "fewest", "--routing-key-override")
    assert type(core.policy) is StickyOverride and core.policy.inner.name == "fewest_in_flight"
    first = route(core, key="k")
    core.begin(Decision(first, "chat", "fewest"))
    assert route(core, key="k") == first  # pinned although another worker has fewer in flight


def test_built_in_names_win_over_a_plugin_of_the_same_name(tmp_path, monkeypatch):
    install(tmp_path, {"shadow_plugin": doc_block("python")}, {"round_robin": "shadow_plugin:FewestInFlightPolicy"},
            monkeypatch)
    assert type(make_core("--policy", "round_robin").policy).__name__ == "RoundRobinPolicy"


@pytest.mark.parametrize(
    ("modules", "target", "problem"),
    [
        ({}, "missing_module:Policy", "does not load: ModuleNotFoundError: No module named 'missing_module'"),
        ({"bad_attr": "X = 1\n"}, "bad_attr:Nope", "does not load: AttributeError: "),
        ({"not_callable": "X = 1\n"}, "not_callable:X", "is a int, not a Policy subclass or a builder of one"),
        ({"raises": "def build(ctx):\n    raise RuntimeError('no GPU')\n"}, "raises:build",
         "failed to build: RuntimeError: no GPU"),
        ({"not_policy": "def build(ctx):\n    return 'a'\n"}, "not_policy:build", "built a str, not a Policy"),
    ],
)
def test_a_broken_plugin_is_one_line_naming_the_entry_point(tmp_path, monkeypatch, capsys, modules, target, problem):
    install(tmp_path, modules, {"broken": target}, monkeypatch)
    cfg = parse_args(["--policy", "broken"])  # the name exists: the entry point is loaded when the gateway starts
    with pytest.raises(PolicyPluginError) as e:
        make_core("--policy", "broken")
    prefix = f"policy plugin 'broken' (entry point broken = {target} in group smg_testbed.policies) "
    assert str(e.value).startswith(prefix + problem) and "\n" not in str(e.value)
    assert cfg.policy == "broken"
    assert main(["--policy", "broken", "--port", "1", "--prometheus-port", "2"]) == 2
    assert capsys.readouterr().err == f"smg-testbed gateway: error: {e.value}\n"


def test_a_misspelled_name_suggests_an_installed_plugin(tmp_path, monkeypatch):
    install(tmp_path, {"typo_plugin": doc_block("python")}, {"fewest_in_flight": "typo_plugin:FewestInFlightPolicy"},
            monkeypatch)
    with pytest.raises(GatewayFlagError, match=r"^unknown --policy 'fewest_in_flite' \(did you mean fewest_in_flight"):
        parse_args(["--policy", "fewest_in_flite"])

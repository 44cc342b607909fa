"""The chart's values: each one documented with a `# --` comment, typed by values.schema.json
with `additionalProperties: false` at every level (a misspelled key is refused, by the schema
alone and by real Helm), and exercised by the ci/ values files."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import jsonschema
import pytest

from tests.chart.conftest import CHART, SCENARIOS, load_values

pytestmark = pytest.mark.chart

SCHEMA = json.loads((CHART / "values.schema.json").read_text())
KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.-]+):")


def undocumented_keys(text: str) -> list[str]:
    """Keys of a values file neither documented by a `# --` comment block right above them nor
    inside a documented key, and with no keys of their own that are all accounted for."""
    entries: list[tuple[int, str, bool]] = []  # (indent, dotted path, documented)
    stack: list[tuple[int, str, bool]] = []
    comment: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            comment.append(stripped)
            continue
        match = KEY_LINE.match(line)
        if not match:
            comment = [] if not stripped else comment
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        documented = bool(comment) and comment[0].startswith("# --")
        inherited = any(doc for _, _, doc in stack)
        path = ".".join([p for _, p, _ in stack] + [match["key"]])
        entry = (indent, match["key"], documented or inherited)
        stack.append(entry)
        entries.append((indent, path, documented or inherited))
        comment = []
    paths = [p for _, p, _ in entries]
    parents = {p.rsplit(".", 1)[0] for p in paths if "." in p}
    return [p for _, p, doc in entries if not doc and p not in parents]


def test_every_value_is_documented() -> None:
    assert undocumented_keys((CHART / "values.yaml").read_text()) == []


def test_the_documentation_check_finds_an_undocumented_value() -> None:
    # Negative control: drop the `# --` line above one value.
    text = (CHART / "values.yaml").read_text().replace(
        "  # -- Gateway replicas in each rendered Serve application.\n", ""
    )
    assert undocumented_keys(text) == ["operator.gatewayReplicas"]


def object_nodes(node: Any, path: str = "$") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node with `properties`, with its location."""
    if isinstance(node, dict):
        if "properties" in node:
            yield path, node
        for key, child in node.items():
            yield from object_nodes(child, f"{path}.{key}")
    elif isinstance(node, list):
        for i, child in enumerate(node):
            yield from object_nodes(child, f"{path}[{i}]")


def test_every_schema_object_refuses_unknown_keys() -> None:
    open_nodes = [
        path for path, node in object_nodes(SCHEMA)
        if node.get("additionalProperties") is not False and not path.startswith("$.then")
        and not path.startswith("$.if")
    ]
    assert open_nodes == []


def schema_errors(values: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(SCHEMA)
    return [e.message for e in validator.iter_errors(values)]


def merged(*names: str) -> dict[str, Any]:
    def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
        out = dict(base)
        for key, value in over.items():
            both = isinstance(value, dict) and isinstance(out.get(key), dict)
            out[key] = merge(out[key], value) if both else value
        return out

    values = load_values()
    for name in names:
        values = merge(values, load_values(name))
    return values


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_scenarios_satisfy_the_schema(scenario: str) -> None:
    assert schema_errors(merged(*SCENARIOS[scenario])) == []


def leaf_paths(values: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Key paths down to the chart's own options (open maps such as pricing count as one)."""
    if isinstance(values, dict) and values and prefix[-1:] not in {
        ("gpuHourUSD",), ("resources",), ("podSecurityContext",), ("securityContext",),
    }:
        for key, child in values.items():
            yield from leaf_paths(child, (*prefix, key))
    else:
        yield prefix


def test_the_ci_values_files_set_every_option_away_from_its_default() -> None:
    defaults = load_values()
    overrides = [load_values(name) for names in SCENARIOS.values() for name in names]

    def get(values: dict[str, Any], path: tuple[str, ...]) -> Any:
        for key in path:
            if not isinstance(values, dict) or key not in values:
                return KeyError
            values = values[key]
        return values

    unexercised = [
        ".".join(path) for path in leaf_paths(defaults)
        if all(get(o, path) in (KeyError, get(defaults, path)) for o in overrides)
    ]
    assert unexercised == []


def with_key(values: dict[str, Any], path: tuple[str, ...], key: str) -> dict[str, Any]:
    """values with a key added under path (a deep copy along the path)."""
    out = dict(values)
    if not path:
        out[key] = "x"
        return out
    out[path[0]] = with_key(out[path[0]], path[1:], key)
    return out


def mapping_paths(
    values: dict[str, Any], prefix: tuple[str, ...] = ()
) -> Iterator[tuple[str, ...]]:
    """Every mapping of values.yaml that the schema closes (all but the open maps)."""
    yield prefix
    for key, child in values.items():
        open_map = key in {"gpuHourUSD", "podAnnotations", "podLabels", "nodeSelector",
                           "annotations", "labels", "requests", "limits"}
        if isinstance(child, dict) and not open_map:
            yield from mapping_paths(child, (*prefix, key))


def test_the_schema_refuses_a_misspelled_key_at_every_level() -> None:
    defaults = load_values()
    accepted = [
        ".".join(path) or "<top>" for path in mapping_paths(defaults)
        if not schema_errors(with_key(defaults, path, "misspelled"))
    ]
    assert accepted == []


def test_helm_refuses_a_misspelled_key(install_error: Callable[[dict[str, Any]], str]) -> None:
    error = install_error({"operator": {"watchNamespace": ["team-a"]}})
    assert "watchNamespace" in error and "additional properties" in error.lower(), error
    # Control: the correctly spelled key installs.
    assert install_error({"operator": {"watchNamespaces": ["team-a"]}}) == ""


def test_helm_requires_an_external_ledger_without_the_redis_statefulset(
    install_error: Callable[[dict[str, Any]], str],
) -> None:
    assert install_error({"redis": {"enabled": False}}) != ""
    assert install_error(
        {"redis": {"enabled": False}, "ledger": {"external": {"url": "redis://r:6379/0"}}}
    ) == ""

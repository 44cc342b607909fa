"""`kubectl get` tables without kubectl: the columns of a CRD's additionalPrinterColumns
(jsonPath) for objects read from the API emulator, formatted as kubectl formats them (names as
`<kind>.<group>/<name>` when several types are listed, a tab writer with kubectl's padding,
numbers as Go prints them, AGE as kubectl's human durations, blank cells for absent values)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

MIN_WIDTH, PADDING = 6, 3
"""kubectl's tab writer, `tabwriter.NewWriter(out, 6, 4, 3, ' ', 0)`: a column is as wide as its
widest cell plus 3, at least 6; the last column is not padded."""
_STEP = re.compile(r'\.([A-Za-z0-9_-]+)|\[\?\(@\.([A-Za-z0-9_-]+)=="([^"]*)"\)\]')


def crd_columns(path: Path) -> tuple[str, str, list[dict[str, Any]]]:
    """(kind, group, printer columns of the served storage version) of a CRD file."""
    crd = yaml.safe_load(path.read_text())
    version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
    return (crd["spec"]["names"]["kind"], crd["spec"]["group"],
            list(version.get("additionalPrinterColumns") or []))


def json_path(obj: Any, path: str) -> Any:
    """The value at a kubectl JSONPath of the forms `.a.b` and `.a[?(@.k=="v")].b` (the first
    match; None when absent)."""
    pos, current = 0, obj
    while pos < len(path):
        step = _STEP.match(path, pos)
        assert step is not None, f"unsupported JSONPath {path!r} at {pos}"
        pos = step.end()
        key, field, value = step.groups()
        if key is not None:
            current = current.get(key) if isinstance(current, Mapping) else None
        else:
            items = current if isinstance(current, list) else []
            current = next((i for i in items if isinstance(i, Mapping)
                            and str(i.get(field)) == value), None)
        if current is None:
            return None
    return current


def go_number(value: float) -> str:
    """A JSON number as Go's %v prints a float64: shortest digits, an exponent below 1e-4 or
    from 1e21 (0.05 -> 0.05, 2.0 -> 2, 1e-05 -> 1e-05). Python's repr agrees but for the
    trailing `.0` and 1e16 <= |x| < 1e21, where it writes an exponent and Go does not."""
    text = repr(float(value))
    if "e" in text:
        return str(int(value)) if 16 <= int(text.split("e")[1]) < 21 else text
    return text.removesuffix(".0")


def human_duration(seconds: float) -> str:
    """kubectl's AGE (k8s.io/apimachinery duration.HumanDuration)."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m" if s % 60 == 0 else f"{minutes}m{s % 60}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        return f"{hours}h" if minutes % 60 == 0 else f"{hours}h{minutes % 60}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d" if hours % 24 == 0 else f"{hours // 24}d{hours % 24}h"
    return f"{hours // 24}d"


def cell(value: Any, type_: str, now: datetime) -> str:
    if value is None:
        return ""
    if type_ == "date":
        created = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        return human_duration((now - created).total_seconds())
    if type_ == "number" and isinstance(value, int | float) and not isinstance(value, bool):
        return go_number(float(value))
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def table(crd: Path, objects: Sequence[Mapping[str, Any]], now: datetime,
          with_kind: bool = False) -> str:
    """`kubectl get <resource>` for objects of the CRD (`with_kind`: as in `kubectl get a,b`)."""
    kind, group, columns = crd_columns(crd)
    prefix = f"{kind.lower()}.{group}/" if with_kind else ""
    rows = [["NAME", *(c["name"].upper() for c in columns)]]
    for obj in objects:
        rows.append([prefix + obj["metadata"]["name"],
                     *(cell(json_path(obj, c["jsonPath"]), c["type"], now) for c in columns)])
    widths = [max(MIN_WIDTH, max(len(r[i]) for r in rows) + PADDING) for i in range(len(rows[0]))]
    return "\n".join(("".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=False))
                      + r[-1]).rstrip() for r in rows)


def get(tables: Sequence[tuple[Path, Sequence[Mapping[str, Any]]]], now: datetime) -> str:
    """`kubectl get a,b`: one table per type, a blank line between them."""
    with_kind = len(tables) > 1
    return "\n\n".join(table(crd, objs, now, with_kind) for crd, objs in tables if objs)

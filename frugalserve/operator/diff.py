"""Pure comparisons that decide whether the operator writes: a stable hash of a rendered object
and the minimal JSON merge patch (RFC 7386) between two documents. Used by reconcile."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

SPEC_HASH_ANNOTATION = "frugalserve.io/spec-hash"


def stable_hash(doc: Any) -> str:
    """SHA-256 (16 hex digits) of a JSON document with sorted keys."""
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def merge_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The merge patch that turns old into new: changed keys, and None for removed ones."""
    patch: dict[str, Any] = {}
    for key in sorted(set(old) | set(new)):
        if key not in new:
            patch[key] = None
        elif key not in old:
            patch[key] = new[key]
        elif isinstance(old[key], Mapping) and isinstance(new[key], Mapping):
            sub = merge_patch(old[key], new[key])
            if sub:
                patch[key] = sub
        elif old[key] != new[key]:
            patch[key] = new[key]
    return patch

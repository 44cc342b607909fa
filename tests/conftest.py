"""Fixtures shared by every test layer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.schemas import KUBERAY_CRD, schema_errors


@pytest.fixture(scope="session")
def rayservice_errors() -> Callable[[dict[str, Any]], list[str]]:
    """Validates an object against KubeRay's RayService CRD schema."""
    return lambda obj: schema_errors(KUBERAY_CRD, obj)

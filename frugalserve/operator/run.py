"""Runs the operator for `frugalserve operator`: kopf's reactor with our registry, logging in
the way the official client does (in-cluster service account, else kubeconfig)."""

from __future__ import annotations

from typing import Any

import kopf

from frugalserve.operator.context import Context
from frugalserve.operator.handlers import register
from frugalserve.operator.kube import api_client
from frugalserve.operator.settings import OperatorSettings


def run(settings: OperatorSettings, liveness_endpoint: str | None = None) -> None:
    """Block running the operator until it is signalled to stop."""
    registry = register(Context.build(settings, api_client()))

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    # One replica (the chart's Deployment uses the Recreate strategy): no peering objects.
    kopf.run(
        registry=registry,
        standalone=True,
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        liveness_endpoint=liveness_endpoint,
    )

"""The few Kubernetes API calls the operator makes beyond kopf's own: RayServices, the status of
ModelDeployments and Tenants, and reading an API key Secret. Blocking (the official client):
async handlers call them through `asyncio.to_thread`. One ApiClient, shared."""

from __future__ import annotations

import base64
from typing import Any, cast

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from frugalserve.api.models import GROUP, VERSION

MERGE_PATCH = "application/merge-patch+json"
RAY = ("ray.io", "v1", "rayservices")


class Conflict(Exception):
    """HTTP 409: the object exists already, or our copy of it is stale."""


def api_client(host: str | None = None) -> k8s.ApiClient:
    """A shared client: the emulator/test server at `host`, else in-cluster or kubeconfig."""
    if host is not None:
        config = k8s.Configuration(host=host)
        config.verify_ssl = False
    else:
        from kubernetes import config as loader

        try:
            loader.load_incluster_config()  # type: ignore[no-untyped-call]
        except loader.ConfigException:
            loader.load_kube_config()  # type: ignore[no-untyped-call]
        config = k8s.Configuration.get_default_copy()
    config.connection_pool_maxsize = 16
    return k8s.ApiClient(config)


def _dict(obj: object) -> dict[str, Any]:
    return cast(dict[str, Any], obj)


class Kube:
    """Typed wrappers over the official client; 404 becomes None and 409 becomes Conflict."""

    def __init__(self, api: k8s.ApiClient) -> None:
        self._custom = k8s.CustomObjectsApi(api)
        self._core = k8s.CoreV1Api(api)

    def secret_value(self, namespace: str, name: str, key: str) -> str | None:
        """One decoded value of a Secret; None when the Secret or the key is missing."""
        try:
            secret = self._core.read_namespaced_secret(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        raw = (secret.data or {}).get(key)
        return None if raw is None else base64.b64decode(raw).decode()

    def create_rayservice(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST a RayService; Conflict when one of that name exists."""
        namespace = body["metadata"]["namespace"]
        try:
            return _dict(self._custom.create_namespaced_custom_object(*RAY[:2], namespace,
                                                                      RAY[2], body))
        except ApiException as exc:
            if exc.status == 409:
                raise Conflict(str(exc.reason)) from None
            raise

    def get_rayservice(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The RayService, or None."""
        try:
            return _dict(self._custom.get_namespaced_custom_object(*RAY[:2], namespace,
                                                                   RAY[2], name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def patch_rayservice(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """Merge-patch a RayService; Conflict when patch's resourceVersion is stale."""
        try:
            return _dict(self._custom.patch_namespaced_custom_object(
                *RAY[:2], namespace, RAY[2], name, patch, _content_type=MERGE_PATCH))
        except ApiException as exc:
            if exc.status == 409:
                raise Conflict(str(exc.reason)) from None
            raise

    def patch_status(self, plural: str, namespace: str, name: str, status: dict[str, Any]
                     ) -> None:
        """Merge-patch the status subresource of one of our objects (absent ones skipped)."""
        try:
            self._custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, plural, name, {"status": status},
                _content_type=MERGE_PATCH)
        except ApiException as exc:
            if exc.status != 404:
                raise

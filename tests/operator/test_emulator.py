"""Tests of the emulator extension itself: each API-server behaviour the operator tests rely
on, seen over HTTP the way a client sees it."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tests.operator.conftest import MODELS, RAYSERVICES, Cluster, model
from tests.operator.emulator import TEST_AGENT, selector_matches

pytestmark = pytest.mark.operator
MERGE = "application/merge-patch+json"


async def call(cluster: Cluster, method: str, path: str, body: Any = None,
               content_type: str = "application/json") -> tuple[int, Any]:
    headers = {"Content-Type": content_type, "User-Agent": TEST_AGENT}
    async with cluster.k.request(method, path, json=body, headers=headers) as response:
        return response.status, await response.json()


async def test_create_sets_identity_and_answers_201_then_409(cluster: Cluster) -> None:
    path = cluster.path(MODELS, "default")
    status, created = await call(cluster, "POST", path, model("a"))
    assert status == 201
    meta = created["metadata"]
    assert meta["uid"] and meta["creationTimestamp"].endswith("Z")
    assert meta["generation"] == 1 and int(meta["resourceVersion"]) > 0
    status, _ = await call(cluster, "POST", path, model("a"))
    assert status == 409


async def test_stale_resource_version_gets_409_and_generation_follows_the_spec(
    cluster: Cluster,
) -> None:
    created = await cluster.create(MODELS, model("a"))
    path = cluster.path(MODELS, "default", "a")
    rv = created["metadata"]["resourceVersion"]
    status, patched = await call(cluster, "PATCH", path, {
        "metadata": {"resourceVersion": rv}, "spec": {"fallback": "b"}}, MERGE)
    assert status == 200 and patched["metadata"]["generation"] == 2
    assert int(patched["metadata"]["resourceVersion"]) > int(rv)
    status, _ = await call(cluster, "PATCH", path, {
        "metadata": {"resourceVersion": rv}, "spec": {"fallback": "c"}}, MERGE)
    assert status == 409
    status, labelled = await call(cluster, "PATCH", path, {"metadata": {"labels": {"x": "y"}}},
                                  MERGE)
    assert labelled["metadata"]["generation"] == 2  # metadata is not the spec
    ops = [{"op": "test", "path": "/metadata/resourceVersion", "value": rv},
           {"op": "add", "path": "/metadata/finalizers", "value": ["f"]}]
    status, _ = await call(cluster, "PATCH", path, ops, "application/json-patch+json")
    assert status == 422


async def test_status_subresource_is_isolated(cluster: Cluster) -> None:
    await cluster.create(MODELS, model("a"))
    path = cluster.path(MODELS, "default", "a")
    _, main = await call(cluster, "PATCH", path, {"status": {"endpoint": "x"}}, MERGE)
    assert "status" not in main
    _, sub = await call(cluster, "PATCH", path + "/status",
                        {"status": {"endpoint": "y"}, "spec": {"fallback": "z"}}, MERGE)
    assert sub["status"] == {"endpoint": "y"} and "fallback" not in sub["spec"]
    assert sub["metadata"]["generation"] == 1


async def test_watch_resumes_after_its_resource_version_with_label_selectors(
    cluster: Cluster,
) -> None:
    labelled = {**model("a"), "metadata": {"name": "a", "labels": {"team": "x"}}}
    await cluster.create(MODELS, labelled)
    await cluster.create(MODELS, model("b"))
    status, listing = await call(cluster, "GET", cluster.path(MODELS, "default") +
                                 "?labelSelector=team%3Dx")
    assert [i["metadata"]["name"] for i in listing["items"]] == ["a"]
    since = listing["metadata"]["resourceVersion"]
    query = f"?watch=true&resourceVersion={since}&labelSelector=team%3Dx"
    headers = {"User-Agent": TEST_AGENT}
    async with cluster.k.request("GET", cluster.path(MODELS, "default") + query,
                                 headers=headers) as stream:
        await cluster.patch(MODELS, "default", "b", {"spec": {"fallback": "q"}})  # unselected
        await cluster.patch(MODELS, "default", "a", {"spec": {"fallback": "q"}})
        event = json.loads(await asyncio.wait_for(stream.content.readline(), 5))
    # Neither the replay of a (before `since`) nor b's change: only a's change after `since`.
    assert event["type"] == "MODIFIED" and event["object"]["metadata"]["name"] == "a"
    assert int(event["object"]["metadata"]["resourceVersion"]) > int(since)


async def test_deleting_an_owner_collects_what_it_owns(cluster: Cluster) -> None:
    owner = await cluster.create(MODELS, model("a"))
    await cluster.create(RAYSERVICES, {
        "apiVersion": "ray.io/v1", "kind": "RayService",
        "metadata": {"name": "a", "namespace": "default", "ownerReferences": [
            {"apiVersion": "frugalserve.io/v1alpha1", "kind": "ModelDeployment", "name": "a",
             "uid": owner["metadata"]["uid"]}]}, "spec": {}})
    await cluster.delete(MODELS, "default", "a")
    assert cluster.get(RAYSERVICES, "a") is None


@pytest.mark.parametrize(("selector", "expected"), [
    ("", True), ("a=1", True), ("a==1", True), ("a!=1", False), ("a=2", False), ("a", True),
    ("!a", False), ("b", False), ("!b", True), ("a=1,b", False), ("a=1, !b", True)])
def test_label_selector_terms(selector: str, expected: bool) -> None:
    assert selector_matches(selector, {"a": "1"}) is expected

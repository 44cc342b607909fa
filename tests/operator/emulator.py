"""kmock 0.8's Kubernetes emulator, extended with the API-server behaviours kopf and the operator
rely on: uid, creationTimestamp, generation, a resourceVersion counter, 201 on create, 409 on
stale writes,
422 on a failed JSON-patch test, a status subresource isolated from the rest, watches that
resume from a resourceVersion, label selectors, ownerReference garbage collection, and a
record of every (apiGroup, resource, verb) and write seen."""

from __future__ import annotations

import collections
import copy
import datetime
import json
import uuid
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import jsonpointer
import kmock
from kmock._internal import dicts
from kmock._internal.k8s import KubernetesObjectConflictError

VERBS = {"LIST": "list", "WATCH": "watch", "FETCH": "get", "CREATE": "create",
         "UPDATE": "patch", "DELETE": "delete"}
WRITES = {"CREATE", "UPDATE", "DELETE"}
TEST_AGENT = "kubectl-test"
"""User-Agent of the tests' own requests: served, but not recorded as the operator's."""


def selector_matches(selector: str, labels: dict[str, str]) -> bool:
    """Equality-based label selectors: k=v, k==v, k!=v, k, !k (comma means and)."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            ok = labels.get(key.strip()) != value.strip()
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            ok = labels.get(key.strip()) == value.strip()
        elif term.startswith("!"):
            ok = term[1:] not in labels
        else:
            ok = term in labels
        if not ok:
            return False
    return True


def _rv(event: dict[str, Any]) -> int:
    return int(event["object"]["metadata"]["resourceVersion"])


@attrs.define(kw_only=True)
class Emulator(kmock.KubernetesEmulator):
    """A stateful Kubernetes API server in memory, close enough to a real one for kopf."""

    revision: int = 0
    log: dict[Any, list[dict[str, Any]]] = attrs.field(
        factory=lambda: collections.defaultdict(list))
    verbs: set[tuple[str, str, str]] = attrs.field(factory=set)
    writes: list[tuple[str, str]] = attrs.field(factory=list)

    def _has_status(self, resource: Any) -> bool:
        try:
            return "status" in self.resources[resource].subresources
        except KeyError:
            return False

    async def _emit(self, resource: Any, kind: str, obj: dict[str, Any]) -> None:
        event = {"type": kind, "object": copy.deepcopy(obj)}
        self.log[resource].append(event)
        await self._buses[resource].put(event)

    def _next(self) -> str:
        self.revision += 1
        return str(self.revision)

    async def _handle(self, request: kmock.Request) -> Any:
        resource, action = request.resource, request.action
        if resource is None or not resource.plural or action is None:
            return await kmock.KubernetesScaffold._handle(self, request)  # discovery
        if request.headers.get("User-Agent") != TEST_AGENT:
            name = resource.plural + (f"/{request.subresource}" if request.subresource else "")
            self.verbs.add((resource.group, name, VERBS[action.name]))
            if action.name in WRITES:
                self.writes.append((request.method.value, str(request.url.path)))
        # Served here, not by kmock's generic router: it rescans every past request for each
        # new one, which makes hundreds of objects quadratic.
        if action.name in WRITES:
            async with self._lock:
                obj = await getattr(self, f"_do_{action.name.lower()}")(request)
            return aiohttp.web.json_response(obj, status=201 if action.name == "CREATE" else 200)
        if action.name == "WATCH":
            return await self._stream(request)
        if action.name == "LIST":
            return aiohttp.web.json_response(await self._serve_list(request))
        key = (resource, request.namespace, request.name)
        if key not in self.objects or self.objects[key].deleted:
            raise kmock.KubernetesObjectNotFoundError()
        return aiohttp.web.json_response(self.objects[key].raw)

    async def _stream(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request._raw_request)
        async for event in self._serve_watch(request):
            if event != b"":
                await response.write(json.dumps(event).encode() + b"\n")
        return response

    async def _do_create(self, request: kmock.Request) -> dict[str, Any]:
        obj, resource = request.data, request.resource
        meta = obj.setdefault("metadata", {})
        if "name" not in meta and "generateName" in meta:
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        namespace = request.namespace or meta.get("namespace")
        key = (resource, namespace, meta["name"])
        if key in self.objects and not self.objects[key].deleted:
            raise KubernetesObjectConflictError()
        if self._has_status(resource):
            obj.pop("status", None)
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=now, generation=1,
                    resourceVersion=self._next())
        if namespace is not None:
            meta["namespace"] = namespace
        if key in self.objects:
            self.objects[key].create(obj)
        else:
            self.objects[key] = obj
        await self._emit(resource, "ADDED", obj)
        return dict(obj)

    async def _do_update(self, request: kmock.Request) -> dict[str, Any]:
        key = (request.resource, request.namespace, request.name)
        if key not in self.objects or self.objects[key].deleted:
            raise kmock.KubernetesObjectNotFoundError()
        current = copy.deepcopy(self.objects[key].raw)
        new = self._patched(current, request.data)
        if self._has_status(request.resource):
            if request.subresource == "status":
                new = {**{k: v for k, v in current.items() if k != "status"},
                       **({"status": new["status"]} if "status" in new else {})}
            else:
                new = {**{k: v for k, v in new.items() if k != "status"},
                       **({"status": current["status"]} if "status" in current else {})}
        for field in ("uid", "creationTimestamp", "name", "namespace", "generation",
                      "resourceVersion"):
            if field in current["metadata"]:
                new["metadata"][field] = current["metadata"][field]
        if new == current:
            return current  # a no-op patch: no new version, no event (as the API server does)
        essence = ("metadata", "status")
        if {k: v for k, v in new.items() if k not in essence} != \
                {k: v for k, v in current.items() if k not in essence}:
            new["metadata"]["generation"] = current["metadata"].get("generation", 0) + 1
        new["metadata"]["resourceVersion"] = self._next()
        self.objects[key].history.append(new)
        await self._emit(request.resource, "MODIFIED", new)
        meta = new["metadata"]
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            await self._remove(key)
        return new

    def _patched(self, current: dict[str, Any], data: Any) -> dict[str, Any]:
        """A merge patch (with optimistic concurrency on metadata.resourceVersion) or a
        JSON patch (whose failing `test` op gets 422, as the API server answers)."""
        if isinstance(data, list):
            try:
                return dict(jsonpatch.apply_patch(current, data))
            except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
                raise kmock.KubernetesError(status=422, reason="Invalid", message=str(exc)) \
                    from None
        wanted = (data.get("metadata") or {}).get("resourceVersion")
        if wanted is not None and wanted != current["metadata"].get("resourceVersion"):
            raise kmock.KubernetesError(status=409, reason="Conflict",
                                        message="the object has been modified")
        return dict(dicts.merge_patch_dict(current, data))

    async def _do_delete(self, request: kmock.Request) -> dict[str, Any]:
        key = (request.resource, request.namespace, request.name)
        if key not in self.objects or self.objects[key].deleted:
            raise kmock.KubernetesObjectNotFoundError()
        meta = self.objects[key].raw["metadata"]
        if meta.get("finalizers"):
            if not meta.get("deletionTimestamp"):
                new = copy.deepcopy(self.objects[key].raw)
                new["metadata"]["deletionTimestamp"] = datetime.datetime.now(
                    datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                new["metadata"]["resourceVersion"] = self._next()
                self.objects[key].history.append(new)
                await self._emit(request.resource, "MODIFIED", new)
            return dict(self.objects[key].raw)
        return await self._remove(key)

    async def _remove(self, key: Any) -> dict[str, Any]:
        """Delete an object (DELETED event), then the objects it owns (garbage collection)."""
        obj = copy.deepcopy(self.objects[key].raw)
        obj["metadata"]["resourceVersion"] = self._next()
        self.objects[key].history.append(obj)
        self.objects[key].delete()
        await self._emit(key[0], "DELETED", obj)
        uid = obj["metadata"].get("uid")
        for other, child in list(self.objects.items()):
            owners = [] if child.deleted else child["metadata"].get("ownerReferences") or []
            if any(ref.get("uid") == uid for ref in owners):
                await self._remove(other)
        return obj

    def _selected(self, request: kmock.Request, obj: dict[str, Any]) -> bool:
        meta = obj.get("metadata") or {}
        if request.namespace is not None and meta.get("namespace") != request.namespace:
            return False
        return selector_matches(request.params.get("labelSelector", ""), meta.get("labels") or {})

    def _current(self, request: kmock.Request) -> list[dict[str, Any]]:
        return [obj.raw for (resource, _, _), obj in self.objects.items()
                if resource == request.resource and not obj.deleted
                and self._selected(request, obj.raw)]

    async def _serve_list(self, request: kmock.Request) -> Any:
        if request.resource not in self._get_resources():
            raise kmock.KubernetesResourceNotFoundError()
        async with self._lock:
            items = self._current(request)
            return {"kind": "List", "metadata": {"resourceVersion": str(self.revision)},
                    "items": items}

    async def _serve_watch(self, request: kmock.Request) -> Any:
        yield b""  # send the headers: the stream is open even if nothing happens
        bus = self._buses[request.resource]
        since = request.params.get("resourceVersion")
        async with self._lock:
            mark = await bus.mark()
            if since:
                replay = [e for e in self.log[request.resource] if _rv(e) > int(since)
                          and self._selected(request, e["object"])]
            else:
                replay = [{"type": "ADDED", "object": obj} for obj in self._current(request)]
        try:
            for event in replay:
                yield event
            async for event in bus.stream(since=mark):
                if self._selected(request, event["object"]):
                    yield event
        finally:
            await bus.unmark(mark)

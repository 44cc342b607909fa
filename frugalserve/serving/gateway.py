"""The gateway's logic, free of HTTP and Ray: authenticate a key, admit a request against its
tenant's budget (exact prompt tokens, worst-case reservation, downgrade cascade), run it on a
model and settle what it produced. `http.create_app` serves it; `app.Gateway` deploys it."""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Coroutine, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from frugalserve.api.models import OnExceeded
from frugalserve.ledger import BudgetExceeded, Ledger, RateLimited, Usage
from frugalserve.ledger.validate import MAX_LEASE_S
from frugalserve.pricing.live import LiveCost, Prices
from frugalserve.serving.clients import Completion, EngineFailed, ModelClient
from frugalserve.serving.config import (
    GatewayUserConfig,
    ModelConfig,
    PriceConfig,
    TenantConfig,
    hash_key,
    ledger_limits,
)
from frugalserve.serving.engine import SamplingParams, TokenDelta
from frugalserve.serving.errors import (
    AuthenticationFailed,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from frugalserve.serving.metrics import Metrics
from frugalserve.serving.protocol import ChatRequest, CompletionRequest

log = logging.getLogger(__name__)

FREE = PriceConfig(gpu_hour_usd=0.0, gpus_per_replica=0)
EXPIRE_EVERY_S = 5.0
"""How often each gateway replica charges the reservations of dead holders (`Ledger.expire`)."""


@dataclass(frozen=True)
class Lease:
    """How long a reservation is held before the ledger charges it in full: long enough for the
    longest generation the request may run, so a live request is never charged as dead.

    `base_s` covers queueing for a batch slot and the prefill; `per_token_s` bounds the decode
    of every reserved token (prompt + max_tokens) at 2 tokens/s per request, below the slowest
    configuration we measure (the CPU MoE engine at batch 16 decodes ~5 tokens/s per request,
    docs/benchmarks.md). A live request outliving its lease is still settled once, in full
    (the ledger's late settle); a holder that died frees its budget after the lease."""

    base_s: float = 120.0
    per_token_s: float = 0.5

    def seconds(self, tokens_max: int) -> float:
        return min(self.base_s + self.per_token_s * tokens_max, MAX_LEASE_S)


@dataclass
class ExpirySweeper:
    """A daemon thread calling `ledger.expire()` every `every_s` seconds. Expiry is idempotent
    and atomic in both backends, so every replica may run one against the same ledger."""

    ledger: Ledger
    every_s: float = EXPIRE_EVERY_S
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="ledger-expiry", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                if n := self.ledger.expire():
                    log.warning("charged %d reservation(s) of dead holders in full", n)
            except Exception:
                log.warning("ledger expiry failed; retrying in %.1fs", self.every_s,
                            exc_info=True)


@dataclass(frozen=True)
class Admission:
    """An admitted request: where it runs, its prompt, its token cap and the locked price."""

    request_id: str
    tenant: str
    model: str
    prompt_ids: list[int]
    max_tokens: int
    prices: Prices
    downgraded_from: str | None
    usage: Usage
    """The tenant's usage right after the reservation (for the response headers)."""


class Gateway:
    """Admission, routing and settlement for every model of one application."""

    def __init__(
        self,
        models: Mapping[str, ModelConfig],
        clients: Mapping[str, ModelClient],
        ledger: Ledger,
        *,
        metrics: Metrics | None = None,
        reserve: bool = True,
        lease: Lease = Lease(),
    ) -> None:
        """`reserve=False` is the unsafe check-then-charge admission, kept only as the negative
        control of the overshoot test: it admits on a usage check and charges at the end.
        The caller runs an `ExpirySweeper` on the same ledger (the Serve deployment does)."""
        self.models = dict(models)
        self.clients = dict(clients)
        self.ledger = ledger
        self.metrics = metrics or Metrics(ledger)
        self.reserve = reserve
        self.lease = lease
        self.tenants: tuple[TenantConfig, ...] = ()
        self.costs = {name: LiveCost(FREE) for name in self.models}
        self._background: set[asyncio.Future[None]] = set()
        self._unstarted: dict[str, Admission] = {}
        """Admissions whose run has not started: `finish` releases them if it never does."""

    def configure(self, user: GatewayUserConfig) -> None:
        """Apply tenants and prices in place (the deployment's `reconfigure`)."""
        for tenant in user.tenants:
            self.ledger.configure_tenant(tenant.name, ledger_limits(tenant))
        self.tenants = user.tenants
        for name, cost in self.costs.items():
            cost.price = user.prices.get(name, FREE)
            cost.refresh(cost.snapshot.ready_replicas)

    def authenticate(self, authorization: str | None) -> TenantConfig:
        """The tenant whose key this is, comparing SHA-256 digests in constant time."""
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise AuthenticationFailed("Missing API key: send 'Authorization: Bearer KEY'.")
        digest = hash_key(key.strip())
        found = None
        for tenant in self.tenants:
            if hmac.compare_digest(digest, tenant.key_sha256):
                found = tenant
        if found is None:
            raise AuthenticationFailed("Incorrect API key provided.")
        return found

    def visible_models(self, tenant: TenantConfig) -> list[str]:
        return sorted(m for m in self.models if _may_use(tenant, m))

    def _chain(self, model: str) -> list[str]:
        """The model and its fallbacks, in order, without cycles."""
        chain = [model]
        while (nxt := self.models[chain[-1]].fallback) and nxt in self.models and nxt not in chain:
            chain.append(nxt)
        return chain

    async def admit(self, tenant: TenantConfig, req: ChatRequest | CompletionRequest) -> Admission:
        """Reserve the worst case of `req` on its model, or on its fallbacks when the tenant's
        policy is `downgrade`; raise the refusal of the last model tried."""
        if req.model not in self.models:
            raise NotFound(f"The model '{req.model}' does not exist.", param="model")
        if not _may_use(tenant, req.model):
            raise PermissionDenied(
                f"Tenant '{tenant.name}' may not use model '{req.model}'.", param="model")
        chain = self._chain(req.model)
        if tenant.on_exceeded != OnExceeded.DOWNGRADE:
            chain = chain[:1]
        for i, model in enumerate(chain):
            try:
                return await self._admit_on(tenant, model, req, chain[0] if i else None)
            except BudgetExceeded as exc:
                if i + 1 == len(chain):
                    self.metrics.rejections.labels(tenant.name, exc.reason).inc()
                    raise
                self.metrics.downgrades.labels(tenant.name, model, chain[i + 1], exc.reason).inc()
            except RateLimited as exc:
                self.metrics.rejections.labels(tenant.name, exc.reason).inc()
                raise
        raise AssertionError("unreachable: the chain is never empty")

    async def _admit_on(self, tenant: TenantConfig, model: str,
                        req: ChatRequest | CompletionRequest,
                        downgraded_from: str | None) -> Admission:
        if isinstance(req, ChatRequest):
            messages = [{"role": m.role, "content": m.text()} for m in req.messages]
            prepared = await self.clients[model].prepare(messages, None)
            prompt_param = "messages"
        else:
            prepared = await self.clients[model].prepare(None, req.text())
            prompt_param = "prompt"
        n_prompt, context = len(prepared.prompt_ids), prepared.max_context_tokens
        room = context - n_prompt
        if room < 1:
            raise InvalidRequest(
                f"The prompt is {n_prompt} tokens; model '{model}' has a context of "
                f"{context} tokens.", param=prompt_param, code="context_length_exceeded")
        prices = self.costs[model].prices()
        limit = req.limit()
        if limit is None:
            usage = await asyncio.to_thread(self.ledger.usage, tenant.name)
            limit = _affordable(usage, prices, n_prompt, room)
            if limit < 1:
                raise BudgetExceeded(tenant.name, "budget", usage.remaining_micros,
                                     usage.remaining_tokens, usage.period_end)
        elif limit > room:
            param = "max_completion_tokens" if getattr(req, "max_completion_tokens", None) \
                else "max_tokens"
            raise InvalidRequest(
                f"{param}={limit} plus the prompt's {n_prompt} tokens exceeds the context of "
                f"model '{model}' ({context} tokens); at most {room}.",
                param=param, code="context_length_exceeded")
        rid = f"{'chatcmpl' if prompt_param == 'messages' else 'cmpl'}-{uuid.uuid4().hex}"
        hold = asyncio.ensure_future(asyncio.to_thread(
            self._hold, tenant.name, rid, prices.cost(n_prompt, limit), n_prompt + limit,
            model, prices.version))
        try:
            usage = await asyncio.shield(hold)
        except asyncio.CancelledError:
            # The caller left while the ledger was reserving: release what lands.
            hold.add_done_callback(partial(self._release_orphan, rid))
            raise
        self.metrics.in_flight.labels(tenant.name).inc()
        adm = Admission(rid, tenant.name, model, prepared.prompt_ids, limit, prices,
                        downgraded_from, usage)
        self._unstarted[rid] = adm
        return adm

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Future[None]:
        """Run ledger work to its end even if the request that needs it is cancelled."""
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def _release_orphan(self, rid: str, hold: asyncio.Future[Usage]) -> None:
        if self.reserve and not hold.cancelled() and hold.exception() is None:
            self._spawn(asyncio.to_thread(self.ledger.release, rid))

    async def finish(self, adm: Admission, deltas: AsyncGenerator[TokenDelta, None]) -> None:
        """However a response ends (done, cut off, or abandoned before its stream started),
        close its stream, which settles a started run, and release a run that never started."""
        await deltas.aclose()
        if self._unstarted.pop(adm.request_id, None) is None:
            return
        self.metrics.in_flight.labels(adm.tenant).dec()
        if self.reserve:
            await asyncio.shield(self._spawn(asyncio.to_thread(self.ledger.release,
                                                               adm.request_id)))

    def _hold(self, tenant: str, rid: str, cost_max: int, tokens_max: int, model: str,
              version: str) -> Usage:
        """Reserve (or, as the negative control, only check), then read the usage."""
        if self.reserve:
            self.ledger.reserve(tenant, rid, cost_max, tokens_max, model=model,
                                price_version=version, lease_s=self.lease.seconds(tokens_max))
            return self.ledger.usage(tenant)
        usage = self.ledger.usage(tenant)
        if (usage.remaining_micros is not None and usage.remaining_micros < cost_max) or (
                usage.remaining_tokens is not None and usage.remaining_tokens < tokens_max):
            raise BudgetExceeded(tenant, "budget", usage.remaining_micros,
                                 usage.remaining_tokens, usage.period_end)
        return usage

    def _charge(self, adm: Admission, prompt: int, completion: int) -> None:
        cost = adm.prices.cost(prompt, completion)
        if self.reserve:
            settled = self.ledger.settle(adm.request_id, cost, prompt, completion)
            if settled.expired:
                log.warning("%s outlived its lease: charged its reservation in full (%d µUSD)",
                            adm.request_id, settled.cost_micros)
            return
        try:
            self.ledger.reserve(adm.tenant, adm.request_id, cost, prompt + completion,
                                model=adm.model, price_version=adm.prices.version)
            self.ledger.settle(adm.request_id, cost, prompt, completion)
        except BudgetExceeded:
            log.warning("check-then-charge lost the charge of %s", adm.request_id)

    async def run(
        self, adm: Admission, params: SamplingParams
    ) -> AsyncGenerator[TokenDelta, None]:
        """Stream the engine's deltas; settle, once, the counts of the last delta handed to the
        consumer (all of them on success; what was received on disconnect or produced on error)."""
        start = self._start(adm)
        first: float | None = None
        last: TokenDelta | None = None
        outcome = "error"
        try:
            async with aclosing(self.clients[adm.model].generate(
                    adm.prompt_ids, params, adm.request_id)) as deltas:
                async for delta in deltas:
                    if first is None:
                        first = time.monotonic()
                    last = delta  # handed to the client: it is charged from here on
                    yield delta
            outcome = last.finish_reason or "stop" if last else "empty"
        except (GeneratorExit, asyncio.CancelledError):
            outcome = "disconnected"
            raise
        finally:
            await self._settle(adm, outcome, last.prompt_tokens if last else len(adm.prompt_ids),
                               last.completion_tokens if last else 0, start, first)

    async def complete(self, adm: Admission, params: SamplingParams) -> Completion:
        """Run the request to its end in one model call (no per-token messages); settle, once,
        what the engine produced (also when it failed part way, then raise `EngineFailed`),
        or only the prompt if the caller leaves first: it received no completion."""
        start = self._start(adm)
        done: Completion | None = None
        outcome = "error"
        try:
            done = await self.clients[adm.model].complete(adm.prompt_ids, params,
                                                          adm.request_id)
            if done.first_token_s is None:
                outcome = "empty"
            elif done.error is None:
                outcome = done.finish_reason or "stop"
        except asyncio.CancelledError:
            outcome = "disconnected"
            raise
        finally:
            got = done or Completion("", None, len(adm.prompt_ids), 0, None)
            first = None if got.first_token_s is None else start + got.first_token_s
            await self._settle(adm, outcome, got.prompt_tokens, got.completion_tokens, start,
                               first)
        if done.error is not None:
            raise EngineFailed(f"{adm.request_id}: {done.error}")
        return done

    def _start(self, adm: Admission) -> float:
        """Mark the run of `adm` started (from here on its run settles it); its start time."""
        self._unstarted.pop(adm.request_id, None)
        self.costs[adm.model].begin()
        return time.monotonic()

    async def _settle(self, adm: Admission, outcome: str, prompt: int, completion: int,
                      start: float, first: float | None) -> None:
        """Charge a run's counts once (even if the caller is cancelled meanwhile) and record
        its metrics and live-cost sample."""
        settle = self._spawn(asyncio.to_thread(self._charge, adm, prompt, completion))
        self.metrics.in_flight.labels(adm.tenant).dec()
        end = time.monotonic()
        self._observe(adm, outcome, prompt, completion, start, first, end)
        self.costs[adm.model].end(prompt, completion, (first or end) - start,
                                  end - (first or end))
        await asyncio.shield(settle)

    def _observe(self, adm: Admission, outcome: str, prompt: int, completion: int,
                 start: float, first: float | None, end: float) -> None:
        m = self.metrics
        m.requests.labels(adm.tenant, adm.model, outcome).inc()
        m.latency.labels(adm.model).observe(end - start)
        if first is not None:
            m.ttft.labels(adm.model).observe(first - start)
            if completion > 1 and end > first:
                m.tps.labels(adm.model).observe((completion - 1) / (end - first))

    async def refresh(self, ready_replicas: Callable[[], Mapping[str, int]]) -> None:
        """Recompute live cost with the replicas now ready, and pull engine stats."""
        ready = await asyncio.to_thread(ready_replicas)
        for name, cost in self.costs.items():
            self.metrics.cost(name, cost.refresh(ready.get(name, 1)))
            try:
                self.metrics.engine(name, await self.clients[name].stats())
            except Exception:  # a model still loading has no stats yet
                log.debug("no engine stats from %s", name, exc_info=True)

    def ready(self) -> None:
        """Raise Unavailable until tenants are configured."""
        if not self.tenants:
            raise Unavailable("The gateway has no tenants configured yet.")


def _may_use(tenant: TenantConfig, model: str) -> bool:
    return "*" in tenant.models or model in tenant.models


def _affordable(usage: Usage, prices: Prices, n_prompt: int, room: int) -> int:
    """The most completion tokens the remaining budget and the context allow."""
    limit = room
    if usage.remaining_tokens is not None:
        limit = min(limit, usage.remaining_tokens - n_prompt)
    if usage.remaining_micros is not None and prices.output > 0:
        left = usage.remaining_micros - prices.input * n_prompt
        limit = min(limit, int(left // prices.output))
        while limit > 0 and prices.cost(n_prompt, limit) > usage.remaining_micros:
            limit -= 1  # rounding up the cost can take the last token over
    return limit

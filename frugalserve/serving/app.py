"""The Ray Serve application: `build_app(args)` (import path `frugalserve.serving.app:build_app`)
binds one `Model-<name>` deployment per model behind the `Gateway` ingress. The operator puts it
in a RayService's serveConfigV2 and local mode deploys the same entry (`config.serve_application`);
tenants and prices arrive as the gateway's `user_config`, applied in place by `reconfigure`."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle
from ray.serve.schema import ReplicaState

from frugalserve.ledger import open_ledger
from frugalserve.serving.clients import HandleClient, load_tokenizer
from frugalserve.serving.config import (
    GATEWAY_CPUS,
    GATEWAY_DEPLOYMENT,
    AppConfig,
    GatewayUserConfig,
    model_deployment_name,
)
from frugalserve.serving.gateway import ExpirySweeper, Gateway
from frugalserve.serving.http import create_app
from frugalserve.serving.metrics import Metrics
from frugalserve.serving.model_server import ModelServer

log = logging.getLogger("ray.serve")

UNSAFE_CHECK_THEN_CHARGE = "FRUGALSERVE_UNSAFE_CHECK_THEN_CHARGE"
"""Set to 1 (tests only) to admit on a usage check instead of a reservation: the negative
control that shows concurrent requests overshoot a budget without reservations."""
REFRESH_S = 2.0


@serve.deployment
@serve.ingress()
class GatewayServer:
    """The ingress replica: a `Gateway` over handles to the model deployments."""

    def __init__(self, args: dict[str, Any], models: dict[str, DeploymentHandle]) -> None:
        self.config = AppConfig.model_validate(args)
        ledger = open_ledger(self.config.ledger_url)
        self.gateway = Gateway(
            {m.name: m for m in self.config.models},
            {m.name: HandleClient(models[m.name], load_tokenizer(m)) for m in self.config.models},
            ledger,
            metrics=Metrics(ledger, replica=serve.get_replica_context().replica_tag),
            reserve=os.environ.get(UNSAFE_CHECK_THEN_CHARGE) != "1",
        )
        self._sweeper = ExpirySweeper(self.gateway.ledger)
        self._sweeper.start()
        self._refresher: asyncio.Task[None] | None = None

    def __serve_build_asgi_app__(self) -> Any:
        return create_app(self.gateway, self.config.max_body_bytes)

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        await asyncio.to_thread(self.gateway.configure,
                                GatewayUserConfig.model_validate(user_config))
        if self._refresher is None:
            self._refresher = asyncio.create_task(self._refresh_forever())

    async def _refresh_forever(self) -> None:
        while True:
            try:
                await self.gateway.refresh(_ready_replicas)
            except Exception:
                log.warning("live cost refresh failed", exc_info=True)
            await asyncio.sleep(REFRESH_S)

    def __del__(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
        self._sweeper.stop()
        self.gateway.ledger.close()


def _ready_replicas() -> dict[str, int]:
    """Running replicas of each model deployment of this application, by model name."""
    app = serve.get_replica_context().app_name
    deployments = serve.status().applications[app].deployments
    prefix = model_deployment_name("")
    return {name[len(prefix):]: d.replica_states.get(ReplicaState.RUNNING, 0)
            for name, d in deployments.items() if name.startswith(prefix)}


def build_app(args: dict[str, Any]) -> serve.Application:
    """The application for `AppConfig` args; deployment names match `serve_application`."""
    config = AppConfig.model_validate(args)
    models = {
        m.name: ModelServer.options(  # type: ignore[attr-defined]  # serve.deployment wraps it
            name=model_deployment_name(m.name),
            autoscaling_config=m.autoscaling.model_dump(mode="json"),
            ray_actor_options={"num_cpus": m.num_cpus, "num_gpus": m.num_gpus},
            max_ongoing_requests=max(64, 8 * m.max_batch_size),
            health_check_period_s=10,
        ).bind(m.model_dump(mode="json"))
        for m in config.models
    }
    gateway = GatewayServer.options(  # type: ignore[attr-defined]  # serve.deployment wraps it
        name=GATEWAY_DEPLOYMENT,
        num_replicas=config.gateway_replicas,
        ray_actor_options={"num_cpus": GATEWAY_CPUS},
        max_ongoing_requests=1000,
    )
    return gateway.bind(config.model_dump(mode="json"), models)

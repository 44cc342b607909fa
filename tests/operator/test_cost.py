"""The live cost in ModelDeployment.status, from a real Prometheus server scraping a metrics
endpoint the test serves, and from scraping a live /metrics directly."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter, start_http_server
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from frugalserve.operator.metrics import TOKENS_METRIC, ScrapeRates
from tests.operator.conftest import (
    MODELS,
    RAYSERVICES,
    Cluster,
    OperatorFactory,
    eventually,
    model,
)

pytestmark = pytest.mark.operator
PROMETHEUS = Path("/usr/bin/prometheus")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def serve_metrics(registry: CollectorRegistry) -> Iterator[int]:
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        yield port
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


async def serving_two_gpus(cluster: Cluster) -> None:
    """A ModelDeployment on 2 x 1 GPU at 2 USD/GPU-hour whose RayService reports 2 ready."""
    await cluster.create(MODELS, model("alpha", resources={"gpusPerReplica": 1, "gpuType": "L4"},
                                       pricing={"gpuHourUSD": 2.0},
                                       autoscaling={"maxReplicas": 2}))
    await eventually(lambda: cluster.get(RAYSERVICES, "alpha"))
    await cluster.patch(RAYSERVICES, "default", "alpha", {"status": {"activeServiceStatus": {
        "rayClusterStatus": {"desiredWorkerReplicas": 2, "readyWorkerReplicas": 2}}}},
        sub="status")
    await eventually(lambda: (cluster.status(MODELS, "alpha").get("replicas") or {})
                     .get("ready") == 2)


class ThousandPerScrape(Collector):
    """tokens_total grows by 1000 at every scrape (with a clock of 10 s per scrape: 100/s)."""

    def __init__(self) -> None:
        self.scrapes = 0

    def collect(self) -> Iterator[CounterMetricFamily]:
        self.scrapes += 1
        family = CounterMetricFamily(TOKENS_METRIC.removesuffix("_total"), "tokens",
                                     labels=["model"])
        family.add_metric(["alpha"], 1000.0 * self.scrapes)
        family.add_metric(["other"], 5.0)
        yield family


async def test_scrape_path_against_a_live_metrics_endpoint(
    cluster: Cluster, operator: OperatorFactory
) -> None:
    registry = CollectorRegistry()
    registry.register(ThousandPerScrape())
    ticks = iter(range(0, 10_000, 10))
    with serve_metrics(registry) as port:
        template = f"http://127.0.0.1:{port}/metrics?for={{namespace}}/{{name}}"
        async with operator(metrics_url_template=template, cost_interval_s=0.3) as ctx:
            ctx.rate = ScrapeRates(ctx.http, template, clock=lambda: float(next(ticks)))
            await serving_two_gpus(cluster)
            expected = {"tokensPerSecond": 100.0, "hourlyCostUSD": 4.0,
                        "liveCostPerMillionTokensUSD": round(4.0 / 360_000 * 1e6, 4)}
            await eventually(lambda: cluster.status(MODELS, "alpha").items()
                             >= expected.items())


@pytest.fixture()
def tokens() -> Iterator[int]:
    """A /metrics endpoint shaped like the gateway's (tenant, model, kind) whose alpha tokens
    grow 500 per second, from a thread."""
    registry = CollectorRegistry()
    counter = Counter(TOKENS_METRIC.removesuffix("_total"), "tokens",
                      ["tenant", "model", "kind"], registry=registry)
    stop = threading.Event()

    def feed() -> None:
        while not stop.wait(0.05):
            counter.labels(tenant="a", model="alpha", kind="prompt").inc(10)
            counter.labels(tenant="b", model="alpha", kind="completion").inc(15)
            counter.labels(tenant="a", model="other", kind="prompt").inc(99)

    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        with serve_metrics(registry) as port:
            yield port
    finally:
        stop.set()
        feeder.join()


@pytest.fixture()
def prometheus(tokens: int, tmp_path: Path) -> Iterator[str]:
    """A real Prometheus scraping the endpoint every 0.5 s as namespace default, twice (as two
    gateway replicas reporting the same ledger totals would be): summing would double it."""
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 500ms, evaluation_interval: 500ms}\n"
        "scrape_configs:\n" + "".join(
            f"  - job_name: gateway-{replica}\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{tokens}'], "
            "labels: {namespace: default}}]\n" for replica in (1, 2)))
    process = subprocess.Popen(
        [str(PROMETHEUS), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'db'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while not _ready(url):
            assert time.monotonic() < deadline and process.poll() is None, "no Prometheus"
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(10)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/-/ready", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


async def test_prometheus_path_against_a_real_prometheus(
    cluster: Cluster, operator: OperatorFactory, prometheus: str
) -> None:
    async with operator(prometheus_url=prometheus, cost_window_s=4, cost_interval_s=0.5):
        await serving_two_gpus(cluster)

        def rate() -> Any:
            tps = cluster.status(MODELS, "alpha").get("tokensPerSecond")
            return tps if tps and 400 < tps < 600 else None

        tps = await eventually(rate, timeout=30)
        live = cluster.get(MODELS, "alpha")["status"]["liveCostPerMillionTokensUSD"]
        assert live == pytest.approx(4.0 / (tps * 3600) * 1e6, rel=0.05)

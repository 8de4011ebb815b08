"""`GET /metrics`: the server's figures in Prometheus' text format.

HTTP requests are counted as they end (by endpoint and status); the model's figures (tokens,
queue depth, tokens/s, per-stage times, KV cache in use) are read from the served model when
Prometheus scrapes, so nothing is counted twice.
"""
from __future__ import annotations

from typing import Any, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self, served: Any):
        disable_created_metrics()      # `_created` series double every counter and tell nobody anything
        self.registry = CollectorRegistry()
        self.requests = Counter("dnet_http_requests", "HTTP requests answered", ["endpoint", "status"],
                                registry=self.registry)
        self.first_token = Histogram("dnet_time_to_first_token_seconds", "From request to its first token",
                                     buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
                                     registry=self.registry)
        self.registry.register(_ModelCollector(served))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _ModelCollector:
    def __init__(self, served: Any):
        self.served = served

    def collect(self) -> Iterator[Metric]:
        status = self.served.status()
        if status["kind"] == "embeddings":
            yield _counter("dnet_embedding_requests", "Embedding requests run", status["requests"])
            yield _counter("dnet_embedding_tokens", "Tokens embedded", status["tokens"])
            return
        stats = status["stats"]
        yield _counter("dnet_generation_requests", "Generations submitted", stats["requests"])
        yield _counter("dnet_generation_rejected", "Generations refused with a full queue", stats["rejected"])
        yield _counter("dnet_generation_failed", "Generations that ended with an error", stats["failed"])
        yield _counter("dnet_generation_cancelled", "Generations cancelled (the client left)", stats["cancelled"])
        yield _counter("dnet_prompt_tokens", "Prompt tokens fed to the model", stats["prompt_tokens"])
        yield _counter("dnet_generated_tokens", "Tokens generated", stats["generated_tokens"])
        yield _counter("dnet_decode_steps", "Batched decode steps", stats["decode_steps"])
        yield _gauge("dnet_tokens_per_second", "Generated tokens per second over the last 10 s",
                     status["tokens_per_second"])
        yield _gauge("dnet_queue_depth", "Generations waiting for a cache slot", status["waiting"])
        yield _gauge("dnet_running_sequences", "Sequences in the running batch", status["running"])
        yield _gauge("dnet_kv_cache_bytes_in_use", "KV cache bytes written by running sequences",
                     status["kv_bytes_in_use"])
        stage = GaugeMetricFamily("dnet_stage_step_milliseconds", "Mean compute time of a stage per run",
                                  labels=["stage", "node"])
        for k, s in enumerate(status["plan"]["stages"]):
            if s["measured_ms"] is not None:
                stage.add_metric([str(k), s["node"]], s["measured_ms"])
        yield stage


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)

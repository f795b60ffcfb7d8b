"""Prometheus `/metrics`: queue depth and tasks by state (read from the DB at scrape time, so correct across
processes), workers, processing durations, plus this process's HTTP and upload counters."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from media_cleaner.api.context import AppContext
from media_cleaner.jobs import utcnow

DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 12 * 3600, 24 * 3600)


class _QueueCollector(Collector):
    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx

    def collect(self) -> Iterator:
        counts = self.ctx.store.counts()
        tasks = GaugeMetricFamily("media_cleaner_tasks", "Tasks by state", labels=["state"])
        for state in ("pending", "processing", "completed", "failed", "cancelled"):
            tasks.add_metric([state], counts[state])
        yield tasks
        yield GaugeMetricFamily("media_cleaner_queue_depth", "Tasks waiting for a worker", value=counts["pending"])
        failures = GaugeMetricFamily("media_cleaner_task_failures", "Failed tasks by error code", labels=["code"])
        for code, count in sorted(self.ctx.store.failure_codes().items()):
            failures.add_metric([code], count)
        yield failures
        alive_after = utcnow() - timedelta(seconds=self.ctx.settings.heartbeat_timeout_seconds)
        workers = self.ctx.store.workers(alive_after)
        gauge = GaugeMetricFamily("media_cleaner_workers", "Worker processes", labels=["state"])
        gauge.add_metric(["configured"], self.ctx.configured_workers)
        gauge.add_metric(["alive"], workers["alive"])
        gauge.add_metric(["busy"], workers["busy"])
        yield gauge
        durations = self.ctx.store.completed_durations()
        buckets, running = [], 0
        for bound in DURATION_BUCKETS:
            running = sum(1 for d in durations if d <= bound)
            buckets.append((str(float(bound)), running))
        buckets.append(("+Inf", len(durations)))
        yield HistogramMetricFamily(
            "media_cleaner_task_processing_seconds",
            "Processing time of the most recent 1000 completed tasks",
            buckets=buckets,
            sum_value=sum(durations),
        )
        usage = self.ctx.storage.usage()
        disk = GaugeMetricFamily("media_cleaner_storage_bytes", "Bytes per storage area", labels=["area"])
        for key, value in usage.items():
            disk.add_metric([key.removesuffix("_bytes")], value)
        yield disk


class Metrics:
    def __init__(self, ctx: AppContext) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_QueueCollector(ctx))
        self.requests = Counter(
            "media_cleaner_http_requests", "HTTP requests", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "media_cleaner_http_request_seconds", "HTTP request latency", ["route"], registry=self.registry
        )
        self.upload_bytes = Counter("media_cleaner_upload_bytes", "Bytes accepted by /upload", registry=self.registry)
        self.uploads = Counter("media_cleaner_uploads", "Upload outcomes", ["outcome"], registry=self.registry)

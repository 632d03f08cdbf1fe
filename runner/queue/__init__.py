"""The SQLite job queue: durable, prioritized, leased, shared by threads and processes on one database file."""

from __future__ import annotations

from runner.queue.agents import AgentQueries
from runner.queue.artifacts import ArtifactFile, ArtifactQueries, ArtifactRecord
from runner.queue.base import BUSY_TIMEOUT, CACHE_KIB
from runner.queue.caches import CacheResultQueries
from runner.queue.cluster import ClusterQueries, StatusChange
from runner.queue.deliveries import DELIVERY_MEMORY, PRUNE_EVERY, Delivery, DeliveryQueries, NewDelivery
from runner.queue.index import IndexQueries
from runner.queue.jobs import JobQueries, Order
from runner.queue.labels import AgentInfo, LabelQueries
from runner.queue.metrics import MetricQueries
from runner.queue.outbox import Notification, OutboxQueries
from runner.queue.pipelines import JobSummary, PipelineStats, PlannedJobRow, Settlement
from runner.queue.schedules import Fired, ScheduleQueries, ScheduleRow
from runner.queue.quotas import QuotaQueries, QuotaUse
from runner.queue.schema import MIGRATIONS
from runner.queue.usage import UsageQueries, UsageRow

__all__ = [
    "AgentInfo", "ArtifactFile", "ArtifactRecord", "BUSY_TIMEOUT", "CACHE_KIB", "DELIVERY_MEMORY", "MIGRATIONS",
    "PRUNE_EVERY", "Delivery", "Fired", "JobSummary", "NewDelivery", "Notification", "Order", "PipelineStats", "PlannedJobRow",
    "Queue", "QuotaUse", "ScheduleRow", "Settlement", "StatusChange", "UsageRow",
]


class Queue(LabelQueries, QuotaQueries, JobQueries, DeliveryQueries, IndexQueries, MetricQueries, ArtifactQueries,
            OutboxQueries, ScheduleQueries, CacheResultQueries, UsageQueries, AgentQueries, ClusterQueries):
    """The job queue on one SQLite file; safe to share between threads, and between processes via the file.

    One object on one connection (runner.queue.base): each base class holds the SQL and the methods of its
    tables (schema.py has their DDL), so callers keep a single `queue` whatever part of the schema they use.
    """

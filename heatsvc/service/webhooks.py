"""Webhook sinks: zone events (MODEL.md section 13) POSTed as JSON to a configured URL.

Each sink follows its views through a zone-event topic of its own and reads it like any stream
subscriber: from a bounded queue, so an endpoint that is slow or down never holds up the service
(what it misses is counted as dropped). Every body is signed: X-Heatsvc-Signature carries
"sha256=" and the hex HMAC-SHA256 of the exact body bytes under the webhook's secret.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging

import httpx
from google.protobuf import json_format

from .. import metrics
from ..config import WebhookConfig
from ..v1 import heatmap_service_pb2 as pb
from .errors import RequestError
from .streams import EventsTopic
from .views import EventOpts, ZoneOpts

log = logging.getLogger("heatsvc.webhooks")
SIGNATURE_HEADER = "X-Heatsvc-Signature"
TIMEOUT_S = 10.0
START_RETRY_S = 2.0   # until the views' data is loaded


def signature(secret: bytes, body: bytes) -> str:
    """The signature header's value: how a receiver checks a body came from this service unchanged."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class WebhookSink:
    """One configured webhook: its topic, its subscription, and the task that delivers."""

    def __init__(self, service, hook: WebhookConfig, client: httpx.AsyncClient | None = None):
        self.service, self.hook = service, hook
        self.keys = self._keys()
        self.client = client or httpx.AsyncClient(timeout=TIMEOUT_S)
        self.topic: EventsTopic | None = None
        self.task: asyncio.Task | None = None
        self.delivered = 0

    def _keys(self) -> tuple:
        """The hook's views, checked against what the service serves (a bad one stops the start)."""
        keys = []
        for market in self.hook.markets:
            for lookback in self.hook.lookbacks:
                try:
                    keys.append(self.service.catalogue.view(pb.View(market=market, lookback=lookback)))
                except RequestError as exc:
                    raise ValueError(f"config: {self.hook.name}: {exc.status().details}") from None
        return tuple(keys)

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"webhook {self.hook.name}")

    async def stop(self) -> None:
        if self.topic is not None:
            self.topic.stop()
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        await self.client.aclose()

    async def _run(self) -> None:
        topic = EventsTopic(self.service, self.keys, ZoneOpts(), EventOpts(self.hook.near_pct, frozenset(self.hook.kinds)),
                            self.service.config.limits.queue_depth)
        while True:   # the first state needs the views' data
            try:
                await topic.start()
                break
            except RequestError:
                await asyncio.sleep(START_RETRY_S)
        self.topic = topic
        self.service.topics[("webhook", self.hook.name)] = topic
        sub = topic.subscribe()   # a webhook is told changes only: no snapshot first
        while (data := await sub.next(topic)) is not None:
            msg = pb.StreamZoneEventsResponse.FromString(data)
            if msg.gap_skipped:
                metrics.WEBHOOK_DELIVERIES.labels(self.hook.name, "dropped").inc(msg.skipped_updates)
                log.warning("%s: %d event messages dropped while %s was slow", self.hook.name,
                            msg.skipped_updates, self.hook.url)
            if msg.events:
                await self._post(msg)

    async def _post(self, msg: pb.StreamZoneEventsResponse) -> None:
        """POST one message, retrying connection errors, timeouts, 408, 429 and 5xx with doubling backoff."""
        payload = json_format.MessageToDict(msg, preserving_proto_field_name=True)
        payload.pop("kind", None)
        body = json.dumps(payload, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: signature(self.hook.secret, body)}
        delay = self.hook.backoff_s
        for attempt in range(self.hook.retries + 1):
            try:
                response = await self.client.post(self.hook.url, content=body, headers=headers)
                if response.is_success:
                    self.delivered += 1
                    metrics.WEBHOOK_DELIVERIES.labels(self.hook.name, "ok").inc()
                    return
                retry = response.status_code in (408, 429) or response.status_code >= 500
                why = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                retry, why = True, f"{type(exc).__name__}: {exc}"
            metrics.WEBHOOK_ATTEMPT_ERRORS.labels(self.hook.name).inc()
            if not retry or attempt == self.hook.retries:
                break
            log.info("%s: %s; retrying in %.1f s", self.hook.name, why, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 300.0)
        metrics.WEBHOOK_DELIVERIES.labels(self.hook.name, "failed").inc()
        log.warning("%s: giving up on a message of %d events to %s: %s", self.hook.name, len(msg.events),
                    self.hook.url, why)

"""Connecting to NATS as [nats] says (token or credentials file, TLS), reconnecting for ever, and
setting up the stream that keeps each subject's latest message. nats-py is imported here only, so
the single process never needs it."""
from __future__ import annotations

import asyncio
import logging
import ssl

from . import subjects

log = logging.getLogger("heatsvc.cluster")
RECONNECT_WAIT_S = 0.5
CONNECT_TIMEOUT_S = 2


def tls_context(nats) -> ssl.SSLContext | None:
    """The client TLS context of [nats]: its CA (else the system's), its client certificate if any."""
    if not (nats.url.startswith("tls://") or nats.tls_ca or nats.tls_cert):
        return None
    context = ssl.create_default_context(cafile=nats.tls_ca)
    if nats.tls_cert:
        context.load_cert_chain(nats.tls_cert, nats.tls_key)
    return context


async def connect(nats, name: str, *, on_disconnect=None, on_reconnect=None):
    """A connected nats-py client. The first connection is retried until it works (the server may
    start after us); later drops reconnect for ever, calling on_disconnect/on_reconnect."""
    import nats as nats_py

    async def error(exc):
        log.debug("%s: NATS: %s", name, exc)

    async def disconnected():
        log.warning("%s: lost NATS at %s; reconnecting", name, nats.url)
        if on_disconnect is not None:
            await on_disconnect()

    async def reconnected():
        log.warning("%s: NATS reconnected", name)
        if on_reconnect is not None:
            await on_reconnect()

    options = dict(servers=[nats.url], name=name, error_cb=error, disconnected_cb=disconnected,
                   reconnected_cb=reconnected, max_reconnect_attempts=-1, reconnect_time_wait=RECONNECT_WAIT_S,
                   connect_timeout=CONNECT_TIMEOUT_S, ping_interval=5, max_outstanding_pings=2,
                   tls=tls_context(nats), token=nats.token, user_credentials=nats.credentials)
    warned = False
    while True:
        try:
            return await nats_py.connect(**options)
        except Exception as exc:  # no server yet (or refused): keep trying, say so once
            if not warned:
                log.warning("%s: cannot reach NATS at %s (%s); retrying", name, nats.url, exc)
                warned = True
            await asyncio.sleep(RECONNECT_WAIT_S)


async def ensure_stream(js) -> None:
    """Create the stream, or bring an existing one to this configuration: every heatsvc.v1 subject,
    only the latest message of each, on disk (a restarted nats-server still has the state)."""
    from nats.js.api import DiscardPolicy, StorageType, StreamConfig
    from nats.js.errors import NotFoundError

    config = StreamConfig(name=subjects.STREAM, subjects=[f"{subjects.PREFIX}.>"], max_msgs_per_subject=1,
                          storage=StorageType.FILE, discard=DiscardPolicy.OLD, num_replicas=1,
                          allow_direct=True)
    try:
        info = await js.stream_info(subjects.STREAM)
    except NotFoundError:
        await js.add_stream(config)
        return
    if info.config.max_msgs_per_subject != 1 or info.config.subjects != config.subjects:
        await js.update_stream(config)

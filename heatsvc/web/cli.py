"""`heatsvc web`: serve the live heatmap page for a heatsvc.v1 service.

    heatsvc web --target 127.0.0.1:50051 --listen 127.0.0.1:8080

The gateway holds one upstream stream per distinct view in use, however many browsers watch it.
Loopback by default. When the service needs a token (HEATSVC_TOKEN, --token-file), the gateway sends
it upstream and asks browsers for the same token once (a login form, then a session cookie).
"""
from __future__ import annotations

import argparse
import asyncio
import logging

DEFAULT_LISTEN = "127.0.0.1:8080"


def add_arguments(command: str, parser: argparse.ArgumentParser) -> None:
    from ..client import add_connection_arguments

    parser.add_argument("--target", default="127.0.0.1:50051", help="heatsvc.v1 server HOST:PORT (default %(default)s)")
    parser.add_argument("--listen", default=DEFAULT_LISTEN,
                        help="HOST:PORT for the page (default %(default)s; anything but loopback exposes it)")
    add_connection_arguments(parser, note="upstream: ")


def credentials(args):
    """TLS channel credentials for the upstream when --tls/--tls-ca/--tls-cert are given, else None."""
    import grpc

    from ..client import _read

    if not (args.tls or args.tls_ca or args.tls_cert or args.tls_key):
        return None
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("--tls-cert and --tls-key go together (mutual TLS needs both)")
    ca, cert, key = (_read(p, f) if p else None for p, f in ((args.tls_ca, "--tls-ca"), (args.tls_cert, "--tls-cert"),
                                                              (args.tls_key, "--tls-key")))
    return grpc.ssl_channel_credentials(ca, key, cert)


def run(command: str, args: argparse.Namespace) -> int:
    import asyncio

    from ..client import token
    from ..config import address
    from ..service.auth import is_loopback
    from .gateway import uvicorn_server

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    address(args.listen, "--listen")
    secret = token(args)
    if not is_loopback(args.listen):
        logging.getLogger("heatsvc.web").warning(
            "UNSAFE: the page at %s is reachable from other machines%s", args.listen,
            "" if secret else " without a token")
    server = uvicorn_server(args.target, args.listen, secret, credentials(args))
    print(f"heatsvc: web page at http://{args.listen} for {args.target}"
          f"{' (token required)' if secret else ''}", flush=True)
    asyncio.run(server.serve())
    return 0


class Embedded:
    """The gateway inside `heatsvc serve --web`, on the server's own event loop."""

    def __init__(self, server, task):
        self.server, self.task = server, task

    async def stop(self) -> None:
        self.server.should_exit = True
        try:
            await asyncio.wait_for(self.task, 5)
        except (asyncio.TimeoutError, asyncio.CancelledError, Exception):
            self.task.cancel()


async def start_embedded(config, port: int, listen: str) -> Embedded:
    """Start the gateway for the server just started on `port` (the server's loopback address), with
    its token when it has any (HEATSVC_AUTH_TOKEN first): browsers must then give the same token."""
    from ..config import address
    from ..service.auth import is_loopback, load_tokens
    from .gateway import uvicorn_server

    address(listen, "--web")
    tokens = load_tokens(config)
    secret = tokens.get("HEATSVC_AUTH_TOKEN") or next(iter(tokens.values()), None)
    host = config.listen.rpartition(":")[0].strip("[]")
    host = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    server = uvicorn_server(target, listen, secret, embedded=True)
    task = asyncio.create_task(server.serve(), name="heatsvc web")
    while not server.started and not task.done():
        await asyncio.sleep(0.05)
    if task.done():
        task.result()   # raises what stopped it (e.g. the port is taken)
        raise ValueError(f"--web {listen}: the web page could not start")
    if not is_loopback(listen):
        logging.getLogger("heatsvc.web").warning("UNSAFE: the page at %s is reachable from other machines", listen)
    print(f"heatsvc: web page at http://{listen}{' (token required)' if secret else ''}", flush=True)
    return Embedded(server, task)

"""Who may call the service: TLS (optionally mutual) on the gRPC port, bearer tokens checked by an
interceptor on every RPC except health checks, and a warning for a port exposed without them.

Tokens are secrets: no message or log line here ever contains one (errors name a line number).
"""
from __future__ import annotations

import contextvars
import hashlib
import hmac
import ipaddress
import logging
import re
import ssl
from pathlib import Path

import grpc

log = logging.getLogger("heatsvc.service.auth")
OPEN_PREFIX = "/grpc.health.v1.Health/"     # load balancers and orchestrators probe without a token
ENV_TOKEN_NAME = "HEATSVC_AUTH_TOKEN"      # the name of the token given in that variable
TOKEN_HELP = "printable ASCII without spaces or ':', e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'"
_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
_TOKEN = re.compile(r"[\x21-\x7e]+")

# the name of the token of the current call, set by TokenInterceptor for the handler (None: no tokens configured)
caller: contextvars.ContextVar[str | None] = contextvars.ContextVar("heatsvc_caller", default=None)


# ---- tokens ------------------------------------------------------------------------------------

def parse_tokens(text: str, where: str) -> dict[str, str]:
    """{name: token} from lines `TOKEN` or `NAME:TOKEN` (`#` comments and blank lines skipped); an
    unnamed token is called "line N". Errors give the line number, never the line: it is a secret."""
    tokens: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, token = line.partition(":")
        if not sep:
            name, token = "", name
        if sep and not _NAME.fullmatch(name) or not _TOKEN.fullmatch(token) or ":" in token:
            raise ValueError(f"{where} line {number}: expected TOKEN or NAME:TOKEN (NAME: letters, digits, "
                             f"_ . @ -, at most 64; TOKEN: {TOKEN_HELP})")
        name = name or f"line {number}"
        if name in tokens:
            raise ValueError(f"{where} line {number}: the name {name!r} is already used on line {first_line[name]}")
        for other, secret in tokens.items():
            if hmac.compare_digest(secret, token):
                raise ValueError(f"{where} line {number}: the same token as line {first_line[other]}")
        tokens[name], first_line[name] = token, number
    if not tokens:
        raise ValueError(f"{where}: no token in the file (one per line: TOKEN or NAME:TOKEN)")
    return tokens


def read_tokens(path: str, where: str) -> dict[str, str]:
    """parse_tokens() of a file; ValueError says which file and why it cannot be used."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"{where}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{where}: not UTF-8 text") from None
    return parse_tokens(text, where)


def load_tokens(config) -> dict[str, str]:
    """The accepted tokens: the token file's ([server] token_file / HEATSVC_TOKEN_FILE) and
    HEATSVC_AUTH_TOKEN's (named "HEATSVC_AUTH_TOKEN"). Empty: the service is open."""
    tokens = {}
    if config.token_file:
        where = f"config: [server] token_file {config.token_file}"
        tokens = read_tokens(config.token_file, where)
        try:
            if Path(config.token_file).stat().st_mode & 0o004:
                log.warning("%s is readable by every user of this machine; chmod 600 it", where)
        except OSError:
            pass
    if config.auth_token:
        if not _TOKEN.fullmatch(config.auth_token):
            raise ValueError(f"{ENV_TOKEN_NAME}: a token is printable ASCII without spaces")
        tokens[ENV_TOKEN_NAME] = config.auth_token
    return tokens


def bearer(metadata) -> str | None:
    """The token of an `authorization: Bearer TOKEN` entry; "" for another scheme, None if absent."""
    for key, value in metadata or ():
        if key == "authorization":
            scheme, _, token = str(value).strip().partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return None


class Tokens:
    """The accepted bearer tokens. A presented token is compared with every one in constant time
    (SHA-256 digests of equal length, no early exit), so timing tells nothing about any token."""

    def __init__(self, tokens: dict[str, str]):
        self._digests = [(name, hashlib.sha256(token.encode()).digest()) for name, token in tokens.items()]

    def __len__(self) -> int:
        return len(self._digests)

    def name_of(self, token: str) -> str | None:
        digest = hashlib.sha256(token.encode()).digest()
        found = None
        for name, known in self._digests:
            if hmac.compare_digest(digest, known) and found is None:
                found = name
        return found


_HANDLERS = {(False, False): grpc.unary_unary_rpc_method_handler, (False, True): grpc.unary_stream_rpc_method_handler,
             (True, False): grpc.stream_unary_rpc_method_handler, (True, True): grpc.stream_stream_rpc_method_handler}


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Every RPC but health needs a known bearer token: others get UNAUTHENTICATED before any
    handler runs (the request is not even parsed). Sets `caller` to the token's name."""

    def __init__(self, tokens: Tokens):
        self.tokens = tokens

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_PREFIX):
            return handler
        token = bearer(details.invocation_metadata)
        name = self.tokens.name_of(token) if token else None
        if name is not None:
            caller.set(name)   # the handler runs in this context
            return handler
        why = ("no bearer token" if token is None else "not a bearer token" if not token
               else "the bearer token is not valid")
        method = details.method

        async def refuse(request, context):
            log.info("refused %s from %s: %s", method, context.peer(), why)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                f"{why}: send metadata 'authorization: Bearer TOKEN' with a token the server knows")
        return _HANDLERS[handler.request_streaming, handler.response_streaming](refuse)


# ---- TLS ---------------------------------------------------------------------------------------

def _read(path: str, key: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"config: [server] {key} {path}: cannot read: {exc.strerror}") from None


def _check_certificates(data: bytes, path: str, key: str) -> None:
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(cadata=data.decode("ascii"))
    except (ssl.SSLError, ValueError) as exc:
        raise ValueError(f"config: [server] {key} {path}: not a PEM certificate ({exc})") from None


def server_credentials(config) -> grpc.ServerCredentials | None:
    """TLS for the port from [server] tls_cert and tls_key (PEM), mutual when tls_client_ca is set
    (clients must then present a certificate it signed); None: no TLS configured."""
    cert_path, key_path, ca_path = config.tls_cert, config.tls_key, config.tls_client_ca
    if not (cert_path or key_path or ca_path):
        return None
    if not (cert_path and key_path):
        missing = "tls_key" if cert_path else "tls_cert"
        raise ValueError(f"config: [server] {missing} is missing: TLS needs both tls_cert and tls_key "
                         f"(PEM files; env HEATSVC_TLS_CERT, HEATSVC_TLS_KEY)")
    cert, key = _read(cert_path, "tls_cert"), _read(key_path, "tls_key")
    _check_certificates(cert, cert_path, "tls_cert")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert_path, key_path, password=lambda: b"")
    except (ssl.SSLError, OSError) as exc:
        why = "does not match tls_cert" if "KEY_VALUES_MISMATCH" in str(exc) else \
            "not an unencrypted PEM private key"
        raise ValueError(f"config: [server] tls_key {key_path}: {why} ({exc})") from None
    ca = None
    if ca_path:
        ca = _read(ca_path, "tls_client_ca")
        _check_certificates(ca, ca_path, "tls_client_ca")
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)


# ---- exposure ------------------------------------------------------------------------------------

def is_loopback(address: str) -> bool:
    """Whether a listen address (HOST:PORT, [IPv6]:PORT, unix:PATH) is reachable only from this machine."""
    if address.startswith(("unix:", "unix-abstract:")):
        return True
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:   # a host name or "" (every interface): assume reachable
        return False


def exposure_warning(address: str, tls: bool, tokens: bool) -> str | None:
    """What is missing when a non-loopback address is served without TLS or without tokens; else None."""
    if is_loopback(address) or (tls and tokens):
        return None
    missing = []
    if not tls:
        missing.append("TLS (set [server] tls_cert and tls_key): requests, data and tokens travel in clear text")
    if not tokens:
        missing.append("tokens (set [server] token_file or HEATSVC_AUTH_TOKEN): anyone who reaches the port "
                       "can call every RPC")
    return f"serving {address}, reachable from other machines, without " + " and without ".join(missing)

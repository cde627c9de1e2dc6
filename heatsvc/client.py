"""`heatsvc snapshot | zones | watch | alerts`: command-line clients of a heatsvc.v1 server.

What they show is an estimate of where leveraged positions would be liquidated: market-risk
context, never a price forecast.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime, timezone

import grpc
import numpy as np
from google.protobuf import json_format
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .v1 import heatmap_service_pb2 as pb
from .v1 import heatmap_service_pb2_grpc as pb_grpc

DISCLAIMER = "Estimated liquidation levels: market-risk context, not a forecast."
EXIT_CODES = {grpc.StatusCode.INVALID_ARGUMENT: 2, grpc.StatusCode.NOT_FOUND: 3, grpc.StatusCode.UNAVAILABLE: 4,
              grpc.StatusCode.DEADLINE_EXCEEDED: 4, grpc.StatusCode.RESOURCE_EXHAUSTED: 5,
              grpc.StatusCode.UNAUTHENTICATED: 6}
SIDE = {pb.ZONE_SIDE_SHORT: "short", pb.ZONE_SIDE_LONG: "long"}
EVENT_KINDS = [name for name in pb.ZoneEventKind.keys() if name != "ZONE_EVENT_KIND_UNSPECIFIED"]
EVENT_COLOURS = {"ZONE_NEW": "cyan", "ZONE_SWEPT": "bold magenta", "PRICE_NEAR": "yellow",
                 "MAGNET_CHANGED": "bold", "SKEW_FLIPPED": "blue"}
BAR_WIDTH = 16


def add_arguments(command: str, parser: argparse.ArgumentParser) -> None:
    """Options shared by snapshot, zones and watch: where the server is and which view."""
    parser.add_argument("--target", default="127.0.0.1:50051", help="server HOST:PORT (default %(default)s)")
    parser.add_argument("--market", default="binance:BTCUSDT",
                        help="exchange:SYMBOL or all:SYMBOL (default %(default)s)")
    parser.add_argument("--lookback", default="1d", help="lookback name (default %(default)s)")
    parser.add_argument("--rows", type=int, default=0, help="price rows (default: server's, 400)")
    parser.add_argument("--columns", type=int, default=0, help="time columns (default: server's, 288)")
    parser.add_argument("--price-range", nargs=2, type=float, metavar=("LOW", "HIGH"), help="explicit price range")
    parser.add_argument("--profile", default="", metavar="NAME",
                        help="a saved parameter profile (heatsvc compare --save-profile) instead of the server's")
    parser.add_argument("--threshold", type=float, help="zone noise threshold in [0, 1) (default 0.2)")
    parser.add_argument("--top", type=int, default=0, help="zones per side (default 5)")
    add_connection_arguments(parser)
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per call (default %(default)g)")
    if command == "snapshot":
        parser.add_argument("--json", metavar="FILE", help="write the whole view as JSON (grids as lists)")
        parser.add_argument("--boost", type=float, help="display boost in (0, 1] for the intensity grids")
    if command == "zones":
        parser.add_argument("--confluence", nargs="?", const="all", metavar="LOOKBACKS",
                            help="also show where the top zones of several lookbacks overlap: a comma-separated "
                                 "list, or every offered lookback when given alone")
    if command in ("watch", "alerts"):
        parser.add_argument("--count", type=int, default=0, help="stop after this many messages (default: never)")
    if command == "alerts":
        parser.add_argument("--kinds", help="comma-separated event kinds (default: all): "
                                            + ", ".join(k.removeprefix("ZONE_EVENT_KIND_") for k in EVENT_KINDS))
        parser.add_argument("--near-pct", type=float, help="PRICE_NEAR distance in percent (default 1)")


def view(args) -> pb.View:
    msg = pb.View(market=args.market, lookback=args.lookback, rows=max(args.rows, 0), columns=max(args.columns, 0),
                  profile=getattr(args, "profile", ""))
    if args.rows < 0 or args.columns < 0:
        raise ValueError("--rows and --columns must be >= 0")
    if args.price_range:
        msg.price_range.low, msg.price_range.high = args.price_range
    return msg


def zone_options(args) -> pb.ZoneOptions:
    if args.top < 0:
        raise ValueError("--top must be >= 0")
    opts = pb.ZoneOptions(top=args.top)
    if args.threshold is not None:
        opts.threshold = args.threshold
    return opts


def add_connection_arguments(parser: argparse.ArgumentParser, note: str = "") -> None:
    """How to reach a server that wants TLS (maybe mutual) and a bearer token; `note` prefixes the help."""
    parser.add_argument("--tls", action="store_true", help=f"{note}use TLS, trusting the system's CAs")
    parser.add_argument("--tls-ca", metavar="FILE", help=f"{note}use TLS, trusting this CA (PEM)")
    parser.add_argument("--tls-cert", metavar="FILE", help=f"{note}client certificate (PEM) for mutual TLS")
    parser.add_argument("--tls-key", metavar="FILE", help=f"{note}the client certificate's private key (PEM)")
    parser.add_argument("--token-file", metavar="FILE",
                        help=f"{note}file holding the bearer token (TOKEN or NAME:TOKEN)")
    parser.add_argument("--token", help=f"{note}bearer token (default: $HEATSVC_TOKEN, else $HEATSVC_AUTH_TOKEN); "
                                        "prefer those or --token-file: other users can see a command line")


def _read(path: str, flag: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ValueError(f"{flag} {path}: cannot read: {exc.strerror}") from None


def connect(args) -> grpc.Channel:
    """A channel to args.target: plaintext, or TLS with --tls/--tls-ca (mutual with --tls-cert and --tls-key)."""
    options = [("grpc.max_receive_message_length", -1)]
    if not (args.tls or args.tls_ca or args.tls_cert or args.tls_key):
        return grpc.insecure_channel(args.target, options=options)
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("--tls-cert and --tls-key go together (mutual TLS needs both)")
    ca, cert, key = (_read(path, flag) if path else None
                     for path, flag in ((args.tls_ca, "--tls-ca"), (args.tls_cert, "--tls-cert"),
                                        (args.tls_key, "--tls-key")))
    return grpc.secure_channel(args.target, grpc.ssl_channel_credentials(ca, key, cert), options=options)


def token(args) -> str | None:
    """The bearer token: --token, else --token-file's, else $HEATSVC_TOKEN or $HEATSVC_AUTH_TOKEN."""
    if args.token is not None:
        return args.token or None
    if args.token_file:
        from .service.auth import read_tokens

        tokens = read_tokens(args.token_file, f"--token-file {args.token_file}")
        if len(tokens) != 1:
            raise ValueError(f"--token-file {args.token_file}: holds {len(tokens)} tokens; give a file with one")
        return next(iter(tokens.values()))
    return os.environ.get("HEATSVC_TOKEN") or os.environ.get("HEATSVC_AUTH_TOKEN") or None


def metadata(args) -> list[tuple[str, str]]:
    secret = token(args)
    return [("authorization", f"Bearer {secret}")] if secret else []


def describe_error(command: str, error: grpc.RpcError, target: str) -> str:
    """The status code, message and every field violation, in words."""
    from .service.errors import field_violations

    code = error.code()
    violations = field_violations(error)
    if violations:  # the message repeats them; one line per field reads better
        lines = [f"heatsvc {command}: error: {code.name}: the request has {len(violations)} bad field(s)"]
        lines += [f"  {field}: {why}" for field, why in violations]
    else:
        lines = [f"heatsvc {command}: error: {code.name}: {error.details()}"]
    details = (error.details() or "").lower()
    if code == grpc.StatusCode.UNAVAILABLE and "connect" in details:
        lines.append(f"  is a server running at {target}? (heatsvc serve --demo)")
        if "socket closed" in details or "handshake" in details:
            lines.append("  if it uses TLS: --tls-ca FILE (or --tls); mutual TLS also needs --tls-cert and --tls-key")
    return "\n".join(lines)


def iso(ts) -> str:
    return datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def money(x: float) -> str:
    """Notional in a few characters: 1.23M, 845.00k, 12.5."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= size:
            return f"{x / size:,.2f}{unit}"
    return f"{x:.3g}"


def price_text(x: float) -> str:
    return f"{x:,.0f}" if x >= 10_000 else f"{x:,.2f}" if x >= 100 else f"{x:,.4f}" if x >= 1 else f"{x:.6g}"


def grid_array(g: pb.Grid) -> np.ndarray:
    """A heatsvc.v1.Grid as a rows x columns float32 array (row 0 = lowest price)."""
    return np.frombuffer(g.data, dtype="<f4").reshape(g.rows, g.columns)


def zone_table(report: pb.ZoneReport, title: str = "") -> Group:
    """Zones above (shorts) and below (longs) the price, bars proportional to notional; skew, magnet."""
    table = Table(title=title or f"{report.market} {report.lookback} zones", title_justify="left", expand=False)
    for name, justify in (("#", "right"), ("side", "left"), ("price range", "right"), ("peak", "right"),
                          ("dist %", "right"), ("notional", "right")):
        table.add_column(name, justify=justify)
    table.add_column("strength", no_wrap=True, min_width=BAR_WIDTH)
    zones = list(report.above) + list(report.below)
    biggest = max((z.notional for z in zones), default=0.0)

    def row(rank: int, z: pb.Zone) -> None:
        width = int(round(BAR_WIDTH * z.notional / biggest)) if biggest > 0 else 0
        colour = "green" if z.side == pb.ZONE_SIDE_SHORT else "red"
        table.add_row(str(rank), Text(SIDE[z.side], colour), f"{price_text(z.price_low)}-{price_text(z.price_high)}",
                      price_text(z.peak_price), f"{z.distance_pct:+.2f}", money(z.notional),
                      Text("█" * max(width, 1), colour))

    for rank, z in sorted(enumerate(report.above, 1), key=lambda t: -t[1].peak_price):
        row(rank, z)
    table.add_section()
    table.add_row("", Text("price", "bold"), "", Text(price_text(report.price), "bold"), "", "", "")
    table.add_section()
    for rank, z in sorted(enumerate(report.below, 1), key=lambda t: -t[1].peak_price):
        row(rank, z)
    label = pb.SkewLabel.Name(report.skew_label).removeprefix("SKEW_LABEL_")
    lines = [f"skew {report.skew:+.2f} {label}   kept above {money(report.total_above)}   "
             f"kept below {money(report.total_below)}   data {iso(report.data_time)}"]
    if report.HasField("magnet"):
        m = report.magnet
        lines.append(f"magnet: {SIDE[m.side]} zone at {price_text(m.peak_price)} ({m.distance_pct:+.2f}%), "
                     f"{money(m.notional)}")
    else:
        lines.append("magnet: none (no zone passes the threshold)")
    lines.append(DISCLAIMER)
    return Group(table, *(Text(line) for line in lines))


def snapshot_summary(resp: pb.GetHeatmapResponse) -> str:
    h, z = resp.heatmap, resp.zones
    long, short = grid_array(h.long_notional), grid_array(h.short_notional)
    edges = h.price_edges
    lines = [
        f"{h.market} {h.lookback}: {h.long_notional.rows} rows x {h.long_notional.columns} columns ({h.bars_per_column} bars each), "
        f"markets {', '.join(h.markets)}",
        f"window {iso(h.column_times[0])} .. data {iso(h.data_time)}",
        f"price range {price_text(edges[0])} .. {price_text(edges[-1])}, current price {price_text(z.price)}",
        f"newest column: long {money(float(long[:, -1].sum()))}, short {money(float(short[:, -1].sum()))} "
        f"(off range: long {money(h.off_range_long[-1])}, short {money(h.off_range_short[-1])})",
        f"estimated liquidations over the window: long {money(sum(h.swept_long))}, short {money(sum(h.swept_short))}",
        "tiers: " + ", ".join(f"{t.leverage:g}x w{t.weight:g} m{t.maintenance_margin:g} "
                                f"h{t.half_life_days:g}d" for t in h.parameters.tiers),
        f"zones: {len(z.above)} above, {len(z.below)} below; skew {z.skew:+.2f} "
        f"{pb.SkewLabel.Name(z.skew_label).removeprefix('SKEW_LABEL_')}",
    ]
    if z.HasField("magnet"):
        lines.append(f"magnet {SIDE[z.magnet.side]} {price_text(z.magnet.peak_price)} "
                     f"({z.magnet.distance_pct:+.2f}%) {money(z.magnet.notional)}")
    lines.append(DISCLAIMER)
    return "\n".join(lines)


def snapshot_json(resp: pb.GetHeatmapResponse) -> dict:
    """The response as JSON-ready data, grids decoded into nested lists (row 0 = lowest price)."""
    out = json_format.MessageToDict(resp, preserving_proto_field_name=True)
    heat = out["heatmap"]
    for name in ("long_notional", "short_notional", "long_intensity", "short_intensity"):
        if resp.heatmap.HasField(name):
            heat[name] = grid_array(getattr(resp.heatmap, name)).tolist()
    for tier, msg in zip(heat.get("tiers", []), resp.heatmap.tiers):
        tier["long_notional"] = grid_array(msg.long_notional).tolist()
        tier["short_notional"] = grid_array(msg.short_notional).tolist()
    out["disclaimer"] = DISCLAIMER
    return out


def run(command: str, args: argparse.Namespace) -> int:
    console = Console()
    with connect(args) as channel:
        stub = pb_grpc.HeatmapServiceStub(channel)
        try:
            if command == "snapshot":
                request = pb.GetHeatmapRequest(view=view(args), zone_options=zone_options(args),
                                               include_candles=bool(args.json), include_intensity=bool(args.json))
                if args.boost is not None:
                    request.boost = args.boost
                resp = stub.GetHeatmap(request, timeout=args.timeout, metadata=metadata(args))
                if args.json:
                    with open(args.json, "w", encoding="utf-8") as f:
                        json.dump(snapshot_json(resp), f, allow_nan=True)
                    print(f"wrote {args.json}")
                print(snapshot_summary(resp))
            elif command == "zones":
                request = pb.GetZonesRequest(view=view(args), zone_options=zone_options(args))
                if args.confluence:
                    request.confluence_lookbacks.extend(args.confluence.split(","))
                resp = stub.GetZones(request, timeout=args.timeout, metadata=metadata(args))
                console.print(zone_table(resp.zones))
                if args.confluence:
                    console.print(confluence_table(resp.confluence, resp.zones))
            elif command == "alerts":
                return alerts(stub, args, console)
            else:
                return watch(stub, args, console)
        except grpc.RpcError as error:
            print(describe_error(command, error, args.target), file=sys.stderr)
            return EXIT_CODES.get(error.code(), 1)
    return 0


def follow(stream, args, show) -> int:
    """Hand each message of a server stream to show(msg) until --count messages, Ctrl-C or the server's end."""
    seen = 0
    try:
        for msg in stream:
            seen += 1
            show(msg)
            if args.count and seen >= args.count:
                stream.cancel()
                return 0
    except KeyboardInterrupt:
        stream.cancel()
        return 0
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.CANCELLED and args.count and seen >= args.count:
            return 0
        raise
    print("server ended the stream", file=sys.stderr)
    return 0


def watch(stub, args, console: Console) -> int:
    """Follow a view's zone reports, redrawing the table on every update, until Ctrl-C or the server ends."""
    request = pb.StreamHeatmapRequest(view=view(args), zone_options=zone_options(args), zones_only=True)
    with Live(Text(f"waiting for {args.market} ..."), console=console, auto_refresh=False) as live:
        def show(msg):
            kind = pb.UpdateKind.Name(msg.kind).removeprefix("UPDATE_KIND_").lower()
            note = f" (skipped {msg.skipped_updates} updates)" if msg.gap_skipped else ""
            title = f"{msg.zones.market} {msg.zones.lookback} zones - update #{msg.sequence} {kind}{note}"
            live.update(zone_table(msg.zones, title), refresh=True)
        return follow(stub.StreamHeatmap(request, metadata=metadata(args)), args, show)


def confluence_table(levels, report: pb.ZoneReport) -> Group:
    """MODEL.md section 14: where the top zones of several lookbacks overlap, strongest first."""
    table = Table(title=f"{report.market} confluence", title_justify="left", expand=False)
    for name, justify in (("side", "left"), ("price range", "right"), ("dist %", "right"), ("lookbacks", "left"),
                          ("score", "right"), ("notional", "right")):
        table.add_column(name, justify=justify)
    for v in levels:
        colour = "green" if v.side == pb.ZONE_SIDE_SHORT else "red"
        near = v.price_low if v.side == pb.ZONE_SIDE_SHORT else v.price_high
        table.add_row(Text(SIDE[v.side], colour), f"{price_text(v.price_low)}-{price_text(v.price_high)}",
                      f"{100 * (near - report.price) / report.price:+.2f}", ", ".join(v.lookbacks), str(v.score),
                      money(v.notional))
    note = "no level where two or more lookbacks agree" if not levels else DISCLAIMER
    return Group(table, Text(note))


def event_line(e: pb.ZoneEvent) -> Text:
    """One zone event in one line, coloured by kind."""
    kind = pb.ZoneEventKind.Name(e.kind).removeprefix("ZONE_EVENT_KIND_")
    z = e.zone
    where = (f"{SIDE[z.side]} zone {price_text(z.price_low)}-{price_text(z.price_high)} peak {price_text(z.peak_price)}"
             f" {money(z.notional)}") if e.HasField("zone") else "no zone"
    detail = {
        "ZONE_NEW": where,
        "ZONE_SWEPT": f"{where} traded through",
        "PRICE_NEAR": f"{e.distance_pct:.2f}% from {where}",
        "MAGNET_CHANGED": f"magnet now {where}" + (f" (was {SIDE[e.previous_zone.side]} "
                                                   f"{price_text(e.previous_zone.peak_price)})"
                                                   if e.HasField("previous_zone") else ""),
        "SKEW_FLIPPED": f"skew {pb.SkewLabel.Name(e.previous_skew_label).removeprefix('SKEW_LABEL_')} -> "
                        f"{pb.SkewLabel.Name(e.skew_label).removeprefix('SKEW_LABEL_')}",
    }[kind]
    line = Text(f"{iso(e.data_time)}  {e.market} {e.lookback}  ")
    line.append(f"{kind:<14}", EVENT_COLOURS[kind])
    line.append(f"  {detail}   price {price_text(e.price)}")
    return line


def alerts(stub, args, console: Console) -> int:
    """Print zone events as they come, one line each, until Ctrl-C or the server ends the stream."""
    request = pb.StreamZoneEventsRequest(views=[view(args)], zone_options=zone_options(args))
    if args.near_pct is not None:
        request.near_pct = args.near_pct
    for name in filter(None, (args.kinds or "").split(",")):
        full = "ZONE_EVENT_KIND_" + name.strip().upper().removeprefix("ZONE_EVENT_KIND_")
        if full not in EVENT_KINDS:
            raise ValueError(f"--kinds: {name!r} is not a zone event kind; use "
                             + ", ".join(k.removeprefix("ZONE_EVENT_KIND_") for k in EVENT_KINDS))
        request.kinds.append(pb.ZoneEventKind.Value(full))

    def show(msg):
        if msg.kind == pb.UPDATE_KIND_SNAPSHOT:
            note = f" (skipped {msg.skipped_updates} updates)" if msg.gap_skipped else ""
            for r in msg.reports:
                console.print(f"watching {r.zones.market} {r.zones.lookback}: {len(r.zones.above)} zones above, "
                              f"{len(r.zones.below)} below, price {price_text(r.zones.price)}{note}")
        for e in msg.events:
            console.print(event_line(e))

    return follow(stub.StreamZoneEvents(request, metadata=metadata(args)), args, show)

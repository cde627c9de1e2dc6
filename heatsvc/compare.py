"""`heatsvc compare`: a running server's estimate held against the measured liquidation map of a
public-ledger market (CompareMeasured, MODEL.md section 16), printed with its coverage and time;
`--save-profile NAME` keeps the fitted tier weights as a profile any view may use (View.profile).
"""
from __future__ import annotations

import argparse
import json
import math
import sys

import grpc
from google.protobuf import json_format
from rich.console import Console
from rich.table import Table

from . import client
from .v1 import heatmap_service_pb2 as pb
from .v1 import heatmap_service_pb2_grpc as pb_grpc


def add_arguments(command: str, parser: argparse.ArgumentParser) -> None:
    client.add_arguments(command, parser)
    parser.set_defaults(market="hyperliquid:HYPE")
    parser.add_argument("--at", metavar="TIME", help="the measured snapshot at or before this ISO time (default: latest)")
    parser.add_argument("--save-profile", metavar="NAME", help="save the fitted tier weights as this parameter profile")
    parser.add_argument("--json", metavar="FILE", help="also write the whole comparison as JSON")


def pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.0%}"


def report(r: pb.CompareMeasuredResponse) -> Table:
    """The comparison as one table: shape, sides, zones, tiers, and what the measurement covers."""
    t = Table(title=f"{r.market} {r.lookback}: estimate vs measured positions, measured {client.iso(r.measured_time)}, "
                    f"estimate to {client.iso(r.estimate_time)}, price {client.price_text(r.price)}")
    t.add_column("figure")
    t.add_column("estimate", justify="right")
    t.add_column("measured", justify="right")
    t.add_row("cosine similarity (long / short / both)", "", f"{r.cosine_long:.2f} / {r.cosine_short:.2f} / {r.cosine:.2f}")
    t.add_row("short notional above the price", client.money(r.estimated_above), client.money(r.measured_above))
    t.add_row("long notional below the price", client.money(r.estimated_below), client.money(r.measured_below))
    t.add_row("top-zone overlap (long / short)", "", f"{pct(r.zone_overlap_long)} / {pct(r.zone_overlap_short)}")
    t.add_row("measured notional inside estimated zones", "", f"{pct(r.captured_long)} / {pct(r.captured_short)}")
    for tier, fitted in zip(r.tiers, r.fitted.tiers):
        t.add_row(f"tier {tier.leverage:g}x weight (fitted {fitted.weight:.2f})", f"{tier.model_weight:.2f}",
                  "n/a" if math.isnan(tier.measured_weight) else f"{tier.measured_weight:.2f}")
    t.add_row("coverage: measured size / open interest (long / short)", "",
              f"{pct(r.coverage_long)} / {pct(r.coverage_short)}")
    t.add_row("accounts read / known", "", f"{r.accounts_read} / {r.accounts_known}")
    return t


def run(command: str, args: argparse.Namespace) -> int:
    request = pb.CompareMeasuredRequest(view=client.view(args), zone_options=client.zone_options(args),
                                        save_profile=args.save_profile or "")
    if args.at:
        try:
            request.time.FromJsonString(args.at if args.at.endswith("Z") else args.at + "Z")
        except ValueError:
            raise ValueError(f"--at {args.at!r}: give an ISO time such as 2025-10-10T21:00:00Z") from None
    with client.connect(args) as channel:
        try:
            r = pb_grpc.HeatmapServiceStub(channel).CompareMeasured(request, timeout=args.timeout,
                                                                    metadata=client.metadata(args))
        except grpc.RpcError as error:
            print(client.describe_error(command, error, args.target), file=sys.stderr)
            return client.EXIT_CODES.get(error.code(), 1)
    Console().print(report(r))
    if r.saved_profile:
        print(f"saved the fitted tier weights as profile {r.saved_profile!r}: use it with View.profile")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(json_format.MessageToDict(r, preserving_proto_field_name=True), f, indent=1)
        print(f"wrote {args.json}")
    return 0

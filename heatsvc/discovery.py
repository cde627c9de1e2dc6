"""Market discovery: turn an exchange's configured symbol patterns ("*", "*USDT", "1000*") and rank
limit (`top`: the N with the largest 24 h quote volume) into concrete symbols, from the exchange's own
list of trading USDT-margined linear perpetuals. Names without a wildcard are served as written.
Aggregates (`all:SYMBOL`) form by themselves from whatever symbols several exchanges end up serving.
"""
from __future__ import annotations

import fnmatch
import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace

from .config import Config
from .exchanges import ExchangeClient, Listing

log = logging.getLogger("heatsvc.discovery")

WILDCARDS = frozenset("*?[")


def is_pattern(symbol: str) -> bool:
    """True for a symbol written as an fnmatch pattern."""
    return bool(WILDCARDS & set(symbol))


def select(listings: Sequence[Listing], wanted: Sequence[str], top: int | None = None) -> tuple[str, ...]:
    """The listed symbols matching any pattern in `wanted`, ranked by 24 h quote volume (largest first,
    ties by name), cut to `top`; plus the plain names in `wanted`, kept whether listed or not (a
    plain name that is not listed fails loudly at start, as before). Sorted by name."""
    patterns = [w for w in wanted if is_pattern(w)]
    matched = sorted((x for x in listings if any(fnmatch.fnmatchcase(x.symbol, p) for p in patterns)),
                     key=lambda x: (-x.quote_volume if x.quote_volume == x.quote_volume else 0.0, x.symbol))
    chosen = {x.symbol for x in (matched if top is None else matched[:top])}
    return tuple(sorted(chosen | {w for w in wanted if not is_pattern(w)}))


async def discover(config: Config, clients: Mapping[str, ExchangeClient]) -> Config:
    """The configuration with every exchange's patterns replaced by the symbols they select now."""
    exchanges = []
    for ex in config.exchanges:
        if not any(is_pattern(s) for s in ex.symbols) or ex.name not in clients:
            exchanges.append(ex)
            continue
        listings = await clients[ex.name].list_perpetuals()
        symbols = select(listings, ex.symbols, ex.top)
        log.info("%s: %d perpetuals listed, %d selected by %s%s", ex.name, len(listings), len(symbols),
                 ", ".join(ex.symbols), f" (top {ex.top} by 24 h quote volume)" if ex.top else "")
        exchanges.append(replace(ex, symbols=symbols))
    return replace(config, exchanges=tuple(exchanges))

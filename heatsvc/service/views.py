"""Which markets the server serves and what a request asks for: validated, hashable view keys."""
from __future__ import annotations

from dataclasses import dataclass

from ..model.engine import MAX_COLUMNS, MAX_PRICE, MAX_ROWS, MIN_PRICE
from ..model.events import KINDS, NEAR_PCT
from .errors import RequestError, invalid, not_found

DEFAULT_ROWS = 400
DEFAULT_COLUMNS = 288
DEFAULT_THRESHOLD = 0.2
DEFAULT_TOP = 5
MAX_TOP = 100
MAX_NEAR_PCT = 50.0
ECHO_CHARS = 40        # how much of a caller's string an error message quotes (trailers are small)


def quoted(text: str) -> str:
    """repr of a caller's string, shortened: errors travel in trailers the client limits to 16 kB."""
    return repr(text) if len(text) <= ECHO_CHARS else f"{text[:ECHO_CHARS]!r}... ({len(text)} characters)"


@dataclass(frozen=True)
class ViewKey:
    """One distinct view: what the engine computes once per data version and the cache keys on."""
    market: str
    components: tuple[str, ...]
    lookback: str
    rows: int
    columns: int
    price_range: tuple[float, float] | None
    per_tier: bool = False
    profile: str = ""       # a named parameter profile; "" the server's parameters

    @property
    def aggregate(self) -> bool:
        return self.market.startswith("all:")


@dataclass(frozen=True, eq=False)
class ViewState:
    """What a shared stream reads of a view at one moment: `grid` is a new object whenever the grid
    changed, `zones` compares equal while the zone report stays the same. A single process holds the
    Heatmap and the price, an edge (heatsvc.cluster) the published messages' bytes."""
    grid: object
    zones: object

    def same(self, other: ViewState | None) -> bool:
        return other is not None and self.grid is other.grid and self.zones == other.zones


@dataclass(frozen=True)
class ZoneOpts:
    threshold: float = DEFAULT_THRESHOLD
    top: int = DEFAULT_TOP


@dataclass(frozen=True)
class EventOpts:
    """What a zone-event stream tells: the PRICE_NEAR distance and the kinds of event."""
    near_pct: float = NEAR_PCT
    kinds: frozenset[str] = frozenset(KINDS)


@dataclass(frozen=True)
class GridOpts:
    """What a heatmap message includes beyond the notional grids."""
    candles: bool = False
    intensity: bool = False
    boost: float = 1.0
    tiers: bool = False


class Catalogue:
    """The served markets, their aggregates ("all:SYMBOL") and the offered lookbacks."""

    def __init__(self, markets: list[str], lookbacks: tuple[str, ...], max_cells: int, tiers: int):
        self.markets: list[str] = []
        self.exchanges: list[str] = []
        self.aggregates: dict[str, tuple[str, ...]] = {}
        for m in markets:
            self.add(m)
        self.lookbacks = lookbacks
        self.max_cells = max_cells
        self.tiers = tiers
        self.profiles: dict = {}     # name -> ModelParams a view may ask for (View.profile)

    def add(self, market: str) -> str:
        """Serve one more market (a new listing); returns its aggregate's name."""
        exchange, _, symbol = market.partition(":")
        self.markets.append(market)
        if exchange not in self.exchanges:
            self.exchanges = sorted({*self.exchanges, exchange})
        self.aggregates[f"all:{symbol}"] = self.aggregates.get(f"all:{symbol}", ()) + (market,)
        return f"all:{symbol}"

    def components(self, market: str, field: str = "view.market") -> tuple[str, ...]:
        """The single-exchange markets a view of `market` reads; NOT_FOUND if not served."""
        exchange, sep, symbol = market.partition(":")
        if not sep or not exchange or not symbol:
            raise invalid([(field, f"market {quoted(market)} must be 'exchange:SYMBOL' or 'all:SYMBOL'")])
        if market in self.aggregates:
            return self.aggregates[market]
        if market in self.markets:
            return (market,)
        if exchange != "all" and exchange not in self.exchanges:
            raise not_found(f"exchange {quoted(exchange)} is not served; exchanges: {', '.join(self.exchanges)}")
        served = sorted(self.markets) + sorted(self.aggregates)
        raise not_found(f"market {quoted(market)} is not served; markets: {', '.join(served)}")

    def view(self, msg, field: str = "view", per_tier: bool = False) -> ViewKey:
        """Validate a heatsvc.v1.View; every bad field is named in one INVALID_ARGUMENT."""
        bad: list[tuple[str, str]] = []
        components = self.components(msg.market, f"{field}.market")
        if msg.lookback not in self.lookbacks:
            known = ", ".join(self.lookbacks)
            why = "is required" if not msg.lookback else f"{quoted(msg.lookback)} is not offered"
            bad.append((f"{field}.lookback", f"lookback {why}; use one of {known}"))
        rows = msg.rows or DEFAULT_ROWS
        columns = msg.columns or DEFAULT_COLUMNS
        if rows > MAX_ROWS:
            bad.append((f"{field}.rows", f"rows must be in [1, {MAX_ROWS}], got {rows}"))
        if columns > MAX_COLUMNS:
            bad.append((f"{field}.columns", f"columns must be in [1, {MAX_COLUMNS}], got {columns}"))
        if rows * columns > self.max_cells:
            bad.append((f"{field}.rows", f"rows x columns = {rows} x {columns} = {rows * columns} exceeds "
                                         f"the limit of {self.max_cells} cells"))
        if per_tier and rows * columns * self.tiers > self.max_cells:
            bad.append(("include_tiers", f"per-tier grids need rows x columns x tiers <= {self.max_cells}, got "
                                         f"{rows} x {columns} x {self.tiers} = {rows * columns * self.tiers}"))
        price_range = None
        if msg.HasField("price_range"):
            lo, hi = msg.price_range.low, msg.price_range.high
            if not MIN_PRICE <= lo < hi <= MAX_PRICE:   # NaN fails too
                bad.append((f"{field}.price_range", f"price range must satisfy {MIN_PRICE:g} <= low < high <= "
                                                    f"{MAX_PRICE:g}, got low={lo} high={hi}"))
            else:
                price_range = (lo, hi)
        if msg.profile and msg.profile not in self.profiles:
            known = ", ".join(sorted(self.profiles)) or "none saved yet"
            bad.append((f"{field}.profile", f"profile {quoted(msg.profile)} is not known; profiles: {known}"))
        if bad:
            raise invalid(bad)
        return ViewKey(msg.market, components, msg.lookback, rows, columns, price_range, per_tier, msg.profile)

    def lookback_set(self, names, field: str) -> tuple[str, ...]:
        """Lookbacks to compare for confluence: the offered ones named (at least two), or all for
        none or "all"; INVALID_ARGUMENT names any not offered."""
        names = list(names)
        if not names or names == ["all"]:
            return tuple(self.lookbacks)
        unknown = [quoted(n) for n in names if n not in self.lookbacks]
        if unknown:
            raise invalid([(field, f"lookback(s) {', '.join(unknown)} not offered; use {', '.join(self.lookbacks)}")])
        names = list(dict.fromkeys(names))
        if len(names) < 2:
            raise invalid([(field, f"confluence compares at least two lookbacks, got {len(names)}")])
        return tuple(names)


def zone_opts(msg, field: str = "zone_options") -> ZoneOpts:
    """Validate heatsvc.v1.ZoneOptions (threshold in [0, 1), top <= 100)."""
    bad = []
    threshold = msg.threshold if msg.HasField("threshold") else DEFAULT_THRESHOLD
    if not 0 <= threshold < 1:  # NaN fails too
        bad.append((f"{field}.threshold", f"threshold must be in [0, 1), got {threshold}"))
    top = msg.top or DEFAULT_TOP
    if top > MAX_TOP:
        bad.append((f"{field}.top", f"top must be at most {MAX_TOP}, got {top}"))
    if bad:
        raise invalid(bad)
    return ZoneOpts(threshold, top)


def event_opts(request, kind_names: dict[int, str]) -> EventOpts:
    """Validate a StreamZoneEvents request's near_pct (in (0, 50]) and kinds (known enum values)."""
    bad = []
    near = request.near_pct if request.HasField("near_pct") else NEAR_PCT
    if not 0 < near <= MAX_NEAR_PCT:  # NaN fails too
        bad.append(("near_pct", f"near_pct must be in (0, {MAX_NEAR_PCT:g}], got {near}"))
    unknown = [k for k in request.kinds if k not in kind_names]
    if unknown:
        bad.append(("kinds", f"unknown zone event kind(s) {unknown}; use {', '.join(kind_names.values())}"))
    if bad:
        raise invalid(bad)
    kinds = frozenset(kind_names[k] for k in request.kinds) or frozenset(KINDS)
    return EventOpts(near, kinds)


def grid_opts(request) -> GridOpts:
    """Validate the heatmap extras of a GetHeatmap or StreamHeatmap request (boost in (0, 1])."""
    boost = request.boost if request.HasField("boost") else 1.0
    if not 0 < boost <= 1:
        raise invalid([("boost", f"boost must be in (0, 1], got {boost}")])
    return GridOpts(request.include_candles, request.include_intensity, boost, request.include_tiers)


def check_all(*checks) -> list:
    """Run several validations and raise one INVALID_ARGUMENT naming every bad field of all of them.

    Non-INVALID_ARGUMENT errors (NOT_FOUND) propagate at once.
    """
    results, bad = [], []
    for check in checks:
        try:
            results.append(check())
        except RequestError as exc:
            if not exc.violations:
                raise
            bad += exc.violations
            results.append(None)
    if bad:
        raise invalid(bad)
    return results

import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MarketStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MARKET_STATUS_UNSPECIFIED: _ClassVar[MarketStatus]
    MARKET_STATUS_LOADING: _ClassVar[MarketStatus]
    MARKET_STATUS_OK: _ClassVar[MarketStatus]
    MARKET_STATUS_DEGRADED: _ClassVar[MarketStatus]
    MARKET_STATUS_FAILING: _ClassVar[MarketStatus]

class ZoneSide(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ZONE_SIDE_UNSPECIFIED: _ClassVar[ZoneSide]
    ZONE_SIDE_SHORT: _ClassVar[ZoneSide]
    ZONE_SIDE_LONG: _ClassVar[ZoneSide]

class SkewLabel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SKEW_LABEL_UNSPECIFIED: _ClassVar[SkewLabel]
    SKEW_LABEL_UP: _ClassVar[SkewLabel]
    SKEW_LABEL_DOWN: _ClassVar[SkewLabel]
    SKEW_LABEL_BALANCED: _ClassVar[SkewLabel]

class UpdateKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UPDATE_KIND_UNSPECIFIED: _ClassVar[UpdateKind]
    UPDATE_KIND_SNAPSHOT: _ClassVar[UpdateKind]
    UPDATE_KIND_HEATMAP: _ClassVar[UpdateKind]
    UPDATE_KIND_ZONES: _ClassVar[UpdateKind]
    UPDATE_KIND_LIQUIDATIONS: _ClassVar[UpdateKind]

class ZoneEventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ZONE_EVENT_KIND_UNSPECIFIED: _ClassVar[ZoneEventKind]
    ZONE_EVENT_KIND_ZONE_NEW: _ClassVar[ZoneEventKind]
    ZONE_EVENT_KIND_ZONE_SWEPT: _ClassVar[ZoneEventKind]
    ZONE_EVENT_KIND_PRICE_NEAR: _ClassVar[ZoneEventKind]
    ZONE_EVENT_KIND_MAGNET_CHANGED: _ClassVar[ZoneEventKind]
    ZONE_EVENT_KIND_SKEW_FLIPPED: _ClassVar[ZoneEventKind]

class LiquidationSide(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LIQUIDATION_SIDE_UNSPECIFIED: _ClassVar[LiquidationSide]
    LIQUIDATION_SIDE_LONG: _ClassVar[LiquidationSide]
    LIQUIDATION_SIDE_SHORT: _ClassVar[LiquidationSide]
MARKET_STATUS_UNSPECIFIED: MarketStatus
MARKET_STATUS_LOADING: MarketStatus
MARKET_STATUS_OK: MarketStatus
MARKET_STATUS_DEGRADED: MarketStatus
MARKET_STATUS_FAILING: MarketStatus
ZONE_SIDE_UNSPECIFIED: ZoneSide
ZONE_SIDE_SHORT: ZoneSide
ZONE_SIDE_LONG: ZoneSide
SKEW_LABEL_UNSPECIFIED: SkewLabel
SKEW_LABEL_UP: SkewLabel
SKEW_LABEL_DOWN: SkewLabel
SKEW_LABEL_BALANCED: SkewLabel
UPDATE_KIND_UNSPECIFIED: UpdateKind
UPDATE_KIND_SNAPSHOT: UpdateKind
UPDATE_KIND_HEATMAP: UpdateKind
UPDATE_KIND_ZONES: UpdateKind
UPDATE_KIND_LIQUIDATIONS: UpdateKind
ZONE_EVENT_KIND_UNSPECIFIED: ZoneEventKind
ZONE_EVENT_KIND_ZONE_NEW: ZoneEventKind
ZONE_EVENT_KIND_ZONE_SWEPT: ZoneEventKind
ZONE_EVENT_KIND_PRICE_NEAR: ZoneEventKind
ZONE_EVENT_KIND_MAGNET_CHANGED: ZoneEventKind
ZONE_EVENT_KIND_SKEW_FLIPPED: ZoneEventKind
LIQUIDATION_SIDE_UNSPECIFIED: LiquidationSide
LIQUIDATION_SIDE_LONG: LiquidationSide
LIQUIDATION_SIDE_SHORT: LiquidationSide

class PriceRange(_message.Message):
    __slots__ = ("low", "high")
    LOW_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    low: float
    high: float
    def __init__(self, low: _Optional[float] = ..., high: _Optional[float] = ...) -> None: ...

class View(_message.Message):
    __slots__ = ("market", "lookback", "rows", "columns", "price_range", "profile")
    MARKET_FIELD_NUMBER: _ClassVar[int]
    LOOKBACK_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    PRICE_RANGE_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    market: str
    lookback: str
    rows: int
    columns: int
    price_range: PriceRange
    profile: str
    def __init__(self, market: _Optional[str] = ..., lookback: _Optional[str] = ..., rows: _Optional[int] = ..., columns: _Optional[int] = ..., price_range: _Optional[_Union[PriceRange, _Mapping]] = ..., profile: _Optional[str] = ...) -> None: ...

class ZoneOptions(_message.Message):
    __slots__ = ("threshold", "top")
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    TOP_FIELD_NUMBER: _ClassVar[int]
    threshold: float
    top: int
    def __init__(self, threshold: _Optional[float] = ..., top: _Optional[int] = ...) -> None: ...

class Zone(_message.Message):
    __slots__ = ("side", "price_low", "price_high", "peak_price", "notional", "intensity", "distance_pct", "proximity_weight")
    SIDE_FIELD_NUMBER: _ClassVar[int]
    PRICE_LOW_FIELD_NUMBER: _ClassVar[int]
    PRICE_HIGH_FIELD_NUMBER: _ClassVar[int]
    PEAK_PRICE_FIELD_NUMBER: _ClassVar[int]
    NOTIONAL_FIELD_NUMBER: _ClassVar[int]
    INTENSITY_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_PCT_FIELD_NUMBER: _ClassVar[int]
    PROXIMITY_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    side: ZoneSide
    price_low: float
    price_high: float
    peak_price: float
    notional: float
    intensity: float
    distance_pct: float
    proximity_weight: float
    def __init__(self, side: _Optional[_Union[ZoneSide, str]] = ..., price_low: _Optional[float] = ..., price_high: _Optional[float] = ..., peak_price: _Optional[float] = ..., notional: _Optional[float] = ..., intensity: _Optional[float] = ..., distance_pct: _Optional[float] = ..., proximity_weight: _Optional[float] = ...) -> None: ...

class LiquidationCurve(_message.Message):
    __slots__ = ("price", "notional")
    PRICE_FIELD_NUMBER: _ClassVar[int]
    NOTIONAL_FIELD_NUMBER: _ClassVar[int]
    price: _containers.RepeatedScalarFieldContainer[float]
    notional: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, price: _Optional[_Iterable[float]] = ..., notional: _Optional[_Iterable[float]] = ...) -> None: ...

class ZoneReport(_message.Message):
    __slots__ = ("market", "lookback", "price", "above", "below", "total_above", "total_below", "skew", "skew_label", "magnet", "v_max", "long_curve", "short_curve", "data_time", "threshold", "stale")
    MARKET_FIELD_NUMBER: _ClassVar[int]
    LOOKBACK_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    ABOVE_FIELD_NUMBER: _ClassVar[int]
    BELOW_FIELD_NUMBER: _ClassVar[int]
    TOTAL_ABOVE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BELOW_FIELD_NUMBER: _ClassVar[int]
    SKEW_FIELD_NUMBER: _ClassVar[int]
    SKEW_LABEL_FIELD_NUMBER: _ClassVar[int]
    MAGNET_FIELD_NUMBER: _ClassVar[int]
    V_MAX_FIELD_NUMBER: _ClassVar[int]
    LONG_CURVE_FIELD_NUMBER: _ClassVar[int]
    SHORT_CURVE_FIELD_NUMBER: _ClassVar[int]
    DATA_TIME_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    market: str
    lookback: str
    price: float
    above: _containers.RepeatedCompositeFieldContainer[Zone]
    below: _containers.RepeatedCompositeFieldContainer[Zone]
    total_above: float
    total_below: float
    skew: float
    skew_label: SkewLabel
    magnet: Zone
    v_max: float
    long_curve: LiquidationCurve
    short_curve: LiquidationCurve
    data_time: _timestamp_pb2.Timestamp
    threshold: float
    stale: bool
    def __init__(self, market: _Optional[str] = ..., lookback: _Optional[str] = ..., price: _Optional[float] = ..., above: _Optional[_Iterable[_Union[Zone, _Mapping]]] = ..., below: _Optional[_Iterable[_Union[Zone, _Mapping]]] = ..., total_above: _Optional[float] = ..., total_below: _Optional[float] = ..., skew: _Optional[float] = ..., skew_label: _Optional[_Union[SkewLabel, str]] = ..., magnet: _Optional[_Union[Zone, _Mapping]] = ..., v_max: _Optional[float] = ..., long_curve: _Optional[_Union[LiquidationCurve, _Mapping]] = ..., short_curve: _Optional[_Union[LiquidationCurve, _Mapping]] = ..., data_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., threshold: _Optional[float] = ..., stale: _Optional[bool] = ...) -> None: ...

class Grid(_message.Message):
    __slots__ = ("rows", "columns", "data")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    rows: int
    columns: int
    data: bytes
    def __init__(self, rows: _Optional[int] = ..., columns: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class Tier(_message.Message):
    __slots__ = ("leverage", "weight", "maintenance_margin", "half_life_days")
    LEVERAGE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    MAINTENANCE_MARGIN_FIELD_NUMBER: _ClassVar[int]
    HALF_LIFE_DAYS_FIELD_NUMBER: _ClassVar[int]
    leverage: float
    weight: float
    maintenance_margin: float
    half_life_days: float
    def __init__(self, leverage: _Optional[float] = ..., weight: _Optional[float] = ..., maintenance_margin: _Optional[float] = ..., half_life_days: _Optional[float] = ...) -> None: ...

class ModelParameters(_message.Message):
    __slots__ = ("tiers", "step", "range_margin")
    TIERS_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    RANGE_MARGIN_FIELD_NUMBER: _ClassVar[int]
    tiers: _containers.RepeatedCompositeFieldContainer[Tier]
    step: _duration_pb2.Duration
    range_margin: float
    def __init__(self, tiers: _Optional[_Iterable[_Union[Tier, _Mapping]]] = ..., step: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., range_margin: _Optional[float] = ...) -> None: ...

class Candles(_message.Message):
    __slots__ = ("open", "high", "low", "close")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    LOW_FIELD_NUMBER: _ClassVar[int]
    CLOSE_FIELD_NUMBER: _ClassVar[int]
    open: _containers.RepeatedScalarFieldContainer[float]
    high: _containers.RepeatedScalarFieldContainer[float]
    low: _containers.RepeatedScalarFieldContainer[float]
    close: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, open: _Optional[_Iterable[float]] = ..., high: _Optional[_Iterable[float]] = ..., low: _Optional[_Iterable[float]] = ..., close: _Optional[_Iterable[float]] = ...) -> None: ...

class TierGrids(_message.Message):
    __slots__ = ("tier", "long_notional", "short_notional")
    TIER_FIELD_NUMBER: _ClassVar[int]
    LONG_NOTIONAL_FIELD_NUMBER: _ClassVar[int]
    SHORT_NOTIONAL_FIELD_NUMBER: _ClassVar[int]
    tier: int
    long_notional: Grid
    short_notional: Grid
    def __init__(self, tier: _Optional[int] = ..., long_notional: _Optional[_Union[Grid, _Mapping]] = ..., short_notional: _Optional[_Union[Grid, _Mapping]] = ...) -> None: ...

class Heatmap(_message.Message):
    __slots__ = ("market", "markets", "lookback", "long_notional", "short_notional", "price_edges", "column_times", "bars_per_column", "candles", "swept_long", "swept_short", "off_range_long", "off_range_short", "current_price", "data_time", "parameters", "v_max", "long_intensity", "short_intensity", "tiers", "realised_long", "realised_short", "coverage")
    MARKET_FIELD_NUMBER: _ClassVar[int]
    MARKETS_FIELD_NUMBER: _ClassVar[int]
    LOOKBACK_FIELD_NUMBER: _ClassVar[int]
    LONG_NOTIONAL_FIELD_NUMBER: _ClassVar[int]
    SHORT_NOTIONAL_FIELD_NUMBER: _ClassVar[int]
    PRICE_EDGES_FIELD_NUMBER: _ClassVar[int]
    COLUMN_TIMES_FIELD_NUMBER: _ClassVar[int]
    BARS_PER_COLUMN_FIELD_NUMBER: _ClassVar[int]
    CANDLES_FIELD_NUMBER: _ClassVar[int]
    SWEPT_LONG_FIELD_NUMBER: _ClassVar[int]
    SWEPT_SHORT_FIELD_NUMBER: _ClassVar[int]
    OFF_RANGE_LONG_FIELD_NUMBER: _ClassVar[int]
    OFF_RANGE_SHORT_FIELD_NUMBER: _ClassVar[int]
    CURRENT_PRICE_FIELD_NUMBER: _ClassVar[int]
    DATA_TIME_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    V_MAX_FIELD_NUMBER: _ClassVar[int]
    LONG_INTENSITY_FIELD_NUMBER: _ClassVar[int]
    SHORT_INTENSITY_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    REALISED_LONG_FIELD_NUMBER: _ClassVar[int]
    REALISED_SHORT_FIELD_NUMBER: _ClassVar[int]
    COVERAGE_FIELD_NUMBER: _ClassVar[int]
    market: str
    markets: _containers.RepeatedScalarFieldContainer[str]
    lookback: str
    long_notional: Grid
    short_notional: Grid
    price_edges: _containers.RepeatedScalarFieldContainer[float]
    column_times: _containers.RepeatedCompositeFieldContainer[_timestamp_pb2.Timestamp]
    bars_per_column: int
    candles: Candles
    swept_long: _containers.RepeatedScalarFieldContainer[float]
    swept_short: _containers.RepeatedScalarFieldContainer[float]
    off_range_long: _containers.RepeatedScalarFieldContainer[float]
    off_range_short: _containers.RepeatedScalarFieldContainer[float]
    current_price: float
    data_time: _timestamp_pb2.Timestamp
    parameters: ModelParameters
    v_max: float
    long_intensity: Grid
    short_intensity: Grid
    tiers: _containers.RepeatedCompositeFieldContainer[TierGrids]
    realised_long: _containers.RepeatedScalarFieldContainer[float]
    realised_short: _containers.RepeatedScalarFieldContainer[float]
    coverage: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, market: _Optional[str] = ..., markets: _Optional[_Iterable[str]] = ..., lookback: _Optional[str] = ..., long_notional: _Optional[_Union[Grid, _Mapping]] = ..., short_notional: _Optional[_Union[Grid, _Mapping]] = ..., price_edges: _Optional[_Iterable[float]] = ..., column_times: _Optional[_Iterable[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]]] = ..., bars_per_column: _Optional[int] = ..., candles: _Optional[_Union[Candles, _Mapping]] = ..., swept_long: _Optional[_Iterable[float]] = ..., swept_short: _Optional[_Iterable[float]] = ..., off_range_long: _Optional[_Iterable[float]] = ..., off_range_short: _Optional[_Iterable[float]] = ..., current_price: _Optional[float] = ..., data_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., parameters: _Optional[_Union[ModelParameters, _Mapping]] = ..., v_max: _Optional[float] = ..., long_intensity: _Optional[_Union[Grid, _Mapping]] = ..., short_intensity: _Optional[_Union[Grid, _Mapping]] = ..., tiers: _Optional[_Iterable[_Union[TierGrids, _Mapping]]] = ..., realised_long: _Optional[_Iterable[float]] = ..., realised_short: _Optional[_Iterable[float]] = ..., coverage: _Optional[_Iterable[float]] = ...) -> None: ...

class ListMarketsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class MarketInfo(_message.Message):
    __slots__ = ("market", "exchange", "symbol", "aggregate", "components", "status", "last_bar_time", "lag_seconds", "last_error", "stale")
    MARKET_FIELD_NUMBER: _ClassVar[int]
    EXCHANGE_FIELD_NUMBER: _ClassVar[int]
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    AGGREGATE_FIELD_NUMBER: _ClassVar[int]
    COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LAST_BAR_TIME_FIELD_NUMBER: _ClassVar[int]
    LAG_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    market: str
    exchange: str
    symbol: str
    aggregate: bool
    components: _containers.RepeatedScalarFieldContainer[str]
    status: MarketStatus
    last_bar_time: _timestamp_pb2.Timestamp
    lag_seconds: float
    last_error: str
    stale: bool
    def __init__(self, market: _Optional[str] = ..., exchange: _Optional[str] = ..., symbol: _Optional[str] = ..., aggregate: _Optional[bool] = ..., components: _Optional[_Iterable[str]] = ..., status: _Optional[_Union[MarketStatus, str]] = ..., last_bar_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., lag_seconds: _Optional[float] = ..., last_error: _Optional[str] = ..., stale: _Optional[bool] = ...) -> None: ...

class ListMarketsResponse(_message.Message):
    __slots__ = ("markets", "lookbacks", "max_cells", "parameters", "profiles")
    MARKETS_FIELD_NUMBER: _ClassVar[int]
    LOOKBACKS_FIELD_NUMBER: _ClassVar[int]
    MAX_CELLS_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    PROFILES_FIELD_NUMBER: _ClassVar[int]
    markets: _containers.RepeatedCompositeFieldContainer[MarketInfo]
    lookbacks: _containers.RepeatedScalarFieldContainer[str]
    max_cells: int
    parameters: ModelParameters
    profiles: _containers.RepeatedCompositeFieldContainer[ParameterProfile]
    def __init__(self, markets: _Optional[_Iterable[_Union[MarketInfo, _Mapping]]] = ..., lookbacks: _Optional[_Iterable[str]] = ..., max_cells: _Optional[int] = ..., parameters: _Optional[_Union[ModelParameters, _Mapping]] = ..., profiles: _Optional[_Iterable[_Union[ParameterProfile, _Mapping]]] = ...) -> None: ...

class ParameterProfile(_message.Message):
    __slots__ = ("name", "parameters", "source")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    parameters: ModelParameters
    source: str
    def __init__(self, name: _Optional[str] = ..., parameters: _Optional[_Union[ModelParameters, _Mapping]] = ..., source: _Optional[str] = ...) -> None: ...

class GetHeatmapRequest(_message.Message):
    __slots__ = ("view", "zone_options", "boost", "include_tiers", "include_candles", "include_intensity")
    VIEW_FIELD_NUMBER: _ClassVar[int]
    ZONE_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    BOOST_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_TIERS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_CANDLES_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_INTENSITY_FIELD_NUMBER: _ClassVar[int]
    view: View
    zone_options: ZoneOptions
    boost: float
    include_tiers: bool
    include_candles: bool
    include_intensity: bool
    def __init__(self, view: _Optional[_Union[View, _Mapping]] = ..., zone_options: _Optional[_Union[ZoneOptions, _Mapping]] = ..., boost: _Optional[float] = ..., include_tiers: _Optional[bool] = ..., include_candles: _Optional[bool] = ..., include_intensity: _Optional[bool] = ...) -> None: ...

class GetHeatmapResponse(_message.Message):
    __slots__ = ("heatmap", "zones")
    HEATMAP_FIELD_NUMBER: _ClassVar[int]
    ZONES_FIELD_NUMBER: _ClassVar[int]
    heatmap: Heatmap
    zones: ZoneReport
    def __init__(self, heatmap: _Optional[_Union[Heatmap, _Mapping]] = ..., zones: _Optional[_Union[ZoneReport, _Mapping]] = ...) -> None: ...

class GetZonesRequest(_message.Message):
    __slots__ = ("view", "zone_options", "confluence_lookbacks")
    VIEW_FIELD_NUMBER: _ClassVar[int]
    ZONE_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    CONFLUENCE_LOOKBACKS_FIELD_NUMBER: _ClassVar[int]
    view: View
    zone_options: ZoneOptions
    confluence_lookbacks: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, view: _Optional[_Union[View, _Mapping]] = ..., zone_options: _Optional[_Union[ZoneOptions, _Mapping]] = ..., confluence_lookbacks: _Optional[_Iterable[str]] = ...) -> None: ...

class GetZonesResponse(_message.Message):
    __slots__ = ("zones", "confluence")
    ZONES_FIELD_NUMBER: _ClassVar[int]
    CONFLUENCE_FIELD_NUMBER: _ClassVar[int]
    zones: ZoneReport
    confluence: _containers.RepeatedCompositeFieldContainer[ConfluenceLevel]
    def __init__(self, zones: _Optional[_Union[ZoneReport, _Mapping]] = ..., confluence: _Optional[_Iterable[_Union[ConfluenceLevel, _Mapping]]] = ...) -> None: ...

class StreamHeatmapRequest(_message.Message):
    __slots__ = ("view", "zone_options", "zones_only", "boost", "include_tiers", "include_candles", "include_intensity")
    VIEW_FIELD_NUMBER: _ClassVar[int]
    ZONE_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    ZONES_ONLY_FIELD_NUMBER: _ClassVar[int]
    BOOST_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_TIERS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_CANDLES_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_INTENSITY_FIELD_NUMBER: _ClassVar[int]
    view: View
    zone_options: ZoneOptions
    zones_only: bool
    boost: float
    include_tiers: bool
    include_candles: bool
    include_intensity: bool
    def __init__(self, view: _Optional[_Union[View, _Mapping]] = ..., zone_options: _Optional[_Union[ZoneOptions, _Mapping]] = ..., zones_only: _Optional[bool] = ..., boost: _Optional[float] = ..., include_tiers: _Optional[bool] = ..., include_candles: _Optional[bool] = ..., include_intensity: _Optional[bool] = ...) -> None: ...

class StreamHeatmapResponse(_message.Message):
    __slots__ = ("sequence", "kind", "heatmap", "zones", "gap_skipped", "skipped_updates")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    HEATMAP_FIELD_NUMBER: _ClassVar[int]
    ZONES_FIELD_NUMBER: _ClassVar[int]
    GAP_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_UPDATES_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    kind: UpdateKind
    heatmap: Heatmap
    zones: ZoneReport
    gap_skipped: bool
    skipped_updates: int
    def __init__(self, sequence: _Optional[int] = ..., kind: _Optional[_Union[UpdateKind, str]] = ..., heatmap: _Optional[_Union[Heatmap, _Mapping]] = ..., zones: _Optional[_Union[ZoneReport, _Mapping]] = ..., gap_skipped: _Optional[bool] = ..., skipped_updates: _Optional[int] = ...) -> None: ...

class StreamZonesRequest(_message.Message):
    __slots__ = ("views", "zone_options")
    VIEWS_FIELD_NUMBER: _ClassVar[int]
    ZONE_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    views: _containers.RepeatedCompositeFieldContainer[View]
    zone_options: ZoneOptions
    def __init__(self, views: _Optional[_Iterable[_Union[View, _Mapping]]] = ..., zone_options: _Optional[_Union[ZoneOptions, _Mapping]] = ...) -> None: ...

class ViewZones(_message.Message):
    __slots__ = ("view_index", "zones")
    VIEW_INDEX_FIELD_NUMBER: _ClassVar[int]
    ZONES_FIELD_NUMBER: _ClassVar[int]
    view_index: int
    zones: ZoneReport
    def __init__(self, view_index: _Optional[int] = ..., zones: _Optional[_Union[ZoneReport, _Mapping]] = ...) -> None: ...

class StreamZonesResponse(_message.Message):
    __slots__ = ("sequence", "kind", "reports", "gap_skipped", "skipped_updates")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    REPORTS_FIELD_NUMBER: _ClassVar[int]
    GAP_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_UPDATES_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    kind: UpdateKind
    reports: _containers.RepeatedCompositeFieldContainer[ViewZones]
    gap_skipped: bool
    skipped_updates: int
    def __init__(self, sequence: _Optional[int] = ..., kind: _Optional[_Union[UpdateKind, str]] = ..., reports: _Optional[_Iterable[_Union[ViewZones, _Mapping]]] = ..., gap_skipped: _Optional[bool] = ..., skipped_updates: _Optional[int] = ...) -> None: ...

class ZoneEvent(_message.Message):
    __slots__ = ("kind", "market", "lookback", "data_time", "price", "zone", "previous_zone", "skew_label", "previous_skew_label", "distance_pct", "view_index")
    KIND_FIELD_NUMBER: _ClassVar[int]
    MARKET_FIELD_NUMBER: _ClassVar[int]
    LOOKBACK_FIELD_NUMBER: _ClassVar[int]
    DATA_TIME_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_ZONE_FIELD_NUMBER: _ClassVar[int]
    SKEW_LABEL_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_SKEW_LABEL_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_PCT_FIELD_NUMBER: _ClassVar[int]
    VIEW_INDEX_FIELD_NUMBER: _ClassVar[int]
    kind: ZoneEventKind
    market: str
    lookback: str
    data_time: _timestamp_pb2.Timestamp
    price: float
    zone: Zone
    previous_zone: Zone
    skew_label: SkewLabel
    previous_skew_label: SkewLabel
    distance_pct: float
    view_index: int
    def __init__(self, kind: _Optional[_Union[ZoneEventKind, str]] = ..., market: _Optional[str] = ..., lookback: _Optional[str] = ..., data_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., price: _Optional[float] = ..., zone: _Optional[_Union[Zone, _Mapping]] = ..., previous_zone: _Optional[_Union[Zone, _Mapping]] = ..., skew_label: _Optional[_Union[SkewLabel, str]] = ..., previous_skew_label: _Optional[_Union[SkewLabel, str]] = ..., distance_pct: _Optional[float] = ..., view_index: _Optional[int] = ...) -> None: ...

class StreamZoneEventsRequest(_message.Message):
    __slots__ = ("views", "zone_options", "near_pct", "kinds")
    VIEWS_FIELD_NUMBER: _ClassVar[int]
    ZONE_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    NEAR_PCT_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    views: _containers.RepeatedCompositeFieldContainer[View]
    zone_options: ZoneOptions
    near_pct: float
    kinds: _containers.RepeatedScalarFieldContainer[ZoneEventKind]
    def __init__(self, views: _Optional[_Iterable[_Union[View, _Mapping]]] = ..., zone_options: _Optional[_Union[ZoneOptions, _Mapping]] = ..., near_pct: _Optional[float] = ..., kinds: _Optional[_Iterable[_Union[ZoneEventKind, str]]] = ...) -> None: ...

class StreamZoneEventsResponse(_message.Message):
    __slots__ = ("sequence", "kind", "events", "reports", "gap_skipped", "skipped_updates")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    REPORTS_FIELD_NUMBER: _ClassVar[int]
    GAP_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_UPDATES_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    kind: UpdateKind
    events: _containers.RepeatedCompositeFieldContainer[ZoneEvent]
    reports: _containers.RepeatedCompositeFieldContainer[ViewZones]
    gap_skipped: bool
    skipped_updates: int
    def __init__(self, sequence: _Optional[int] = ..., kind: _Optional[_Union[UpdateKind, str]] = ..., events: _Optional[_Iterable[_Union[ZoneEvent, _Mapping]]] = ..., reports: _Optional[_Iterable[_Union[ViewZones, _Mapping]]] = ..., gap_skipped: _Optional[bool] = ..., skipped_updates: _Optional[int] = ...) -> None: ...

class ConfluenceLevel(_message.Message):
    __slots__ = ("side", "price_low", "price_high", "lookbacks", "score", "notional")
    SIDE_FIELD_NUMBER: _ClassVar[int]
    PRICE_LOW_FIELD_NUMBER: _ClassVar[int]
    PRICE_HIGH_FIELD_NUMBER: _ClassVar[int]
    LOOKBACKS_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    NOTIONAL_FIELD_NUMBER: _ClassVar[int]
    side: ZoneSide
    price_low: float
    price_high: float
    lookbacks: _containers.RepeatedScalarFieldContainer[str]
    score: int
    notional: float
    def __init__(self, side: _Optional[_Union[ZoneSide, str]] = ..., price_low: _Optional[float] = ..., price_high: _Optional[float] = ..., lookbacks: _Optional[_Iterable[str]] = ..., score: _Optional[int] = ..., notional: _Optional[float] = ...) -> None: ...

class GetConfluenceRequest(_message.Message):
    __slots__ = ("market", "lookbacks", "rows", "columns", "zone_options")
    MARKET_FIELD_NUMBER: _ClassVar[int]
    LOOKBACKS_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    ZONE_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    market: str
    lookbacks: _containers.RepeatedScalarFieldContainer[str]
    rows: int
    columns: int
    zone_options: ZoneOptions
    def __init__(self, market: _Optional[str] = ..., lookbacks: _Optional[_Iterable[str]] = ..., rows: _Optional[int] = ..., columns: _Optional[int] = ..., zone_options: _Optional[_Union[ZoneOptions, _Mapping]] = ...) -> None: ...

class GetConfluenceResponse(_message.Message):
    __slots__ = ("price", "levels")
    PRICE_FIELD_NUMBER: _ClassVar[int]
    LEVELS_FIELD_NUMBER: _ClassVar[int]
    price: float
    levels: _containers.RepeatedCompositeFieldContainer[ConfluenceLevel]
    def __init__(self, price: _Optional[float] = ..., levels: _Optional[_Iterable[_Union[ConfluenceLevel, _Mapping]]] = ...) -> None: ...

class Liquidation(_message.Message):
    __slots__ = ("market", "time", "side", "price", "quantity", "notional")
    MARKET_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    SIDE_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    NOTIONAL_FIELD_NUMBER: _ClassVar[int]
    market: str
    time: _timestamp_pb2.Timestamp
    side: LiquidationSide
    price: float
    quantity: float
    notional: float
    def __init__(self, market: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., side: _Optional[_Union[LiquidationSide, str]] = ..., price: _Optional[float] = ..., quantity: _Optional[float] = ..., notional: _Optional[float] = ...) -> None: ...

class LiquidationBucket(_message.Message):
    __slots__ = ("start_time", "long_notional", "short_notional", "long_count", "short_count", "coverage")
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    LONG_NOTIONAL_FIELD_NUMBER: _ClassVar[int]
    SHORT_NOTIONAL_FIELD_NUMBER: _ClassVar[int]
    LONG_COUNT_FIELD_NUMBER: _ClassVar[int]
    SHORT_COUNT_FIELD_NUMBER: _ClassVar[int]
    COVERAGE_FIELD_NUMBER: _ClassVar[int]
    start_time: _timestamp_pb2.Timestamp
    long_notional: float
    short_notional: float
    long_count: int
    short_count: int
    coverage: float
    def __init__(self, start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., long_notional: _Optional[float] = ..., short_notional: _Optional[float] = ..., long_count: _Optional[int] = ..., short_count: _Optional[int] = ..., coverage: _Optional[float] = ...) -> None: ...

class GetLiquidationsRequest(_message.Message):
    __slots__ = ("market", "start_time", "end_time", "bucket", "largest")
    MARKET_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    LARGEST_FIELD_NUMBER: _ClassVar[int]
    market: str
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    bucket: _duration_pb2.Duration
    largest: int
    def __init__(self, market: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., bucket: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., largest: _Optional[int] = ...) -> None: ...

class GetLiquidationsResponse(_message.Message):
    __slots__ = ("market", "markets", "bucket", "buckets", "largest", "lower_bound_exchanges")
    MARKET_FIELD_NUMBER: _ClassVar[int]
    MARKETS_FIELD_NUMBER: _ClassVar[int]
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    BUCKETS_FIELD_NUMBER: _ClassVar[int]
    LARGEST_FIELD_NUMBER: _ClassVar[int]
    LOWER_BOUND_EXCHANGES_FIELD_NUMBER: _ClassVar[int]
    market: str
    markets: _containers.RepeatedScalarFieldContainer[str]
    bucket: _duration_pb2.Duration
    buckets: _containers.RepeatedCompositeFieldContainer[LiquidationBucket]
    largest: _containers.RepeatedCompositeFieldContainer[Liquidation]
    lower_bound_exchanges: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, market: _Optional[str] = ..., markets: _Optional[_Iterable[str]] = ..., bucket: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., buckets: _Optional[_Iterable[_Union[LiquidationBucket, _Mapping]]] = ..., largest: _Optional[_Iterable[_Union[Liquidation, _Mapping]]] = ..., lower_bound_exchanges: _Optional[_Iterable[str]] = ...) -> None: ...

class StreamLiquidationsRequest(_message.Message):
    __slots__ = ("markets", "snapshot")
    MARKETS_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    markets: _containers.RepeatedScalarFieldContainer[str]
    snapshot: int
    def __init__(self, markets: _Optional[_Iterable[str]] = ..., snapshot: _Optional[int] = ...) -> None: ...

class StreamLiquidationsResponse(_message.Message):
    __slots__ = ("sequence", "kind", "events", "gap_skipped", "skipped_updates")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    GAP_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_UPDATES_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    kind: UpdateKind
    events: _containers.RepeatedCompositeFieldContainer[Liquidation]
    gap_skipped: bool
    skipped_updates: int
    def __init__(self, sequence: _Optional[int] = ..., kind: _Optional[_Union[UpdateKind, str]] = ..., events: _Optional[_Iterable[_Union[Liquidation, _Mapping]]] = ..., gap_skipped: _Optional[bool] = ..., skipped_updates: _Optional[int] = ...) -> None: ...

class GetMeasuredMapRequest(_message.Message):
    __slots__ = ("view", "time")
    VIEW_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    view: View
    time: _timestamp_pb2.Timestamp
    def __init__(self, view: _Optional[_Union[View, _Mapping]] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class LeverageNotional(_message.Message):
    __slots__ = ("leverage", "long_notional", "short_notional")
    LEVERAGE_FIELD_NUMBER: _ClassVar[int]
    LONG_NOTIONAL_FIELD_NUMBER: _ClassVar[int]
    SHORT_NOTIONAL_FIELD_NUMBER: _ClassVar[int]
    leverage: float
    long_notional: float
    short_notional: float
    def __init__(self, leverage: _Optional[float] = ..., long_notional: _Optional[float] = ..., short_notional: _Optional[float] = ...) -> None: ...

class MeasuredMap(_message.Message):
    __slots__ = ("market", "time", "price_edges", "long_notional", "short_notional", "off_range_long", "off_range_short", "unpriced_long", "unpriced_short", "long_size", "short_size", "open_interest", "coverage_long", "coverage_short", "price", "leverage_mix", "accounts_known", "accounts_read", "positions", "oldest_read")
    MARKET_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    PRICE_EDGES_FIELD_NUMBER: _ClassVar[int]
    LONG_NOTIONAL_FIELD_NUMBER: _ClassVar[int]
    SHORT_NOTIONAL_FIELD_NUMBER: _ClassVar[int]
    OFF_RANGE_LONG_FIELD_NUMBER: _ClassVar[int]
    OFF_RANGE_SHORT_FIELD_NUMBER: _ClassVar[int]
    UNPRICED_LONG_FIELD_NUMBER: _ClassVar[int]
    UNPRICED_SHORT_FIELD_NUMBER: _ClassVar[int]
    LONG_SIZE_FIELD_NUMBER: _ClassVar[int]
    SHORT_SIZE_FIELD_NUMBER: _ClassVar[int]
    OPEN_INTEREST_FIELD_NUMBER: _ClassVar[int]
    COVERAGE_LONG_FIELD_NUMBER: _ClassVar[int]
    COVERAGE_SHORT_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    LEVERAGE_MIX_FIELD_NUMBER: _ClassVar[int]
    ACCOUNTS_KNOWN_FIELD_NUMBER: _ClassVar[int]
    ACCOUNTS_READ_FIELD_NUMBER: _ClassVar[int]
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    OLDEST_READ_FIELD_NUMBER: _ClassVar[int]
    market: str
    time: _timestamp_pb2.Timestamp
    price_edges: _containers.RepeatedScalarFieldContainer[float]
    long_notional: _containers.RepeatedScalarFieldContainer[float]
    short_notional: _containers.RepeatedScalarFieldContainer[float]
    off_range_long: float
    off_range_short: float
    unpriced_long: float
    unpriced_short: float
    long_size: float
    short_size: float
    open_interest: float
    coverage_long: float
    coverage_short: float
    price: float
    leverage_mix: _containers.RepeatedCompositeFieldContainer[LeverageNotional]
    accounts_known: int
    accounts_read: int
    positions: int
    oldest_read: _timestamp_pb2.Timestamp
    def __init__(self, market: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., price_edges: _Optional[_Iterable[float]] = ..., long_notional: _Optional[_Iterable[float]] = ..., short_notional: _Optional[_Iterable[float]] = ..., off_range_long: _Optional[float] = ..., off_range_short: _Optional[float] = ..., unpriced_long: _Optional[float] = ..., unpriced_short: _Optional[float] = ..., long_size: _Optional[float] = ..., short_size: _Optional[float] = ..., open_interest: _Optional[float] = ..., coverage_long: _Optional[float] = ..., coverage_short: _Optional[float] = ..., price: _Optional[float] = ..., leverage_mix: _Optional[_Iterable[_Union[LeverageNotional, _Mapping]]] = ..., accounts_known: _Optional[int] = ..., accounts_read: _Optional[int] = ..., positions: _Optional[int] = ..., oldest_read: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetMeasuredMapResponse(_message.Message):
    __slots__ = ("map",)
    MAP_FIELD_NUMBER: _ClassVar[int]
    map: MeasuredMap
    def __init__(self, map: _Optional[_Union[MeasuredMap, _Mapping]] = ...) -> None: ...

class StreamMeasuredMapRequest(_message.Message):
    __slots__ = ("view",)
    VIEW_FIELD_NUMBER: _ClassVar[int]
    view: View
    def __init__(self, view: _Optional[_Union[View, _Mapping]] = ...) -> None: ...

class StreamMeasuredMapResponse(_message.Message):
    __slots__ = ("map",)
    MAP_FIELD_NUMBER: _ClassVar[int]
    map: MeasuredMap
    def __init__(self, map: _Optional[_Union[MeasuredMap, _Mapping]] = ...) -> None: ...

class CompareMeasuredRequest(_message.Message):
    __slots__ = ("view", "time", "zone_options", "save_profile")
    VIEW_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    ZONE_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    SAVE_PROFILE_FIELD_NUMBER: _ClassVar[int]
    view: View
    time: _timestamp_pb2.Timestamp
    zone_options: ZoneOptions
    save_profile: str
    def __init__(self, view: _Optional[_Union[View, _Mapping]] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., zone_options: _Optional[_Union[ZoneOptions, _Mapping]] = ..., save_profile: _Optional[str] = ...) -> None: ...

class TierComparison(_message.Message):
    __slots__ = ("leverage", "model_weight", "measured_weight")
    LEVERAGE_FIELD_NUMBER: _ClassVar[int]
    MODEL_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    MEASURED_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    leverage: float
    model_weight: float
    measured_weight: float
    def __init__(self, leverage: _Optional[float] = ..., model_weight: _Optional[float] = ..., measured_weight: _Optional[float] = ...) -> None: ...

class CompareMeasuredResponse(_message.Message):
    __slots__ = ("market", "lookback", "measured_time", "estimate_time", "price", "cosine_long", "cosine_short", "cosine", "estimated_above", "estimated_below", "measured_above", "measured_below", "zone_overlap_long", "zone_overlap_short", "captured_long", "captured_short", "tiers", "coverage_long", "coverage_short", "fitted", "saved_profile", "unmatched_notional", "accounts_read", "accounts_known")
    MARKET_FIELD_NUMBER: _ClassVar[int]
    LOOKBACK_FIELD_NUMBER: _ClassVar[int]
    MEASURED_TIME_FIELD_NUMBER: _ClassVar[int]
    ESTIMATE_TIME_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    COSINE_LONG_FIELD_NUMBER: _ClassVar[int]
    COSINE_SHORT_FIELD_NUMBER: _ClassVar[int]
    COSINE_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_ABOVE_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_BELOW_FIELD_NUMBER: _ClassVar[int]
    MEASURED_ABOVE_FIELD_NUMBER: _ClassVar[int]
    MEASURED_BELOW_FIELD_NUMBER: _ClassVar[int]
    ZONE_OVERLAP_LONG_FIELD_NUMBER: _ClassVar[int]
    ZONE_OVERLAP_SHORT_FIELD_NUMBER: _ClassVar[int]
    CAPTURED_LONG_FIELD_NUMBER: _ClassVar[int]
    CAPTURED_SHORT_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    COVERAGE_LONG_FIELD_NUMBER: _ClassVar[int]
    COVERAGE_SHORT_FIELD_NUMBER: _ClassVar[int]
    FITTED_FIELD_NUMBER: _ClassVar[int]
    SAVED_PROFILE_FIELD_NUMBER: _ClassVar[int]
    UNMATCHED_NOTIONAL_FIELD_NUMBER: _ClassVar[int]
    ACCOUNTS_READ_FIELD_NUMBER: _ClassVar[int]
    ACCOUNTS_KNOWN_FIELD_NUMBER: _ClassVar[int]
    market: str
    lookback: str
    measured_time: _timestamp_pb2.Timestamp
    estimate_time: _timestamp_pb2.Timestamp
    price: float
    cosine_long: float
    cosine_short: float
    cosine: float
    estimated_above: float
    estimated_below: float
    measured_above: float
    measured_below: float
    zone_overlap_long: float
    zone_overlap_short: float
    captured_long: float
    captured_short: float
    tiers: _containers.RepeatedCompositeFieldContainer[TierComparison]
    coverage_long: float
    coverage_short: float
    fitted: ModelParameters
    saved_profile: str
    unmatched_notional: float
    accounts_read: int
    accounts_known: int
    def __init__(self, market: _Optional[str] = ..., lookback: _Optional[str] = ..., measured_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., estimate_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., price: _Optional[float] = ..., cosine_long: _Optional[float] = ..., cosine_short: _Optional[float] = ..., cosine: _Optional[float] = ..., estimated_above: _Optional[float] = ..., estimated_below: _Optional[float] = ..., measured_above: _Optional[float] = ..., measured_below: _Optional[float] = ..., zone_overlap_long: _Optional[float] = ..., zone_overlap_short: _Optional[float] = ..., captured_long: _Optional[float] = ..., captured_short: _Optional[float] = ..., tiers: _Optional[_Iterable[_Union[TierComparison, _Mapping]]] = ..., coverage_long: _Optional[float] = ..., coverage_short: _Optional[float] = ..., fitted: _Optional[_Union[ModelParameters, _Mapping]] = ..., saved_profile: _Optional[str] = ..., unmatched_notional: _Optional[float] = ..., accounts_read: _Optional[int] = ..., accounts_known: _Optional[int] = ...) -> None: ...

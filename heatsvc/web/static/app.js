// heatsvc's page: the controls, the chart (TradingView Lightweight Charts) with the heat canvas under
// it, the side panel, the tooltip and the exports. Everything comes from the gateway's WebSocket.
import {
  createChart, CandlestickSeries, HistogramSeries, LineSeries, ColorType, CrosshairMode, PriceScaleMode,
} from './vendor/lightweight-charts.standalone.production.mjs';
import { Connection } from './conn.js';
import { drawHeat, drawLegend, drawMap, heatImage, notionalOf } from './heat.js';

const $ = (id) => document.getElementById(id);
const state = {
  markets: [], lookbacks: [], tiers: [], market: null, lookback: null, threshold: 0.2, boost: 0.5, mask: null,
  req: 0, view: null, meta: null, frame: null, image: null, zones: null, dirty: true, geo: '', fitted: null,
  updates: 0, frames: 0, draws: 0,
};

// ---- formatting ---------------------------------------------------------------------------------
export function fmtNotional(v) {
  const a = Math.abs(v);
  if (a >= 1e9) return `${(v / 1e9).toFixed(2)}B`;
  if (a >= 1e6) return `${(v / 1e6).toFixed(2)}M`;
  if (a >= 1e3) return `${(v / 1e3).toFixed(1)}K`;
  return v.toFixed(0);
}
const fmtPrice = (p) => (p >= 1000 ? p.toFixed(1) : p.toPrecision(5));
const fmtPct = (p) => `${p >= 0 ? '+' : ''}${p.toFixed(2)}%`;
const fmtTime = (ms) => new Date(ms).toISOString().slice(0, 16).replace('T', ' ') + ' UTC';
const css = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();

// ---- chart --------------------------------------------------------------------------------------
const chart = createChart($('chart'), {
  autoSize: true,
  layout: { background: { type: ColorType.Solid, color: 'rgba(0,0,0,0)' }, textColor: css('--fg'), attributionLogo: true },
  grid: { vertLines: { visible: false }, horzLines: { visible: false } },
  rightPriceScale: { mode: PriceScaleMode.Logarithmic, scaleMargins: { top: 0.02, bottom: 0.02 } },
  timeScale: { timeVisible: true, secondsVisible: false },
  crosshair: { mode: CrosshairMode.Normal },
});
const candles = chart.addSeries(CandlestickSeries, {
  upColor: '#e8e8e8', downColor: '#7a7f8f', borderVisible: false, wickUpColor: '#e8e8e8', wickDownColor: '#7a7f8f',
  autoscaleInfoProvider: () => (state.meta ? {
    priceRange: { minValue: state.meta.price_edges[0], maxValue: state.meta.price_edges.at(-1) },
  } : null),
});
const sweptShort = chart.addSeries(HistogramSeries, { color: css('--short'), priceFormat: { type: 'volume' },
  priceLineVisible: false, lastValueVisible: false, title: 'est. shorts' }, 1);
const sweptLong = chart.addSeries(HistogramSeries, { color: css('--long'), priceFormat: { type: 'volume' },
  priceLineVisible: false, lastValueVisible: false, title: 'est. longs' }, 1);
// Realised liquidations, where the liquidation recorder ran: shorts up, longs down, gaps where it heard nothing.
const realisedShort = chart.addSeries(LineSeries, { color: css('--accent'), lineWidth: 1, priceLineVisible: false,
  lastValueVisible: false, title: 'realised', priceFormat: { type: 'volume' } }, 1);
const realisedLong = chart.addSeries(LineSeries, { color: css('--accent'), lineWidth: 1, priceLineVisible: false,
  lastValueVisible: false, priceFormat: { type: 'volume' } }, 1);
chart.panes()[1].setHeight(90);
// the chart's log price scale is for prices; the estimated liquidations under it are linear notional
sweptShort.priceScale().applyOptions({ mode: PriceScaleMode.Normal, scaleMargins: { top: 0.1, bottom: 0.1 } });

function geometry() {
  const m = state.meta;
  if (!m) return null;
  const ts = chart.timeScale(), n = m.column_times.length, edges = m.price_edges;
  // column i is centred on the coordinate of its time; columns are equally spaced
  const first = ts.timeToCoordinate(Math.floor(m.column_times[0] / 1000));
  const last = ts.timeToCoordinate(Math.floor(m.column_times[n - 1] / 1000));
  if (first === null || last === null) return null;
  const half = n > 1 ? (last - first) / (n - 1) / 2 : 4;
  const g = { x0: first - half, x1: last + half,
    yTop: candles.priceToCoordinate(edges.at(-1)), yBottom: candles.priceToCoordinate(edges[0]),
    width: ts.width(), height: chart.panes()[0].getHeight() };
  return Object.values(g).some((v) => v === null) ? null : g;
}

/** Draw the heat and the liquidation map; returns the milliseconds it took. */
function redraw(rebuild = false) {
  const t0 = performance.now();
  if (rebuild && state.frame) state.image = heatImage(state.frame, state.threshold);
  const geo = geometry();
  drawHeat($('heat'), state.image, geo);
  drawMap($('map'), { frame: state.frame, edges: state.meta && state.meta.price_edges, zones: state.zones,
    toY: geo ? (p) => candles.priceToCoordinate(p) : null, price: state.meta && state.meta.current_price,
    styles: { long: css('--long'), short: css('--short'), fg: css('--muted') } });
  state.draws += 1;
  return performance.now() - t0;
}

function tick() {   // redraw when the data or the chart's geometry (zoom, scroll, resize, price scale) changed
  const geo = JSON.stringify(geometry());
  if (state.dirty || geo !== state.geo) { state.geo = geo; redraw(state.dirty === 'rebuild'); state.dirty = false; }
  requestAnimationFrame(tick);
}

// ---- messages -----------------------------------------------------------------------------------
function setConn(s, detail) {
  const el = $('conn');
  el.dataset.state = s;
  el.textContent = detail ? `${s} ${detail}` : s;
}

function showError(text) {
  const el = $('error');
  el.textContent = text;
  el.hidden = false;
  clearTimeout(showError.timer);
  showError.timer = setTimeout(() => { el.hidden = true; }, 8000);
}

function subscription() {
  if (!state.market || !state.lookback) return null;
  state.req += 1;
  return { type: 'subscribe', req: state.req, market: state.market, lookback: state.lookback,
    threshold: state.threshold, boost: state.boost, tiers: state.mask };
}

function buttons(container, items, label, pressed, onClick) {
  container.replaceChildren(...items.map((item, i) => {
    const b = document.createElement('button');
    b.type = 'button';
    b.textContent = label(item);
    b.dataset.value = typeof item === 'string' ? item : String(i);
    b.setAttribute('aria-pressed', String(pressed(item, i)));
    b.addEventListener('click', () => onClick(item, i, b));
    return b;
  }));
}

function onMarkets(msg) {
  state.markets = msg.markets.map((m) => m.market);
  state.lookbacks = msg.lookbacks;
  state.tiers = msg.tiers;
  if (!state.markets.includes(state.market)) state.market = state.markets[0];
  if (!state.lookbacks.includes(state.lookback)) state.lookback = state.lookbacks.includes('1d') ? '1d' : state.lookbacks[0];
  if (!state.mask || state.mask.length !== state.tiers.length) state.mask = null;
  $('market').replaceChildren(...msg.markets.map((m) => {
    const o = document.createElement('option');
    o.value = m.market;
    o.textContent = `${m.market}${m.status === 'ok' ? '' : ` (${m.status})`}`;
    return o;
  }));
  $('market').value = state.market;
  renderLookbacks();
  renderTiers();
  conn.send(subscription());
}

function renderLookbacks() {
  buttons($('lookbacks'), state.lookbacks, (l) => l, (l) => l === state.lookback, (l) => {
    state.lookback = l; renderLookbacks(); conn.send(subscription());
  });
}

function renderTiers() {
  buttons($('tiers'), state.tiers, (t) => `${t.leverage}x`, (t, i) => !state.mask || state.mask[i], (t, i) => {
    const mask = state.mask ? [...state.mask] : state.tiers.map(() => true);
    mask[i] = !mask[i];
    if (!mask.some(Boolean)) return;   // at least one tier stays on
    state.mask = mask.every(Boolean) ? null : mask;
    renderTiers();
    conn.send(subscription());
  });
}

function onView(msg) {
  state.meta = msg;
  state.updates += 1;
  const times = msg.column_times.map((ms) => Math.floor(ms / 1000));
  const c = msg.candles;
  candles.setData(times.map((time, i) => (c.open[i] === null ? { time }
    : { time, open: c.open[i], high: c.high[i], low: c.low[i], close: c.close[i] })));
  sweptShort.setData(times.map((time, i) => ({ time, value: msg.swept_short[i] ?? 0 })));
  sweptLong.setData(times.map((time, i) => ({ time, value: -(msg.swept_long[i] ?? 0) })));
  const heard = (i) => (msg.coverage || [])[i] > 0;   // a column the recorder never heard is a gap, not a zero
  realisedShort.setData(times.map((time, i) => (heard(i) ? { time, value: msg.realised_short[i] } : { time })));
  realisedLong.setData(times.map((time, i) => (heard(i) ? { time, value: -msg.realised_long[i] } : { time })));
  if (state.fitted !== msg.sub) { chart.timeScale().fitContent(); state.fitted = msg.sub; }
  $('data-time').textContent = fmtTime(msg.data_time);
  $('data-time').dataset.ms = String(msg.data_time);
  const q = new URLSearchParams({ market: msg.market, lookback: msg.lookback, threshold: String(state.threshold) });
  $('csv').href = `/export.csv?${q}`;
}

function zoneRow(z) {
  const tr = document.createElement('tr');
  tr.dataset.low = String(z.low); tr.dataset.high = String(z.high); tr.dataset.notional = String(z.notional);
  for (const [text, cls] of [[`${fmtPrice(z.low)}–${fmtPrice(z.high)}`, ''], [fmtNotional(z.notional), 'n'],
    [fmtPct(z.distance_pct), 'n']]) {   // signed: negative below the price
    const td = document.createElement('td');
    td.textContent = text;
    if (cls) td.className = cls;
    tr.append(td);
  }
  return tr;
}

function onZones(msg) {
  state.zones = msg;
  $('above').tBodies[0].replaceChildren(...msg.above.map(zoneRow));
  $('below').tBodies[0].replaceChildren(...msg.below.map(zoneRow));
  $('price').textContent = fmtPrice(msg.price);
  $('total-above').textContent = fmtNotional(msg.total_above);
  $('total-below').textContent = fmtNotional(msg.total_below);
  $('skew').textContent = `${msg.skew.toFixed(2)} (${msg.skew_label})`;
  $('skew').dataset.label = msg.skew_label;
  const m = msg.magnet;
  $('magnet').textContent = m ? `${m.side === 'short' ? 'above' : 'below'} ${fmtPrice(m.peak)} (${fmtNotional(m.notional)})` : 'none';
  state.dirty = state.dirty || true;
}

function eventText(e) {
  const z = e.zone, where = z ? ` ${z.side} ${fmtPrice(z.low)}–${fmtPrice(z.high)} (${fmtNotional(z.notional)})` : '';
  const extra = e.kind === 'SKEW_FLIPPED' ? ` ${e.previous_skew_label} → ${e.skew_label}`
    : e.kind === 'PRICE_NEAR' ? ` ${e.distance_pct.toFixed(2)}% away` : '';
  return `${fmtTime(e.data_time).slice(5, 16)} ${e.kind.toLowerCase().replace('_', ' ')}${where}${extra}`;
}

function onEvents(events) {   // the view's newest zone events (StreamZoneEvents), newest first
  $('events').replaceChildren(...events.slice().reverse().slice(0, 10).map((e) => {
    const li = document.createElement('li');
    li.textContent = eventText(e);
    li.dataset.kind = e.kind;
    return li;
  }));
}

function onMessage(msg) {
  const mine = msg.sub === undefined || msg.sub === null || msg.sub === state.view;
  switch (msg.type) {
    case 'markets': onMarkets(msg); break;
    case 'subscribed':
      if (msg.req === state.req && msg.view !== state.view) { state.view = msg.view; $('events').replaceChildren(); }
      break;
    case 'status': if (mine) setConn(msg.state === 'ok' ? 'live' : msg.state, msg.message); break;
    case 'view': if (mine) { onView(msg); state.dirty = 'rebuild'; } break;
    case 'zones': if (mine) onZones(msg); break;
    case 'error': showError(msg.message); break;
    case 'events': if (mine) onEvents(msg.events || []); break;
    default: break;   // unknown types are ignored, so new ones can be added without breaking old pages
  }
}

function onFrame(frame) {
  if (frame.view !== state.view) return;
  state.frame = frame;
  state.frames += 1;
  state.dirty = 'rebuild';
  drawLegend($('legend'), $('legend-ticks'), frame.vMax, frame.boost, fmtNotional);
}

const conn = new Connection({ onMessage, onFrame, onState: setConn, subscription });

// ---- controls -----------------------------------------------------------------------------------
$('market').addEventListener('change', (e) => { state.market = e.target.value; conn.send(subscription()); });
for (const name of ['threshold', 'boost']) {
  $(name).addEventListener('input', (e) => {
    state[name] = Number(e.target.value);
    $(`${name}-v`).textContent = state[name].toFixed(2);
    if (name === 'threshold') state.dirty = 'rebuild';
    clearTimeout(state[`${name}Timer`]);
    state[`${name}Timer`] = setTimeout(() => conn.send(subscription()), 150);
  });
}
function applyTheme(theme) {
  document.documentElement.dataset.theme = theme;
  $('theme').textContent = theme === 'dark' ? 'Light' : 'Dark';
  chart.applyOptions({ layout: { textColor: css('--fg') } });
  const up = css('--candle-up'), down = css('--candle-down');
  candles.applyOptions({ upColor: up, downColor: down, wickUpColor: up, wickDownColor: down });
  sweptShort.applyOptions({ color: css('--short') });
  sweptLong.applyOptions({ color: css('--long') });
  for (const series of [realisedShort, realisedLong]) series.applyOptions({ color: css('--accent') });
  localStorage.setItem('heatsvc-theme', theme);
  state.dirty = true;
}
$('theme').addEventListener('click', () => applyTheme(document.documentElement.dataset.theme === 'dark' ? 'light' : 'dark'));
$('png').addEventListener('click', () => {
  const shot = chart.takeScreenshot();
  const out = document.createElement('canvas');
  out.width = shot.width; out.height = shot.height;
  const ctx = out.getContext('2d');
  ctx.fillStyle = css('--bg'); ctx.fillRect(0, 0, out.width, out.height);
  ctx.drawImage($('heat'), 0, 0, out.width, out.height);
  ctx.drawImage(shot, 0, 0);
  out.toBlob((blob) => {
    const a = document.createElement('a');
    a.href = URL.createObjectURL(blob);
    a.download = `heatsvc-${state.market}-${state.lookback}.png`.replace(':', '-');
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  });
});

// ---- tooltip ------------------------------------------------------------------------------------
function rowOf(edges, price) {
  let lo = 0, hi = edges.length - 1;
  if (!(price >= edges[0] && price < edges[hi])) return -1;
  while (hi - lo > 1) { const mid = (lo + hi) >> 1; if (edges[mid] <= price) lo = mid; else hi = mid; }
  return lo;
}
chart.subscribeCrosshairMove((param) => {
  const tip = $('tooltip'), m = state.meta, f = state.frame;
  if (!param.point || !m || !f || param.logical === undefined || param.point.y > chart.panes()[0].getHeight()) { tip.hidden = true; return; }
  const col = Math.round(param.logical), price = candles.coordinateToPrice(param.point.y);
  const row = price === null ? -1 : rowOf(m.price_edges, price);
  if (col < 0 || col >= f.columns || row < 0) { tip.hidden = true; return; }
  const i = row * f.columns + col;
  tip.textContent = [fmtTime(m.column_times[col]), `price ${fmtPrice(price)} (${fmtPct((price / m.current_price - 1) * 100)} from ${fmtPrice(m.current_price)})`,
    `long heat  ≈ ${fmtNotional(notionalOf(f.long[i], f.vMax, f.boost))}`,
    `short heat ≈ ${fmtNotional(notionalOf(f.short[i], f.vMax, f.boost))}`].join('\n');
  tip.hidden = false;
  tip.style.left = `${Math.min(param.point.x + 14, $('chart-stack').clientWidth - tip.offsetWidth - 4)}px`;
  tip.style.top = `${param.point.y + 14}px`;
});

// ---- start --------------------------------------------------------------------------------------
state.boost = Number($('boost').value);
state.threshold = Number($('threshold').value);
applyTheme(localStorage.getItem('heatsvc-theme') || 'dark');
// For tests and the redraw benchmark: the page's state and its drawing, nothing that changes the view.
/** Where cell (column, row) is drawn, in the chart's CSS pixels (for tests and screenshots). */
function cellCentre(col, row) {
  const g = geometry(), f = state.frame;
  if (!g || !f) return null;
  return { x: g.x0 + ((col + 0.5) * (g.x1 - g.x0)) / f.columns, y: g.yBottom - ((row + 0.5) * (g.yBottom - g.yTop)) / f.rows };
}
window.heatsvc = { state, redraw, conn, cellCentre };
conn.connect();
requestAnimationFrame(tick);

// Drawing the heat: a 256-colour scale from dark purple through yellow, the grid on a canvas placed
// exactly on the chart's price and time coordinates, the legend, and the newest column's liquidation map.

const STOPS = [[0, [68, 1, 84]], [0.25, [59, 82, 139]], [0.5, [33, 145, 140]], [0.75, [94, 201, 98]],
  [1, [253, 231, 37]]];

/** 256 RGB entries interpolated between the stops (viridis: dark purple, blue, green, yellow). */
export const LUT = (() => {
  const lut = new Uint8ClampedArray(256 * 3);
  for (let i = 0; i < 256; i++) {
    const t = i / 255;
    let k = 0;
    while (k < STOPS.length - 2 && t > STOPS[k + 1][0]) k++;
    const [t0, c0] = STOPS[k], [t1, c1] = STOPS[k + 1], f = (t - t0) / (t1 - t0);
    for (let j = 0; j < 3; j++) lut[i * 3 + j] = Math.round(c0[j] + f * (c1[j] - c0[j]));
  }
  return lut;
})();

export function colour(i) { return `rgb(${LUT[i * 3]},${LUT[i * 3 + 1]},${LUT[i * 3 + 2]})`; }

/** The notional a display intensity stands for: v_max * (i / 255) ^ (1 / boost). */
export function notionalOf(i, vMax, boost) { return vMax * Math.pow(i / 255, 1 / boost); }

/** Intensity under which cells are hidden as noise (threshold x v_max, after boost). */
export function cutoff(threshold, boost) { return threshold > 0 ? Math.ceil(255 * Math.pow(threshold, boost)) : 1; }

/** An offscreen canvas of columns x rows pixels: each cell the colour of max(long, short), row 0 at the bottom. */
export function heatImage(frame, threshold) {
  const { rows, columns, long, short } = frame;
  const canvas = new OffscreenCanvas(columns, rows);
  const ctx = canvas.getContext('2d');
  const img = ctx.createImageData(columns, rows);
  const px = img.data, cut = cutoff(threshold, frame.boost);
  for (let r = 0; r < rows; r++) {
    const src = r * columns, dst = (rows - 1 - r) * columns * 4;
    for (let c = 0; c < columns; c++) {
      const v = Math.max(long[src + c], short[src + c]);
      if (v < cut) continue;
      const o = dst + c * 4;
      px[o] = LUT[v * 3]; px[o + 1] = LUT[v * 3 + 1]; px[o + 2] = LUT[v * 3 + 2]; px[o + 3] = 255;
    }
  }
  ctx.putImageData(img, 0, 0);
  return canvas;
}

/** Draw the heat image into `canvas` over the rectangle geo = {x0, x1, yTop, yBottom, width, height}. */
export function drawHeat(canvas, image, geo) {
  const dpr = window.devicePixelRatio || 1;
  const w = Math.round(canvas.clientWidth * dpr), h = Math.round(canvas.clientHeight * dpr);
  if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
  const ctx = canvas.getContext('2d');
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, canvas.clientWidth, canvas.clientHeight);
  if (!image || !geo) return;
  ctx.save();
  ctx.beginPath();
  ctx.rect(0, 0, geo.width, geo.height);   // the pane left of the price scale
  ctx.clip();
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(image, geo.x0, geo.yTop, geo.x1 - geo.x0, geo.yBottom - geo.yTop);
  ctx.restore();
}

/** The colour bar and its ticks in notional. */
export function drawLegend(canvas, ticksEl, vMax, boost, fmt) {
  const ctx = canvas.getContext('2d');
  for (let i = 0; i < 256; i++) { ctx.fillStyle = colour(i); ctx.fillRect(i, 0, 1, canvas.height); }
  ticksEl.replaceChildren(...[0, 0.25, 0.5, 0.75, 1].map((t) => {
    const span = document.createElement('span');
    span.textContent = vMax > 0 ? fmt(notionalOf(t * 255, vMax, boost)) : '-';
    return span;
  }));
}

/** The liquidation map of the newest column, on the chart's price coordinates (toY(price)):
 *  the column's heat per row as bars, and the cumulative curves, longs below the price, shorts above. */
export function drawMap(canvas, { frame, edges, zones, toY, price, styles }) {
  const dpr = window.devicePixelRatio || 1;
  const W = canvas.clientWidth, H = canvas.clientHeight;
  if (canvas.width !== Math.round(W * dpr) || canvas.height !== Math.round(H * dpr)) {
    canvas.width = Math.round(W * dpr); canvas.height = Math.round(H * dpr);
  }
  const ctx = canvas.getContext('2d');
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, W, H);
  if (!frame || !edges || !toY) return;
  const { rows, columns, long, short } = frame, c = columns - 1;
  for (let r = 0; r < rows; r++) {
    const v = Math.max(long[r * columns + c], short[r * columns + c]);
    if (!v) continue;
    const y0 = toY(edges[r + 1]), y1 = toY(edges[r]);
    if (y0 === null || y1 === null) continue;
    ctx.fillStyle = colour(v);
    ctx.fillRect(0, y0, (W * 0.6 * v) / 255, Math.max(1, y1 - y0));
  }
  if (zones) {
    const curves = [[zones.long_curve, styles.long], [zones.short_curve, styles.short]];
    const top = Math.max(1, ...curves.flatMap(([cv]) => cv.notional));
    for (const [cv, stroke] of curves) {
      ctx.strokeStyle = stroke; ctx.lineWidth = 1.5; ctx.beginPath();
      cv.price.forEach((p, i) => {
        const y = toY(p), x = (W * cv.notional[i]) / top;
        if (y === null) return;
        if (i === 0) ctx.moveTo(0, y); ctx.lineTo(x, y);
      });
      ctx.stroke();
    }
  }
  const py = toY(price);
  if (py !== null) { ctx.strokeStyle = styles.fg; ctx.setLineDash([3, 3]); ctx.beginPath(); ctx.moveTo(0, py); ctx.lineTo(W, py); ctx.stroke(); ctx.setLineDash([]); }
}

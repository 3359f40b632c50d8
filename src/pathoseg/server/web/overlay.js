// What the editor draws over the image, as functions of arrays (no page, no state): the glands
// layer (each gland its own colour at all times, its review state by outline style), the
// model-probability heat map and its colour scale. Unit tests: tests/web/overlay.test.mjs.

// Review states of a gland in the open image: the editor's words, drawn differently.
export const UNREVIEWED = "unreviewed", ACCEPTED = "accepted", EDITED = "edited";

// Golden-angle hues: neighbouring ids get far-apart colours, the same id always the same one.
export function colour(id) {
  const hue = (id * 137.508) % 360, s = 0.75, l = 0.5, k = (n) => (n + hue / 30) % 12;
  const f = (n) => l - s * Math.min(l, 1 - l) * Math.max(-1, Math.min(k(n) - 3, 9 - k(n), 1));
  return [Math.round(f(0) * 255), Math.round(f(8) * 255), Math.round(f(4) * 255)];
}

export function reviewState(id, accepted, edited) {
  return edited.has(id) ? EDITED : accepted.has(id) ? ACCEPTED : UNREVIEWED;
}

// Unreviewed glands' outlines are dashed (3 px on, 3 px off along the diagonals): the model's
// proposal, not yet looked at. Accepted and edited outlines are solid (their badges tell which).
const dashed = (x, y) => Math.floor((x + y) / 3) % 2 === 0;

// Paint the glands layer into ``rgba`` (a Uint8ClampedArray of w x h x 4): fills at ``fill``
// (0-255) in the gland's colour, outlines opaque in it (dashed while unreviewed), the selected
// gland's outline yellow. Returns each gland's centre and size, {id: [x, y, n]}, for badges.
// ``rect`` [x0, y0, x1, y1) repaints only that part (a brush stroke's reach) and returns null:
// the centres are left as they were. One pass over the pixels with per-id tables (no Map, no
// colour maths per pixel): a 2048 x 2048 tile of ~300 glands repaints in tens of ms, not 300.
export function paintGlands(rgba, { labels, w, h }, { selected = 0, accepted = new Set(), edited = new Set(),
  fill = 51, rect = null } = {}) {
  const [x0, y0, x1, y1] = rect ? clipRect(rect, w, h) : [0, 0, w, h];
  let maxId = 0;
  for (let y = y0; y < y1; y++) for (let i = y * w + x0, end = y * w + x1; i < end; i++) if (labels[i] > maxId) maxId = labels[i];
  const n = maxId + 1, rgb = new Uint8Array(3 * n), solid = new Uint8Array(n), seen = new Uint8Array(n);
  const sx = rect ? null : new Float64Array(n), sy = rect ? null : new Float64Array(n), count = rect ? null : new Float64Array(n);
  const interior = Math.min(255, fill), chosen = Math.min(255, fill + 50);
  for (let y = y0; y < y1; y++) {
    for (let x = x0; x < x1; x++) {
      const i = y * w + x, o = 4 * i, id = labels[i];
      if (!id) { rgba[o + 3] = 0; continue; }
      if (!seen[id]) {
        seen[id] = 1;
        rgb.set(colour(id), 3 * id);
        solid[id] = reviewState(id, accepted, edited) !== UNREVIEWED ? 1 : 0;
      }
      if (count) { sx[id] += x; sy[id] += y; count[id] += 1; }
      const edge = x === 0 || x === w - 1 || y === 0 || y === h - 1
        || labels[i - 1] !== id || labels[i + 1] !== id || labels[i - w] !== id || labels[i + w] !== id;
      if (edge && id === selected) { rgba[o] = 255; rgba[o + 1] = 235; rgba[o + 2] = 59; rgba[o + 3] = 255; continue; }
      rgba[o] = rgb[3 * id]; rgba[o + 1] = rgb[3 * id + 1]; rgba[o + 2] = rgb[3 * id + 2];
      rgba[o + 3] = edge && (solid[id] || dashed(x, y)) ? 255 : id === selected ? chosen : interior;
    }
  }
  if (!count) return null;
  const centres = {};
  for (let id = 1; id < n; id++) if (count[id]) centres[id] = [sx[id] / count[id], sy[id] / count[id], count[id]];
  return centres;
}

// ``rect`` [x0, y0, x1, y1) grown by the 1 px whose outline a change inside it can flip, within the image.
export function clipRect([x0, y0, x1, y1], w, h) {
  return [Math.max(0, Math.floor(x0) - 1), Math.max(0, Math.floor(y0) - 1),
    Math.min(w, Math.ceil(x1) + 1), Math.min(h, Math.ceil(y1) + 1)];
}

// The heat map's colour scale: dark purple through red to yellow ("inferno"-like, readable on
// H&E's pinks and purples), transparent where the model sees nothing.
const STOPS = [[0, [0, 0, 4]], [0.25, [87, 16, 110]], [0.5, [188, 55, 84]], [0.75, [249, 142, 9]],
  [1, [252, 255, 164]]];

export function heatColour(p) {
  const t = Math.max(0, Math.min(1, p));
  let k = 1;
  while (k < STOPS.length - 1 && STOPS[k][0] < t) k++;
  const [t0, c0] = STOPS[k - 1], [t1, c1] = STOPS[k], f = (t - t0) / (t1 - t0);
  return c0.map((v, j) => Math.round(v + f * (c1[j] - v)));
}

// Opacity of the heat map at probability p: 0 below 0.1, rising to 0.55 at 1, so the tissue
// shows through everywhere (nuclei stay readable) and sure glands stand out.
export const heatAlpha = (p) => (p < 0.1 ? 0 : Math.round(Math.min(0.55, p * 0.55) * 255));

// The heat map of a probability map given as bytes (probability x 255) into ``rgba``.
export function paintHeat(rgba, probBytes) {
  const lut = Array.from({ length: 256 }, (_, v) => [...heatColour(v / 255), heatAlpha(v / 255)]);
  for (let i = 0; i < probBytes.length; i++) {
    const c = lut[probBytes[i]], o = 4 * i;
    rgba[o] = c[0]; rgba[o + 1] = c[1]; rgba[o + 2] = c[2]; rgba[o + 3] = c[3];
  }
}

// The legend's CSS gradient, from the same scale.
export function heatGradient(steps = 8) {
  const stops = Array.from({ length: steps + 1 }, (_, k) => {
    const p = k / steps, [r, g, b] = heatColour(p);
    return `rgba(${r},${g},${b},${(heatAlpha(p) / 255).toFixed(2)}) ${Math.round(p * 100)}%`;
  });
  return `linear-gradient(to right, ${stops.join(", ")})`;
}

// The view {zoom, ox, oy} that shows the box [x0, y0, x1, y1] (image pixels) whole and centred
// in a canvas of cw x ch, with ``pad`` of the box's size around it; never beyond ``maxZoom``.
export function viewOf([x0, y0, x1, y1], cw, ch, pad = 0, maxZoom = Infinity) {
  const bw = (x1 - x0) * (1 + 2 * pad) || 1, bh = (y1 - y0) * (1 + 2 * pad) || 1;
  const zoom = Math.min(cw / bw, ch / bh, maxZoom);
  return { zoom, ox: cw / 2 - ((x0 + x1) / 2) * zoom, oy: ch / 2 - ((y0 + y1) / 2) * zoom };
}

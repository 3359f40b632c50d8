// Gland operations on a label map, as pure functions: the editor (app.js) checks, undoes, logs
// and draws; these only compute. A mask is { labels: Uint16Array (0 background, 1..N glands),
// w, h }. An operation returns { labels } (a new array; the input is never changed) plus what
// it made, or { error } saying why it cannot be done. Unit tests: tests/web/labels.test.mjs.

export function glandIds(labels) {
  const ids = new Set();
  for (const v of labels) if (v) ids.add(v);
  return ids;
}

export function hasGland(labels, id, maxId) {
  return Number.isInteger(id) && id >= 1 && id <= maxId && labels.indexOf(id) !== -1;
}

export function nextId(labels) {
  let top = 0;
  for (const v of labels) if (v > top) top = v;
  return top + 1;
}

export function area(labels, id) {
  let n = 0;
  for (const v of labels) if (v === id) n++;
  return n;
}

// [x0, y0, x1, y1] of the pixels where test(i) holds, ``pad`` wider (clipped); null if none.
export function bbox({ labels, w, h }, test, pad = 0) {
  let x0 = w, y0 = h, x1 = -1, y1 = -1;
  for (let i = 0; i < labels.length; i++) {
    if (!test(i)) continue;
    const x = i % w, y = (i - x) / w;
    if (x < x0) x0 = x; if (x > x1) x1 = x; if (y < y0) y0 = y; if (y > y1) y1 = y;
  }
  if (x1 < 0) return null;
  return [Math.max(0, x0 - pad), Math.max(0, y0 - pad), Math.min(w - 1, x1 + pad), Math.min(h - 1, y1 + pad)];
}

// Add to ``region`` (a Uint8Array mask, changed in place) the background pixels of ``box``
// it encloses; returns how many.
export function fillEnclosed({ labels, w }, region, box) {
  const [x0, y0, x1, y1] = box, outside = new Uint8Array(labels.length), stack = [];
  const push = (i) => { if (!outside[i] && !region[i]) { outside[i] = 1; stack.push(i); } };
  for (let x = x0; x <= x1; x++) { push(y0 * w + x); push(y1 * w + x); }
  for (let y = y0; y <= y1; y++) { push(y * w + x0); push(y * w + x1); }
  while (stack.length) {
    const i = stack.pop(), x = i % w, y = (i - x) / w;
    if (x > x0) push(i - 1);
    if (x < x1) push(i + 1);
    if (y > y0) push(i - w);
    if (y < y1) push(i + w);
  }
  let n = 0;
  for (let y = y0; y <= y1; y++) {
    for (let x = x0; x <= x1; x++) {
      const i = y * w + x;
      if (!outside[i] && !region[i] && !labels[i]) { region[i] = 1; n++; }
    }
  }
  return n;
}

// A new gland ``id`` on the pixels of ``region``.
export function paintRegion(labels, region, id) {
  const out = labels.slice();
  for (let i = 0; i < region.length; i++) if (region[i]) out[i] = id;
  return out;
}

export function deleteGland(labels, id) {
  const out = labels.slice();
  for (let i = 0; i < out.length; i++) if (out[i] === id) out[i] = 0;
  return { labels: out };
}

// One click: the 8-connected region of probability (x 255) at least ``cut`` around pixel
// ``start``, over background only, its enclosed holes filled.
export function clickRegion(mask, prob, start, cut) {
  const { w, h, labels } = mask, region = new Uint8Array(labels.length), stack = [start];
  region[start] = 1;
  let n = 0, x0 = w, y0 = h, x1 = 0, y1 = 0;
  while (stack.length) {
    const i = stack.pop(), px = i % w, py = (i - px) / w;
    n++;
    if (px < x0) x0 = px; if (px > x1) x1 = px; if (py < y0) y0 = py; if (py > y1) y1 = py;
    for (let dy = -1; dy <= 1; dy++) {
      for (let dx = -1; dx <= 1; dx++) {
        const qx = px + dx, qy = py + dy, j = qy * w + qx;
        if (qx < 0 || qy < 0 || qx >= w || qy >= h || region[j] || labels[j] || prob[j] < cut) continue;
        region[j] = 1; stack.push(j);
      }
    }
  }
  fillEnclosed(mask, region, [Math.max(0, x0 - 1), Math.max(0, y0 - 1), Math.min(w - 1, x1 + 1), Math.min(h - 1, y1 + 1)]);
  return { region, n };
}

// A polygon: the background pixels whose centre lies inside (even-odd rule).
export function polygonRegion({ labels, w, h }, points) {
  const region = new Uint8Array(labels.length);
  let n = 0;
  for (let y = 0; y < h; y++) {
    const cy = y + 0.5, xs = [];
    for (let k = 0; k < points.length; k++) {
      const [ax, ay] = points[k], [bx, by] = points[(k + 1) % points.length];
      if ((ay <= cy) !== (by <= cy)) xs.push(ax + ((cy - ay) / (by - ay)) * (bx - ax));
    }
    xs.sort((a, b) => a - b);
    for (let k = 0; k + 1 < xs.length; k += 2) {
      for (let x = Math.max(0, Math.ceil(xs[k] - 0.5)); x < w && x + 0.5 < xs[k + 1]; x++) {
        if (!labels[y * w + x]) { region[y * w + x] = 1; n++; }
      }
    }
  }
  return { region, n };
}

// Pixels under a drawn line, 4-connected (so that it cuts 8-connected glands too).
export function linePixels({ w, h }, points) {
  const out = new Set();
  let prev = null;
  const visitCell = (px, py) => { if (px >= 0 && py >= 0 && px < w && py < h) out.add(py * w + px); };
  const visit = (x, y) => {
    const px = Math.floor(x), py = Math.floor(y);
    if (prev && prev[0] === px && prev[1] === py) return;
    if (prev && prev[0] !== px && prev[1] !== py) visitCell(px, prev[1]);  // corner: close the diagonal gap
    visitCell(px, py);
    prev = [px, py];
  };
  for (let k = 0; k < points.length; k++) {
    const [ax, ay] = points[k], [bx, by] = points[Math.min(k + 1, points.length - 1)];
    const steps = Math.max(1, Math.ceil(Math.hypot(bx - ax, by - ay) * 4));
    for (let s = 0; s <= steps; s++) visit(ax + ((bx - ax) * s) / steps, ay + ((by - ay) * s) / steps);
  }
  return out;
}

// The gland a line crosses most (0: none).
export function glandUnder(labels, cells) {
  const hits = new Map();
  cells.forEach((i) => { if (labels[i]) hits.set(labels[i], (hits.get(labels[i]) || 0) + 1); });
  return hits.size ? [...hits].sort((a, b) => b[1] - a[1])[0][0] : 0;
}

// Split gland ``id`` along the line through ``cells``: the line's pixels become background,
// each side of the line keeps or gets an id (the largest side keeps ``id``), crumbs (pieces
// under 2 % of the gland, at least 10 px) join the side they touch.
// Returns { labels, made: [new ids] } or { error }.
export function splitGland(mask, id, cells, maxId) {
  const { w, h, labels } = mask;
  if (![...cells].some((i) => labels[i] === id)) return { error: `the line does not cross gland ${id}` };
  const [x0, y0, x1, y1] = bbox(mask, (i) => labels[i] === id), size = area(labels, id);
  const piece = new Int32Array(labels.length), sizes = [0];  // 4-connected pieces without the line
  for (let y = y0; y <= y1; y++) {
    for (let x = x0; x <= x1; x++) {
      const s = y * w + x;
      if (labels[s] !== id || cells.has(s) || piece[s]) continue;
      const k = sizes.length, stack = [s];
      piece[s] = k; sizes.push(0);
      while (stack.length) {
        const i = stack.pop(), px = i % w, py = (i - px) / w;
        sizes[k]++;
        for (const [qx, qy] of [[px - 1, py], [px + 1, py], [px, py - 1], [px, py + 1]]) {
          const j = qy * w + qx;
          if (qx < x0 || qy < y0 || qx > x1 || qy > y1 || piece[j] || labels[j] !== id || cells.has(j)) continue;
          piece[j] = k; stack.push(j);
        }
      }
    }
  }
  const minimum = Math.max(10, 0.02 * size);
  const sides = sizes.map((n, k) => [k, n]).filter(([k, n]) => k && n >= minimum).sort((a, b) => b[1] - a[1]);
  if (sides.length < 2) return { error: `the line does not cut gland ${id} in two: draw it across the whole gland` };
  const first = nextId(labels);
  if (first + sides.length - 2 > maxId) return { error: `at most ${maxId} glands per mask` };
  const side = new Map(sides.map(([k], n) => [k, n === 0 ? id : first + n - 1]));
  const owner = new Int32Array(labels.length), queue = [];
  for (let y = y0; y <= y1; y++) {
    for (let x = x0; x <= x1; x++) {
      const i = y * w + x;
      if (side.has(piece[i])) { owner[i] = side.get(piece[i]); queue.push(i); }
    }
  }
  for (let q = 0; q < queue.length; q++) {  // crumbs join the nearest side, through 8-neighbours
    const i = queue[q], px = i % w, py = (i - px) / w;
    for (let dy = -1; dy <= 1; dy++) {
      for (let dx = -1; dx <= 1; dx++) {
        const qx = px + dx, qy = py + dy, j = qy * w + qx;
        if (qx < 0 || qy < 0 || qx >= w || qy >= h || owner[j] || !piece[j]) continue;
        owner[j] = owner[i]; queue.push(j);
      }
    }
  }
  const out = labels.slice();
  for (let y = y0; y <= y1; y++) {
    for (let x = x0; x <= x1; x++) {
      const i = y * w + x;
      if (labels[i] === id) out[i] = piece[i] ? owner[i] || id : 0;  // the line's pixels: background
    }
  }
  return { labels: out, made: sides.slice(1).map((_, n) => first + n) };
}

// Merge gland ``other`` into ``id``; background pixels between them (4-neighbours of both) join too.
export function mergeGlands(mask, id, other) {
  const { w, labels } = mask, [x0, y0, x1, y1] = bbox(mask, (i) => labels[i] === id || labels[i] === other, 1);
  const out = labels.slice();
  for (let y = y0; y <= y1; y++) {
    for (let x = x0; x <= x1; x++) {
      const i = y * w + x;
      if (labels[i]) continue;
      const near = [x > x0 ? labels[i - 1] : 0, x < x1 ? labels[i + 1] : 0, y > y0 ? labels[i - w] : 0,
        y < y1 ? labels[i + w] : 0];
      if (near.includes(id) && near.includes(other)) out[i] = id;
    }
  }
  for (let i = 0; i < out.length; i++) if (out[i] === other) out[i] = id;
  return { labels: out };
}

// Fill the holes of the glands ``ids``: returns { labels, filled: pixels (0 when none), ids: the glands filled }.
export function fillHoles(mask, ids) {
  let out = mask.labels, filled = 0;
  const changed = [];
  for (const g of ids) {
    const region = new Uint8Array(out.length);
    for (let i = 0; i < region.length; i++) if (out[i] === g) region[i] = 1;
    const current = { labels: out, w: mask.w, h: mask.h };
    const added = fillEnclosed(current, region, bbox(current, (i) => region[i] === 1, 1));
    if (added) { out = paintRegion(out, region, g); filled += added; changed.push(g); }
  }
  return { labels: out === mask.labels ? out.slice() : out, filled, ids: changed };
}

// One brush or eraser segment from a to b (radius r): the brush paints background with ``id``,
// the eraser clears ``id``. Changes ``labels`` in place (a stroke paints as the mouse moves;
// the editor keeps the copy to undo to) and returns how many pixels changed.
export function strokeSegment({ labels, w, h }, a, b, r, id, erase) {
  const x0 = Math.max(0, Math.floor(Math.min(a[0], b[0]) - r)), x1 = Math.min(w - 1, Math.ceil(Math.max(a[0], b[0]) + r));
  const y0 = Math.max(0, Math.floor(Math.min(a[1], b[1]) - r)), y1 = Math.min(h - 1, Math.ceil(Math.max(a[1], b[1]) + r));
  const dx = b[0] - a[0], dy = b[1] - a[1], len2 = dx * dx + dy * dy;
  let changed = 0;
  for (let y = y0; y <= y1; y++) {
    for (let x = x0; x <= x1; x++) {
      const cx = x + 0.5, cy = y + 0.5;
      const t = len2 ? Math.max(0, Math.min(1, ((cx - a[0]) * dx + (cy - a[1]) * dy) / len2)) : 0;
      if (Math.hypot(cx - a[0] - t * dx, cy - a[1] - t * dy) > r) continue;
      const i = y * w + x;
      if (erase ? labels[i] === id : labels[i] === 0) { labels[i] = erase ? 0 : id; changed++; }
    }
  }
  return changed;
}

// Ids renumbered 1..N in order (as the server stores them): { labels, map: old -> new }.
export function compactIds(labels) {
  const ids = [...glandIds(labels)].sort((a, b) => a - b), map = new Map(ids.map((id, k) => [id, k + 1]));
  if (ids.every((id, k) => id === k + 1)) return { labels, map };
  const out = labels.slice();
  for (let i = 0; i < out.length; i++) if (out[i]) out[i] = map.get(out[i]);
  return { labels: out, map };
}

// What the editor draws (src/pathoseg/server/web/overlay.js) and its review queue
// (src/pathoseg/server/web/queue.js), with Node's test runner: node --test tests/web/.
import assert from "node:assert/strict";
import { test } from "node:test";

import * as O from "../../src/pathoseg/server/web/overlay.js";
import * as Q from "../../src/pathoseg/server/web/queue.js";

function maskOf(rows) {
  const h = rows.length, w = rows[0].length, labels = new Uint16Array(w * h);
  rows.forEach((row, y) => [...row].forEach((c, x) => { labels[y * w + x] = c === "." ? 0 : +c; }));
  return { labels, w, h };
}

const px = (rgba, w, x, y) => Array.from(rgba.subarray(4 * (y * w + x), 4 * (y * w + x) + 4));

test("every gland keeps its own colour, accepted or not; the selected outline is yellow", () => {
  const m = maskOf(["........", ".1111.22", ".1111.22", ".1111.22", "........"]);
  const rgba = new Uint8ClampedArray(m.w * m.h * 4);
  const centres = O.paintGlands(rgba, m, { accepted: new Set([1, 2]), fill: 51 });
  assert.deepEqual(px(rgba, m.w, 1, 1).slice(0, 3), O.colour(1));  // an outline pixel, accepted: its colour, not white
  assert.deepEqual(px(rgba, m.w, 6, 1).slice(0, 3), O.colour(2));
  assert.notDeepEqual(O.colour(1), O.colour(2));
  assert.equal(px(rgba, m.w, 0, 0)[3], 0);  // background transparent
  assert.equal(px(rgba, m.w, 2, 2)[3], 51);  // interior at the fill opacity
  assert.deepEqual(centres[1], [2.5, 2, 12]);
  O.paintGlands(rgba, m, { selected: 2 });
  assert.deepEqual(px(rgba, m.w, 6, 1), [255, 235, 59, 255]);
});

test("unreviewed outlines are dashed, accepted and edited ones solid", () => {
  const row = "." + "1".repeat(30) + ".";
  const m = maskOf([".".repeat(32), row, row, row, ".".repeat(32)]);
  const opaque = (opts) => {
    const rgba = new Uint8ClampedArray(m.w * m.h * 4);
    O.paintGlands(rgba, m, { fill: 0, ...opts });
    let n = 0;
    for (let x = 1; x <= 30; x++) if (px(rgba, m.w, x, 1)[3] === 255) n++;  // the top outline
    return n;
  };
  assert.equal(opaque({ accepted: new Set([1]) }), 30);
  assert.equal(opaque({ edited: new Set([1]) }), 30);
  const dashed = opaque({});
  assert.ok(dashed > 10 && dashed < 20, `dashed outline: ${dashed} of 30 pixels`);
  assert.equal(O.reviewState(1, new Set([1]), new Set([1])), O.EDITED);
  assert.equal(O.reviewState(1, new Set([1]), new Set()), O.ACCEPTED);
  assert.equal(O.reviewState(1, new Set(), new Set()), O.UNREVIEWED);
});

test("repainting a stroke's box gives what a full repaint gives there, and leaves the rest", () => {
  const m = maskOf(["..........", ".111..222.", ".111..222.", ".111..222.", ".........."]);
  const rgba = new Uint8ClampedArray(m.w * m.h * 4);
  O.paintGlands(rgba, m, { accepted: new Set([2]) });
  const before = rgba.slice();
  m.labels[2 * m.w + 4] = 1;  // the brush adds one pixel to gland 1: (4, 2)
  assert.equal(O.paintGlands(rgba, m, { accepted: new Set([2]), rect: [4, 2, 5, 3] }), null);
  const full = new Uint8ClampedArray(rgba.length);
  O.paintGlands(full, m, { accepted: new Set([2]) });
  const [x0, y0, x1, y1] = O.clipRect([4, 2, 5, 3], m.w, m.h);
  assert.deepEqual([x0, y0, x1, y1], [3, 1, 6, 4]);  // grown by the pixels whose outline may flip
  for (let y = 0; y < m.h; y++) {
    for (let x = 0; x < m.w; x++) {
      const inside = x >= x0 && x < x1 && y >= y0 && y < y1;
      assert.deepEqual(px(rgba, m.w, x, y), px(inside ? full : before, m.w, x, y), `pixel (${x}, ${y})`);
    }
  }
  assert.notDeepEqual(px(rgba, m.w, 4, 2), px(before, m.w, 4, 2));
});

test("the heat map is transparent where the model sees nothing and warm where it is sure", () => {
  const rgba = new Uint8ClampedArray(3 * 4);
  O.paintHeat(rgba, Uint8Array.from([0, 128, 255]));
  assert.equal(rgba[3], 0);
  assert.ok(rgba[7] > 60 && rgba[7] < rgba[11]);
  assert.ok(rgba[8] > 240 && rgba[9] > 240, "probability 1 is bright yellow");
  assert.match(O.heatGradient(), /^linear-gradient\(to right, rgba\(0,0,4,0\.00\) 0%/);
});

test("a view that fits a box centres it and stops at the largest zoom", () => {
  const v = O.viewOf([0, 0, 200, 100], 400, 400);
  assert.equal(v.zoom, 2);
  assert.deepEqual([v.ox, v.oy], [0, 100]);
  const g = O.viewOf([10, 10, 12, 12], 400, 400, 0.25, 8);
  assert.equal(g.zoom, 8);
  assert.deepEqual([g.ox + 11 * g.zoom, g.oy + 11 * g.zoom], [200, 200]);  // the gland's centre mid-view
});

const IMAGES = [
  { id: 1, name: "a", status: "approved" }, { id: 2, name: "b", status: "predicted", uncertainty: 0.31 },
  { id: 3, name: "c", status: "corrected" }, { id: 4, name: "d", status: "new", predicting: true },
  { id: 5, name: "e", status: "new", flag: "too small" },
];

test("the queue's filters, progress and badges", () => {
  assert.deepEqual(Q.visible(IMAGES, "todo").map((im) => im.id), [2, 4, 5]);
  assert.deepEqual(Q.visible(IMAGES, "flagged").map((im) => im.id), [5]);
  assert.equal(Q.visible(IMAGES, "all").length, 5);
  assert.equal(Q.progress(IMAGES).text, "1 of 5 approved, 1 saved");
  assert.equal(Q.badge(IMAGES[1]), "predicted 0.31");
  assert.equal(Q.badge(IMAGES[3]), "predicting");
});

test("next and previous, and the next image that still needs review", () => {
  assert.equal(Q.neighbour(IMAGES, 2, 1).id, 3);
  assert.equal(Q.neighbour(IMAGES, 2, -1).id, 1);
  assert.equal(Q.neighbour(IMAGES, 5, 1), null);  // the end of the list
  assert.equal(Q.neighbour(IMAGES, null, 1).id, 1);
  assert.equal(Q.neighbour(IMAGES, 4, 1, true).id, 2);  // skips the flagged one and the approved one, wraps
  assert.equal(Q.neighbour(IMAGES, 2, 1, true).id, 3);
  assert.equal(Q.neighbour([{ id: 1, status: "approved" }, { id: 2, status: "predicted" }], 2, 1, true), null);
});

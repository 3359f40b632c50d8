// The editor's gland operations (src/pathoseg/server/web/labels.js), with Node's test runner:
// node --test tests/web/ (make test runs it).
import assert from "node:assert/strict";
import { test } from "node:test";

import * as L from "../../src/pathoseg/server/web/labels.js";
import { decodePng, encodeLabelPng } from "../../src/pathoseg/server/web/png.js";

// A w x h mask from rows of characters: "." background, digits are gland ids.
function maskOf(rows) {
  const h = rows.length, w = rows[0].length, labels = new Uint16Array(w * h);
  rows.forEach((row, y) => [...row].forEach((c, x) => { labels[y * w + x] = c === "." ? 0 : +c; }));
  return { labels, w, h };
}

function rowsOf({ labels, w, h }) {
  const out = [];
  for (let y = 0; y < h; y++) out.push([...labels.subarray(y * w, (y + 1) * w)].map((v) => (v ? String(v) : ".")).join(""));
  return out;
}

const TWO = maskOf([
  "..........",
  ".111..222.",
  ".111..222.",
  ".111..222.",
  "..........",
]);

test("ids, areas and the next id", () => {
  assert.deepEqual([...L.glandIds(TWO.labels)].sort(), [1, 2]);
  assert.equal(L.area(TWO.labels, 1), 9);
  assert.equal(L.nextId(TWO.labels), 3);
  assert.ok(L.hasGland(TWO.labels, 2, 65534) && !L.hasGland(TWO.labels, 3, 65534) && !L.hasGland(TWO.labels, 2, 1));
  assert.deepEqual(L.bbox(TWO, (i) => TWO.labels[i] === 2), [6, 1, 8, 3]);
});

test("delete leaves the input as it was", () => {
  const before = TWO.labels.slice();
  const { labels } = L.deleteGland(TWO.labels, 1);
  assert.deepEqual(TWO.labels, before);
  assert.equal(L.area(labels, 1), 0);
  assert.equal(L.area(labels, 2), 9);
});

test("merge joins the two glands and the background between them", () => {
  const touching = maskOf([".11.22.", ".11.22.", "......."]);
  const { labels } = L.mergeGlands(touching, 1, 2);
  assert.deepEqual(rowsOf({ ...touching, labels }), [".11111.", ".11111.", "......."]);
});

test("a line across a gland splits it in two, the line's pixels become background", () => {
  const wide = maskOf([
    "............",
    ".1111111111.",
    ".1111111111.",
    ".1111111111.",
    ".1111111111.",
    "............",
  ]);
  const cells = L.linePixels(wide, [[5.5, 0], [5.5, 6]]);
  assert.equal(L.glandUnder(wide.labels, cells), 1);
  const result = L.splitGland(wide, 1, cells, 65534);
  assert.deepEqual(result.made, [2]);
  assert.deepEqual(rowsOf({ ...wide, labels: result.labels }), [  // the larger side keeps the id
    "............",
    ".2222.11111.",
    ".2222.11111.",
    ".2222.11111.",
    ".2222.11111.",
    "............",
  ]);
  assert.match(L.splitGland(wide, 1, L.linePixels(wide, [[0, 0], [0.5, 0.5]]), 65534).error, /does not cross/);
  const edge = L.linePixels(wide, [[1.5, 0], [1.5, 2]]);  // only nicks the gland
  assert.match(L.splitGland(wide, 1, edge, 65534).error, /does not cut gland 1 in two/);
});

test("a polygon paints background only, a click follows the model's region and fills its holes", () => {
  const { region, n } = L.polygonRegion(TWO, [[0, 0], [10, 0], [10, 5], [0, 5]]);
  assert.equal(n, 50 - 18);  // every background pixel, none of the glands
  assert.equal(region[TWO.w + 1], 0);
  const empty = maskOf(["......", "......", "......", "......", "......"]);
  const prob = new Uint8Array(30);
  for (const i of [7, 8, 9, 13, 15, 19, 20, 21]) prob[i] = 200;  // a ring around pixel 14
  const click = L.clickRegion(empty, prob, 7, 77);
  assert.equal(click.n, 8);
  assert.equal(click.region[14], 1);  // the hole in the middle filled
  const painted = L.paintRegion(empty.labels, click.region, 1);
  assert.equal(L.area(painted, 1), 9);
});

test("fill holes fills enclosed background, not the outside", () => {
  const ring = maskOf(["......", ".1111.", ".1..1.", ".1111.", "......"]);
  const { labels, filled } = L.fillHoles(ring, [1]);
  assert.equal(filled, 2);
  assert.deepEqual(rowsOf({ ...ring, labels }), ["......", ".1111.", ".1111.", ".1111.", "......"]);
  assert.equal(L.fillHoles(TWO, [1, 2]).filled, 0);
});

test("the brush paints background only, the eraser only its gland", () => {
  const m = { ...TWO, labels: TWO.labels.slice() };
  const painted = L.strokeSegment(m, [4.5, 2.5], [5.5, 2.5], 0.8, 1, false);
  assert.ok(painted > 0 && m.labels[2 * m.w + 4] === 1 && m.labels[2 * m.w + 6] === 2);
  const erased = L.strokeSegment(m, [7.5, 2.5], [7.5, 2.5], 0.8, 1, true);
  assert.equal(erased, 0);  // gland 2 is not the eraser's gland
});

test("ids are renumbered 1..N in order before saving", () => {
  const gappy = maskOf(["3.7", "3.7"]);
  const { labels, map } = L.compactIds(gappy.labels);
  assert.deepEqual([...labels], [1, 0, 2, 1, 0, 2]);
  assert.equal(map.get(7), 2);
  assert.equal(L.compactIds(TWO.labels).labels, TWO.labels);  // already in order: the same array
});

test("a label PNG round-trips, 8 and 16 bit", async () => {
  for (const top of [200, 40000]) {
    const labels = Uint16Array.from([0, 1, top, 2, 0, top]);
    const back = await decodePng((await encodeLabelPng(labels, 3, 2)).buffer);
    assert.equal(back.w, 3);
    assert.deepEqual([...back.values], [...labels]);
  }
});

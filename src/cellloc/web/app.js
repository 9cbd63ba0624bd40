// The upload page: pick or drop a field's channel files, POST them to /predict, show the answer.
// Plain JS, no build step, nothing fetched from elsewhere: it works offline.
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = { info: null, files: {}, stack: null, result: null, selected: null };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "style") node.style.cssText = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function showError(message) {
  const box = $("#error");
  box.textContent = message || "";
  box.hidden = !message;
}

async function loadInfo() {
  let res;
  try {
    res = await fetch("/health");
  } catch (e) {
    $("#status").textContent = "the service does not answer; retrying...";
    return setTimeout(loadInfo, 2000);
  }
  const body = await res.json().catch(() => ({}));
  if (res.status !== 200) {
    $("#status").textContent = body.error || `service not ready (${res.status}); retrying...`;
    return setTimeout(loadInfo, 2000);
  }
  state.info = body;
  const model = body.classifier ? `model ${body.run} (${body.folds.join(", ")}), ${body.classes.length} classes`
                                : "no classifier loaded: cells without classes";
  $("#status").textContent = `task ${body.task} (${body.level} level) · ${model} · upload limit ` +
    `${(body.limits.max_bytes / 2 ** 20).toFixed(0)} MiB, ${(body.limits.max_pixels / 1e6).toFixed(1)} Mpx per image`;
  $("#channel-names").textContent = body.channels.join(", ");
  renderSlots();
}

// ---------------------------------------------------------------- files

function assignFiles(fileList) {
  const channels = state.info ? state.info.channels : [];
  const unknown = [];
  for (const f of fileList) {
    const m = f.name.match(/_([A-Za-z0-9]+)\.(png|tiff?|jpe?g)$/i);
    if (m && channels.includes(m[1].toLowerCase())) {
      state.files[m[1].toLowerCase()] = f;
      state.stack = null;
    } else if (/\.tiff?$/i.test(f.name) && fileList.length === 1) {
      state.stack = f;
      state.files = {};
    } else {
      unknown.push(f.name);
    }
  }
  showError(unknown.length ? `not a channel file of this task (${channels.join(", ")}): ${unknown.join(", ")}` : "");
  renderSlots();
}

function renderSlots() {
  const slots = $("#slots");
  slots.replaceChildren();
  if (state.stack) {
    slots.append(el("span", { class: "slot ok" }, `all channels: ${state.stack.name}`));
  } else {
    for (const c of state.info.channels) {
      const f = state.files[c];
      slots.append(el("span", { class: "slot" + (f ? " ok" : "") }, `${c}: ${f ? f.name : "missing"}`));
    }
  }
  const complete = state.stack || state.info.channels.every((c) => state.files[c]);
  $("#run").disabled = !complete;
}

function setupDrop() {
  const drop = $("#drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    assignFiles([...e.dataTransfer.files]);
  });
  $("#pick").addEventListener("change", (e) => assignFiles([...e.target.files]));
  $("#run").addEventListener("click", predict);
}

// ---------------------------------------------------------------- predict

async function predict() {
  const form = new FormData();
  if (state.stack) form.append(state.info.limits.stack_field, state.stack, state.stack.name);
  else for (const c of state.info.channels) form.append(c, state.files[c], state.files[c].name);
  $("#run").disabled = true;
  $("#progress").textContent = "segmenting and classifying...";
  showError("");
  const t0 = performance.now();
  try {
    const res = await fetch("/predict?overlay=true", { method: "POST", body: form });
    const body = await res.json().catch(() => ({ error: `answer ${res.status} is not JSON` }));
    if (!res.ok) {
      const wait = res.headers.get("Retry-After");
      throw new Error(`${res.status}: ${body.error || "request failed"}${wait ? ` (retry in ${wait} s)` : ""}`);
    }
    $("#progress").textContent = `done in ${((performance.now() - t0) / 1000).toFixed(1)} s`;
    showResult(body);
  } catch (e) {
    $("#progress").textContent = "";
    showError(e.message);
  } finally {
    $("#run").disabled = false;
  }
}

function colourOf(k) {
  return k === undefined || k < 0 || !state.info.colours.length ? "#ffffff" : state.info.colours[k];
}

function bars(scores, names, limit) {
  const order = scores.map((s, k) => [s, k]).sort((a, b) => b[0] - a[0]).slice(0, limit);
  const box = el("div");
  for (const [s, k] of order) {
    const fill = el("div", { class: "fill", style: `width:${(100 * s).toFixed(1)}%;background:${colourOf(k)}` });
    box.append(el("div", { class: "bar" },
      el("span", { class: "swatch", style: `background:${colourOf(k)}` }),
      el("div", { class: "track" }, fill, el("span", { class: "name" }, names[k])),
      el("span", {}, s.toFixed(3))));
  }
  return box;
}

function showResult(body) {
  state.result = body;
  state.selected = null;
  $("#result").hidden = false;
  const f = body.field;
  const dl = $("#summary");
  dl.replaceChildren();
  const rows = [["size", `${f.width} x ${f.height} px, ${f.channels.length} channels, ${f.dtype}`],
    ["cells", f.n_cells], ["run", body.run || "none (segmentation only)"],
    ["time", `${body.seconds.total.toFixed(2)} s (segment ${body.seconds.segment.toFixed(2)}, classify ${body.seconds.classify.toFixed(2)})`]];
  if (f.top.length) rows.push(["top classes", f.top.map((t) => `${t.name} ${t.score.toFixed(2)}`).join(", ")]);
  for (const [k, v] of rows) dl.append(el("dt", {}, k), el("dd", {}, v));
  $("#field-classes").replaceChildren(f.scores ? bars(f.scores, body.classes, 6) : "");

  const img = $("#overlay");
  img.onload = () => { sizeCanvas(); };
  img.src = "data:image/png;base64," + body.overlay.png;

  const tbody = $("#cells tbody");
  tbody.replaceChildren();
  for (const c of body.cells) {
    const top = c.top[0];
    const tr = el("tr", { "data-cell": c.id },
      el("td", {}, c.id),
      el("td", {}, el("span", { class: "swatch", style: `background:${colourOf(top ? top.class : -1)}` }), top ? top.name : "-"),
      el("td", {}, top ? top.score.toFixed(3) : "-"),
      el("td", {}, c.top.slice(1).map((t) => `${t.name} ${t.score.toFixed(2)}`).join(", ") || "-"),
      el("td", {}, c.area), el("td", {}, c.bbox.join(", ")), el("td", {}, c.edge ? "yes" : ""));
    tr.addEventListener("click", () => selectCell(c.id));
    tbody.append(tr);
  }
  $("#cell-view").replaceChildren("no cell selected");
  $("#cell-title").textContent = "Cell";
}

function sizeCanvas() {
  const img = $("#overlay"), canvas = $("#highlight");
  canvas.width = img.clientWidth;
  canvas.height = img.clientHeight;
  drawHighlight();
}

// field pixels -> displayed overlay pixels
function displayScale() {
  const img = $("#overlay");
  return state.result.overlay.scale * img.clientWidth / img.naturalWidth;
}

function drawHighlight() {
  const canvas = $("#highlight"), ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const c = state.result && state.result.cells.find((x) => x.id === state.selected);
  if (!c) return;
  const s = displayScale(), [x0, y0, x1, y1] = c.bbox;
  ctx.strokeStyle = "#ffffff";
  ctx.lineWidth = 2;
  ctx.setLineDash([5, 3]);
  ctx.strokeRect(x0 * s - 3, y0 * s - 3, (x1 - x0) * s + 6, (y1 - y0) * s + 6);
}

function selectCell(id, scroll = false) {
  state.selected = id;
  const c = state.result.cells.find((x) => x.id === id);
  for (const tr of document.querySelectorAll("#cells tbody tr")) {
    tr.classList.toggle("selected", Number(tr.dataset.cell) === id);
  }
  const tr = document.querySelector(`#cells tbody tr[data-cell="${id}"]`);
  if (tr && scroll) tr.scrollIntoView({ block: "nearest" });
  drawHighlight();
  $("#cell-title").textContent = `Cell ${id}`;
  const crop = el("canvas", { id: "crop", width: 180, height: 180 });
  const img = $("#overlay"), s = state.result.overlay.scale, [x0, y0, x1, y1] = c.bbox;
  const side = Math.max(x1 - x0, y1 - y0) * 1.15 * s, cx = (x0 + x1) / 2 * s, cy = (y0 + y1) / 2 * s;
  crop.getContext("2d").drawImage(img, cx - side / 2, cy - side / 2, side, side, 0, 0, 180, 180);
  const facts = el("p", { class: "muted" }, `area ${c.area} px, bbox ${c.bbox.join(", ")}${c.edge ? ", touches the edge" : ""}`);
  const view = $("#cell-view");
  view.classList.remove("muted");
  view.replaceChildren(crop, facts, c.scores ? bars(c.scores, state.result.classes, 8) : "no classifier: no scores");
}

function setupOverlayClicks() {
  $("#overlay").addEventListener("click", (e) => {
    if (!state.result) return;
    const rect = e.target.getBoundingClientRect(), s = displayScale();
    const x = (e.clientX - rect.left) / s, y = (e.clientY - rect.top) / s;
    let best = null, bestD = Infinity;
    for (const c of state.result.cells) {
      const [x0, y0, x1, y1] = c.bbox;
      if (x < x0 || x >= x1 || y < y0 || y >= y1) continue;
      const d = (c.centroid[0] - x) ** 2 + (c.centroid[1] - y) ** 2;
      if (d < bestD) { bestD = d; best = c; }
    }
    if (best) selectCell(best.id, true);
  });
  window.addEventListener("resize", () => state.result && sizeCanvas());
}

setupDrop();
setupOverlayClicks();
loadInfo();

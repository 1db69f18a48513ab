// siamsearch web page: plain JS calling the REST API of the same server (no build step, no CDN).
"use strict";
const API = "/api/v1";
const $ = (sel) => document.querySelector(sel);
const state = { files: { a: null, b: null, q: null }, enrol: [], info: null, page: 0, pageSize: 12, camTarget: null };

function keyHeaders() {
  const k = $("#api-key").value.trim();
  return k ? { "X-API-Key": k } : {};
}
function toast(msg) {
  const t = $("#toast"); t.textContent = msg; t.classList.remove("hidden");
  clearTimeout(toast.timer); toast.timer = setTimeout(() => t.classList.add("hidden"), 5000);
}
async function api(method, path, body) {
  const r = await fetch(API + path, { method, body, headers: keyHeaders() });
  const js = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error((js.error && js.error.message) || `HTTP ${r.status}`);
  return js;
}
async function thumb(gallery, id) {  // thumbnails through fetch so that the API key header is sent
  const r = await fetch(`${API}/galleries/${encodeURIComponent(gallery)}/images/${id}`, { headers: keyHeaders() });
  if (!r.ok) return "";
  return URL.createObjectURL(await r.blob());
}
function gallery() { return $("#gallery-select").value; }
function fmt(x, n = 4) { return x === null || x === undefined ? "n/a" : Number(x).toFixed(n); }
function el(tag, attrs = {}, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) { if (k === "class") e.className = v; else e.setAttribute(k, v); }
  for (const kid of kids) e.append(kid);
  return e;
}

// ---- tabs
document.querySelectorAll(".tab").forEach((b) => b.addEventListener("click", () => {
  document.querySelectorAll(".tab").forEach((x) => x.classList.toggle("active", x === b));
  document.querySelectorAll(".panel").forEach((p) => p.classList.toggle("active", p.id === "tab-" + b.dataset.tab));
  if (b.dataset.tab === "gallery") loadIdentities();
  if (b.dataset.tab === "map") loadMap();
}));

// ---- drop zones
function setImage(slot, file) {
  state.files[slot] = file;
  const zone = $("#drop-" + slot), img = zone.querySelector("img");
  img.src = URL.createObjectURL(file); zone.classList.add("has");
}
["a", "b", "q"].forEach((slot) => {
  const zone = $("#drop-" + slot), input = $("#file-" + slot);
  input.addEventListener("change", () => { if (input.files[0]) setImage(slot, input.files[0]); });
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault(); zone.classList.remove("over");
    if (e.dataTransfer.files[0]) setImage(slot, e.dataTransfer.files[0]);
  });
});

// ---- header: model and calibration
async function loadInfo() {
  try {
    const info = await api("GET", "/info");
    state.info = info;
    $("#model-badge").textContent = `model ${info.model.fingerprint} · d=${info.model.embedding_dim}`;
    const c = info.calibration;
    $("#calibration").textContent = c
      ? `threshold ${fmt(c.threshold)} (${c.rule}${c.target_far ? " ≤ " + c.target_far : ""}) · FAR ${fmt(c.far, 4)} ` +
        `[${fmt(c.far_ci95[0], 4)}, ${fmt(c.far_ci95[1], 4)}] · TAR ${fmt(c.tar, 3)} [${fmt(c.tar_ci95[0], 3)}, ` +
        `${fmt(c.tar_ci95[1], 3)}] on ${c.n_genuine} genuine / ${c.n_impostor} impostor pairs`
      : "not calibrated: give a threshold to verify";
    const sel = $("#gallery-select"), keep = sel.value;
    sel.innerHTML = "";
    for (const g of info.galleries) sel.append(el("option", { value: g.name }, `${g.name} (${g.size} images, ${g.identities} identities)`));
    if (keep) sel.value = keep;
  } catch (e) { $("#model-badge").textContent = "not connected"; toast(e.message); }
}
$("#api-key").addEventListener("change", () => { localStorage.setItem("siamsearch-key", $("#api-key").value); loadInfo(); });

// ---- verify
$("#verify-btn").addEventListener("click", async () => {
  if (!state.files.a || !state.files.b) return toast("choose two images first");
  const fd = new FormData();
  fd.append("image_a", state.files.a); fd.append("image_b", state.files.b);
  const t = $("#verify-threshold").value; if (t !== "") fd.append("threshold", t);
  const box = $("#verify-result");
  try {
    const r = await api("POST", "/verify", fd);
    const pctD = Math.min(100, (r.distance / 2) * 100), pctT = Math.min(100, (r.threshold / 2) * 100);
    const cal = r.calibration;
    box.innerHTML = "";
    box.append(
      el("div", { class: "verdict " + (r.is_same ? "same" : "different"), id: "verdict" }, r.is_same ? "SAME" : "DIFFERENT"),
      el("div", {}, `distance ${fmt(r.distance)} ${r.is_same ? "≤" : ">"} threshold ${fmt(r.threshold)}`),
      (() => { const m = el("div", { class: "meter" }, el("div", { class: "fill" }), el("div", { class: "thr" }));
               m.children[0].style.width = pctD + "%"; m.children[1].style.left = pctT + "%"; return m; })(),
      el("div", { class: "muted" }, cal
        ? `threshold from calibration (${cal.rule}): FAR ${fmt(cal.far)} [${fmt(cal.far_ci95[0])}, ${fmt(cal.far_ci95[1])}], ` +
          `TAR ${fmt(cal.tar)} [${fmt(cal.tar_ci95[0])}, ${fmt(cal.tar_ci95[1])}]`
        : "explicit threshold (no calibration evidence)"));
    box.classList.add("shown");
  } catch (e) { toast(e.message); }
});

// ---- search
$("#search-btn").addEventListener("click", async () => {
  if (!state.files.q) return toast("choose a query image first");
  const fd = new FormData();
  fd.append("image", state.files.q); fd.append("k", $("#k").value || "8");
  fd.append("open_set", $("#open-set").checked ? "true" : "false");
  try {
    const r = await api("POST", `/galleries/${encodeURIComponent(gallery())}/search`, fd);
    const pred = $("#prediction");
    pred.innerHTML = "";
    const unknown = r.prediction === "unknown";
    pred.append(el("span", { class: unknown ? "unknown" : "" }, unknown ? "unknown" : `→ ${r.prediction ?? "(unlabelled)"}`));
    if (r.open_set) pred.append(el("div", { class: "muted" }, `open set: unknown when nearest > ${fmt(r.threshold)} (${r.threshold_source})`));
    const grid = $("#search-results"); grid.innerHTML = "";
    for (const n of r.neighbors) {
      const img = el("img", { alt: n.path });
      const match = r.threshold !== null && n.distance <= r.threshold;
      grid.append(el("div", { class: "card neighbor" + (match ? " match" : "") }, img,
        el("div", { class: "meta" }, el("b", {}, `#${n.rank} ${n.label ?? "-"}`), `d = ${fmt(n.distance)}`)));
      thumb(r.gallery, n.id).then((u) => { img.src = u; });
    }
  } catch (e) { toast(e.message); }
});

// ---- gallery: identities, enrol, remove
async function loadIdentities() {
  if (!gallery()) return;
  try {
    const r = await api("GET", `/galleries/${encodeURIComponent(gallery())}/identities?offset=${state.page * state.pageSize}&limit=${state.pageSize}`);
    const pages = Math.max(1, Math.ceil(r.total / state.pageSize));
    $("#page-info").textContent = `${r.total} identities · page ${state.page + 1} / ${pages}`;
    const list = $("#identity-list"); list.innerHTML = "";
    for (const it of r.identities) {
      const thumbs = el("div", { class: "thumbs" });
      const del = el("button", { class: "del-identity" }, "remove identity");
      del.addEventListener("click", () => removeIdentity(it.identity));
      list.append(el("div", { class: "identity", "data-identity": it.identity },
        el("h4", {}, it.identity, el("span", { class: "muted" }, `${it.images} images`), del), thumbs));
      for (const id of it.image_ids.slice(0, 12)) {
        const img = el("img", { alt: String(id), "data-id": String(id) });
        const x = el("button", { class: "del-image", title: "remove this image" }, "×");
        x.addEventListener("click", () => removeImage(id));
        thumbs.append(el("div", { class: "thumb" }, img, x));
        thumb(r.gallery, id).then((u) => { img.src = u; });
      }
    }
  } catch (e) { toast(e.message); }
}
$("#prev-page").addEventListener("click", () => { if (state.page > 0) { state.page--; loadIdentities(); } });
$("#next-page").addEventListener("click", () => { state.page++; loadIdentities(); });
$("#enrol-files").addEventListener("change", () => { state.enrol = Array.from($("#enrol-files").files); });
$("#enrol-btn").addEventListener("click", async () => {
  const ident = $("#enrol-identity").value.trim();
  if (!ident || !state.enrol.length) return toast("give an identity and at least one image");
  const fd = new FormData(); fd.append("identity", ident);
  for (const f of state.enrol) fd.append("files", f);
  $("#enrol-status").textContent = "enrolling…";
  try {
    const r = await api("POST", `/galleries/${encodeURIComponent(gallery())}/images`, fd);
    $("#enrol-status").textContent = `enrolled ${r.ids.length} image(s) as ${r.identity}: ids ${r.ids.join(", ")}`;
    state.enrol = []; $("#enrol-files").value = "";
    loadIdentities(); loadInfo();
  } catch (e) { $("#enrol-status").textContent = ""; toast(e.message); }
});
async function removeImage(id) {
  try { await api("DELETE", `/galleries/${encodeURIComponent(gallery())}/images/${id}`); loadIdentities(); loadInfo(); }
  catch (e) { toast(e.message); }
}
async function removeIdentity(name) {
  if (!confirm(`Remove every image of ${name}?`)) return;
  try { await api("DELETE", `/galleries/${encodeURIComponent(gallery())}/identities/${encodeURIComponent(name)}`); loadIdentities(); loadInfo(); }
  catch (e) { toast(e.message); }
}

// ---- map
const PALETTE = ["#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6", "#bcf60c",
  "#fabebe", "#008080", "#e6beff", "#9a6324", "#fffac8", "#800000", "#aaffc3"];
function colour(i) { return i < PALETTE.length ? PALETTE[i] : `hsl(${(i * 137.508) % 360}, 70%, 60%)`; }
async function loadMap() {
  if (!gallery()) return;
  try {
    const r = await api("GET", `/galleries/${encodeURIComponent(gallery())}/map`);
    const cv = $("#map-canvas"), ctx = cv.getContext("2d");
    ctx.clearRect(0, 0, cv.width, cv.height);
    const xs = r.points.map((p) => p.x), ys = r.points.map((p) => p.y);
    const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
    const labels = [...new Set(r.points.map((p) => p.label ?? "(none)"))].sort();
    const idx = Object.fromEntries(labels.map((l, i) => [l, i]));
    const pad = 20, sx = (cv.width - 2 * pad) / ((x1 - x0) || 1), sy = (cv.height - 2 * pad) / ((y1 - y0) || 1);
    for (const p of r.points) {
      ctx.fillStyle = colour(idx[p.label ?? "(none)"]);
      ctx.beginPath(); ctx.arc(pad + (p.x - x0) * sx, cv.height - pad - (p.y - y0) * sy, 4, 0, 2 * Math.PI); ctx.fill();
    }
    const legend = $("#map-legend"); legend.innerHTML = "";
    legend.append(el("span", { class: "muted" }, `${r.points.length} of ${r.total} images; PCA explains ` +
      `${(100 * (r.explained_variance[0] + r.explained_variance[1])).toFixed(1)}% of the variance`));
    for (const l of labels.slice(0, 60)) { const i = el("i"); i.style.background = colour(idx[l]); legend.append(el("span", {}, i, l)); }
  } catch (e) { toast(e.message); }
}

// ---- webcam (getUserMedia): capture a frame as a PNG into a drop zone or the enrol list
let stream = null;
document.querySelectorAll(".cam").forEach((b) => b.addEventListener("click", async (e) => {
  e.preventDefault(); e.stopPropagation();
  state.camTarget = b.dataset.target;
  $("#camera").classList.remove("hidden"); $("#camera-error").textContent = "";
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video: true });
    $("#camera-video").srcObject = stream;
  } catch (err) { $("#camera-error").textContent = "no camera available: " + err.message; }
}));
function closeCamera() {
  if (stream) stream.getTracks().forEach((t) => t.stop());
  stream = null; $("#camera").classList.add("hidden");
}
$("#camera-close").addEventListener("click", closeCamera);
$("#camera-snap").addEventListener("click", () => {
  const v = $("#camera-video"); if (!v.videoWidth) return;
  const cv = document.createElement("canvas"); cv.width = v.videoWidth; cv.height = v.videoHeight;
  cv.getContext("2d").drawImage(v, 0, 0);
  cv.toBlob((blob) => {
    const file = new File([blob], "webcam.png", { type: "image/png" });
    if (state.camTarget === "enrol") { state.enrol.push(file); $("#enrol-status").textContent = `${state.enrol.length} image(s) ready`; }
    else setImage(state.camTarget, file);
    closeCamera();
  }, "image/png");
});

$("#api-key").value = localStorage.getItem("siamsearch-key") || "";
loadInfo();

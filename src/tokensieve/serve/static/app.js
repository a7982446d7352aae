// tokensieve web page: calls the service's JSON API (/v1/methods, /v1/compress) and shows
// the result. Plain JavaScript, no dependencies; user text only ever goes into the page
// through textContent / DOM nodes, never as HTML.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const el = {
    form: $("compress-form"), text: $("text"), file: $("file"), fileName: $("file-name"),
    textCount: $("text-count"), question: $("question"), method: $("method"),
    granularity: $("granularity"), format: $("format"), keep: $("keep"),
    keepValue: $("keep-value"), button: $("compress"), busy: $("busy"),
    error: $("error"), errorTitle: $("error-title"), errorMessage: $("error-message"),
    results: $("results"), compressed: $("compressed"), copy: $("copy"),
    copyStatus: $("copy-status"), heatmap: $("heatmap"), notes: $("notes"),
    keyBox: $("key-box"), key: $("api-key"), keyForget: $("key-forget"),
    serverInfo: $("server-info"),
  };
  const KEY_STORE = "tokensieve.apiKey";
  const MAX_FILE_BYTES = 20 * 1024 * 1024;
  let apiKey = "";
  let busy = false;

  // ------------------------------------------------------------ API key (tab memory only)
  try { apiKey = sessionStorage.getItem(KEY_STORE) || ""; } catch (e) { apiKey = ""; }
  if (apiKey) { el.key.value = apiKey; el.keyBox.hidden = false; }

  function setKey(value) {
    apiKey = value.trim();
    try {
      if (apiKey) sessionStorage.setItem(KEY_STORE, apiKey);
      else sessionStorage.removeItem(KEY_STORE);
    } catch (e) { /* storage disabled: keep it in memory */ }
  }

  function askForKey() {
    el.keyBox.hidden = false;
    el.key.focus();
  }

  el.key.addEventListener("input", () => setKey(el.key.value));
  el.key.addEventListener("change", () => { if (apiKey) loadMethods(); });
  el.keyForget.addEventListener("click", () => { el.key.value = ""; setKey(""); });

  // ------------------------------------------------------------ API calls

  class ApiError extends Error {
    constructor(status, type, message) {
      super(message);
      this.status = status;
      this.type = type;
    }
  }

  async function api(path, body) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (apiKey) headers.Authorization = "Bearer " + apiKey;
    let response;
    try {
      response = await fetch(path, {
        method: body === undefined ? "GET" : "POST", headers,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (e) {
      throw new ApiError(0, "network", "Could not reach the server (" + e.message + ").");
    }
    const raw = await response.text();
    let data = null;
    try { data = raw ? JSON.parse(raw) : null; } catch (e) { data = null; }
    if (!response.ok) {
      const err = data && data.error ? data.error : null;
      let message = err && err.message ? String(err.message) :
        "HTTP " + response.status + " " + response.statusText + (raw ? ": " + raw.slice(0, 300) : "");
      if (err && Array.isArray(err.details)) {
        const parts = err.details.map((d) => (d.loc || []).slice(1).join(".") + ": " + d.msg);
        if (parts.length) message += "\n" + parts.join("\n");
      }
      throw new ApiError(response.status, err && err.type ? String(err.type) : "http_error",
                         message);
    }
    if (data === null) throw new ApiError(response.status, "bad_response",
                                          "The server's answer is not JSON.");
    return data;
  }

  // ------------------------------------------------------------ error box and busy state

  function showError(err) {
    const status = err.status ? " (" + err.status + ")" : "";
    el.errorTitle.textContent = (err.type ? err.type.replace(/_/g, " ") : "error") + status;
    el.errorMessage.textContent = err.message || String(err);
    el.error.hidden = false;
    if (err.status === 401) {
      el.errorMessage.textContent += "\nEnter the server's API key above and try again.";
      askForKey();
    }
  }

  function clearError() {
    el.error.hidden = true;
    el.errorMessage.textContent = "";
  }

  function setBusy(on) {
    busy = on;
    el.button.disabled = on;
    el.busy.hidden = !on;
    el.form.setAttribute("aria-busy", on ? "true" : "false");
  }

  // ------------------------------------------------------------ options from the server

  function fillSelect(select, values, preferred) {
    const current = select.value || preferred;
    select.replaceChildren();
    for (const value of values) {
      const option = document.createElement("option");
      option.value = value;
      option.textContent = value;
      select.appendChild(option);
    }
    select.value = values.includes(current) ? current : values[0];
  }

  async function loadMethods() {
    try {
      const data = await api("/v1/methods");
      fillSelect(el.method, data.methods, data.default_method || "default");
      fillSelect(el.granularity, data.granularities, "auto");
      fillSelect(el.format, data.formats, "text");
    } catch (err) {
      if (err.status === 401) askForKey();  // the defaults still work once a key is given
      else showError(err);
    }
  }

  async function loadHealth() {
    try {
      const data = await api("/health");
      el.serverInfo.textContent = "model: " + data.model + " · version " + data.version +
        (data.status === "ok" ? "" : " · " + data.status);
    } catch (e) { /* the info line is optional */ }
  }

  // ------------------------------------------------------------ input: text, file, drop

  function updateCount() {
    const n = el.text.value.length;
    el.textCount.textContent = n.toLocaleString() + (n === 1 ? " character" : " characters");
  }

  function readFile(file) {
    clearError();
    if (file.size > MAX_FILE_BYTES) {
      showError({ type: "file_too_large", message: file.name + " is " +
        (file.size / 1048576).toFixed(1) + " MB; the page reads files up to 20 MB." });
      return;
    }
    const reader = new FileReader();
    reader.onload = () => {
      const text = String(reader.result);
      if (text.includes("\u0000")) {
        showError({ type: "not_text", message: file.name + " does not look like a text file." });
        return;
      }
      el.text.value = text;
      el.fileName.textContent = "· from " + file.name;
      updateCount();
    };
    reader.onerror = () => showError({ type: "file_error",
      message: "Could not read " + file.name + ": " + (reader.error && reader.error.message) });
    reader.readAsText(file);
  }

  el.text.addEventListener("input", () => { el.fileName.textContent = ""; updateCount(); });
  el.file.addEventListener("change", () => {
    if (el.file.files && el.file.files[0]) readFile(el.file.files[0]);
    el.file.value = "";
  });
  el.text.addEventListener("dragover", (e) => {
    if (e.dataTransfer && Array.from(e.dataTransfer.types).includes("Files")) {
      e.preventDefault();
      el.text.classList.add("drop-target");
    }
  });
  el.text.addEventListener("dragleave", () => el.text.classList.remove("drop-target"));
  el.text.addEventListener("drop", (e) => {
    el.text.classList.remove("drop-target");
    if (e.dataTransfer && e.dataTransfer.files && e.dataTransfer.files.length) {
      e.preventDefault();
      readFile(e.dataTransfer.files[0]);
    }
  });
  el.text.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      el.form.requestSubmit();
    }
  });
  el.keep.addEventListener("input", () => {
    el.keepValue.textContent = Number(el.keep.value).toFixed(2);
  });

  // ------------------------------------------------------------ compress and show

  async function compress(event) {
    event.preventDefault();
    if (busy) return;
    clearError();
    const text = el.text.value;
    const body = {
      text, keep: Number(el.keep.value), method: el.method.value,
      granularity: el.granularity.value, format: el.format.value, include_scores: true,
    };
    const question = el.question.value.trim();
    if (question) body.question = question;
    setBusy(true);
    const t0 = performance.now();
    try {
      const data = await api("/v1/compress", body);
      render(text, data, (performance.now() - t0) / 1000);
    } catch (err) {
      showError(err);
    } finally {
      setBusy(false);
    }
  }

  function render(original, data, seconds) {
    $("original-tokens").textContent = String(data.original_tokens);
    $("compressed-tokens").textContent = String(data.compressed_tokens);
    $("target-tokens").textContent = String(data.target_tokens);
    $("kept-fraction").textContent = (100 * data.kept_fraction).toFixed(1) + "%";
    const server = data.timings && typeof data.timings.total === "number" ?
      " (server " + data.timings.total.toFixed(2) + " s)" : "";
    $("elapsed").textContent = seconds.toFixed(2) + " s" + server;
    $("used-method").textContent = data.method;
    $("used-granularity").textContent = data.granularity;
    el.notes.replaceChildren();
    for (const note of data.notes || []) {
      const li = document.createElement("li");
      li.textContent = note;
      el.notes.appendChild(li);
    }
    el.notes.hidden = !(data.notes && data.notes.length);
    el.compressed.value = data.text;
    el.copyStatus.textContent = "";
    renderHeatmap(original, data.scores || []);
    el.results.hidden = false;
  }

  // rank of each score in [0, 1] (ties share their mean rank): robust to outliers
  function normalise(scores) {
    const order = scores.map((s, i) => [s, i]).sort((a, b) => a[0] - b[0]);
    const out = new Array(scores.length).fill(0.5);
    if (scores.length < 2) return out;
    for (let i = 0; i < order.length;) {
      let j = i;
      while (j + 1 < order.length && order[j + 1][0] === order[i][0]) j++;
      const rank = (i + j) / 2 / (order.length - 1);
      for (let k = i; k <= j; k++) out[order[k][1]] = rank;
      i = j + 1;
    }
    return out;
  }

  function unitSpan(unit, value) {
    const span = document.createElement("span");
    span.className = "u " + (unit.kept ? "kept" : "dropped") + (unit.protected ? " protected" : "");
    span.style.setProperty("--v", value.toFixed(3));
    span.textContent = unit.text;
    span.dataset.score = String(unit.score);
    span.dataset.kept = unit.kept ? "1" : "0";
    span.title = "score " + Number(unit.score).toFixed(2) + " · " +
      (unit.protected ? "protected" : unit.kept ? "kept" : "dropped");
    return span;
  }

  function renderHeatmap(original, units) {
    const values = normalise(units.map((u) => Number(u.score)));
    const frag = document.createDocumentFragment();
    // the server's offsets count code points: map them to UTF-16 (see offsets.js)
    const at = utf16Offsets(original);
    const start = (u) => at[u.start];
    const end = (u) => at[u.end];
    // units are spans of the original text (in order) unless the format extracted them
    // (json): then they are shown one after the other
    let inOrder = true;
    let pos = 0;
    for (const u of units) {
      if (!(u.start >= 0 && u.end < at.length) || start(u) < pos ||
          original.slice(start(u), end(u)) !== u.text) { inOrder = false; break; }
      pos = end(u);
    }
    pos = 0;
    units.forEach((u, i) => {
      if (inOrder) {
        if (start(u) > pos) frag.appendChild(document.createTextNode(original.slice(pos, start(u))));
        pos = end(u);
      } else if (i > 0) {
        frag.appendChild(document.createTextNode(" "));
      }
      frag.appendChild(unitSpan(u, values[i]));
    });
    if (inOrder && pos < original.length) {
      frag.appendChild(document.createTextNode(original.slice(pos)));
    }
    el.heatmap.replaceChildren(frag);
  }

  // ------------------------------------------------------------ copy

  async function copyCompressed() {
    const text = el.compressed.value;
    let ok = false;
    if (navigator.clipboard && window.isSecureContext) {
      try { await navigator.clipboard.writeText(text); ok = true; } catch (e) { ok = false; }
    }
    if (!ok) {  // plain http on another host: the old way
      el.compressed.focus();
      el.compressed.select();
      try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
    }
    el.copyStatus.textContent = ok ? "Copied." : "Copy failed: select the text and copy it.";
  }

  el.copy.addEventListener("click", copyCompressed);
  el.form.addEventListener("submit", compress);

  updateCount();
  loadHealth();
  loadMethods();
})();

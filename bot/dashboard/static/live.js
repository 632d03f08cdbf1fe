// forgeci dashboard: the live parts. Pages are complete without this script; it follows /events to refresh
// server-rendered fragments, and a job's log over /jobs/logs, rendering ANSI colours like bot/dashboard/ansi.py.
"use strict";

(function () {
  const ESCAPE = /\x1b\[([0-9;:?]*)([@-~])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-Z\\-_]?/g;
  const LEVELS = [0, 95, 135, 175, 215, 255];

  function hex(r, g, b) {
    return "#" + [r, g, b].map((c) => Math.min(c, 255).toString(16).padStart(2, "0")).join("");
  }

  function palette(n) {
    if (n < 16) return String(n);
    if (n < 232) { n -= 16; return hex(LEVELS[Math.floor(n / 36)], LEVELS[Math.floor(n / 6) % 6], LEVELS[n % 6]); }
    const v = 8 + 10 * (n - 232);
    return hex(v, v, v);
  }

  function applySgr(style, params) {
    const codes = params ? params.split(/[;:]/).map((p) => (/^\d+$/.test(p) ? parseInt(p, 10) : 0)) : [0];
    let s = Object.assign({}, style);
    for (let i = 0; i < codes.length; i++) {
      const c = codes[i];
      if (c === 0) s = {};
      else if (c === 1) s.bold = true;
      else if (c === 2) s.dim = true;
      else if (c === 3) s.italic = true;
      else if (c === 4) s.underline = true;
      else if (c === 22) { s.bold = false; s.dim = false; }
      else if (c === 23) s.italic = false;
      else if (c === 24) s.underline = false;
      else if ((c >= 30 && c <= 37) || (c >= 90 && c <= 97)) s.fg = String(c < 90 ? c - 30 : c - 82);
      else if ((c >= 40 && c <= 47) || (c >= 100 && c <= 107)) s.bg = String(c < 100 ? c - 40 : c - 92);
      else if (c === 39) delete s.fg;
      else if (c === 49) delete s.bg;
      else if ((c === 38 || c === 48) && i + 1 < codes.length) {
        let colour = null;
        if (codes[i + 1] === 5 && i + 2 < codes.length) { colour = palette(codes[i + 2] % 256); i += 2; }
        else if (codes[i + 1] === 2 && i + 4 < codes.length) { colour = hex(codes[i + 2], codes[i + 3], codes[i + 4]); i += 4; }
        if (colour !== null) s[c === 38 ? "fg" : "bg"] = colour;
      }
    }
    return s;
  }

  function styledSpan(style, text) {
    const span = document.createElement("span");
    span.textContent = text;
    for (const kind of ["fg", "bg"]) {
      const colour = style[kind];
      if (!colour) continue;
      if (colour.startsWith("#")) span.style[kind === "fg" ? "color" : "backgroundColor"] = colour;
      else span.classList.add("a-" + kind + colour);
    }
    if (style.bold) span.classList.add("a-b");
    if (style.dim) span.classList.add("a-d");
    if (style.italic) span.classList.add("a-i");
    if (style.underline) span.classList.add("a-u");
    return span;
  }

  // Appends `text` to `parent` with its colours; plain runs become text nodes.
  function renderAnsi(parent, text) {
    let style = {};
    let pos = 0;
    const emit = (chunk) => {
      if (!chunk) return;
      parent.appendChild(Object.keys(style).length ? styledSpan(style, chunk) : document.createTextNode(chunk));
    };
    ESCAPE.lastIndex = 0;
    let m;
    while ((m = ESCAPE.exec(text)) !== null) {
      if (m[0] === "") { ESCAPE.lastIndex++; continue; }
      emit(text.slice(pos, m.index));
      pos = ESCAPE.lastIndex;
      if (m[2] === "m") style = applySgr(style, m[1]);
    }
    emit(text.slice(pos));
  }

  // -- fragments refreshed on /events ----------------------------------------------------------------

  let events = null;
  const listeners = [];
  const onOpen = [];

  function onJobEvent(fn, opened) {
    listeners.push(fn);
    if (opened) onOpen.push(opened);
    if (events) return;
    events = new EventSource("/events");
    // What changed between rendering the page and (re)connecting was never sent to us: refresh once connected.
    events.addEventListener("open", () => { for (const o of onOpen) o(); });
    // Job events carry `job_id`, pipeline events `pipeline_id`: each listener picks what concerns it.
    for (const name of ["job", "pipeline"]) {
      events.addEventListener(name, (e) => {
        let data;
        try { data = JSON.parse(e.data); } catch (_) { return; }
        for (const l of listeners) l(data);
      });
    }
  }

  function refresher(el) {
    let timer = null;
    let busy = false;
    let again = false;
    async function refresh() {
      timer = null;
      if (busy) { again = true; return; }
      busy = true;
      try {
        const response = await fetch(el.dataset.liveSrc, { credentials: "same-origin", headers: { "Accept": "text/html" } });
        if (response.ok) {
          // Expanded rows (<details data-key>) stay expanded across the refresh.
          const open = new Set([...el.querySelectorAll("details[open][data-key]")].map((d) => d.dataset.key));
          el.innerHTML = await response.text();
          stamp(el);
          for (const d of el.querySelectorAll("details[data-key]")) if (open.has(d.dataset.key)) d.open = true;
        }
      } catch (_) {
        // The server restarted or the network dropped: the next event refreshes again.
      } finally {
        busy = false;
        if (again) { again = false; schedule(); }
      }
    }
    function schedule() { if (!timer) timer = setTimeout(refresh, 250); }
    return schedule;
  }

  // A pipeline's page follows its own events and those of its jobs (listed in the fragment's data-jobs, which
  // each refresh renews); a job's page its job's; the overview everything.
  function concerns(el, event) {
    if (el.dataset.pipeline) {
      if (event.pipeline_id !== undefined) return event.pipeline_id === parseInt(el.dataset.pipeline, 10);
      const holder = el.querySelector("[data-jobs]");
      return !!holder && holder.dataset.jobs.split(" ").includes(String(event.job_id));
    }
    if (el.dataset.job) return event.job_id === parseInt(el.dataset.job, 10);
    return true;
  }

  for (const el of document.querySelectorAll("[data-live-src]")) {
    const schedule = refresher(el);
    onJobEvent((event) => { if (concerns(el, event)) schedule(); }, schedule);
  }

  // -- running times count on between redraws ------------------------------------------------------------

  // Like config.durations.format_duration: 850ms, 42s, 1m 05s, 2h 03m 00s (truncated, never rounded up).
  function formatDuration(seconds) {
    if (seconds < 1) return Math.floor(seconds * 1000) + "ms";
    const whole = Math.floor(seconds);
    const h = Math.floor(whole / 3600), m = Math.floor((whole % 3600) / 60), s = whole % 60;
    const two = (n) => String(n).padStart(2, "0");
    if (h) return h + "h " + two(m) + "m " + two(s) + "s";
    if (m) return m + "m " + two(s) + "s";
    return s + "s";
  }

  // When a running time was rendered (the page or a fragment arrived): it was true then.
  function stamp(root) {
    const now = String(performance.now());
    for (const el of root.querySelectorAll("[data-elapsed]")) if (!el.dataset.t0) el.dataset.t0 = now;
  }
  stamp(document);

  setInterval(() => {
    const now = performance.now();
    stamp(document);
    for (const el of document.querySelectorAll("[data-elapsed]")) {
      const seconds = parseFloat(el.dataset.elapsed) + (now - parseFloat(el.dataset.t0)) / 1000;
      const suffix = el.dataset.suffix === undefined ? "…" : el.dataset.suffix;
      if (Number.isFinite(seconds)) el.textContent = formatDuration(seconds) + suffix;
    }
  }, 1000);

  // -- a job's log, live -------------------------------------------------------------------------------

  const log = document.getElementById("log");
  if (log && log.dataset.follow === "yes") {
    const status = document.getElementById("log-status");
    const lines = log.querySelectorAll(".ln");
    let lastStep = lines.length ? lines[lines.length - 1].dataset.step || "" : "";
    const url = "/jobs/logs?id=" + encodeURIComponent(log.dataset.job) + "&after=" + encodeURIComponent(log.dataset.after);
    const source = new EventSource(url);

    function atBottom() { return log.scrollHeight - log.scrollTop - log.clientHeight < 24; }

    source.onmessage = (e) => {
      let line;
      try { line = JSON.parse(e.data); } catch (_) { return; }
      const empty = document.getElementById("log-empty");
      if (empty) empty.remove();
      const follow = atBottom();
      if (line.step && line.step !== lastStep) {
        const head = document.createElement("span");
        head.className = "step-head";
        head.textContent = line.step + "\n";
        log.appendChild(head);
      }
      lastStep = line.step || lastStep;
      const row = document.createElement("span");
      row.className = "ln o-" + line.stream;
      row.id = "L" + line.n;
      row.dataset.step = line.step;
      const no = document.createElement("a");
      no.className = "no";
      no.href = "#L" + line.n;
      no.textContent = String(line.n);
      row.appendChild(no);
      renderAnsi(row, line.text);
      row.appendChild(document.createTextNode("\n"));
      log.appendChild(row);
      if (follow) log.scrollTop = log.scrollHeight;
    };
    source.addEventListener("end", () => {
      source.close();
      if (status) { status.textContent = "complete"; status.className = "log-status done"; }
    });
  }
})();

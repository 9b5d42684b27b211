// Corral's web page: the VM table, a VM's page (facts, actions, charts, serial console),
// the host, the network picture and the event log. Everything comes from the daemon's REST
// API, its event stream (/v1/events/stream) and the console WebSocket; no other server.
"use strict";

// ---- talking to the daemon -----------------------------------------------------------------
// The one place that knows how to reach the API: when the daemon has tokens, the bearer
// token goes into AUTH (headers for fetch and the stream, a subprotocol for WebSockets).
// A token comes once in the address (#token=…, the link `corral dashboard` prints) and is
// kept for this tab only; on the unix socket or a local listener none is needed.
const AUTH = (() => {
  const m = location.hash.match(/token=([A-Za-z0-9_]+)/);
  if (m) {
    sessionStorage.setItem("corral-token", m[1]);
    history.replaceState(null, "", location.pathname + location.search);
  }
  const token = sessionStorage.getItem("corral-token");
  return {
    headers() { return token ? { Authorization: `Bearer ${token}` } : {}; },
    wsProtocols() { return token ? ["corral", `corral.bearer.${token}`] : ["corral"]; },
  };
})();

class ApiError extends Error {
  constructor(status, body) {
    super(body && body.message ? body.message : `HTTP ${status}`);
    this.status = status;
    this.kind = body && body.kind;
  }
}

async function api(method, path, body) {
  const init = { method, headers: { ...AUTH.headers() } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  const text = await res.text();
  const data = text ? (() => { try { return JSON.parse(text); } catch { return text; } })() : null;
  if (!res.ok) throw new ApiError(res.status, typeof data === "object" ? data : { message: text });
  return data;
}

// Server-Sent Events over fetch (so the same headers go with it), resumed after any break
// with Last-Event-ID: the daemon then gives what was missed from its log, each event once.
const stream = {
  lastId: null, connected: false, listeners: new Set(), onstate: () => {}, abort: null,
  subscribe(fn) { this.listeners.add(fn); return () => this.listeners.delete(fn); },
  // drop the connection (a new token, or a test of the catch-up); run() reconnects
  restart() { if (this.abort) this.abort.abort(); },
  async run() {
    for (;;) {
      try {
        await this.once();
      } catch (err) { /* the daemon went away or the network broke: retry below */ }
      this.connected = false;
      this.onstate(false);
      await sleep(1000);
    }
  },
  async once() {
    const headers = { ...AUTH.headers(), Accept: "text/event-stream" };
    if (this.lastId !== null) headers["Last-Event-ID"] = String(this.lastId);
    this.abort = new AbortController();
    const res = await fetch("/v1/events/stream", { headers, cache: "no-store", signal: this.abort.signal });
    if (!res.ok || !res.body) throw new Error(`stream: HTTP ${res.status}`);
    this.connected = true;
    this.onstate(true);
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        this.message(buf.slice(0, cut));
        buf = buf.slice(cut + 2);
      }
    }
  },
  message(block) {
    let kind = "message", data = "", id = null;
    for (const line of block.split("\n")) {
      if (line.startsWith(":")) continue;
      const at = line.indexOf(":");
      const field = at < 0 ? line : line.slice(0, at);
      const value = at < 0 ? "" : line.slice(at + 1).replace(/^ /, "");
      if (field === "event") kind = value;
      else if (field === "data") data += (data ? "\n" : "") + value;
      else if (field === "id") id = Number(value);
    }
    if (kind === "dropped") { toast(`event stream: ${JSON.parse(data).reason}`); return; }
    if (kind !== "message" || !data) return;
    const ev = JSON.parse(data);
    if (id !== null) this.lastId = id;
    ev.received = performance.now();
    for (const fn of this.listeners) fn(ev);
  },
};

// ---- small helpers --------------------------------------------------------------------------
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const $ = (sel, root = document) => root.querySelector(sel);

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function bytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n >= 100 || i === 0 ? Math.round(n) : n.toFixed(1)} ${units[i]}`;
}

function duration(s) {
  if (s === null || s === undefined) return "—";
  s = Math.max(0, Math.floor(s));
  const d = Math.floor(s / 86400), hh = Math.floor(s % 86400 / 3600);
  const mm = Math.floor(s % 3600 / 60), ss = s % 60;
  if (d) return `${d}d ${hh}h`;
  if (hh) return `${hh}h ${mm}m`;
  if (mm) return `${mm}m ${ss}s`;
  return `${ss}s`;
}

const when = (ts) => new Date(ts * 1000).toLocaleTimeString();
const badge = (state) => h("span", { class: `badge ${state}`, "data-state": state }, state);

function toast(text, bad = false) {
  const el = h("div", { class: `toast${bad ? " bad" : ""}` }, text);
  $("#toasts").append(el);
  setTimeout(() => el.remove(), bad ? 7000 : 3500);
}

async function act(label, fn) {
  try {
    return await fn();
  } catch (err) {
    toast(`${label}: ${err.message}`, true);
    return undefined;
  }
}

function ipOf(vm) {
  for (const nic of vm.nics || []) {
    if (nic.lease) return nic.lease;
    if (nic.ip) return nic.ip;
    const v4 = (nic.guest_addresses || []).find((a) => !a.includes(":"));
    if (v4) return v4.split("/")[0];
  }
  return (vm.nics || []).some((n) => n.mode === "user") ? "user-mode" : "—";
}

// ---- dialogs --------------------------------------------------------------------------------
function dialog(title, body, buttons) {
  const dlg = $("#dialog");
  dlg.replaceChildren(h("h2", {}, title), body, h("div", { class: "dialog-actions" }, buttons));
  dlg.showModal();
  return dlg;
}

function confirmDestroy(name) {
  return new Promise((resolve) => {
    const done = (yes) => () => { $("#dialog").close(); resolve(yes); };
    dialog(`Destroy ${name}?`,
      h("p", {}, "The VM is stopped if it runs, and its disks, saved state and snapshots are removed. This cannot be undone."),
      [h("button", { onclick: done(false) }, "Cancel"),
       h("button", { class: "danger solid", id: "confirm-destroy", onclick: done(true) }, "Destroy")]);
  });
}

async function createDialog(fromSnapshot) {
  const images = fromSnapshot ? [] : (await act("images", () => api("GET", "/v1/images"))) || [];
  const form = h("form", { class: "form", id: "create-form", method: "dialog" },
    h("label", {}, "Name", h("input", { name: "name", required: true, pattern: "[a-z0-9][a-z0-9-]{0,31}",
      placeholder: "web-1", autocomplete: "off" })),
    fromSnapshot
      ? h("p", { class: "muted" }, `A warm start from snapshot ${fromSnapshot}: the clone resumes where the snapshot was taken.`)
      : [h("label", {}, "Image", h("select", { name: "image" },
          images.map((i) => h("option", { value: i.name, selected: i.name === "tiny" }, `${i.name} (${i.arch})`)))),
        h("div", { class: "row" },
          h("label", {}, "vCPUs", h("input", { name: "cpus", type: "number", min: 1, max: 64, value: 1 })),
          h("label", {}, "Memory", h("input", { name: "memory", value: "256M" })),
          h("label", {}, "Data disk", h("input", { name: "disk", placeholder: "none, or 1G" }))),
        h("label", { class: "check" }, h("input", { name: "start", type: "checkbox", checked: true }), "Start it now")]);
  const submit = async (e) => {
    e.preventDefault();
    if (!form.reportValidity()) return;
    const f = new FormData(form);
    const spec = { name: f.get("name") };
    let start = true;
    if (fromSnapshot) spec.from_snapshot = fromSnapshot;
    else {
      spec.image = f.get("image");
      spec.cpus = Number(f.get("cpus"));
      spec.memory = f.get("memory");
      if (f.get("disk")) spec.disks = [{ size: f.get("disk") }];
      start = f.get("start") === "on";
    }
    $("#dialog").close();
    const vm = await act(`create ${spec.name}`, () => api("POST", `/v1/vms?start=${start}`, spec));
    if (vm) toast(`${vm.name} is ${vm.state}`);
  };
  form.addEventListener("submit", submit);
  dialog(fromSnapshot ? "Warm start from a snapshot" : "Create a VM", form,
    [h("button", { onclick: () => $("#dialog").close() }, "Cancel"),
     h("button", { class: "primary", id: "create-submit", onclick: submit }, fromSnapshot ? "Start clone" : "Create")]);
  form.querySelector("input").focus();
}

// ---- VM actions, the same on the table and on a VM's page ------------------------------------
const ACTIONS = [
  ["start", "Start", (n) => api("POST", `/v1/vms/${n}/start`)],
  ["pause", "Pause", (n) => api("POST", `/v1/vms/${n}/pause`)],
  ["resume", "Resume", (n) => api("POST", `/v1/vms/${n}/resume`)],
  ["shutdown", "Shut down", (n) => api("POST", `/v1/vms/${n}/shutdown`)],
  ["stop", "Force stop", (n) => api("POST", `/v1/vms/${n}/stop?force=true`)],
  ["restore", "Restore", (n) => api("POST", `/v1/vms/${n}/restore`)],
];

function actionButtons(vm, withDestroy = true) {
  const ops = new Set(vm.operations || []);
  const buttons = ACTIONS.filter(([op]) => ops.has(op)).map(([op, label, call]) =>
    h("button", { "data-action": op, onclick: (e) => { e.stopPropagation(); act(`${label} ${vm.name}`, () => call(vm.name)); } }, label));
  if (withDestroy && ops.has("destroy")) {
    buttons.push(h("button", { class: "danger", "data-action": "destroy", onclick: async (e) => {
      e.stopPropagation();
      if (await confirmDestroy(vm.name)) {
        await act(`destroy ${vm.name}`, () => api("DELETE", `/v1/vms/${vm.name}`));
      }
    } }, "Destroy"));
  }
  return h("div", { class: "actions" }, buttons);
}

// ---- the router -----------------------------------------------------------------------------
let page = null; // the current page: { render(), stop() }

function route() {
  if (page && page.stop) page.stop();
  const hash = location.hash.replace(/^#/, "") || "/";
  const parts = hash.split("/").filter(Boolean);
  document.querySelectorAll("#side a").forEach((a) => a.classList.toggle("active",
    a.dataset.nav === (parts[0] === "vm" || !parts[0] ? "vms" : parts[0])));
  const main = $("#main");
  main.replaceChildren();
  if (parts[0] === "vm" && parts[1]) page = vmPage(main, decodeURIComponent(parts[1]));
  else if (parts[0] === "host") page = hostPage(main);
  else if (parts[0] === "network") page = networkPage(main);
  else if (parts[0] === "events") page = eventsPage(main);
  else page = vmsPage(main);
}

// refresh(): at most one reload in flight, and one more queued while it runs
function coalesced(load) {
  let running = null, again = false;
  return async function refresh() {
    if (running) { again = true; return running; }
    running = (async () => {
      do { again = false; await load(); } while (again);
    })().finally(() => { running = null; });
    return running;
  };
}

// ---- the VM table ---------------------------------------------------------------------------
function vmsPage(main) {
  const body = h("tbody", { id: "vm-rows" });
  let vms = [], loadedAt = performance.now(), hostname = "";
  main.append(
    h("div", { class: "head" }, h("h1", {}, "Virtual machines"), h("span", { class: "grow" }),
      h("button", { class: "primary", id: "new-vm", onclick: () => createDialog() }, "New VM")),
    h("div", { class: "panel table-wrap" }, h("table", {},
      h("thead", {}, h("tr", {}, ["Name", "State", "Host", "vCPUs", "Memory", "Uptime", "IP", ""].map((t, i) =>
        h("th", { class: i === 3 || i === 4 || i === 5 ? "num" : "" }, t)))),
      body)));
  const draw = () => {
    const since = (performance.now() - loadedAt) / 1000;
    body.replaceChildren(...(vms.length ? vms.map((vm) => h("tr", { "data-vm": vm.name },
      h("td", {}, h("a", { href: `#/vm/${vm.name}` }, vm.name)),
      h("td", {}, badge(vm.state)),
      h("td", {}, hostname),
      h("td", { class: "num" }, vm.cpus),
      h("td", { class: "num" }, bytes(vm.memory_bytes)),
      h("td", { class: "num" }, vm.uptime_seconds === null || vm.uptime_seconds === undefined ? "—" : duration(vm.uptime_seconds + since)),
      h("td", { class: "mono" }, ipOf(vm)),
      h("td", {}, actionButtons(vm)))) : [h("tr", {}, h("td", { colspan: 8, class: "empty" },
        "No VMs yet. ", h("a", { href: "#/", onclick: (e) => { e.preventDefault(); createDialog(); } }, "Create one")))]));
  };
  const load = coalesced(async () => {
    const list = await act("list VMs", () => api("GET", "/v1/vms"));
    if (list) { vms = list; loadedAt = performance.now(); draw(); }
  });
  hostInfo().then((info) => { hostname = info ? info.hostname || "this host" : ""; draw(); });
  const off = stream.subscribe(() => load());
  const tick = setInterval(draw, 1000);
  load();
  return { stop() { off(); clearInterval(tick); } };
}

let hostCache = null;
async function hostInfo() {
  if (!hostCache) hostCache = await act("host", () => api("GET", "/v1/host"));
  return hostCache;
}

// ---- one VM ---------------------------------------------------------------------------------
function vmPage(main, name) {
  const head = h("div", { class: "head" });
  const banner = h("div");
  const facts = h("div", { class: "facts" });
  const charts = h("div", { class: "grid two" });
  const termBox = h("div", { class: "term-screen", id: "terminal" });
  const consoleNote = h("div");
  const snaps = h("div");
  main.append(head, banner,
    h("div", { class: "panel" }, facts),
    h("div", { class: "panel" }, h("div", { class: "head" }, h("h2", {}, "Serial console"),
      h("span", { class: "grow" }), h("span", { class: "muted" }, "type into the terminal; it follows the window's size")),
      consoleNote, h("div", { class: "term" }, termBox)),
    h("div", { class: "panel" }, h("h2", {}, "Activity"), charts),
    h("div", { class: "panel" }, snaps));
  let vm = null, gone = false, loadedAt = performance.now();
  const term = openConsole(termBox, consoleNote, name);
  const plots = makeCharts(charts, name);

  const drawHead = () => {
    head.replaceChildren(h("h1", {}, name), vm ? badge(vm.state) : gone ? badge("destroyed") : "",
      h("span", { class: "grow" }), vm && !gone ? actionButtons(vm) : "");
  };
  const drawFacts = () => {
    if (!vm) return;
    const since = (performance.now() - loadedAt) / 1000;
    const f = (label, value) => h("div", {}, h("span", {}, label), h("b", {}, value ?? "—"));
    facts.replaceChildren(
      f("Image", vm.image), f("vCPUs", vm.cpus), f("Memory", bytes(vm.memory_bytes)),
      f("Machine", `${vm.machine} (${vm.arch})`), f("Accelerator", vm.accel), f("PID", vm.pid),
      f("Uptime", vm.uptime_seconds == null ? "—" : duration(vm.uptime_seconds + since)),
      f("Boot time", vm.boot_seconds == null ? "—" : `${vm.boot_seconds.toFixed(2)} s`),
      f("IP", ipOf(vm)), f("Disks", (vm.disks || []).length), f("NICs", (vm.nics || []).length),
      f("Ready", vm.ready ? "yes" : "no"), vm.exit_reason ? f("Last exit", vm.exit_reason) : "");
  };
  const drawSnaps = async () => {
    if (gone) { snaps.replaceChildren(); return; }
    const list = (await act("snapshots", () => api("GET", `/v1/vms/${name}/snapshots`))) || [];
    snaps.replaceChildren(h("div", { class: "head" }, h("h2", {}, "Snapshots"), h("span", { class: "grow" }),
      h("button", { id: "take-snapshot", onclick: snapshotDialog }, "Take snapshot")),
      list.length ? h("table", {}, h("thead", {}, h("tr", {}, ["Name", "Memory", "Taken", ""].map((t) => h("th", {}, t)))),
        h("tbody", {}, list.map((s) => h("tr", {}, h("td", {}, s.name), h("td", {}, s.memory ? "yes" : "disk only"),
          h("td", {}, s.created_at ? when(s.created_at) : "—"),
          h("td", {}, s.memory ? h("button", { onclick: () => createDialog(`${name}:${s.name}`) }, "Warm start a clone") : "")))))
        : h("p", { class: "muted" }, "No snapshots. A snapshot with memory can warm-start clones in milliseconds."));
  };
  const snapshotDialog = () => {
    const form = h("form", { class: "form", method: "dialog" },
      h("label", {}, "Snapshot name", h("input", { name: "name", required: true, pattern: "[a-z0-9][a-z0-9-]{0,31}", value: `s${Date.now() % 100000}` })),
      h("label", { class: "check" }, h("input", { name: "memory", type: "checkbox", checked: true }), "With memory (for warm starts)"));
    const submit = async (e) => {
      e.preventDefault();
      if (!form.reportValidity()) return;
      const f = new FormData(form);
      $("#dialog").close();
      await act("snapshot", () => api("POST", `/v1/vms/${name}/snapshots`, { name: f.get("name"), memory: f.get("memory") === "on" }));
      drawSnaps();
    };
    form.addEventListener("submit", submit);
    dialog(`Snapshot of ${name}`, form, [h("button", { onclick: () => $("#dialog").close() }, "Cancel"),
      h("button", { class: "primary", onclick: submit }, "Take snapshot")]);
  };
  const load = coalesced(async () => {
    try {
      vm = await api("GET", `/v1/vms/${name}`);
      loadedAt = performance.now();
      banner.replaceChildren();
    } catch (err) {
      if (err.status === 404) {
        gone = true;
        vm = vm ? { ...vm, state: "destroyed", operations: [] } : null;
        facts.parentElement.hidden = charts.parentElement.hidden = snaps.parentElement.hidden = true;
        banner.replaceChildren(h("div", { class: "banner bad", id: "gone" }, `VM ${name} does not exist (any more): it was destroyed or never made. `,
          h("a", { href: "#/" }, "Back to the list")));
        plots.stop();
      } else toast(err.message, true);
    }
    drawHead(); drawFacts();
  });
  const off = stream.subscribe((ev) => {
    if (ev.vm !== name) return;
    load();
    if (ev.kind.startsWith("snapshot")) drawSnaps();
    if (["started", "warm_started", "restored", "resumed"].includes(ev.kind)) term.reconnect();
  });
  const tick = setInterval(drawFacts, 1000);
  load().then(drawSnaps);
  return { stop() { off(); clearInterval(tick); term.close(); plots.stop(); } };
}

function openConsole(box, note, name) {
  const term = new Terminal({ fontFamily: "ui-monospace, Menlo, Consolas, monospace", fontSize: 13,
    cursorBlink: true, convertEol: false, theme: { background: "#10141c" } });
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(box);
  window.corralTerm = term; // for scripts and tests: read the screen
  let ws = null, closed = false;
  const encoder = new TextEncoder();
  const resize = () => {
    try { fit.fit(); } catch { /* not visible */ }
    if (ws && ws.readyState === 1) ws.send(JSON.stringify({ resize: [term.cols, term.rows] }));
  };
  const observer = new ResizeObserver(resize);
  observer.observe(box);
  term.onData((data) => { if (ws && ws.readyState === 1) ws.send(encoder.encode(data)); });
  const connect = () => {
    if (closed || (ws && ws.readyState <= 1)) return;
    const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/v1/vms/${name}/console`;
    ws = new WebSocket(url, AUTH.wsProtocols());
    ws.binaryType = "arraybuffer";
    let heard = false;
    ws.onopen = () => {
      note.replaceChildren();
      resize();
      ws.send(encoder.encode("\r")); // a fresh prompt
      setTimeout(() => {
        if (!heard && ws.readyState === 1) {
          note.replaceChildren(h("div", { class: "banner" }, "The console is silent: QEMU serves one console client at a time, so another one (corral console?) may hold it, or the guest is paused."));
        }
      }, 3000);
    };
    ws.onmessage = (m) => {
      if (!heard) { heard = true; note.replaceChildren(); }
      term.write(typeof m.data === "string" ? m.data : new Uint8Array(m.data));
    };
    ws.onclose = (e) => {
      const why = e.reason || { 1006: "the connection broke", 1012: "the daemon is restarting" }[e.code]
        || `closed (${e.code})`;
      note.replaceChildren(h("div", { class: "banner", id: "console-closed" }, `Console closed: ${why}`));
      if ([1000, 1012, 4409].includes(e.code)) term.write(`\r\n\x1b[33m[console closed: ${why}]\x1b[0m\r\n`);
    };
  };
  connect();
  return {
    reconnect() { setTimeout(connect, 300); },
    close() { closed = true; observer.disconnect(); if (ws) ws.close(); term.dispose(); },
  };
}

function makeCharts(box, name) {
  const specs = [
    ["cpu", "CPU (% of one CPU)", [["CPU", "#2f6fde"]], (a, b, dt) => [100 * (b.cpu_seconds - a.cpu_seconds) / dt]],
    ["mem", "Memory (MiB resident)", [["QEMU RSS", "#1f9d55"]], (a, b) => [b.rss_bytes / 1048576]],
    ["disk", "Disk (KiB/s)", [["read", "#6f4fd8"], ["write", "#c98a00"]],
      (a, b, dt) => [(b.rd_bytes - a.rd_bytes) / dt / 1024, (b.wr_bytes - a.wr_bytes) / dt / 1024]],
    ["net", "Network (KiB/s)", [["rx", "#2f6fde"], ["tx", "#d23c3c"]],
      (a, b, dt) => (b.rx_bytes === null || a.rx_bytes === null ? null
        : [(b.rx_bytes - a.rx_bytes) / dt / 1024, (b.tx_bytes - a.tx_bytes) / dt / 1024]),
      "no host-side counters: user-mode NICs have no tap"],
  ];
  const plots = specs.map(([id, title, series, , empty]) => {
    const el = h("div", { class: "chart", id: `chart-${id}`, "data-points": 0 });
    const note = h("div", { class: "muted chart-note" }, empty || "");
    note.hidden = true;
    box.append(h("div", {}, el, note));
    const opts = { title, width: Math.max(320, el.clientWidth || 420), height: 170,
      series: [{}, ...series.map(([label, stroke]) => ({ label, stroke, width: 1.5, fill: `${stroke}18` }))],
      axes: [{}, { size: 50 }], scales: { x: { time: true } }, legend: { live: false } };
    return { el, note, plot: new uPlot(opts, [[], ...series.map(() => [])], el) };
  });
  const resize = () => plots.forEach(({ el, plot }) => plot.setSize({ width: Math.max(320, el.clientWidth), height: 170 }));
  window.addEventListener("resize", resize);
  setTimeout(resize, 50);
  let timer = null, stopped = false;
  const poll = async () => {
    if (stopped) return;
    let interval = 2;
    try {
      const stats = await api("GET", `/v1/vms/${name}/stats`);
      interval = stats.interval || 2;
      const pts = stats.points;
      specs.forEach(([, , series, derive], i) => {
        const xs = [], ys = series.map(() => []);
        for (let k = 1; k < pts.length; k++) {
          const a = pts[k - 1], b = pts[k], dt = b.at - a.at;
          if (dt <= 0 || a.cpu_seconds === null || b.cpu_seconds === null) continue;
          const values = derive(a, b, dt);
          if (values === null) continue;
          xs.push(b.at);
          values.forEach((v, j) => ys[j].push(Math.max(0, v)));
        }
        plots[i].note.hidden = xs.length > 0 || pts.length < 2;
        plots[i].plot.setData([xs, ...ys]);
        plots[i].el.dataset.points = xs.length;
      });
    } catch (err) {
      if (err.status === 404) return; // the VM is gone: its page says so
    }
    timer = setTimeout(poll, interval * 1000);
  };
  poll();
  return { stop() { stopped = true; clearTimeout(timer); window.removeEventListener("resize", resize); } };
}

// ---- the host -------------------------------------------------------------------------------
function hostPage(main) {
  const body = h("div");
  main.append(h("div", { class: "head" }, h("h1", {}, "Host")), body);
  const bar = (label, used, total, fmt) => {
    const ratio = total ? used / total : 0;
    return h("div", { class: "alloc" }, h("div", { class: "alloc-line" }, h("b", {}, label),
      h("span", { class: "muted" }, `${fmt(used)} of ${fmt(total)} (${Math.round(ratio * 100)}%)`)),
      h("div", { class: "bar" }, h("i", { class: ratio >= 1 ? "full" : ratio > 0.8 ? "high" : "", style: `width:${Math.min(100, ratio * 100)}%` })));
  };
  const load = coalesced(async () => {
    const [info, queue] = await Promise.all([api("GET", "/v1/host"), api("GET", "/v1/queue")]).catch((e) => { toast(e.message, true); return [null, null]; });
    if (!info) return;
    hostCache = info;
    const s = info.scheduler, cap = s.capacity, num = (x) => String(x);
    body.replaceChildren(
      h("div", { class: "grid three" },
        h("div", { class: "panel" }, h("h2", {}, "Machine"), h("div", { class: "facts" },
          ...[["Host", info.hostname], ["CPUs", info.cpus], ["Memory", bytes(info.memory_bytes)],
            ["Available", bytes(info.memory_available_bytes)], ["Accelerator", info.accel], ["QEMU", info.qemu_version],
            ["Kernel", info.kernel], ["VMs", `${info.vms_running} running of ${info.vms}`]].map(([k, v]) =>
            h("div", {}, h("span", {}, k), h("b", {}, v ?? "—"))))),
        h("div", { class: "panel", id: "allocation" }, h("h2", {}, "Allocation"),
          bar("CPUs", cap.allocated.cpus, cap.total.cpus, num),
          bar("Memory", cap.allocated.memory, cap.total.memory, bytes),
          bar("Disk", cap.allocated.disk, cap.total.disk, bytes)),
        h("div", { class: "panel" }, h("h2", {}, "Policies"), h("div", { class: "facts" },
          ...[["Queue order", s.policy], ["Backfill", s.backfill ? "on" : "off"],
            ["CPU overcommit", `×${cap.overcommit.cpu}`], ["Memory overcommit", `×${cap.overcommit.memory}`],
            ["Disk overcommit", `×${cap.overcommit.disk}`], ["Time-slice slots", s.timeslice.slots],
            ["Quantum", `${s.timeslice.quantum} s`], ["Fairness", s.timeslice.fairness]].map(([k, v]) =>
            h("div", {}, h("span", {}, k), h("b", {}, v ?? "—")))))),
      h("div", { class: "panel" }, h("h2", {}, `Admission queue (${queue.length})`),
        queue.length ? h("table", {}, h("thead", {}, h("tr", {}, ["#", "VM", "Owner", "vCPUs", "Memory", "Priority", "Waiting"].map((t) => h("th", {}, t)))),
          h("tbody", {}, queue.map((q) => h("tr", {}, h("td", {}, q.position), h("td", {}, h("a", { href: `#/vm/${q.vm}` }, q.vm)),
            h("td", {}, q.owner), h("td", {}, q.cpus), h("td", {}, bytes(q.memory_bytes)), h("td", {}, q.effective_priority),
            h("td", {}, duration(q.waiting_seconds))))))
          : h("p", { class: "muted" }, "Nobody waits: every start request fitted.")));
  });
  const off = stream.subscribe(() => load());
  load();
  return { stop() { off(); } };
}

// ---- the network picture --------------------------------------------------------------------
function networkPage(main) {
  const body = h("div", { class: "panel" });
  main.append(h("div", { class: "head" }, h("h1", {}, "Network")), body);
  const load = coalesced(async () => {
    const topo = await act("topology", () => api("GET", "/v1/topology?format=json"));
    if (topo) body.replaceChildren(drawTopology(topo));
  });
  const off = stream.subscribe(() => load());
  load();
  return { stop() { off(); } };
}

function drawTopology(topo) {
  const NS = "http://www.w3.org/2000/svg";
  const s = (tag, attrs, text) => {
    const el = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    if (text !== undefined) el.textContent = text;
    return el;
  };
  const groups = topo.networks.map((n) => ({ title: `${n.name}  ${n.subnet}`, router: n.router,
    vms: n.ports.map((p) => ({ label: `${p.vm}${p.ip ? "  " + p.ip : ""}`, state: p.state, vm: p.vm })) }));
  if (topo.user.length) {
    groups.push({ title: "user-mode (NAT)", router: null,
      vms: topo.user.map((u) => ({ label: `${u.vm}${u.hostfwd.length ? "  " + u.hostfwd.join(" ") : ""}`, state: u.state, vm: u.vm })) });
  }
  if (!groups.length) return h("p", { class: "empty" }, "No networks and no NICs yet.");
  const colW = 230, vmH = 30, top = 110;
  const width = Math.max(600, groups.length * colW + 40);
  const height = top + 60 + Math.max(1, ...groups.map((g) => g.vms.length)) * (vmH + 10);
  const svg = s("svg", { class: "topo", width, height, viewBox: `0 0 ${width} ${height}` });
  const routerX = {};
  topo.routers.forEach((r, i) => {
    const x = 20 + i * colW;
    routerX[r.name] = x + 90;
    svg.append(s("rect", { class: "router", x, y: 10, width: 180, height: 34, rx: 6 }),
      s("text", { x: x + 10, y: 32 }, `router ${r.name}${r.uplink ? " ⇄ uplink" : ""}`));
  });
  groups.forEach((g, i) => {
    const x = 20 + i * colW;
    if (g.router && routerX[g.router] !== undefined) svg.append(s("line", { x1: routerX[g.router], y1: 44, x2: x + 100, y2: 70 }));
    svg.append(s("rect", { class: "net", x, y: 70, width: 200, height: 30, rx: 15 }), s("text", { x: x + 12, y: 90 }, g.title));
    g.vms.forEach((v, k) => {
      const y = top + 10 + k * (vmH + 10);
      const a = s("a", { href: `#/vm/${v.vm}` });
      a.append(s("rect", { class: `vm ${v.state || ""}`, x: x + 20, y, width: 180, height: vmH, rx: 5 }),
        s("text", { x: x + 30, y: y + 20 }, v.label));
      svg.append(s("line", { x1: x + 10, y1: 100, x2: x + 10, y2: y + vmH / 2 }),
        s("line", { x1: x + 10, y1: y + vmH / 2, x2: x + 20, y2: y + vmH / 2 }), a);
    });
  });
  return h("div", { class: "table-wrap" }, svg);
}

// ---- the event log --------------------------------------------------------------------------
const eventLog = { rows: [], max: 500 };

function eventsPage(main) {
  const filter = h("input", { class: "filter", placeholder: "filter by VM or kind", id: "event-filter" });
  const body = h("tbody", { id: "event-rows" });
  main.append(h("div", { class: "head" }, h("h1", {}, "Events"), h("span", { class: "grow" }), filter),
    h("div", { class: "panel table-wrap" }, h("table", {},
      h("thead", {}, h("tr", {}, ["#", "Time", "VM", "Event", "Detail"].map((t) => h("th", {}, t)))), body)));
  const draw = () => {
    const f = filter.value.trim();
    const rows = eventLog.rows.filter((e) => !f || e.vm.includes(f) || e.kind.includes(f)).slice(-200).reverse();
    body.replaceChildren(...rows.map((e) => h("tr", { "data-event": e.id },
      h("td", { class: "muted" }, e.id), h("td", {}, when(e.ts)), h("td", {}, h("a", { href: `#/vm/${e.vm}` }, e.vm)),
      h("td", {}, e.kind), h("td", { class: "mono" }, Object.keys(e.detail || {}).length ? JSON.stringify(e.detail) : ""))));
  };
  filter.addEventListener("input", draw);
  const off = stream.subscribe(() => draw());
  draw();
  return { stop() { off(); } };
}

// ---- start ----------------------------------------------------------------------------------
async function main() {
  stream.onstate = (up) => {
    $("#live").classList.toggle("off", !up);
    $("#live-text").textContent = up ? "live" : "reconnecting…";
  };
  stream.subscribe((ev) => {
    eventLog.rows.push(ev);
    if (eventLog.rows.length > eventLog.max) eventLog.rows.splice(0, eventLog.rows.length - eventLog.max);
  });
  // the recent log first, then the stream from its last id: no gap between the two
  const recent = (await act("events", () => api("GET", "/v1/events?tail=200"))) || [];
  eventLog.rows.push(...recent);
  stream.lastId = recent.length ? recent[recent.length - 1].id : 0;
  hostInfo().then((info) => { if (info) $("#hostline").textContent = `${info.hostname || ""} · ${info.accel} · QEMU ${info.qemu_version}`; });
  window.addEventListener("hashchange", route);
  route();
  stream.run();
}

window.corral = { api, stream, eventLog };
main();

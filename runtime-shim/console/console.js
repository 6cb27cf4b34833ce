// The console's only script (served from the binary, no inline script anywhere: the CSP
// forbids it). It keeps the devices' table live from the server-sent events of
// /console/events: every row rebuilt from the same status JSON as GET /v1/status, with
// textContent only (nothing the server sends is parsed as HTML).
"use strict";

function verdictOf(e) {
  switch (e.verdict) {
    case "enforced": return ["enforced", "enforced"];
    case "failed_closed": return ["failed_closed", "failed closed (" + e.installed + ")"];
    case "not_enforced": return ["not_enforced", "NOT ENFORCED"];
    default: return ["off_switch", "off switch"];
  }
}

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}

function row(d) {
  const tr = document.createElement("tr");
  tr.dataset.device = d.name;
  const name = document.createElement("td");
  const a = document.createElement("a");
  a.href = "/console/devices/" + encodeURIComponent(d.name);
  a.textContent = d.name;
  name.appendChild(a);
  tr.appendChild(name);
  cell(tr, d.type);
  cell(tr, d.state, "state");
  cell(tr, d.since || "-");
  cell(tr, d.cause || "initial state");
  cell(tr, d.crosses || "unknown");
  cell(tr, d.umboxes.length ? d.umboxes.join(", ") : "-");
  const [cls, words] = verdictOf(d.enforcement);
  cell(tr, words, "verdict " + cls);
  return tr;
}

function live(table) {
  const only = table.dataset.device;
  const body = table.tBodies[0];
  const status = document.getElementById("live");
  const src = new EventSource(table.dataset.live);
  src.addEventListener("open", () => {
    if (status) { status.textContent = "live"; status.className = "on"; }
  });
  src.addEventListener("error", () => {
    if (status) { status.textContent = "disconnected, retrying"; status.className = "off"; }
  });
  src.addEventListener("status", (ev) => {
    const report = JSON.parse(ev.data);
    const before = {};
    for (const tr of body.rows) {
      const s = tr.querySelector("td.state");
      before[tr.dataset.device] = s ? s.textContent : "";
    }
    const rows = report.devices.filter((d) => !only || d.name === only).map(row);
    body.replaceChildren(...rows);
    for (const tr of rows) {
      const s = tr.querySelector("td.state");
      if (before[tr.dataset.device] !== undefined && s && before[tr.dataset.device] !== s.textContent) {
        tr.classList.add("flash");
      }
    }
    // The state machine's highlighted state follows.
    const img = document.getElementById("machine");
    if (img && only) {
      const d = report.devices.find((x) => x.name === only);
      if (d && img.dataset.state !== d.state) {
        if (img.dataset.state !== undefined) {
          img.src = img.src.split("?")[0] + "?state=" + encodeURIComponent(d.state);
        }
        img.dataset.state = d.state;
      }
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  for (const t of document.querySelectorAll("table[data-live]")) live(t);
  const reset = document.getElementById("reset");
  if (reset) {
    reset.addEventListener("submit", (ev) => {
      const box = document.getElementById("confirm");
      if (!box || !box.checked) ev.preventDefault();
    });
  }
});

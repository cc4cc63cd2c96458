// The live page of a deployment: polls its JSON (GET /deployment/{id}/live.json) and redraws the page.
// Every value from the server goes in as text (textContent) or as a number in an SVG attribute, never as
// markup, so nothing a deployment wrote can run here.
"use strict";

(function () {
  const root = document.getElementById("live");
  if (!root) return;
  const url = root.dataset.url;
  const pollMs = Math.max(200, parseInt(root.dataset.pollMs, 10) || 1500);
  const SVG = "http://www.w3.org/2000/svg";
  const SERIES = [["hotend_temp_c", "#c2410c", ""], ["hotend_target_c", "#c2410c", "4"],
                  ["bed_temp_c", "#1d4ed8", ""], ["bed_target_c", "#1d4ed8", "4"]];

  function text(id, value) {
    const el = document.getElementById(id);
    if (el) el.textContent = value;
  }

  function fmt(v, digits, unit) {
    return (typeof v === "number") ? v.toFixed(digits) + (unit || "") : "—";
  }

  function duration(s) {
    if (typeof s !== "number") return "—";
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = Math.round(s % 60);
    return (h ? h + " h " : "") + (h || m ? m + " min " : "") + sec + " s";
  }

  function row(cells, cls) {
    const tr = document.createElement("tr");
    if (cls) tr.className = cls;
    for (const [value, name] of cells) {
      const td = document.createElement("td");
      if (name) td.className = name;
      td.textContent = value;
      tr.appendChild(td);
    }
    return tr;
  }

  function fill(id, rows) {
    const body = document.getElementById(id);
    if (!body) return;
    body.replaceChildren(...rows);
  }

  function bodyText(body) {
    return Object.entries(body || {}).map(([k, v]) => k + ": " + v).join("; ");
  }

  function plot(series) {
    const svg = document.getElementById("temps");
    const t = series.t_s || [];
    const w = 640, h = 200, pad = 30;
    const parts = [];
    let top = 1;
    for (const [key] of SERIES) for (const v of (series[key] || [])) if (typeof v === "number") top = Math.max(top, v);
    // The x axis spans the samples sent (seconds since the deployment started), first to last.
    const t0 = t.length ? t[0] : 0, tEnd = t.length ? t[t.length - 1] : 0;
    const span = Math.max(tEnd - t0, 1e-3);
    const x = (ti) => (pad + (w - pad - 4) * (ti - t0) / span).toFixed(1);
    const digits = span < 10 ? 1 : 0;
    const y = (v) => (h - pad - (h - pad - 6) * v / top).toFixed(1);
    const axis = document.createElementNS(SVG, "line");
    for (const [k, v] of [["x1", pad], ["y1", h - pad], ["x2", w], ["y2", h - pad], ["stroke", "#888"]]) axis.setAttribute(k, v);
    parts.push(axis);
    for (const [label, lx, ly] of [[top.toFixed(0) + " °C", 2, 12], [t0.toFixed(digits) + " s", pad, h - 8],
                                   [tEnd.toFixed(digits) + " s", w - 60, h - 8]]) {
      const el = document.createElementNS(SVG, "text");
      el.setAttribute("x", lx); el.setAttribute("y", ly); el.setAttribute("font-size", "10");
      el.textContent = label;
      parts.push(el);
    }
    for (const [key, colour, dash] of SERIES) {
      const values = series[key] || [];
      const pts = [];
      for (let i = 0; i < t.length; i++) if (typeof values[i] === "number") pts.push(x(t[i]) + "," + y(values[i]));
      if (!pts.length) continue;
      const line = document.createElementNS(SVG, "polyline");
      line.setAttribute("fill", "none");
      line.setAttribute("stroke", colour);
      line.setAttribute("class", "series-" + key);
      if (dash) line.setAttribute("stroke-dasharray", dash);
      line.setAttribute("points", pts.join(" "));
      parts.push(line);
    }
    svg.replaceChildren(...parts);
    svg.dataset.points = String(t.length);
  }

  function show(live) {
    text("state", live.state);
    const tm = live.telemetry;
    if (tm) {
      text("updated", tm.time_utc);
      text("hotend", fmt(tm.hotend_temp_c, 1, " °C") + " (target " + fmt(tm.hotend_target_c, 0, " °C") + ")");
      text("bed", fmt(tm.bed_temp_c, 1, " °C") + " (target " + fmt(tm.bed_target_c, 0, " °C") + ")");
      text("layer", tm.layer === null || tm.layer === undefined ? "—" : String(tm.layer));
      text("layer-count", typeof tm.layer_count === "number" ? " (" + tm.layer_count + " layers)" : "");
      text("progress", typeof tm.progress === "number" ? (100 * tm.progress).toFixed(1) + " %" : "—");
      document.getElementById("progress-bar").value = typeof tm.progress === "number" ? tm.progress : 0;
      text("eta", duration(tm.eta_s));
      text("print-state", tm.print_state || "—");
      const tuning = [];
      if (typeof tm.speed_factor === "number") tuning.push("speed " + (100 * tm.speed_factor).toFixed(0) + " %");
      if (typeof tm.extrude_factor === "number") tuning.push("flow " + (100 * tm.extrude_factor).toFixed(0) + " %");
      if (typeof tm.fan === "number") tuning.push("fan " + (100 * tm.fan).toFixed(0) + " %");
      if (tm.klippy_state) tuning.push("Klippy " + tm.klippy_state);
      text("factors", tuning.join(" · ") || "—");
    }
    plot(live.series || {});
    fill("tuning-rows", (live.tuning || []).map((r) => row([
      [r.time_utc, "time"], [r.kind, "kind"], [r.commands, "commands"],
      [r.allowed === null ? "—" : (r.allowed ? "allowed" : "refused"), "allowed"],
      [(r.reasons || []).join("; "), "reasons"]], "tuning-row tuning-" + r.kind)));
    fill("watchdog-rows", (live.watchdog || []).map((r) => row([[r.time_utc, "time"], [bodyText(r.body), "body"]],
                                                              "watchdog-row")));
    fill("error-rows", (live.errors || []).map((r) => row([[r.time_utc, "time"], [bodyText(r.body), "body"]],
                                                         "error-row")));
    fill("request-rows", (live.requests || []).map((r) => row([[r.time_utc, "time"], [r.user, "user"],
                                                               [r.action, "action"]], "request-row")));
    fill("action-rows", (live.actions || []).map((r) => row([[r.time_utc, "time"], [bodyText(r.body), "body"]],
                                                           "action-row")));
    text("summary", live.summary ? bodyText(live.summary) : "Not ended yet.");
    const confirm = document.getElementById("confirm-form");
    if (confirm) confirm.hidden = !live.may_confirm_first_layer;
    root.dataset.lastEventId = String(live.last_event_id);
  }

  async function poll() {
    try {
      const response = await fetch(url, {credentials: "same-origin", cache: "no-store",
                                         headers: {"Accept": "application/json"}});
      if (response.redirected || !response.ok) {
        text("poll-status", "session ended or deployment gone: reload the page (HTTP " + response.status + ")");
        return;  // no more polling: a refused session stays refused
      }
      show(await response.json());
      text("poll-status", "live");
    } catch (err) {
      text("poll-status", "no answer from the console; retrying");
    }
    setTimeout(poll, pollMs);
  }

  poll();
})();

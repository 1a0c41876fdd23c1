"use strict";
const $ = (sel, root = document) => root.querySelector(sel);
const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
const when = (t) => (t ? new Date(t).toLocaleString() : "");
let stopStream = null;

// A link may carry a token (`#token=...`, printed by `phasefleet dev`). It is taken out
// of the address at once (history, bookmarks and Referer never see it), and it never
// silently replaces a different token this browser already holds.
function takeTokenFromFragment() {
  const m = location.hash.match(/token=([^&]+)/);
  if (!m) return;
  const offered = decodeURIComponent(m[1]);
  history.replaceState(null, "", location.pathname + location.search + "#/runs");
  const stored = localStorage.getItem("pf_token");
  if (!stored || stored === offered
      || confirm("This link carries an API token that differs from the one this browser holds. Replace the stored token?")) {
    localStorage.setItem("pf_token", offered);
  }
}
takeTokenFromFragment();
$("#token").value = localStorage.getItem("pf_token") || "";
$("#save-token").onclick = () => { localStorage.setItem("pf_token", $("#token").value.trim()); route(); };

function showError(e) { $("#error").textContent = e ? String(e.message || e) : ""; }

async function api(path, opts = {}) {
  const headers = Object.assign({ "Accept": "application/json" }, opts.headers || {});
  const token = localStorage.getItem("pf_token");
  if (token) headers["Authorization"] = "Bearer " + token;
  if (opts.body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, { method: opts.method || "GET", headers, body: opts.body === undefined ? undefined : JSON.stringify(opts.body) });
  const text = await res.text();
  let data = null; try { data = text ? JSON.parse(text) : null; } catch (_) { data = text; }
  if (!res.ok) {
    const msg = data && data.error ? `${data.error.code}: ${data.error.message}${data.error.field ? " (" + data.error.field + ")" : ""}` : `HTTP ${res.status}`;
    throw new Error(res.status === 401 ? msg + " — paste a token above" : msg);
  }
  return data;
}

// Save a file the API serves (the token goes in a header, so a plain link cannot).
async function download(path, name) {
  const res = await fetch(path, { headers: { Authorization: "Bearer " + (localStorage.getItem("pf_token") || "") } });
  if (!res.ok) throw new Error(`download failed: HTTP ${res.status}`);
  const url = URL.createObjectURL(await res.blob());
  const a = document.createElement("a");
  a.href = url; a.download = name.split("/").pop(); a.click();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

function stateSpan(s) { return `<span class="state s-${esc(s)}" data-state="${esc(s)}">${esc(s)}</span>`; }

// Every route() bumps this; a page whose data arrives after the user moved on renders
// nothing (otherwise a slow list could overwrite the page navigated to since).
let routeGen = 0;

async function runsPage(params, gen) {
  const q = new URLSearchParams(params);
  const page = await api("/v1/runs?" + q.toString());
  if (gen !== routeGen) return;
  $("#main").innerHTML = `<section><h2>Runs</h2>
    <div class="row"><label>State <select id="f-state">${["", "queued", "running", "awaiting_approval", "awaiting_budget", "completed", "failed", "aborted", "cancelled"]
      .map((s) => `<option ${params.state === s ? "selected" : ""}>${s}</option>`).join("")}</select></label></div>
    <table id="runs"><thead><tr><th>Run</th><th>Template</th><th>State</th><th>Created</th><th>Cost</th><th>Error</th></tr></thead><tbody>
    ${page.runs.map((r) => `<tr><td><a href="#/runs/${esc(r.id)}">${esc(r.id.slice(0, 8))}</a></td><td>${esc(r.template)} v${esc(r.template_version)}</td>
      <td>${stateSpan(r.state)}${r.pending_approvals ? ' <span class="muted">(needs approval)</span>' : ""}</td><td>${when(r.created_at)}</td><td>$${Number(r.spent_usd).toFixed(4)}</td><td>${esc((r.error || "").slice(0, 80))}</td></tr>`).join("")}
    </tbody></table>
    ${page.next_cursor ? `<p><button id="next">Next page</button></p>` : ""}</section>`;
  $("#f-state").onchange = (e) => { location.hash = "#/runs" + (e.target.value ? "?state=" + e.target.value : ""); };
  if (page.next_cursor) $("#next").onclick = () => runsPage(Object.assign({}, params, { cursor: page.next_cursor }), routeGen);
}

// Time left before an approval's deadline decides it (or the group it went to).
function deadlineNote(a) {
  if (a.escalated_at) return ` <span class="deadline escalated" data-escalated="${esc(a.escalate_to)}">escalated to ${esc(a.escalate_to)}</span>`;
  if (!a.deadline_at) return "";
  return ` <span class="deadline" data-deadline="${esc(a.deadline_at)}" data-then="${esc(a.on_timeout)}">${esc(deadlineText(a.deadline_at, a.on_timeout))}</span>`;
}
function deadlineText(at, then) {
  const left = Math.max(0, Math.round((new Date(at) - Date.now()) / 1000));
  return left > 0 ? `${left} s left, then ${then}` : `deadline passed: ${then}`;
}
setInterval(() => document.querySelectorAll(".deadline[data-deadline]").forEach((el) => { el.textContent = deadlineText(el.dataset.deadline, el.dataset.then); }), 1000);

function decisionControls(a) {
  return `<div class="row approval" data-approval="${esc(a.id)}">
    <span>Approval on <b>${esc(a.phase_key)}</b> (round ${esc(a.round)}, gates: ${esc(a.gates.join(", "))})${deadlineNote(a)}</span>
    <input class="comment" placeholder="comment (needed for revise)" size="30">
    ${["approve", "reject", "abort", "revise"].map((x) => `<button class="decide ${x === "approve" ? "primary" : ""}" data-action="${x}">${x}</button>`).join("")}
  </div>`;
}

function wireDecisions(root, after) {
  root.querySelectorAll(".approval").forEach((el) => {
    el.querySelectorAll("button.decide").forEach((b) => {
      b.onclick = async () => {
        try {
          showError(null);
          const comment = $(".comment", el).value.trim();
          await api(`/v1/approvals/${el.dataset.approval}/decision`, { method: "POST", body: { action: b.dataset.action, comment: comment || null } });
          el.innerHTML = `<span class="muted">decided: ${esc(b.dataset.action)}</span>`;
          if (after) after();
        } catch (e) { showError(e); }
      };
    });
  });
}

// A run whose budget ran out waits for an approver: raise it (the run resumes) or abort.
function budgetControls(run) {
  return `<div class="row budget"><span>Budget exhausted: spent $${Number(run.spent_usd).toFixed(4)} of ${run.budget_usd == null ? "no USD limit" : "$" + Number(run.budget_usd).toFixed(4)},
    ${esc(run.spent_tokens)} of ${run.budget_tokens == null ? "no token limit" : esc(run.budget_tokens)} tokens.</span>
    <label>USD <input class="usd" type="number" step="0.01" min="0" size="8"></label>
    <label>tokens <input class="tokens" type="number" step="1000" min="0" size="10"></label>
    <button class="raise primary">raise and resume</button><button class="abort">abort</button></div>`;
}

function wireBudget(root, id, after) {
  const el = $(".budget", root);
  if (!el) return;
  const send = async (body) => {
    try { showError(null); await api(`/v1/runs/${id}/budget`, { method: "POST", body }); if (after) after(); } catch (e) { showError(e); }
  };
  $("button.raise", el).onclick = () => {
    const usd = $(".usd", el).value, tokens = $(".tokens", el).value;
    send({ action: "raise", usd: usd ? Number(usd) : null, tokens: tokens ? Number(tokens) : null });
  };
  $("button.abort", el).onclick = () => send({ action: "abort", reason: "aborted from the UI" });
}

// The phases a phase needs (a run stored before phases named them: the one before it).
function needsOf(p, phases) {
  if (p.needs) return p.needs;
  const before = phases.filter((q) => !q.parent && q.position < p.position);
  return before.length ? [before[before.length - 1].phase_key] : [];
}

// The run's phase graph as SVG: columns by depth, an edge from each need, a fan-out
// drawn once with its items counted, skipped phases greyed.
function phaseGraph(phases) {
  const top = phases.filter((p) => !p.parent), depth = {};
  const depthOf = (p, seen = 0) => {
    if (depth[p.phase_key] !== undefined || seen > top.length) return depth[p.phase_key] || 0;
    const needs = needsOf(p, phases).map((k) => top.find((q) => q.phase_key === k)).filter(Boolean);
    return (depth[p.phase_key] = needs.length ? 1 + Math.max(...needs.map((q) => depthOf(q, seen + 1))) : 0);
  };
  top.forEach((p) => depthOf(p));
  const rows = {}, at = {}, W = 150, H = 44, GX = 50, GY = 14;
  top.forEach((p) => { const c = depth[p.phase_key]; rows[c] = (rows[c] || 0) + 1; at[p.phase_key] = [c * (W + GX), (rows[c] - 1) * (H + GY)]; });
  const width = (Math.max(...top.map((p) => depth[p.phase_key])) + 1) * (W + GX), height = Math.max(...Object.values(rows)) * (H + GY);
  const edges = top.flatMap((p) => needsOf(p, phases).filter((k) => at[k]).map((k) => {
    const [x1, y1] = at[k], [x2, y2] = at[p.phase_key];
    return `<line x1="${x1 + W}" y1="${y1 + H / 2}" x2="${x2}" y2="${y2 + H / 2}" class="edge" marker-end="url(#arrow)"/>`;
  }));
  const nodes = top.map((p) => {
    const [x, y] = at[p.phase_key], items = phases.filter((i) => i.parent === p.phase_key);
    const label = items.length ? `${p.phase_key} ×${items.length} (${items.filter((i) => i.state === "completed").length} done)` : p.phase_key;
    return `<g class="node s-${esc(p.state)}" data-node="${esc(p.phase_key)}" data-state="${esc(p.state)}"><rect x="${x}" y="${y}" width="${W}" height="${H}" rx="6"/>
      <text x="${x + 8}" y="${y + 18}">${esc(label)}</text><text x="${x + 8}" y="${y + 35}" class="sub">${esc(p.state)}</text></g>`;
  });
  return `<svg class="graph" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}"><defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" markerHeight="6" orient="auto"><path d="M0,0L10,5L0,10z"/></marker></defs>${edges.join("")}${nodes.join("")}</svg>`;
}

async function runPage(id) {
  $("#main").innerHTML = `<section><h2>Run <code>${esc(id)}</code> <span id="run-state"></span></h2><div id="run-error" class="err"></div>
    <div class="row"><button id="cancel">Cancel run</button></div></section>
    <section><h3>Approvals</h3><div id="approvals"></div></section>
    <section><h3>Phases</h3><div id="phases"></div></section>
    <section><h3>In-phase activity</h3><div id="activity"><span class="muted">no model or tool calls yet</span></div></section>
    <section><h3>Artifacts</h3><div id="artifacts"></div><pre id="artifact-view" hidden></pre></section>
    <section><h3>Files</h3><div id="files"></div></section>
    <section><h3>Costs</h3><div id="costs"></div></section>
    <section><h3>Timeline chart</h3><div id="timeline-chart"><span class="muted">no phase has started</span></div></section>
    <section><h3>Timeline <span class="muted" id="live"></span></h3><ol class="timeline" id="timeline"></ol></section>
    <section><h3>Report</h3><div id="report" class="report muted">written when the run ends</div></section>`;
  $("#cancel").onclick = async () => { try { await api(`/v1/runs/${id}/cancel`, { method: "POST", body: { reason: "cancelled from the UI" } }); refresh(); } catch (e) { showError(e); } };
  let pending = false, again = false, approvalsKey = null;
  // Every event the stream delivered (from the first): the timeline chart's data.
  const streamed = [];
  async function refresh() {
    if (pending) { again = true; return; }
    pending = true;
    try {
      const d = await api(`/v1/runs/${id}`);
      $("#run-state").innerHTML = stateSpan(d.run.state);
      $("#run-error").textContent = d.run.error || "";
      $("#cancel").hidden = ["completed", "failed", "aborted", "cancelled"].includes(d.run.state);
      // A branch may wait on a human while another branch still runs.
      const ended = ["completed", "failed", "aborted", "cancelled"].includes(d.run.state);
      const waits = (a) => d.phases.some((p) => p.phase_key === a.phase_key && p.state === "awaiting_approval" && p.round === a.round);
      const open = d.approvals.filter((a) => !a.action && !ended && waits(a));
      // Re-render only when something changed, so a comment being typed survives live updates.
      const key = JSON.stringify([d.run.state, d.approvals.map((a) => [a.id, a.action])]);
      if (key !== approvalsKey) {
        approvalsKey = key;
        // A run waiting for budget may also have a branch waiting at a gate: show both.
        $("#approvals").innerHTML = d.run.state === "awaiting_budget" ? budgetControls(d.run) + open.map(decisionControls).join("")
          : open.length ? open.map(decisionControls).join("")
          : (d.approvals.length ? d.approvals.map((a) => `<div>${esc(a.phase_key)} r${esc(a.round)}: <b>${esc(a.action || "pending")}</b> ${esc(a.decided_by || "")} ${esc(a.comment || "")}</div>`).join("") : `<span class="muted">none</span>`);
        wireDecisions($("#approvals"), refresh);
        wireBudget($("#approvals"), id, refresh);
      }
      $("#phases").innerHTML = phaseGraph(d.phases) + `<table><thead><tr><th>Phase</th><th>Needs</th><th>Role</th><th>State</th><th>Attempts</th><th>Round</th><th>Error</th></tr></thead><tbody>
        ${d.phases.map((p) => `<tr data-phase="${esc(p.phase_key)}" class="${p.state === "skipped" ? "skipped" : ""}"><td>${esc(p.phase_key)}</td><td>${esc(p.parent ? "item of " + p.parent : needsOf(p, d.phases).join(", "))}</td><td>${esc(p.role)}</td><td>${stateSpan(p.state)}</td><td>${esc(p.attempts)}/${esc(p.max_attempts)}</td><td>${esc(p.round)}</td><td>${esc(p.error || "")}</td></tr>`).join("")}</tbody></table>`;
      $("#artifacts").innerHTML = d.artifacts.length ? `<table><thead><tr><th>Phase</th><th>Attempt</th><th>Path</th><th>Schema</th><th>Valid</th><th>sha256</th><th></th></tr></thead><tbody>
        ${d.artifacts.map((a) => `<tr><td>${esc(a.phase_key)}</td><td>r${esc(a.round)} a${esc(a.attempt)}</td><td>${esc(a.path)}</td><td>${esc(a.schema_id)}</td><td>${a.valid ? "yes" : "no"}</td><td><code>${esc((a.sha256 || "").slice(0, 12))}</code></td>
          <td><button class="view" data-artifact="${esc(a.id)}">view</button></td></tr>`).join("")}</tbody></table>` : `<span class="muted">none yet</span>`;
      $("#artifacts").querySelectorAll("button.view").forEach((b) => {
        b.onclick = async () => {
          try {
            const a = await api(`/v1/runs/${id}/artifacts/${b.dataset.artifact}`);
            const v = $("#artifact-view"); v.hidden = false;
            v.textContent = (a.json ? JSON.stringify(a.json, null, 2) : (a.content || "(no content)")) +
              (a.artifact.valid ? "" : "\n\nvalidation errors:\n" + JSON.stringify(a.artifact.validation_errors, null, 2));
          } catch (e) { showError(e); }
        };
      });
      $("#files").innerHTML = d.files.length ? `<table><thead><tr><th>From</th><th>Path</th><th>Bytes</th><th>Kind</th><th>sha256</th><th></th></tr></thead><tbody>
        ${d.files.map((f) => `<tr><td>${f.origin ? esc(f.origin) : "input"}</td><td>${esc(f.path)}</td><td>${esc(f.size)}</td><td>${f.is_binary ? "binary" : "text"}</td><td><code>${esc(f.sha256.slice(0, 12))}</code></td>
          <td><button class="download" data-path="${esc(f.path)}" data-origin="${esc(f.origin)}">download</button></td></tr>`).join("")}</tbody></table>` : `<span class="muted">none</span>`;
      $("#files").querySelectorAll("button.download").forEach((b) => {
        b.onclick = () => download(`/v1/runs/${id}/files/${b.dataset.path.split("/").map(encodeURIComponent).join("/")}?origin=${encodeURIComponent(b.dataset.origin)}`, b.dataset.path).catch(showError);
      });
      $("#timeline-chart").innerHTML = timelineChart(streamed, ended);
      $("#costs").innerHTML = costBars(d.costs) + (d.costs.length ? `<table><thead><tr><th>Phase</th><th>Model</th><th>Calls</th><th>Tokens in/out</th><th>Cost</th></tr></thead><tbody>
        ${d.costs.map((c) => `<tr><td>${esc(c.phase_key)}</td><td>${esc(c.model)}</td><td>${esc(c.calls)}</td><td>${esc(c.tokens_in)}/${esc(c.tokens_out)}</td><td>$${Number(c.cost_usd).toFixed(4)}</td></tr>`).join("")}</tbody></table>` : `<span class="muted">no model calls</span>`);
      if (d.report) {
        // Rendered by the server: raw HTML in the Markdown arrives as text, links only
        // to http(s), mailto, anchors and relative paths.
        const res = await fetch(`/v1/runs/${id}/report?format=html`, { headers: { Authorization: "Bearer " + (localStorage.getItem("pf_token") || "") } });
        if (res.ok) { $("#report").innerHTML = await res.text(); $("#report").className = "report"; }
      }
    } catch (e) { showError(e); } finally {
      pending = false;
      // An event arrived while we were reading: read once more so the page ends current.
      if (again) { again = false; refresh(); }
    }
  }
  await refresh();
  stopStream = followEvents(id, (ev) => {
    const li = document.createElement("li");
    li.dataset.kind = ev.kind;
    li.textContent = `#${ev.seq} ${new Date(ev.at).toLocaleTimeString()} ${ev.kind}${ev.phase ? " [" + ev.phase + "]" : ""}`;
    $("#timeline").appendChild(li);
    streamed.push(ev);
    const progress = showActivity(ev);
    // A call starting or a tool answering changes nothing else on the page.
    if (!progress || ev.kind === "model.call_finished") refresh();
  });
}

// A run's timeline as bars on a time axis: each phase attempt (repairs in their own
// colour), each wait for a human, from the run's streamed events.
function timelineChart(events, ended) {
  if (!events.length) return `<span class="muted">no events</span>`;
  const t = (e) => new Date(e.at).getTime();
  const t0 = t(events[0]), last = t(events[events.length - 1]), t1 = Math.max(ended ? last : Date.now(), t0 + 1000);
  const bars = [], open = {};
  for (const e of events) {
    const key = e.phase;
    if (e.kind === "phase.started") open[key] = { phase: key, from: t(e), cls: e.data.attempt > 1 ? "repair" : "attempt", label: `a${e.data.attempt}` };
    else if (["artifact.valid", "artifact.invalid", "phase.failed"].includes(e.kind) && open[key]) { bars.push(Object.assign(open[key], { to: t(e) })); delete open[key]; }
    else if (e.kind === "approval.requested") open["wait:" + e.data.approval_id] = { phase: key, from: t(e), cls: "wait", label: "approval" };
    else if (e.kind === "approval.decided" && open["wait:" + e.data.approval_id]) { bars.push(Object.assign(open["wait:" + e.data.approval_id], { to: t(e), label: e.data.action })); delete open["wait:" + e.data.approval_id]; }
  }
  Object.values(open).forEach((b) => bars.push(Object.assign(b, { to: ended ? last : Date.now(), cls: b.cls + " open" })));
  if (!bars.length) return `<span class="muted">no phase has started</span>`;
  const rows = [...new Set(bars.map((b) => b.phase))], W = 760, L = 120, H = 22;
  const x = (ms) => L + ((ms - t0) / (t1 - t0)) * (W - L - 10);
  const svgBars = bars.map((b) => { const y = rows.indexOf(b.phase) * H + 4, x0 = x(b.from), w = Math.max(2, x(b.to) - x0);
    return `<rect class="bar ${esc(b.cls)}" data-phase="${esc(b.phase)}" x="${x0.toFixed(1)}" y="${y}" width="${w.toFixed(1)}" height="${H - 8}"><title>${esc(b.phase)} ${esc(b.label)}: ${((b.to - b.from) / 1000).toFixed(1)} s</title></rect>`; }).join("");
  const labels = rows.map((r, i) => `<text x="0" y="${i * H + 16}">${esc(r)}</text>`).join("");
  const secs = (t1 - t0) / 1000, height = rows.length * H + 20;
  return `<svg class="timeline-chart" width="${W}" height="${height}" viewBox="0 0 ${W} ${height}">${labels}${svgBars}
    <text x="${L}" y="${height - 2}" class="sub">0 s</text><text x="${W - 10}" y="${height - 2}" text-anchor="end" class="sub">${secs.toFixed(1)} s</text></svg>
    <div class="legend"><span class="key attempt"></span>attempt <span class="key repair"></span>repair <span class="key wait"></span>waiting for approval</div>`;
}

// Tokens and cost per phase as bars.
function costBars(costs) {
  if (!costs.length) return "";
  const byPhase = {};
  costs.forEach((c) => { const p = byPhase[c.phase_key] || (byPhase[c.phase_key] = { tokens: 0, usd: 0 }); p.tokens += c.tokens_in + c.tokens_out; p.usd += c.cost_usd; });
  const phases = Object.keys(byPhase);
  return `<div class="row charts"><div><h4>Tokens per phase</h4>${barChart(phases.map((p) => byPhase[p].tokens), phases, { cls: "bars tokens", width: 320 })}</div>
    <div><h4>Cost per phase (USD)</h4>${barChart(phases.map((p) => Number(byPhase[p].usd.toFixed(6))), phases, { cls: "bars cost", width: 320 })}</div></div>`;
}

// Model and tool calls as they happen, grouped under their phase. Returns whether the
// event was one of them.
function showActivity(ev) {
  const d = ev.data || {};
  let text;
  if (ev.kind === "model.call_started") text = `model ${d.model} called (attempt ${d.attempt}, turn ${d.turn})`;
  else if (ev.kind === "model.call_finished") text = `model ${d.model} answered: ${d.status}, ${d.tokens_in}/${d.tokens_out} tokens, $${Number(d.cost_usd || 0).toFixed(4)}, ${d.latency_ms} ms`;
  else if (ev.kind === "tool.called") text = `tool ${d.tool}${d.path ? " " + d.path : ""}: ${d.ok ? "ok" : "refused or failed"} (${d.bytes_in} bytes in, ${d.bytes_out} out)`;
  else return false;
  const root = $("#activity");
  if (!root.querySelector("[data-activity]")) root.innerHTML = "";
  let group = [...root.querySelectorAll("[data-activity]")].find((g) => g.dataset.activity === ev.phase);
  if (!group) {
    group = document.createElement("details");
    group.open = true; group.dataset.activity = ev.phase || "";
    group.innerHTML = `<summary>${esc(ev.phase)}</summary><ol class="activity"></ol>`;
    root.appendChild(group);
  }
  const li = document.createElement("li");
  li.dataset.kind = ev.kind;
  if (d.ok === false) li.className = "refused";
  li.textContent = `${new Date(ev.at).toLocaleTimeString()} ${text}`;
  $("ol", group).appendChild(li);
  return true;
}

// Server-Sent Events over fetch (EventSource cannot send an Authorization header);
// resumes from the last seq after a dropped connection.
function followEvents(runId, onEvent) {
  let last = 0, stopped = false, ctrl = null;
  async function connect() {
    while (!stopped) {
      ctrl = new AbortController();
      try {
        $("#live").textContent = "(live)";
        const headers = { Accept: "text/event-stream" };
        const token = localStorage.getItem("pf_token"); if (token) headers.Authorization = "Bearer " + token;
        if (last) headers["Last-Event-ID"] = String(last);
        const res = await fetch(`/v1/runs/${runId}/events/stream`, { headers, signal: ctrl.signal });
        if ([401, 403, 404].includes(res.status)) { stopped = true; $("#live").textContent = "(no live events: HTTP " + res.status + ")"; return; }
        if (!res.ok) throw new Error("event stream: HTTP " + res.status);
        const reader = res.body.getReader(); const dec = new TextDecoder(); let buf = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += dec.decode(value, { stream: true });
          let i;
          while ((i = buf.indexOf("\n\n")) >= 0) {
            const block = buf.slice(0, i); buf = buf.slice(i + 2);
            let kind = "message", data = "", id = null;
            for (const line of block.split("\n")) {
              if (line.startsWith("event:")) kind = line.slice(6).trim();
              else if (line.startsWith("data:")) data += line.slice(5).trim();
              else if (line.startsWith("id:")) id = line.slice(3).trim();
            }
            if (kind === "end") { stopped = true; $("#live").textContent = "(run ended)"; return; }
            if (id) last = Number(id);
            if (data && id) onEvent(JSON.parse(data));
          }
        }
      } catch (e) { if (stopped) return; }
      $("#live").textContent = "(reconnecting)";
      await new Promise((r) => setTimeout(r, 1000));
    }
  }
  connect();
  return () => { stopped = true; if (ctrl) ctrl.abort(); };
}

async function approvalsPage(gen) {
  const list = await api("/v1/approvals");
  if (gen !== routeGen) return;
  $("#main").innerHTML = `<section><h2>Approvals inbox</h2><div id="inbox">${list.length ? list.map((a) =>
    `<div><a href="#/runs/${esc(a.run_id)}">run ${esc(a.run_id.slice(0, 8))}</a> — ${when(a.created_at)}${decisionControls(a)}</div>`).join("") : `<span class="muted">nothing waits on you</span>`}</div></section>`;
  wireDecisions($("#inbox"));
}

function submitPage() {
  $("#main").innerHTML = `<section><h2>Submit a run</h2>
    <div class="row"><button id="example">Use the example workflow</button><label>Queue <input id="queue" value="default" size="16"></label>
      <label>Budget USD <input id="budget" size="6"></label></div>
    <h3>Template (YAML or JSON)</h3><textarea id="template" rows="12"></textarea>
    <h3>Personas (YAML documents separated by a line with ---)</h3><textarea id="personas" rows="8"></textarea>
    <h3>Requirements (markdown)</h3><textarea id="requirements" rows="5"></textarea>
    <div class="row"><button class="primary" id="submit">Submit</button></div></section>`;
  $("#example").onclick = async () => {
    try {
      const ex = await api("/v1/examples/spec-review-verify");
      $("#template").value = ex.template; $("#personas").value = ex.personas.join("\n---\n"); $("#requirements").value = ex.requirements;
    } catch (e) { showError(e); }
  };
  $("#submit").onclick = async () => {
    try {
      showError(null);
      const personas = $("#personas").value.split(/^---\s*$/m).map((s) => s.trim()).filter(Boolean);
      const budget = $("#budget").value.trim();
      const out = await api("/v1/runs", { method: "POST", headers: { "Idempotency-Key": "ui-" + crypto.randomUUID() },
        body: { template: $("#template").value, personas, inputs: { requirements: $("#requirements").value },
                queue: $("#queue").value.trim() || "default", budget: budget ? { usd: Number(budget) } : null } });
      location.hash = "#/runs/" + out.run_id;
    } catch (e) { showError(e); }
  };
}

// A bar chart as SVG: one bar per value, labelled below where `labels` has text.
function barChart(values, labels, { width = 420, height = 110, cls = "bars", unit = "" } = {}) {
  const max = Math.max(1, ...values), bw = width / Math.max(1, values.length);
  const bars = values.map((v, i) => {
    const h = Math.round((v / max) * (height - 28));
    return `<g><rect x="${(i * bw + 1).toFixed(1)}" y="${height - 16 - h}" width="${Math.max(1, bw - 2).toFixed(1)}" height="${h}"><title>${esc(labels[i])}: ${esc(v)}${esc(unit)}</title></rect>
      ${labels[i] && (values.length < 16 || i % 3 === 0) ? `<text x="${(i * bw + bw / 2).toFixed(1)}" y="${height - 3}" text-anchor="middle">${esc(labels[i])}</text>` : ""}</g>`;
  }).join("");
  return `<svg class="${esc(cls)}" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}"><text x="0" y="10" class="sub">max ${esc(max)}${esc(unit)}</text>${bars}</svg>`;
}

async function fleetAct(action, after) {
  try { showError(null); const out = await api("/v1/admin/actions", { method: "POST", body: action }); if (after) after(out); return out; } catch (e) { showError(e); return null; }
}

let stopFleet = null;

// Set a section's HTML only when what it shows changed (so a button is not replaced
// between a person's pointing and clicking); `wire` attaches its handlers.
function renderIf(el, key, html, wire) {
  if (el.dataset.key === key) return;
  el.dataset.key = key; el.innerHTML = html;
  if (wire) wire(el);
}

// A table of `items`, a row each from `row`; `empty` (muted) when there are none.
function table(headers, items, row, empty) {
  if (!items.length) return `<span class="muted">${esc(empty)}</span>`;
  return `<table><thead><tr>${headers.map((h) => `<th>${esc(h)}</th>`).join("")}</tr></thead><tbody>${items.map(row).join("")}</tbody></table>`;
}

const ageText = (secs) => `${Number(secs).toFixed(1)} s ago`;

function fleetWorkers(workers, act) {
  const key = JSON.stringify(workers.map((w) => [w.id, w.state, w.drain_requested, w.in_flight]));
  renderIf($("#workers"), key, table(["Worker", "Host", "Queues", "State", "Heartbeat", "In flight", ""], workers, (w) =>
    `<tr data-worker="${esc(w.id)}"><td>${esc(w.name)}</td><td>${esc(w.host)}:${esc(w.pid)}</td><td>${esc(w.queues.join(", "))}</td><td>${stateSpan(w.drain_requested && w.state === "running" ? "draining" : w.state)}</td>
      <td class="age"></td><td>${esc(w.in_flight)}/${esc(w.concurrency)}</td>
      <td><button class="${w.drain_requested ? "undrain" : "drain"}">${w.drain_requested ? "undrain" : "drain"}</button></td></tr>`, "no live worker"),
  (el) => el.querySelectorAll("tr[data-worker] button").forEach((b) => {
    b.onclick = () => act({ action: b.className === "drain" ? "drain_workers" : "undrain_workers", worker: b.closest("tr").dataset.worker });
  }));
  // Ages change every refresh: set in place, so the rows (and their buttons) stay.
  workers.forEach((w) => { const td = $(`#workers tr[data-worker="${w.id}"] td.age`); if (td) td.textContent = ageText(w.heartbeat_age_secs); });
}

function fleetQueues(queues, act) {
  const key = JSON.stringify(queues.map((q) => [q.queue, q.ready, q.running, q.dead, q.paused, q.pause_reason, q.completed_last_15_minutes, q.workers, Math.round(q.oldest_ready_age_secs || 0)]));
  renderIf($("#queues"), key, table(["Queue", "Ready", "Running", "Dead", "Oldest ready", "Done (15 min)", "Workers", "Paused", ""], queues, (q) =>
    `<tr data-queue="${esc(q.queue)}" data-paused="${q.paused}"><td>${esc(q.queue)}</td><td>${esc(q.ready)}</td><td>${esc(q.running)}</td><td>${esc(q.dead)}</td>
      <td>${q.oldest_ready_age_secs == null ? "" : Number(q.oldest_ready_age_secs).toFixed(1) + " s"}</td><td>${esc(q.completed_last_15_minutes)}</td><td>${esc(q.workers)}</td>
      <td>${q.paused ? "paused" + (q.pause_reason ? ": " + esc(q.pause_reason) : "") : ""}</td>
      <td><button class="${q.paused ? "resume" : "pause"}">${q.paused ? "resume" : "pause"}</button>${q.dead ? ` <button class="requeue-dead">requeue ${esc(q.dead)} dead</button>` : ""}</td></tr>`, "no queue has work"),
  (el) => el.querySelectorAll("tr[data-queue] button").forEach((b) => {
    const queue = b.closest("tr").dataset.queue;
    b.onclick = () => act(b.className === "pause" ? { action: "pause_queue", queue, reason: "paused from the fleet page" }
      : b.className === "resume" ? { action: "resume_queue", queue } : { action: "requeue_dead", queue });
  }));
}

function fleetDead(dead, act) {
  renderIf($("#dead"), JSON.stringify(dead.map((j) => [j.id, j.attempts])), table(["Job", "Queue", "Kind", "Run", "Attempts", "Last error", ""], dead, (j) =>
    `<tr data-job="${esc(j.id)}"><td>${esc(j.id)}</td><td>${esc(j.queue)}</td><td>${esc(j.kind)}</td><td>${j.run_id ? `<a href="#/runs/${esc(j.run_id)}">${esc(j.run_id.slice(0, 8))}</a>` : ""}</td>
      <td>${esc(j.attempts)}/${esc(j.max_attempts)}</td><td>${esc((j.last_error || "").slice(0, 120))}</td><td><button class="requeue">requeue</button></td></tr>`, "none"),
  (el) => el.querySelectorAll("tr[data-job] button").forEach((b) => {
    b.onclick = () => act({ action: "requeue_job", job: Number(b.closest("tr").dataset.job) });
  }));
}

function fleetHistory(audit, deliveries) {
  renderIf($("#audit"), JSON.stringify(audit.map((a) => a.id)), table(["When", "Who", "Via", "Action", "Target", "Result"], audit, (a) =>
    `<tr data-audit="${esc(a.id)}" data-action="${esc(a.action)}" data-ok="${a.ok}"><td>${when(a.at)}</td><td>${esc(a.actor)}</td><td>${esc(a.via)}</td><td>${esc(a.action)}</td><td>${esc(a.target || "")}</td>
      <td class="${a.ok ? "" : "err"}">${esc(a.result)}</td></tr>`, "no operator action yet"));
  renderIf($("#deliveries"), JSON.stringify(deliveries.map((d) => d.id)), table(["When", "Webhook", "Notification", "Run", "Delivery", "Attempt", "Result", "ms"], deliveries, (d) =>
    `<tr data-delivery="${esc(d.delivery_id)}" data-ok="${d.ok}"><td>${when(d.at)}</td><td>${esc(d.webhook)}</td><td>${esc(d.notification)}</td><td><a href="#/runs/${esc(d.run_id)}">${esc(d.run_id.slice(0, 8))}</a></td>
      <td><code>${esc(d.delivery_id.slice(0, 12))}</code></td><td>${esc(d.attempt)}</td><td class="${d.ok ? "" : "err"}">${d.ok ? "HTTP " + esc(d.status_code) : esc(d.error || "")}</td><td>${esc(d.duration_ms)}</td></tr>`, "no webhook delivery yet"));
}

// The fleet: workers, queues (with throughput and depth charts), dead-lettered jobs,
// the audit of operator actions and webhook deliveries, refreshed every two seconds.
async function fleetPage(gen) {
  $("#main").innerHTML = `<section><h2>Fleet</h2><div class="row"><button id="drain-all">Drain all workers</button><button id="undrain-all">Undrain all</button>
      <button id="rescue">Rescue stuck jobs</button></div>
      <div class="row charts"><div><h3>Completed per minute (15 min)</h3><div id="throughput"></div></div><div><h3>Ready now (sampled while this page is open)</h3><div id="depth"></div></div></div></section>
    <section><h3>Workers</h3><div id="workers"></div></section>
    <section><h3>Queues</h3><div id="queues"></div></section>
    <section><h3>Dead-lettered jobs</h3><div id="dead"></div></section>
    <section><h3>Audit</h3><div id="audit"></div></section>
    <section><h3>Webhook deliveries</h3><div id="deliveries"></div></section>`;
  const depth = [];
  const act = (action) => fleetAct(action, load);
  $("#drain-all").onclick = () => act({ action: "drain_workers", worker: null });
  $("#undrain-all").onclick = () => act({ action: "undrain_workers", worker: null });
  $("#rescue").onclick = () => act({ action: "rescue_stuck" });
  async function load() {
    if (gen !== routeGen) return;
    try {
      const [workers, qv, dead, audit, deliveries] = await Promise.all([api("/v1/admin/workers"), api("/v1/admin/queues"),
        api("/v1/admin/jobs?state=dead&limit=100"), api("/v1/admin/audit?limit=30"), api("/v1/admin/webhooks/deliveries?limit=30")]);
      if (gen !== routeGen) return;
      $("#throughput").innerHTML = barChart(qv.throughput.map((p) => p.completed), qv.throughput.map((p) => new Date(p.minute).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })), { cls: "bars throughput" });
      depth.push(qv.queues.reduce((n, q) => n + q.ready_now, 0)); if (depth.length > 60) depth.shift();
      $("#depth").innerHTML = barChart(depth, depth.map(() => ""), { cls: "bars depth" });
      fleetWorkers(workers, act);
      fleetQueues(qv.queues, act);
      fleetDead(dead, act);
      fleetHistory(audit, deliveries);
    } catch (e) { showError(e); }
  }
  await load();
  const timer = setInterval(load, 2000);
  stopFleet = () => clearInterval(timer);
}

async function route() {
  const gen = ++routeGen;
  takeTokenFromFragment();
  if (stopStream) { stopStream(); stopStream = null; }
  if (stopFleet) { stopFleet(); stopFleet = null; }
  showError(null);
  const h = location.hash.replace(/^#/, "") || "/runs";
  const [path, query] = h.split("?");
  try {
    if (path.startsWith("/runs/")) await runPage(path.slice(6));
    else if (path === "/approvals") await approvalsPage(gen);
    else if (path === "/submit") submitPage();
    else if (path === "/fleet") await fleetPage(gen);
    else await runsPage(Object.fromEntries(new URLSearchParams(query || "")), gen);
  } catch (e) { $("#main").innerHTML = ""; showError(e); }
}
window.addEventListener("hashchange", route);
route();

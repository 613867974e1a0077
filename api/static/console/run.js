// The run page: header with the run's facts and actions, the flow graph updated live,
// and the detail of the picked step (inputs, outputs, error, attempts, logs streamed).
import {ApiError, get, post, stream} from "./api.js";
import {compensations, draw, flatTree, paint} from "./graph.js";
import {$, FINAL, badge, esc, fields, flash, took, when} from "./util.js";

let run = null, plan = null, picked = null, logControl = null, session = null, canaries = [], stepHistory = null, historyKey = null;
const POLL_MS = 1000;

export async function show(runId, who) {
  session = who;
  const app = $("#app");
  app.innerHTML = `<section id="run-head" class="card"></section><div id="canary"></div><div id="run-confirm"></div>
    <div class="run-body"><section class="card graph-card"><div id="graph"></div><div id="comp"></div></section>
    <aside class="card detail" id="detail"><p class="muted">Pick a step to see its inputs, outputs, attempts and logs.</p></aside></div>`;
  try {
    run = await get(`/runs/${encodeURIComponent(runId)}`);
  } catch (e) {
    app.innerHTML = `<p class="error">${esc(e.message)}</p>`;
    return;
  }
  try { plan = await get(`/runs/${encodeURIComponent(runId)}/plan`); } catch { plan = null; }
  $("#graph").innerHTML = draw(plan ? plan.tree : flatTree(run.steps));
  app.addEventListener("click", onClick);
  const wanted = new URLSearchParams(location.search).get("step");
  render();
  if (wanted) pick(wanted);
  // When the first complete picture was on screen (ms since navigation): for bench/.
  document.documentElement.dataset.rendered = String(Math.round(performance.now()));
  follow();
}

// Live updates: one server-sent-event stream per page (`GET /runs/{id}/events`), which
// pushes the run when it changes and ends when the run is final. A lost stream reconnects;
// after RECONNECTS failures in a row the page falls back to polling.
const RECONNECTS = 3;
let failures = 0;

function follow() {
  if (FINAL.has(run.state) && !hasLiveStep()) return;
  const live = document.documentElement.dataset;
  live.updates = "stream";
  let ended = false;
  stream(`/runs/${encodeURIComponent(run.run_id)}/events`, (name, data) => {
    failures = 0;
    if (name === "status") {
      run = data;
      live.statusEvents = String(Number(live.statusEvents || 0) + 1);
      render();
      // A rollout is over once its step is: its card goes with it.
      const still = canaries.filter((c) => step(c.step) && ["running", "retrying"].includes(step(c.step).state));
      if (still.length !== canaries.length) { canaries = still; renderCanaries(); }
    } else if (name === "canary") {
      canaries = data;
      renderCanaries();
    } else if (name === "end") {
      ended = true;
    }
  }, (error) => {
    if (ended || (FINAL.has(run.state) && !hasLiveStep())) return;
    failures += 1;
    if (failures > RECONNECTS) {
      flash(`The live stream of this run failed (${error ? error.message : "closed"}); refreshing every ${POLL_MS / 1000}s instead.`);
      poll();
      return;
    }
    setTimeout(follow, 1000 * failures);
  });
}

// The fallback when the stream cannot be kept open.
async function poll() {
  document.documentElement.dataset.updates = "polling";
  while (!FINAL.has(run.state) || hasLiveStep()) {
    await new Promise((r) => setTimeout(r, POLL_MS));
    try { run = await get(`/runs/${encodeURIComponent(run.run_id)}`); render(); }
    catch (e) { flash(`Could not refresh the run: ${e.message}`); }
  }
}

function hasLiveStep() {
  return run.steps.some((s) => ["running", "retrying", "compensating"].includes(s.state));
}

function render() {
  renderHead();
  paint($("#graph"), run);
  $("#comp").innerHTML = compensations(run);
  if (picked) renderDetail();
  document.title = `${run.run_id} · ${run.state} · shipflow`;
}

function renderHead() {
  const final = FINAL.has(run.state);
  const actions = [];
  if (!final) actions.push(session.button("Cancel run", "operator", `data-act="cancel"`, "danger"));
  if (final && run.state !== "succeeded") actions.push(session.button("Retry from the failed step", "operator", `data-act="retry"`));
  if (run.state === "succeeded") actions.push(session.button("Roll back to this run", "operator", `data-act="rollback"`));
  const args = Object.entries(run.args || {});
  $("#run-head").innerHTML = `
    <div class="title"><h1 id="run-id">${esc(run.run_id)}</h1> ${badge(run.state)}</div>
    <p class="facts">flow <b>${esc(run.flow)}</b> v${esc(run.flow_version)} &rarr; stage <b>${esc(run.stage)}</b>
      · ${esc(run.trigger || "api")} by <b>${esc(run.triggered_by || "?")}</b>
      · started ${when(run.started_at)} · ${esc(took(run.started_at, run.ended_at))}
      ${run.queue_position ? ` · <span class="s-queued">queued, position ${esc(run.queue_position)}</span>` : ""}
      · <a href="${esc(run.ui_url)}" target="_blank" rel="noopener">Temporal Web UI</a></p>
    ${args.length ? `<p class="facts">args: ${args.map(([k, v]) => `<code>${esc(k)}=${esc(v)}</code>`).join(" ")}</p>` : ""}
    ${run.reason ? `<p class="facts muted">reason: ${esc(run.reason)}</p>` : ""}
    ${run.error ? `<p class="error" id="run-error">${esc(run.error)}</p>` : ""}
    ${run.stuck ? `<p class="error">stuck: ${esc(run.stuck.reason)} (${esc(run.stuck.attempts)} attempts)</p>` : ""}
    <div class="actions">${actions.join(" ")}</div>`;
}

// A canary rollout of this run in progress: its weight, and Promote while it waits in a pause.
function renderCanaries() {
  const box = $("#canary");
  if (!canaries.length) { box.innerHTML = ""; return; }
  box.innerHTML = canaries.map((c) => `<section class="card canary" data-canary="${esc(c.step)}">
    <div class="title"><h3>${esc(c.strategy === "blue_green" ? "Blue/green" : "Canary")} of <b>${esc(c.service)}</b> (step ${esc(c.step)})</h3>
      ${c.paused ? `<span class="state s-waiting">waiting for promotion</span>` : `<span class="state s-running">in progress</span>`}</div>
    <p class="facts">current weight: <b class="weight">${c.weight === null || c.weight === undefined ? "—" : esc(c.weight) + "%"}</b> of new requests to the new version
</p>
    ${c.paused ? `<div class="actions">${session.button("Promote", "operator", `data-act="promote" data-target="${esc(c.step)}"`, "primary")}</div>` : ""}
  </section>`).join("");
}

function step(id) { return run.steps.find((s) => s.id === id); }

function pick(id) {
  if (!step(id)) return;
  picked = id;
  document.querySelectorAll(".node.picked").forEach((n) => n.classList.remove("picked"));
  document.querySelectorAll(`.node[data-step="${CSS.escape(id)}"]`).forEach((n) => n.classList.add("picked"));
  const url = new URL(location.href);
  url.searchParams.set("step", id);
  history.replaceState(null, "", url);
  $("#detail").innerHTML = `<div id="detail-top"></div>
    <div class="logs"><h3>Logs <span id="log-state" class="muted"></span></h3><p id="log-note" class="note" hidden></p>
    <pre id="log" tabindex="0" aria-live="polite"></pre></div><div id="detail-info"></div>`;
  renderDetail();
  openLog(id);
}

// Steps the workflow itself carries out (timers, approvals) print nothing.
const SILENT = new Set(["approve", "wait"]);

function openLog(id) {
  if (logControl) logControl.abort();
  const box = $("#log"), state = $("#log-state");
  if (SILENT.has(step(id).kind)) {
    state.textContent = "";
    box.replaceWith(Object.assign(document.createElement("p"), {id: "log", className: "muted", textContent: `A ${step(id).kind} step prints no logs.`}));
    return;
  }
  state.textContent = "(streaming)";
  let lines = 0;
  logControl = stream(`/runs/${encodeURIComponent(run.run_id)}/steps/${encodeURIComponent(id)}/logs/stream`, (name, data) => {
    if (name === "line") {
      const atEnd = box.scrollTop + box.clientHeight >= box.scrollHeight - 4;
      const line = document.createElement("div");
      line.className = "line";
      line.dataset.seq = data.seq;
      line.textContent = data.text;
      line.title = new Date(data.at).toISOString();
      box.appendChild(line);
      lines += 1;
      if (atEnd) box.scrollTop = box.scrollHeight;
    } else if (name === "cut") {
      const note = $("#log-note");
      note.hidden = false;
      note.textContent = data.note;
    } else if (name === "end") {
      state.textContent = lines ? "(ended)" : "(nothing printed)";
    }
  }, (error) => { if (error) state.textContent = `(stream stopped: ${error.message})`; });
}

function renderDetail() {
  const s = step(picked);
  if (!s) return;
  const info = plan && plan.steps[s.id];
  const top = [`<div class="title"><h2>${esc(s.id)}</h2> ${badge(s.state)}</div>
    <p class="muted">${esc(s.kind)}${s.summary ? " · " + esc(s.summary) : ""}</p>`];
  if (s.kind === "approve" && s.state === "waiting") top.push(approvalBox(s, info));
  if (s.error) top.push(`<h3>Error</h3><p class="error step-error">${esc(s.error)}</p>`);
  const parts = [];
  parts.push(`<h3>Attempts</h3><dl class="fields"><dt>attempts</dt><dd>${esc(s.attempts)} of at most ${esc(s.max_attempts)}</dd>
    <dt>started</dt><dd>${when(s.started_at) || "not yet"}</dd><dt>ended</dt><dd>${when(s.ended_at) || "—"}</dd>
    <dt>took</dt><dd>${esc(took(s.started_at, s.ended_at))}</dd>
    ${s.next_attempt_at ? `<dt>next attempt</dt><dd>${when(s.next_attempt_at)}</dd>` : ""}</dl>${attemptTable(s)}`);
  if (s.approval) parts.push(`<h3>Decision</h3>${fields({decision: s.approval.decision, by: s.approval.by, comment: s.approval.comment, at: new Date(s.approval.at).toLocaleString()})}`);
  if (s.output && s.output.groups) parts.push(groupsUsed(s.output));
  parts.push(`<h3>Output</h3><div class="output">${fields(s.output)}</div>`);
  if (info) parts.push(`<h3>Inputs</h3><div class="inputs">${fields(info.inputs)}</div>` +
    (info.undo ? `<h3>Undo</h3>${fields(info.undo)}` : ""));
  if (s.compensation) {
    const c = s.compensation;
    const undoEvents = (stepHistory && stepHistory.step === s.id) ? stepHistory.events.filter((e) => e.undo) : [];
    parts.push(`<h3>Compensation</h3>${fields({kind: c.kind, attempts: c.attempts, error: c.error, output: c.output, took: took(c.started_at, c.ended_at)})}` +
      (undoEvents.length ? `<p class="undo-events">In the Temporal Web UI: ${undoEvents.map((e) => `<a href="${esc(e.ui_url)}" target="_blank" rel="noopener">undo attempt ${esc(e.attempt)}</a>`).join(" · ")}</p>` : ""));
  }
  const events = (stepHistory && stepHistory.step === s.id) ? stepHistory.events.filter((e) => !e.undo) : [];
  const last = events[events.length - 1];
  parts.push(last
    ? `<p><a id="step-ui-link" href="${esc(last.ui_url)}" target="_blank" rel="noopener">This step in the Temporal Web UI</a>
      <span class="muted">(the ${last.local ? "local activity" : "activity"} of attempt ${esc(last.attempt)}: its event in the run's history, input and result decoded)</span></p>`
    : `<p><a id="step-ui-link" href="${esc(stepHistory && stepHistory.step === s.id ? stepHistory.run_ui_url : run.ui_url)}" target="_blank" rel="noopener">This run in the Temporal Web UI</a>
      <span class="muted">(${SILENT.has(s.kind) ? "this step runs in the workflow itself: see its timer or update in the history" : "no activity of this step in the history yet"})</span></p>`);
  $("#detail-info").innerHTML = parts.join("");
  loadHistory(s);
  const box = $("#detail-top");
  const typing = box.querySelector("textarea");
  if (typing && document.activeElement === typing && s.state === "waiting") return;  // keep what is being typed
  box.innerHTML = top.join("");
}

// The group versions a deploy (or migrate) step used, each linked to that version's keys,
// with the versions the service had before (what the step's undo puts back).
function groupsUsed(output) {
  const before = output.previous_groups || {};
  const names = Object.keys(output.groups).sort();
  const link = (name, v) => `<a href="/groups/${encodeURIComponent(name)}?version=${encodeURIComponent(v)}">${esc(name)} v${esc(v)}</a>`;
  return `<h3>Groups</h3><ul class="groups-used">${names.map((name) => `<li data-group="${esc(name)}">${link(name, output.groups[name])}${
    output.previous_groups ? (before[name] === undefined ? ` <span class="muted">(new for this service)</span>`
      : before[name] !== output.groups[name] ? ` <span class="muted">(was ${link(name, before[name])})</span>` : ` <span class="muted">(unchanged)</span>`) : ""}</li>`).join("")}</ul>`;
}

// Every attempt with its times and error (from the workflow's records), each linked to
// its activity's event in the Temporal Web UI (from the run's history, read on demand).
function attemptTable(s) {
  if (!s.attempt_log || !s.attempt_log.length) return "";
  const links = new Map();
  if (stepHistory && stepHistory.step === s.id) for (const e of stepHistory.events) if (!e.undo && !links.has(e.attempt)) links.set(e.attempt, e.ui_url);
  return `<table class="attempts"><thead><tr><th>#</th><th>outcome</th><th>started</th><th>took</th><th>error</th><th></th></tr></thead><tbody>${
    s.attempt_log.map((a) => `<tr data-attempt="${esc(a.number)}"><td>${esc(a.number)}</td><td>${badge(a.outcome)}${a.resumed ? ` <small class="muted">resumed ${esc(a.resumed)}× after a lost worker</small>` : ""}</td>
      <td>${when(a.started_at)}</td><td>${esc(took(a.started_at, a.ended_at))}</td><td class="attempt-error">${a.error ? `<span class="error">${esc(a.error)}</span>` : ""}</td>
      <td>${links.has(a.number) ? `<a href="${esc(links.get(a.number))}" target="_blank" rel="noopener">event</a>` : ""}</td></tr>`).join("")}</tbody></table>`;
}

// The step's activities in the run's history (deep links); read again when attempts change.
async function loadHistory(s) {
  const key = `${s.id}#${(s.attempt_log || []).length}#${s.state}#${s.compensation ? s.compensation.attempts : 0}`;
  if (historyKey === key || SILENT.has(s.kind)) return;
  historyKey = key;
  try {
    stepHistory = await get(`/runs/${encodeURIComponent(run.run_id)}/steps/${encodeURIComponent(s.id)}/history`);
    if (picked === s.id) renderDetail();
  } catch { /* the run's link stays */ }
}

function approvalBox(s, info) {
  const deadline = info && info.timeout_s && s.started_at ? new Date(new Date(s.started_at).getTime() + info.timeout_s * 1000) : null;
  return `<div class="approval card" id="approval">
    <h3>Waiting for approval</h3>
    <p>Who may decide: any operator or admin${session.may("operator") ? ` (you: ${esc(session.name)})` : ""}.
      ${deadline ? `Deadline: ${esc(deadline.toLocaleString())}; without a decision by then the step fails and the run compensates.` : ""}</p>
    <label for="approve-comment">Comment</label>
    <textarea id="approve-comment" rows="2" maxlength="2000" ${session.may("operator") ? "" : "disabled"}></textarea>
    <div class="actions">${session.button("Approve", "operator", `data-act="approve" data-target="${esc(s.id)}"`, "primary")}
      ${session.button("Reject", "operator", `data-act="reject" data-target="${esc(s.id)}"`, "danger")}</div></div>`;
}

async function onClick(event) {
  const node = event.target.closest(".node[data-step]");
  if (node) { pick(node.dataset.step); return; }
  const button = event.target.closest("button[data-act]");
  if (!button || button.disabled) return;
  const id = encodeURIComponent(run.run_id);
  const act = button.dataset.act;
  try {
    if (act === "approve" || act === "reject") {
      button.disabled = true;
      await post(`/runs/${id}/${act}`, {step: button.dataset.target, comment: $("#approve-comment").value || null});
      flash(`${act === "approve" ? "Approved" : "Rejected"} ${button.dataset.target}.`, "ok");
    } else if (act === "promote") {
      button.disabled = true;
      const done = await post(`/runs/${id}/promote`, {step: button.dataset.target});
      flash(`Promoted ${done.service} (step ${done.step}): the canary goes on${done.weight !== null ? ` from weight ${done.weight}%` : ""}.`, "ok");
      return;
    } else if (act === "cancel") {
      confirmBox("Cancel this run? What it did is undone (compensation).", "Cancel the run", async () => {
        await post(`/runs/${id}/cancel`);
        flash("Cancel requested; the run compensates, then stops.", "ok");
      });
      return;
    } else if (act === "retry") {
      const started = await post(`/runs/${id}/retry`);
      location.href = `/runs/${encodeURIComponent(started.run_id)}`;
      return;
    } else if (act === "rollback") {
      const preview = await post(`/runs/${id}/rollback`, {}, {dry_run: true});
      confirmBox(`Roll the stage back to this run? It would:${planList(preview.plan)}`, "Roll back", async () => {
        const started = await post(`/runs/${id}/rollback`, {});
        location.href = `/runs/${encodeURIComponent(started.run_id)}`;
      });
      return;
    }
    run = await get(`/runs/${id}`);
    render();
  } catch (e) {
    button.disabled = false;
    flash(e instanceof ApiError ? `${act}: ${e.message}` : String(e));
  }
}

export function planList(plan) {
  return `<ul class="plan">${plan.map((p) => `<li><b>${esc(p.step)}</b>: ${esc(p.summary)}</li>`).join("")}</ul>`;
}

function confirmBox(html, label, action) {
  const box = $("#run-confirm");
  box.innerHTML = `<div class="confirm card"><div>${html}</div>
    <button type="button" class="primary" id="confirm-yes">${esc(label)}</button> <button type="button" id="confirm-no">Keep it</button></div>`;
  $("#confirm-no").onclick = () => { box.innerHTML = ""; };
  $("#confirm-yes").onclick = async () => {
    try { await action(); box.innerHTML = ""; } catch (e) { flash(e.message); }
  };
}

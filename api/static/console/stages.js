// The stage view (home page): per stage, what runs there now and since when, the live
// run and its progress, the last runs, and the actions: start a run (args form) and roll
// the stage back to a past run after seeing the dry-run plan.
import {ApiError, get, post} from "./api.js";
import {argsForm, problem, readArgs, showProblems} from "./form.js";
import {$, ago, badge, esc, flash, when} from "./util.js";

let session = null, stages = [], shape = "";
const POLL_MS = 3000;

export async function show(who) {
  session = who;
  $("#app").addEventListener("click", onClick);
  $("#app").addEventListener("submit", onSubmit);
  $("#app").addEventListener("input", onInput);
  await refresh();
  document.documentElement.dataset.rendered = String(Math.round(performance.now()));  // for bench/
  setInterval(refresh, POLL_MS);
}

async function refresh() {
  try { stages = await get("/stages"); } catch (e) { flash(`Could not read the stages: ${e.message}`); return; }
  const now = stages.map((s) => s.stage).join("|");
  if (now !== shape) {
    shape = now;
    $("#app").innerHTML = stages.length ? stages.map(skeleton).join("") :
      `<p class="muted">No stages yet: apply a flow (<code>shipflow flow apply FILE</code>) and start a run.</p>`;
  }
  for (const s of stages) fill(s);
}

function skeleton(s) {
  const key = esc(s.stage);
  return `<section class="card stage" data-stage="${key}"><div class="title"><h2>${key}</h2></div>
    <div class="stage-grid"><div><h3>Running now</h3><div class="services"></div></div>
    <div><h3>Live run</h3><div class="live"></div><h3>Flows</h3><div class="flows"></div><div class="form-slot"></div></div></div>
    <h3>Last runs</h3><div class="recent"></div><div class="preview-slot"></div></section>`;
}

function fill(s) {
  const card = document.querySelector(`.stage[data-stage="${CSS.escape(s.stage)}"]`);
  card.querySelector(".services").innerHTML = s.services.length ? `<table><thead><tr><th>service</th><th>image</th><th>since</th><th>run</th><th>by</th></tr></thead><tbody>${
    s.services.map((v) => `<tr data-service="${esc(v.service)}"><td><b>${esc(v.service)}</b></td><td><code class="image">${esc(v.image)}</code>${v.kind !== "deploy" ? ` <span class="muted">(${esc(v.kind)})</span>` : ""}</td>
      <td>${esc(ago(v.since))}<br><small>${when(v.since)}</small></td><td><a href="/runs/${encodeURIComponent(v.run_id)}">${esc(v.run_id)}</a></td><td>${esc(v.triggered_by || "?")}</td></tr>`).join("")
  }</tbody></table>` : `<p class="muted">Nothing deployed here yet.</p>`;
  card.querySelector(".live").innerHTML = s.live.length ? s.live.map((r) => `<div class="live-run">
      <a href="/runs/${encodeURIComponent(r.run_id)}">${esc(r.run_id)}</a> ${badge(r.state)}
      ${r.queue_position ? `<span class="muted">queue position ${esc(r.queue_position)}</span>` : ""}
      <div class="bar" title="${esc(r.steps_done)} of ${esc(r.steps_total)} steps done"><span style="width:${r.steps_total ? Math.round(100 * r.steps_done / r.steps_total) : 0}%"></span></div>
      <small>${esc(r.steps_done)}/${esc(r.steps_total)} steps${r.current.length ? " · now: " + esc(r.current.join(", ")) : ""} · by ${esc(r.triggered_by || "?")}</small></div>`).join("")
    : `<p class="muted">No run in progress.</p>`;
  card.querySelector(".flows").innerHTML = s.flows.map((f) => `<div class="flow-row"><b>${esc(f.name)}</b> <span class="muted">v${esc(f.version)}</span>
      ${session.button("Start run…", "operator", `data-start="${esc(f.name)}" data-stage="${esc(s.stage)}"`)}</div>`).join("") || `<p class="muted">No flow releases into this stage.</p>`;
  card.querySelector(".recent").innerHTML = s.recent.length ? `<table><thead><tr><th>run</th><th>state</th><th>by</th><th>args</th><th>started</th><th></th></tr></thead><tbody>${
    s.recent.map((r) => `<tr data-run="${esc(r.run_id)}"><td><a href="/runs/${encodeURIComponent(r.run_id)}">${esc(r.run_id)}</a></td><td>${badge(r.state)}</td>
      <td>${esc(r.triggered_by || "?")} <small class="muted">${esc(r.trigger)}</small></td>
      <td>${Object.entries(r.args || {}).map(([k, v]) => `<code>${esc(k)}=${esc(v)}</code>`).join(" ")}</td><td>${when(r.created_at)}</td>
      <td>${r.state === "succeeded" ? session.button("Roll back to this…", "operator", `data-rollback="${esc(r.run_id)}" data-stage="${esc(s.stage)}"`) : ""}</td></tr>`).join("")
  }</tbody></table>` : `<p class="muted">No runs yet.</p>`;
}

function flowOf(stage, name) {
  const s = stages.find((x) => x.stage === stage);
  return s && s.flows.find((f) => f.name === name);
}

async function onClick(event) {
  const target = event.target.closest("button");
  if (!target || target.disabled) return;
  const card = target.closest(".stage");
  if (target.dataset.start) {
    card.querySelector(".form-slot").innerHTML = argsForm(flowOf(target.dataset.stage, target.dataset.start));
  } else if (target.dataset.close !== undefined) {
    target.closest(".form-slot, .preview-slot").innerHTML = "";
  } else if (target.dataset.rollback) {
    await preview(card, target.dataset.stage, target.dataset.rollback, false);
  } else if (target.dataset.confirmRollback) {
    target.disabled = true;
    const restore = !!card.querySelector("#restore-data:checked");
    try {
      const started = await post(`/runs/${encodeURIComponent(target.dataset.confirmRollback)}/rollback`, {restore_data: restore});
      location.href = `/runs/${encodeURIComponent(started.run_id)}`;
    } catch (e) { target.disabled = false; flash(`rollback: ${e.message}`); }
  }
}

// The rollback's dry run: what it would do (each service back to which image, and the data
// restores when asked for), shown before anything starts.
async function preview(card, stage, runId, restore) {
  const slot = card.querySelector(".preview-slot");
  slot.innerHTML = `<p class="muted">Planning the rollback (dry run)…</p>`;
  const now = Object.fromEntries((stages.find((x) => x.stage === stage) || {services: []}).services.map((v) => [v.service, v.image]));
  try {
    const answer = await post(`/runs/${encodeURIComponent(runId)}/rollback`, {restore_data: restore}, {dry_run: true});
    const items = answer.plan.map((p) => `<li><b>${esc(p.service || p.step)}</b>: ${esc(p.summary)}` +
      (p.service && now[p.service] ? ` <span class="muted">(runs ${esc(now[p.service])} now)</span>` : "") + `</li>`).join("");
    slot.innerHTML = `<div class="confirm card" id="rollback-preview"><h3>Roll ${esc(stage)} back to ${esc(runId)}?</h3>
      <p>Dry run: the rollback run would do this.</p><ul class="plan">${items}</ul>
      <label><input type="checkbox" id="restore-data" data-stage="${esc(stage)}" data-run="${esc(runId)}" ${restore ? "checked" : ""}>
        also restore the data to what it was right after that run</label>
      <div class="actions"><button type="button" class="primary" data-confirm-rollback="${esc(runId)}">Confirm rollback</button>
      <button type="button" data-close>Cancel</button></div></div>`;
  } catch (e) {
    slot.innerHTML = `<p class="error">Cannot roll back to ${esc(runId)}${restore ? " with its data" : ""}: ${esc(e.message)}</p>` +
      (restore ? `<button type="button" data-rollback="${esc(runId)}" data-stage="${esc(stage)}">Preview without the data</button>` : "");
  }
}

function onInput(event) {
  if (event.target.id === "restore-data") {
    preview(event.target.closest(".stage"), event.target.dataset.stage, event.target.dataset.run, event.target.checked);
    return;
  }
  const form = event.target.closest("form.start-form");
  if (!form || !event.target.name || event.target.name === "__reason") return;
  const flow = flowOf(form.closest(".stage").dataset.stage, form.dataset.flow);
  const spec = flow.args[event.target.name];
  const box = form.querySelector(`#arg-${CSS.escape(event.target.name)}-error`);
  box.textContent = problem(spec, event.target.type === "checkbox" ? event.target.checked : event.target.value);
}

async function onSubmit(event) {
  const form = event.target.closest("form.start-form");
  if (!form) return;
  event.preventDefault();
  const flow = flowOf(form.closest(".stage").dataset.stage, form.dataset.flow);
  const {args, problems} = readArgs(form, flow);
  showProblems(form, problems);
  const error = form.querySelector(".form-error");
  if (Object.keys(problems).length) { error.textContent = "Fix the fields marked above."; return; }
  error.textContent = "";
  try {
    const started = await post(`/flows/${encodeURIComponent(flow.name)}/runs`, {args, reason: form.querySelector("#run-reason").value || null});
    location.href = `/runs/${encodeURIComponent(started.run_id)}`;
  } catch (e) {
    if (e instanceof ApiError && Array.isArray(e.detail)) {
      const byArg = {};
      for (const d of e.detail) if (String(d.loc).startsWith("args.")) byArg[String(d.loc).slice(5)] = d.msg;
      showProblems(form, byArg);
    }
    error.textContent = e.message;
  }
}

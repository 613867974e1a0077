// The flows page: each flow's stage, args, triggers and source as applied, and its cron
// schedules (next fire, paused) with pause / unpause / trigger now for admins.
import {get, post} from "./api.js";
import {$, esc, fields, flash, when} from "./util.js";

let session = null;

export async function show(who) {
  session = who;
  $("#app").addEventListener("click", onClick);
  let flows;
  try { flows = await get("/flows"); } catch (e) { flash(e.message); return; }
  $("#app").innerHTML = flows.length ? flows.map((f) => `<section class="card flow" data-flow="${esc(f.name)}">
      <div class="title"><h2>${esc(f.name)}</h2><span class="muted">v${esc(f.version)} &rarr; stage <b>${esc(f.stage)}</b></span>
        <a href="/runs?flow=${encodeURIComponent(f.name)}">its runs</a></div>
      <h3>Args</h3>${fields(f.args)}
      <h3>Triggers</h3>${f.triggers.length ? fields(f.triggers) : `<p class="muted">none: runs start from the API, CLI or console</p>`}
      <h3>Schedules</h3><div class="schedules muted">…</div>
      <h3>Versions</h3><div class="versions muted">…</div>
      <details><summary>Source</summary><pre class="source"></pre></details></section>`).join("")
    : `<p class="muted">No flows yet: <code>shipflow flow apply FILE</code>.</p>`;
  for (const f of flows) { fill(f.name); versions(f.name); }
}

// The flow's versions, and what changed between two of them (the `shipflow flow diff` view).
async function versions(name) {
  const card = document.querySelector(`.flow[data-flow="${CSS.escape(name)}"]`);
  const box = card.querySelector(".versions");
  let list;
  try { list = await get(`/flows/${encodeURIComponent(name)}/versions`); }
  catch (e) { box.textContent = `Could not read the versions: ${e.message}`; return; }
  box.classList.remove("muted");
  const options = (chosen) => list.map((v) => `<option value="${esc(v.version)}" ${v.version === chosen ? "selected" : ""}>v${esc(v.version)}${v.current ? " (current)" : ""} · ${esc(new Date(v.created_at).toLocaleString())}</option>`).join("");
  if (list.length < 2) {
    box.innerHTML = `<p class="muted">Only version ${esc(list.length ? list[0].version : "?")} so far: nothing to compare.</p>`;
    return;
  }
  box.innerHTML = `<form class="diff-form"><label>from <select name="from">${options(list[1].version)}</select></label>
      <label>to <select name="to">${options(list[0].version)}</select></label>
      <button type="submit">Show the diff</button></form><div class="diff" aria-live="polite"></div>`;
  const form = box.querySelector(".diff-form");
  form.addEventListener("submit", (event) => { event.preventDefault(); showDiff(name, form); });
  showDiff(name, form);
}

async function showDiff(name, form) {
  const out = form.parentElement.querySelector(".diff");
  const from = form.elements.from.value, to = form.elements.to.value;
  try {
    const diff = await get(`/flows/${encodeURIComponent(name)}/diff`, {from, to});
    const lines = diff.changes.map((c) => `<li class="change c-${c.change === "+" ? "add" : c.change === "-" ? "del" : "mod"}"><code>${esc(c.change)}</code> ${esc(c.what)} <b>${esc(c.name)}</b>${c.detail ? `: ${esc(c.detail)}` : ""}</li>`);
    out.innerHTML = `<p class="muted">v${esc(diff.from_version)} &rarr; v${esc(diff.to_version)}${diff.note ? ` · ${esc(diff.note)}` : ""}</p>` +
      (lines.length ? `<ul class="changes">${lines.join("")}</ul>` : `<p class="muted">No changes.</p>`);
  } catch (e) { out.innerHTML = `<p class="error">${esc(e.message)}</p>`; }
}

async function fill(name) {
  const card = document.querySelector(`.flow[data-flow="${CSS.escape(name)}"]`);
  try {
    const [detail, schedules] = await Promise.all([get(`/flows/${encodeURIComponent(name)}`), get(`/flows/${encodeURIComponent(name)}/schedules`)]);
    card.querySelector(".source").textContent = detail.source;
    card.querySelector(".schedules").classList.remove("muted");
    card.querySelector(".schedules").innerHTML = schedules.length ? `<table><thead><tr><th>cron</th><th>zone</th><th>state</th><th>next</th><th></th></tr></thead><tbody>${
      schedules.map((s) => `<tr data-schedule="${esc(s.id)}"><td><code>${esc(s.cron)}</code></td><td>${esc(s.timezone)}</td>
        <td>${s.exists ? (s.paused ? "paused" : "active") : "not synced"}${s.note ? ` <small class="muted">${esc(s.note)}</small>` : ""}</td>
        <td>${s.next_action_times.length ? when(s.next_action_times[0]) : "—"}</td>
        <td>${session.button(s.paused ? "Unpause" : "Pause", "admin", `data-sched="${esc(s.paused ? "unpause" : "pause")}" data-flow="${esc(name)}" data-id="${esc(s.id)}"`)}
          ${session.button("Trigger now", "admin", `data-sched="trigger" data-flow="${esc(name)}" data-id="${esc(s.id)}"`)}</td></tr>`).join("")
    }</tbody></table>` : `<p class="muted">No cron triggers.</p>`;
  } catch (e) {
    card.querySelector(".schedules").textContent = `Could not read the schedules: ${e.message}`;
  }
}

async function onClick(event) {
  const button = event.target.closest("button[data-sched]");
  if (!button || button.disabled) return;
  const {flow, id, sched} = button.dataset;
  button.disabled = true;
  try {
    const answer = await post(`/flows/${encodeURIComponent(flow)}/schedules/${encodeURIComponent(id)}/${sched}`, sched === "trigger" ? undefined : {});
    if (sched === "trigger" && answer.run_id) { location.href = `/runs/${encodeURIComponent(answer.run_id)}`; return; }
    flash(sched === "trigger" ? "Triggered." : `Schedule ${sched}d.`, "ok");
  } catch (e) { flash(`${sched}: ${e.message}`); }
  fill(flow);
}

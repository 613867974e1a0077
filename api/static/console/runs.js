// The runs list: filters (flow, stage, state, trigger, who) kept in the address, and
// cursor paging (`cursor` query parameter, next one in the `X-Next-Cursor` header).
import {api} from "./api.js";
import {$, badge, esc, flash, took, when} from "./util.js";

const STATES = ["", "queued", "pending", "running", "waiting", "succeeded", "failed", "cancelled", "rolled_back", "rollback_failed"];
const FILTERS = ["flow", "stage", "status", "trigger", "triggered_by"];
const PAGE = 50;

export async function show() {
  const params = new URLSearchParams(location.search);
  $("#app").innerHTML = `<section class="card"><h1>Runs</h1>
    <form id="filters" class="filters">
      <label>flow <input name="flow" value="${esc(params.get("flow") || "")}"></label>
      <label>stage <input name="stage" value="${esc(params.get("stage") || "")}"></label>
      <label>state <select name="status">${STATES.map((s) => `<option value="${s}" ${params.get("status") === s ? "selected" : ""}>${s || "any"}</option>`).join("")}</select></label>
      <label>trigger <select name="trigger">${["", "api", "cron", "git", "rollback", "retry"].map((s) => `<option value="${s}" ${params.get("trigger") === s ? "selected" : ""}>${s || "any"}</option>`).join("")}</select></label>
      <label>who <input name="triggered_by" value="${esc(params.get("triggered_by") || "")}"></label>
      <button type="submit" class="primary">Filter</button></form>
    <table id="runs"><thead><tr><th>run</th><th>state</th><th>flow</th><th>stage</th><th>version / args</th><th>by</th><th>started</th><th>took</th></tr></thead><tbody></tbody></table>
    <p class="pager"><a id="first" href="?">First page</a> <a id="next" hidden>Next page &rarr;</a></p></section>`;
  $("#filters").addEventListener("submit", (event) => {
    event.preventDefault();
    const next = new URLSearchParams();
    for (const [k, v] of new FormData(event.target)) if (v) next.set(k, v);
    location.search = next.toString();
  });
  const query = {limit: PAGE, cursor: params.get("cursor")};
  for (const f of FILTERS) query[f] = params.get(f);
  const first = new URLSearchParams();
  for (const f of FILTERS) if (params.get(f)) first.set(f, params.get(f));
  $("#first").href = "?" + first.toString();
  try {
    const {data, headers} = await api("/runs", {query});
    $("#runs tbody").innerHTML = data.map((r) => `<tr><td><a href="/runs/${encodeURIComponent(r.run_id)}">${esc(r.run_id)}</a></td>
      <td>${badge(r.state)}</td><td>${esc(r.flow)}</td><td>${esc(r.stage)}</td>
      <td>v${esc(r.flow_version)} ${Object.entries(r.args || {}).map(([k, v]) => `<code>${esc(k)}=${esc(v)}</code>`).join(" ")}</td>
      <td>${esc(r.triggered_by || "?")} <small class="muted">${esc(r.trigger)}</small></td><td>${when(r.created_at)}</td><td>${esc(took(r.created_at, r.ended_at))}</td></tr>`).join("")
      || `<tr><td colspan="8" class="muted">No runs match.</td></tr>`;
    const cursor = headers.get("X-Next-Cursor");
    if (cursor) {
      const next = new URLSearchParams(first);
      next.set("cursor", cursor);
      $("#next").href = "?" + next.toString();
      $("#next").hidden = false;
    }
  } catch (e) { flash(e.message); }
}

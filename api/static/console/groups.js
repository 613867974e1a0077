// The groups pages: every secret and config group (kind, tags, restriction, current
// version), and one group's keys, versions and audit trail. A secret value is never
// read by these pages (the API does not send one, and the page never calls reveal):
// secret keys show as "(secret)"; config values are shown. Admins create groups and
// set or unset keys here; viewers and operators see the same controls disabled, with
// the role they need. A value typed for a secret is sent and the field emptied at once.
import {api, get} from "./api.js";
import {$, esc, flash, when} from "./util.js";

let session = null;

export async function show(who, name) {
  session = who;
  $("#app").addEventListener("submit", onSubmit);
  $("#app").addEventListener("click", onClick);
  $("#app").addEventListener("change", onChange);
  if (name) await showGroup(name, new URLSearchParams(location.search).get("version"));
  else await showList();
}

function put(name, body) {
  return api(`/groups/${encodeURIComponent(name)}`, {method: "PUT", body});
}

function restriction(g) {
  const parts = [];
  if (g.stages.length) parts.push(`stages: ${g.stages.join(", ")}`);
  if (g.services.length) parts.push(`services: ${g.services.join(", ")}`);
  return parts.length ? esc(parts.join(" · ")) : `<span class="muted">any stage, any service</span>`;
}

function tags(list) {
  return list.length ? list.map((t) => `<code class="tag">${esc(t)}</code>`).join(" ") : `<span class="muted">none</span>`;
}

function list(text) {
  return String(text || "").split(",").map((t) => t.trim()).filter(Boolean);
}

// ------------------------------------------------------------------ the list

async function showList() {
  let groups;
  try { groups = await get("/groups"); } catch (e) { flash(`Could not read the groups: ${e.message}`); return; }
  const rows = groups.map((g) => `<tr data-group="${esc(g.name)}">
      <td><a href="/groups/${encodeURIComponent(g.name)}"><b>${esc(g.name)}</b></a></td>
      <td><span class="kind k-${esc(g.kind)}">${esc(g.kind)}</span></td><td class="tags">${tags(g.tags)}</td>
      <td class="restriction">${restriction(g)}</td><td class="version">v${esc(g.version)}</td>
      <td>${esc(g.keys.length)}</td><td>${esc(g.created_by)}<br><small>${when(g.created_at)}</small></td></tr>`);
  $("#app").innerHTML = `<section class="card"><div class="title"><h1>Groups</h1>
      <span class="muted">secret and config groups; services and migrate steps get them as environment variables</span></div>
      ${groups.length ? `<table id="groups"><thead><tr><th>group</th><th>kind</th><th>tags</th><th>restriction</th><th>version</th><th>keys</th><th>last change</th></tr></thead>
        <tbody>${rows.join("")}</tbody></table>` : `<p class="muted">No groups yet.</p>`}</section>
    ${createForm()}`;
}

function createForm() {
  const allowed = session.may("admin");
  const off = allowed ? "" : "disabled";
  return `<form id="new-group" class="card group-form" autocomplete="off">
    <h2>New group</h2>
    ${allowed ? "" : `<p class="why">Creating groups needs the admin role; you are ${esc(session.role)}.</p>`}
    <div class="row">
      <label>name <input name="name" required pattern="[a-z0-9][a-z0-9-]*" ${off}></label>
      <label>kind <select name="kind" ${off}><option value="config">config</option><option value="secret">secret</option></select></label>
      <label>tags <input name="tags" placeholder="production, api" ${off}></label>
      <label>stages <input name="stages" placeholder="any" ${off}></label>
      <label>services <input name="services" placeholder="any" ${off}></label>
    </div>
    <div class="row">
      <label>first key <input name="key" placeholder="DATABASE_URL" ${off}></label>
      <label>value <input name="value" type="text" autocomplete="off" ${off}></label>
    </div>
    <p class="error form-error"></p>
    ${session.button("Create group", "admin", `type="submit" data-submit`, "primary").replace('type="button" ', "")}
  </form>`;
}

// ------------------------------------------------------------------ one group

async function showGroup(name, version) {
  const path = `/groups/${encodeURIComponent(name)}`;
  let group, versions;
  try {
    [group, versions] = await Promise.all([get(path, version ? {version} : undefined), get(`${path}/versions`)]);
  } catch (e) { flash(`Could not read the group ${name}: ${e.message}`); return; }
  const newest = versions[versions.length - 1];
  const current = !version || Number(version) === newest.version;
  const secret = group.kind === "secret";
  const keyRows = group.keys.map((k) => `<tr data-key="${esc(k)}"><td><code>${esc(k)}</code></td>
      <td class="value">${secret ? `<span class="muted">(secret)</span>` : `<code>${esc(group.values[k])}</code>`}</td>
      <td>${current ? session.button("Unset", "admin", `data-unset="${esc(k)}"`, "danger") : ""}</td></tr>`);
  $("#app").innerHTML = `<section class="card group" data-group="${esc(group.name)}">
      <div class="title"><h1>${esc(group.name)}</h1><span class="kind k-${esc(group.kind)}">${esc(group.kind)}</span>
        <span class="muted" id="group-version">v${esc(group.version)}${current ? " (current)" : ` (an older version; the current one is v${esc(newest.version)})`}</span>
        <a href="/groups">all groups</a></div>
      <dl class="fields"><dt>tags</dt><dd>${tags(group.tags)}</dd><dt>restriction</dt><dd>${restriction(group)}</dd>
        <dt>written</dt><dd>by ${esc(group.created_by)}, ${when(group.created_at)}</dd>
        ${group.deleted ? `<dt>deleted</dt><dd>yes: this last version is empty; older versions stay for rollbacks</dd>` : ""}</dl>
      <h3>Keys</h3>
      ${group.keys.length ? `<table id="keys"><thead><tr><th>key</th><th>value</th><th></th></tr></thead><tbody>${keyRows.join("")}</tbody></table>`
        : `<p class="muted">No keys.</p>`}
      ${secret ? `<p class="muted">Secret values are never shown here; an admin reads one back with <code>shipflow group get ${esc(group.name)} --reveal KEY</code> (audited).</p>` : ""}
      ${current ? setForm(group) : ""}
      <h3>Versions</h3>${versionTable(group, versions)}
      <h3>Audit trail</h3><div id="audit" class="muted">…</div></section>`;
  audit(group.name);
}

function setForm(group) {
  const allowed = session.may("admin");
  const off = allowed ? "" : "disabled";
  return `<form id="set-key" class="group-form" data-group="${esc(group.name)}" data-kind="${esc(group.kind)}" autocomplete="off">
    <div class="row">
      <label>key <input name="key" required placeholder="NAME" ${off}></label>
      <label>value <input name="value" type="${group.kind === "secret" ? "password" : "text"}" autocomplete="${group.kind === "secret" ? "new-password" : "off"}" ${off}></label>
      ${session.button("Set key", "admin", `type="submit" data-submit`).replace('type="button" ', "")}
    </div><p class="error form-error"></p></form>`;
}

function versionTable(group, versions) {
  const rows = versions.slice().reverse().map((v) => `<tr data-version="${esc(v.version)}" class="${v.version === group.version ? "picked" : ""}">
      <td><a href="/groups/${encodeURIComponent(group.name)}?version=${esc(v.version)}">v${esc(v.version)}</a></td>
      <td>${esc(v.keys.join(", ")) || `<span class="muted">none</span>`}</td><td>${tags(v.tags)}</td><td>${restriction(v)}</td>
      <td>${esc(v.created_by)}</td><td>${when(v.created_at)}</td></tr>`);
  return `<table id="versions"><thead><tr><th>version</th><th>keys</th><th>tags</th><th>restriction</th><th>by</th><th>at</th></tr></thead><tbody>${rows.join("")}</tbody></table>`;
}

async function audit(name) {
  const box = $("#audit");
  if (!session.may("operator")) {
    box.innerHTML = `<span class="why">The audit trail needs the operator role; you are ${esc(session.role)}.</span>`;
    return;
  }
  let entries;
  try { entries = await get(`/groups/${encodeURIComponent(name)}/audit`); } catch (e) { box.textContent = `Could not read the audit trail: ${e.message}`; return; }
  box.classList.remove("muted");
  box.innerHTML = entries.length ? `<table id="audit-trail"><thead><tr><th>at</th><th>who</th><th>action</th><th>version</th><th>keys</th></tr></thead><tbody>${
    entries.map((a) => `<tr><td>${when(a.at)}</td><td>${esc(a.actor)}</td><td>${esc(a.action)}</td><td>${a.version ? "v" + esc(a.version) : ""}</td><td>${esc(a.keys.join(", "))}</td></tr>`).join("")
  }</tbody></table>` : `<p class="muted">Nothing recorded.</p>`;
}

// ------------------------------------------------------------------ actions

function onChange(event) {
  // The first value of a new secret group is typed hidden, like every secret.
  if (event.target.name === "kind" && event.target.form && event.target.form.id === "new-group") {
    event.target.form.elements.value.type = event.target.value === "secret" ? "password" : "text";
  }
}

async function onSubmit(event) {
  const form = event.target;
  if (form.id !== "new-group" && form.id !== "set-key") return;
  event.preventDefault();
  if (!session.may("admin")) return;
  const f = form.elements, error = form.querySelector(".form-error");
  const key = f.key.value.trim(), value = f.value.value;
  error.textContent = "";
  try {
    if (form.id === "new-group") {
      const name = f.name.value.trim();
      const body = {kind: f.kind.value, tags: list(f.tags.value), stages: list(f.stages.value), services: list(f.services.value), values: key ? {[key]: value} : {}};
      if (body.kind === "secret") f.value.value = "";  // a secret never stays in the page, even in a field
      await put(name, body);
      location.href = `/groups/${encodeURIComponent(name)}`;
    } else {
      if (form.dataset.kind === "secret") f.value.value = "";
      await put(form.dataset.group, {values: {[key]: value}});
      flash(`Set ${key}: a new version of ${form.dataset.group}.`, "ok");
      await showGroup(form.dataset.group, null);
    }
  } catch (e) {
    error.textContent = e.message;
  }
}

async function onClick(event) {
  const button = event.target.closest("button[data-unset]");
  if (!button || button.disabled) return;
  const name = button.closest(".group").dataset.group, key = button.dataset.unset;
  button.disabled = true;
  try {
    await put(name, {unset: [key]});
    flash(`Unset ${key}: a new version of ${name}.`, "ok");
  } catch (e) { flash(`Unset ${key}: ${e.message}`); }
  await showGroup(name, null);
}

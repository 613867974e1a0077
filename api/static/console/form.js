// The start form: one field per declared arg of a flow (default filled in), checked as
// the user types against the arg's type, pattern, enum and max_length, so a mistake is
// shown before submitting; the API checks again (422 naming the arg) and that is shown too.
import {esc} from "./util.js";

export function argsForm(flow) {
  const args = Object.entries(flow.args || {});
  const rows = args.map(([name, a]) => {
    const id = `arg-${name}`;
    const hint = [a.description, a.pattern && `pattern ${a.pattern}`, a.max_length && `at most ${a.max_length} characters`,
      a.type && a.type !== "string" && a.type].filter(Boolean).join(" · ");
    let input;
    if (a.enum && a.enum.length) {
      input = `<select id="${esc(id)}" name="${esc(name)}">${a.enum.map((v) =>
        `<option value="${esc(v)}" ${String(v) === String(a.default) ? "selected" : ""}>${esc(v)}</option>`).join("")}</select>`;
    } else if (a.type === "boolean") {
      input = `<input id="${esc(id)}" name="${esc(name)}" type="checkbox" ${a.default === true || a.default === "true" ? "checked" : ""}>`;
    } else {
      input = `<input id="${esc(id)}" name="${esc(name)}" type="${a.type === "integer" ? "number" : "text"}"
        value="${esc(a.default ?? "")}" ${a.default === null || a.default === undefined ? "required" : ""}
        ${a.max_length ? `maxlength="${esc(a.max_length)}"` : ""} autocomplete="off">`;
    }
    return `<div class="field"><label for="${esc(id)}">${esc(name)}</label>${input}
      <small class="muted">${esc(hint)}</small><small class="error" id="${esc(id)}-error"></small></div>`;
  });
  return `<form class="start-form card" data-flow="${esc(flow.name)}" novalidate>
    <h3>Start a run of ${esc(flow.name)}</h3>
    ${rows.join("") || `<p class="muted">This flow declares no args.</p>`}
    <div class="field"><label for="run-reason">Reason</label><input id="run-reason" name="__reason" maxlength="2000" autocomplete="off"></div>
    <p class="error form-error"></p>
    <button type="submit" class="primary">Start run</button> <button type="button" data-close>Close</button></form>`;
}

// The problem with one arg's value, or "" when it is fine.
export function problem(spec, raw) {
  if (spec.type === "boolean") return "";
  const value = String(raw ?? "");
  if (value === "") return spec.default === null || spec.default === undefined ? "a value is required" : "";
  if (value.length > (spec.max_length || 4096)) return `at most ${spec.max_length || 4096} characters`;
  if (spec.type === "integer" && !/^-?\d+$/.test(value)) return "must be a whole number";
  if (spec.enum && spec.enum.length && !spec.enum.map(String).includes(value)) return `one of: ${spec.enum.join(", ")}`;
  if (spec.pattern) {
    let re = null;
    try { re = new RegExp(`^(?:${spec.pattern})$`, "u"); } catch { re = null; }
    if (re && !re.test(value)) return `does not match the pattern ${spec.pattern}`;
  }
  return "";
}

export function readArgs(form, flow) {
  const out = {}, problems = {};
  for (const [name, spec] of Object.entries(flow.args || {})) {
    const input = form.querySelector(`[name="${CSS.escape(name)}"]`);
    let value = input.type === "checkbox" ? input.checked : input.value;
    const bad = problem(spec, value);
    if (bad) problems[name] = bad;
    if (spec.type === "integer" && value !== "" && !bad) value = Number(value);
    if (value !== "" || spec.type === "boolean") out[name] = value;
  }
  return {args: out, problems};
}

export function showProblems(form, problems) {
  form.querySelectorAll(".field .error").forEach((e) => { e.textContent = ""; });
  for (const [name, text] of Object.entries(problems)) {
    const box = form.querySelector(`#arg-${CSS.escape(name)}-error`);
    if (box) box.textContent = text;
  }
}

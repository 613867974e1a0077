// Small helpers shared by the console's pages: escaping, times, durations, DOM.

export function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => (
    {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
}

// A time in the user's zone, with the ISO timestamp on hover.
export function when(ts) {
  if (!ts) return "";
  const d = new Date(ts);
  return `<time datetime="${esc(d.toISOString())}" title="${esc(d.toISOString())}">${esc(d.toLocaleString())}</time>`;
}

export function ago(ts) {
  if (!ts) return "";
  const s = Math.max(0, (Date.now() - new Date(ts)) / 1000);
  if (s < 60) return `${Math.round(s)}s ago`;
  if (s < 3600) return `${Math.round(s / 60)}m ago`;
  if (s < 86400) return `${Math.round(s / 3600)}h ago`;
  return `${Math.round(s / 86400)}d ago`;
}

export function took(a, b) {
  if (!a) return "";
  const s = ((b ? new Date(b) : new Date()) - new Date(a)) / 1000;
  if (s < 60) return s.toFixed(1) + "s";
  if (s < 3600) return `${Math.floor(s / 60)}m${Math.round(s % 60)}s`;
  return `${Math.floor(s / 3600)}h${Math.round((s % 3600) / 60)}m`;
}

export const FINAL = new Set(["succeeded", "failed", "cancelled", "rolled_back", "rollback_failed"]);

export function badge(state) {
  return `<span class="state s-${esc(state)}">${esc(String(state).replace("_", " "))}</span>`;
}

export function $(selector, root = document) { return root.querySelector(selector); }

export function flash(text, kind = "error") {
  const box = $("#flash");
  box.textContent = text;
  box.className = kind;
  box.hidden = !text;
}

// A value shown as readable fields: objects become nested definition lists, not JSON.
export function fields(value) {
  if (value === null || value === undefined || value === "") return `<span class="muted">none</span>`;
  if (Array.isArray(value)) {
    if (value.every((v) => typeof v !== "object" || v === null)) return `<code>${esc(value.join(" "))}</code>`;
    return `<ol class="fields">${value.map((v) => `<li>${fields(v)}</li>`).join("")}</ol>`;
  }
  if (typeof value === "object") {
    const rows = Object.entries(value);
    if (!rows.length) return `<span class="muted">none</span>`;
    return `<dl class="fields">${rows.map(([k, v]) => `<dt>${esc(k)}</dt><dd>${fields(v)}</dd>`).join("")}</dl>`;
  }
  return `<span>${esc(value)}</span>`;
}

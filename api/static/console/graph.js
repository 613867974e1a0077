// The flow as a graph: a sequence runs left to right, a parallel group stacks its branches
// as lanes, nested groups are boxes. Built once from the run's plan; `paint` updates the
// nodes' states in place on every status update, so an open detail panel stays put.
import {badge, esc, took} from "./util.js";

export function draw(tree) {
  return `<div class="graph">${group(tree, true)}</div>`;
}

function group(node, top = false) {
  if (node.node === "action") return action(node);
  const kids = node.children.map((child) => `<div class="cell">${group(child)}</div>`);
  if (node.node === "parallel") {
    return `<div class="box parallel" data-group="${esc(node.id)}"><div class="label">parallel</div>` +
      `<div class="lanes">${kids.map((k) => `<div class="lane">${k}</div>`).join("")}</div></div>`;
  }
  const row = kids.join(`<div class="edge" aria-hidden="true">&rarr;</div>`);
  if (top) return `<div class="seq">${row}</div>`;
  return `<div class="box sequence" data-group="${esc(node.id)}"><div class="label">sequence</div><div class="seq">${row}</div></div>`;
}

function action(node) {
  return `<button type="button" class="node s-pending" data-step="${esc(node.id)}" id="node-${esc(node.id)}">` +
    `<span class="id">${esc(node.id)}</span><span class="kind">${esc(node.kind)}</span>` +
    `<span class="meta"><span class="st">pending</span> <span class="att"></span> <span class="dur"></span></span></button>`;
}

// A flat sequence for a run whose plan cannot be read (it never reached Temporal).
export function flatTree(steps) {
  return {node: "sequence", id: "steps", children: steps.map((s) => ({node: "action", id: s.id, kind: s.kind}))};
}

export function paint(root, run) {
  for (const step of run.steps) {
    const el = root.querySelector(`.node[data-step="${CSS.escape(step.id)}"]`);
    if (!el) continue;
    el.className = `node s-${step.state}` + (el.classList.contains("picked") ? " picked" : "");
    el.querySelector(".st").textContent = step.state.replace("_", " ");
    el.querySelector(".att").textContent = step.attempts > 1 || step.max_attempts > 1 ? `${step.attempts}/${step.max_attempts} attempts` : "";
    el.querySelector(".dur").textContent = took(step.started_at, step.ended_at);
    el.title = `${step.id}: ${step.state}${step.error ? " — " + step.error : ""}`;
  }
}

// Compensations, in the order they ran, as nodes of their own after the failure.
export function compensations(run) {
  // Started in the same instant (an undo with nothing to do takes no time): the undo stack
  // runs the later step's first.
  const order = new Map(run.steps.map((s, i) => [s.id, i]));
  const undone = run.steps.filter((s) => s.compensation)
    .sort((a, b) => String(a.compensation.started_at || "~").localeCompare(String(b.compensation.started_at || "~"))
      || order.get(b.id) - order.get(a.id));
  if (!undone.length) return "";
  const cause = run.failed_step ? `after <b>${esc(run.failed_step)}</b> failed` : "after the run stopped";
  const nodes = undone.map((s) => {
    const c = s.compensation;
    const state = s.state === "compensating" || s.state === "compensated" || s.state === "compensation_failed" ? s.state : (c.error ? "compensation_failed" : (c.ended_at ? "compensated" : "compensating"));
    return `<button type="button" class="node undo s-${esc(state)}" data-step="${esc(s.id)}" id="undo-${esc(s.id)}">` +
      `<span class="id">undo ${esc(s.id)}</span><span class="kind">${esc(c.kind)}</span>` +
      `<span class="meta">${badge(state)} ${c.attempts} attempt(s) ${esc(took(c.started_at, c.ended_at))}</span></button>`;
  });
  return `<div class="comp"><div class="label">compensation ${cause}, newest first</div>` +
    `<div class="seq">${nodes.join(`<div class="edge undo-edge" aria-hidden="true">&rarr;</div>`)}</div></div>`;
}

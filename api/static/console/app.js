// The console's entry point: who is logged in, then the page for this address.
import {ApiError, get, setToken, token} from "./api.js";
import {$, esc, flash} from "./util.js";

const ROLES = {viewer: 0, operator: 1, admin: 2};

// What the page needs to know about the user, and how a button says what it needs.
export const session = {
  name: "", role: "viewer",
  may(role) { return ROLES[this.role] >= ROLES[role]; },
  // A button for an action that needs `role`: disabled, with the reason, for others.
  button(label, role, attrs = "", cls = "") {
    if (this.may(role)) return `<button type="button" class="${cls}" ${attrs}>${esc(label)}</button>`;
    const why = `needs the ${role} role; you are ${this.role}`;
    return `<button type="button" class="${cls}" ${attrs} disabled title="${esc(why)}" data-why="${esc(why)}">${esc(label)}</button>` +
      `<span class="why">${esc(why)}</span>`;
  },
};

function loginForm(message) {
  $("#app").innerHTML = `
    <form id="login" class="card narrow">
      <h1>Log in</h1>
      <p class="muted">The console shows nothing without a token. Paste the API token you were given
        (<code>shipflow dev</code> prints one).</p>
      <label for="login-token">API token</label>
      <input id="login-token" name="token" type="password" autocomplete="current-password" required>
      <p id="login-error" class="error">${esc(message || "")}</p>
      <button type="submit" class="primary">Log in</button>
    </form>`;
  $("#login").addEventListener("submit", async (event) => {
    event.preventDefault();
    setToken($("#login-token").value.trim());
    try {
      await whoami();
      location.replace(location.pathname === "/login" ? "/" : location.href);
    } catch (e) {
      setToken("");
      $("#login-error").textContent = e instanceof ApiError && e.status === 401 ? "That token was not accepted." : e.message;
    }
  });
}

async function whoami() {
  const me = await get("/me");
  session.name = me.name;
  session.role = me.role;
  return me;
}

async function main() {
  try {
    await whoami();
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) { loginForm(token() ? "Your token is no longer accepted." : ""); return; }
    flash(`The API did not answer: ${e.message}`);
    return;
  }
  $("#who").textContent = `${session.name} · ${session.role}`;
  const out = $("#logout");
  out.hidden = !token();
  out.addEventListener("click", () => { setToken(""); location.href = "/"; });
  const path = location.pathname.replace(/\/+$/, "") || "/";
  const run = path.match(/^\/runs\/([^/]+)$/);
  const group = path.match(/^\/groups(?:\/([^/]+))?$/);
  document.querySelectorAll("[data-nav]").forEach((a) => a.classList.toggle("here",
    (a.dataset.nav === "runs" && path.startsWith("/runs")) || (a.dataset.nav === "flows" && path === "/flows") || (a.dataset.nav === "groups" && !!group) || (a.dataset.nav === "stages" && (path === "/" || path === "/stages"))));
  if (run) (await import("./run.js")).show(decodeURIComponent(run[1]), session);
  else if (path === "/runs") (await import("./runs.js")).show(session);
  else if (path === "/flows") (await import("./flows.js")).show(session);
  else if (group) (await import("./groups.js")).show(session, group[1] ? decodeURIComponent(group[1]) : "");
  else (await import("./stages.js")).show(session);
}

main();

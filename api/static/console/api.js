// The JSON API with the user's bearer token, and a server-sent-event reader over fetch
// (EventSource cannot send an Authorization header; a token in a URL would end in logs).

const KEY = "shipflow-token";

export function token() { return localStorage.getItem(KEY) || ""; }
export function setToken(value) {
  if (value) localStorage.setItem(KEY, value); else localStorage.removeItem(KEY);
}

export class ApiError extends Error {
  constructor(status, detail) {
    super(describe(detail) || `HTTP ${status}`);
    this.status = status;
    this.detail = detail;
  }
}

export function describe(detail) {
  if (Array.isArray(detail)) return detail.map((d) => (d.loc ? d.loc + ": " : "") + d.msg).join("; ");
  return typeof detail === "string" ? detail : (detail ? JSON.stringify(detail) : "");
}

function headers(extra = {}) {
  const out = Object.assign({"Accept": "application/json"}, extra);
  if (token()) out.Authorization = "Bearer " + token();
  return out;
}

export async function api(path, {method = "GET", body, query} = {}) {
  let url = path;
  if (query) {
    const params = new URLSearchParams();
    for (const [k, v] of Object.entries(query)) if (v !== undefined && v !== null && v !== "") params.set(k, v);
    const text = params.toString();
    if (text) url += (url.includes("?") ? "&" : "?") + text;
  }
  const init = {method, headers: headers(body !== undefined ? {"Content-Type": "application/json"} : {})};
  if (body !== undefined) init.body = JSON.stringify(body);
  const response = await fetch(url, init);
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new ApiError(response.status, data.detail);
  return {data, headers: response.headers};
}

export async function get(path, query) { return (await api(path, {query})).data; }
export async function post(path, body, query) { return (await api(path, {method: "POST", body, query})).data; }

// Read an SSE stream; calls onEvent(name, data) per event. Returns an AbortController.
export function stream(path, onEvent, onClose) {
  const control = new AbortController();
  (async () => {
    try {
      const response = await fetch(path, {headers: headers({"Accept": "text/event-stream"}), signal: control.signal});
      if (!response.ok) {
        const data = await response.json().catch(() => ({}));
        throw new ApiError(response.status, data.detail);
      }
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, {stream: true});
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          let name = "message", data = "";
          for (const line of block.split("\n")) {
            if (line.startsWith("event: ")) name = line.slice(7);
            else if (line.startsWith("data: ")) data += line.slice(6);
          }
          if (data) onEvent(name, JSON.parse(data));
        }
      }
      onClose && onClose(null);
    } catch (e) {
      if (e.name !== "AbortError") onClose && onClose(e);
    }
  })();
  return control;
}

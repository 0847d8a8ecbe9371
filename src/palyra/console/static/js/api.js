// The console's only way to the daemon: the admin API, with the session cookie and the CSRF header.
// A failure becomes an ApiError carrying the API's own error.message, which is what the page shows.

const meta = (name) => document.querySelector(`meta[name="${name}"]`)?.content ?? "";

export const consoleBase = meta("palyra-base");
export const apiBase = consoleBase.replace(/\/console$/, "") + "/api/v1";
const csrfToken = meta("palyra-csrf");

export class ApiError extends Error {
  constructor(message, status, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export function messageOf(err) {
  if (err instanceof ApiError) return err.message;
  return `The console could not finish this: ${err && err.message ? err.message : String(err)}`;
}

export function sessionEnded() {
  window.location.assign(`${consoleBase}/login?expired=1`);
}

export async function api(method, path, body) {
  const headers = { accept: "application/json" };
  if (method !== "GET") headers["x-palyra-csrf-token"] = csrfToken;
  if (body !== undefined) headers["content-type"] = "application/json";
  let response;
  try {
    response = await fetch(apiBase + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
      cache: "no-store",
    });
  } catch {
    throw new ApiError("The daemon did not answer; is it still running?", 0, "network_error");
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (response.status === 401) {
    sessionEnded();
    throw new ApiError("Your console session has ended; log in again.", 401, "session_expired");
  }
  if (!response.ok) {
    const error = data && data.error;
    const message = error && error.message ? error.message : `The admin API answered HTTP ${response.status}.`;
    throw new ApiError(message, response.status, error && error.code);
  }
  return data;
}

export const get = (path) => api("GET", path);
export const post = (path, body) => api("POST", path, body);
export const del = (path) => api("DELETE", path);

export function query(params) {
  const q = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) if (value !== undefined && value !== null && value !== "") q.set(key, value);
  const s = q.toString();
  return s ? `?${s}` : "";
}

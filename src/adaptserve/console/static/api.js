// The console's calls to the gateway: the key lives in sessionStorage only (gone when
// the tab closes) and travels as a bearer token, never in a URL.

const KEY = "adaptserve.console.key";
const ROLE = "adaptserve.console.role";

export const session = {
  key: () => sessionStorage.getItem(KEY),
  role: () => sessionStorage.getItem(ROLE),
  set(key, role) {
    sessionStorage.setItem(KEY, key);
    sessionStorage.setItem(ROLE, role);
  },
  clear() {
    sessionStorage.removeItem(KEY);
    sessionStorage.removeItem(ROLE);
  },
};

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function headers(json, key = session.key()) {
  const out = { Authorization: `Bearer ${key}` };
  if (json) out["Content-Type"] = "application/json";
  return out;
}

const OPTIONS = { cache: "no-store", credentials: "omit", referrerPolicy: "no-referrer" };

// The API's error message as it is (OpenAI-shaped `{"error": {"message"}}`).
async function failure(response) {
  let message = `HTTP ${response.status}`;
  try {
    const body = await response.json();
    message = body?.error?.message ?? body?.detail ?? JSON.stringify(body);
  } catch {
    // not JSON: keep the status line
  }
  return new ApiError(response.status, message);
}

export async function api(method, path, body, key) {
  const json = body !== undefined && !(body instanceof FormData);
  const init = { ...OPTIONS, method, headers: headers(json, key ?? session.key()) };
  if (body !== undefined) init.body = json ? JSON.stringify(body) : body;
  const response = await fetch(path, init);
  if (!response.ok) throw await failure(response);
  return response.status === 204 ? null : response.json();
}

// A text body as it is (a template's YAML), with its media type.
export async function sendText(method, path, text, type) {
  const init = { ...OPTIONS, method, headers: { ...headers(false), "Content-Type": type }, body: text };
  const response = await fetch(path, init);
  if (!response.ok) throw await failure(response);
  return response.json();
}

// POST `body` and yield each server-sent event's JSON until `[DONE]` (fetch and a
// ReadableStream: EventSource cannot send a header or a body).
export async function* sse(path, body, signal) {
  const response = await fetch(path, {
    ...OPTIONS,
    method: "POST",
    headers: headers(true),
    body: JSON.stringify(body),
    signal,
  });
  if (!response.ok) throw await failure(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replaceAll("\r\n", "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = event
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).trimStart())
        .join("\n");
      if (!data) continue;
      if (data === "[DONE]") return;
      const parsed = JSON.parse(data);
      if (parsed.error) throw new ApiError(0, parsed.error.message ?? JSON.stringify(parsed.error));
      yield parsed;
    }
  }
}

// An upload with progress (fetch has no upload progress): XMLHttpRequest.
export function upload(path, form, onProgress) {
  return new Promise((resolve, reject) => {
    const request = new XMLHttpRequest();
    request.open("POST", path);
    request.setRequestHeader("Authorization", `Bearer ${session.key()}`);
    request.upload.addEventListener("progress", (e) => e.lengthComputable && onProgress(e.loaded / e.total));
    request.addEventListener("load", () => {
      let body = null;
      try {
        body = JSON.parse(request.responseText);
      } catch {
        // keep null
      }
      if (request.status >= 200 && request.status < 300) resolve(body);
      else reject(new ApiError(request.status, body?.error?.message ?? `HTTP ${request.status}`));
    });
    request.addEventListener("error", () => reject(new ApiError(0, "the upload failed (network)")));
    request.send(form);
  });
}

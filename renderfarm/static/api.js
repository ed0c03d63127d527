// The render API as the signed-in user: the token goes in the Authorization header of each request, never in
// a URL (so never in an access log), and is never written to the console.

export class ApiError extends Error {
  constructor(status, body) {
    super(typeof body?.detail === 'string' ? body.detail : `the API answered ${status}`);
    this.status = status;
    this.body = body;
  }
}

export class Api {
  constructor(email, token) {
    this.email = email;
    this.token = token;
  }

  get me() {
    return `/users/${encodeURIComponent(this.email)}`;
  }

  headers(extra = {}) {
    return { Authorization: `Bearer ${this.token}`, ...extra };
  }

  async request(method, path, body) {
    const init = { method, headers: this.headers(), cache: 'no-store' };
    if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let resp;
    try {
      resp = await fetch(path, init);
    } catch (err) {
      throw new ApiError(0, { detail: `the API cannot be reached (${err.message})` });
    }
    const type = resp.headers.get('Content-Type') ?? '';
    const data = type.includes('json') ? await resp.json().catch(() => null) : null;
    if (!resp.ok) throw new ApiError(resp.status, data ?? { detail: `the API answered ${resp.status}` });
    return data;
  }

  get(path) {
    return this.request('GET', path);
  }

  post(path, body) {
    return this.request('POST', path, body);
  }

  async blob(path) {
    let resp;
    try {
      resp = await fetch(path, { headers: this.headers(), cache: 'no-store' });
    } catch (err) {
      throw new ApiError(0, { detail: `the API cannot be reached (${err.message})` });
    }
    if (!resp.ok) throw new ApiError(resp.status, await resp.json().catch(() => null));
    return resp.blob();
  }

  // Server-Sent Events read with fetch (EventSource cannot send the Authorization header). Calls
  // onEvent(name, data) for each event; resolves when the stream ends, rejects when it fails, or when nothing
  // (not even the server's keep-alive comment, every 15 s) has come for idleMs: a connection dropped without
  // a word (a laptop's sleep, a lost route) is noticed too.
  async stream(path, onEvent, signal, idleMs = 40000) {
    const quiet = new AbortController();
    const both = AbortSignal.any([signal, quiet.signal]);
    let timer = setTimeout(() => quiet.abort(), idleMs);
    const alive = () => {
      clearTimeout(timer);
      timer = setTimeout(() => quiet.abort(), idleMs);
    };
    try {
      const resp = await fetch(path, { headers: this.headers({ Accept: 'text/event-stream' }), cache: 'no-store', signal: both });
      if (!resp.ok) throw new ApiError(resp.status, await resp.json().catch(() => null));
      await this.readEvents(resp.body, onEvent, alive);
    } finally {
      clearTimeout(timer);
    }
  }

  async readEvents(body, onEvent, alive) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    let event = { name: 'message', data: [] };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      alive();
      buffer += value;
      const lines = buffer.split(/\r\n|\r|\n/);
      buffer = lines.pop();
      for (const line of lines) {
        if (line === '') {
          if (event.data.length) onEvent(event.name, JSON.parse(event.data.join('\n')));
          event = { name: 'message', data: [] };
        } else if (line.startsWith(':')) {
          // a keep-alive comment
        } else {
          const colon = line.indexOf(':');
          const field = colon < 0 ? line : line.slice(0, colon);
          const text = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
          if (field === 'event') event.name = text;
          else if (field === 'data') event.data.push(text);
        }
      }
    }
  }
}

// The render page: sign in, look at the room, render the view, watch the jobs, get the image.
import { Api, ApiError } from './api.js';
import { el, replaceChildren, setText } from './dom.js';
import { renderJobs, shortId, statusText } from './jobs.js';
import { RoomView } from './view3d.js';

const SESSION = 'renderfarm.session'; // {email, token}: this tab only (sessionStorage), never in a URL
const SCENE = 'renderfarm.scene'; // the scene being edited, so a reload keeps it
const DEFAULT_EXAMPLE = 'furnished_room';
const POLL_EVERY = 3000; // ms: the job list is polled this often while the event stream is down
const RECONNECT = [500, 1000, 2000, 4000, 8000, 15000]; // ms: waits between tries to reopen the stream

const $ = (id) => document.getElementById(id);
const ui = {
  signInPanel: $('sign-in-panel'),
  signIn: $('sign-in'),
  email: $('email'),
  token: $('token'),
  signInError: $('sign-in-error'),
  app: $('app'),
  account: $('account'),
  who: $('who'),
  balance: $('balance'),
  connection: $('connection'),
  signOut: $('sign-out'),
  canvas: $('view'),
  eye: $('eye'),
  modeOrbit: $('mode-orbit'),
  modeWalk: $('mode-walk'),
  resetView: $('reset-view'),
  renderPreview: $('render-preview'),
  renderHd: $('render-hd'),
  hdNote: $('hd-note'),
  renderError: $('render-error'),
  image: $('image'),
  imageCaption: $('image-caption'),
  refresh: $('refresh'),
  download: $('download'),
  example: $('example'),
  upload: $('upload'),
  sceneJson: $('scene-json'),
  applyScene: $('apply-scene'),
  sceneErrors: $('scene-errors'),
  objects: $('objects'),
  objectCount: $('object-count'),
  jobs: $('jobs'),
};

const state = {
  api: null,
  scene: null, // the scene drawn (parsed JSON)
  sceneText: null, // and its text
  jobs: new Map(), // mjid -> job
  prices: { preview: 0, hd: null },
  balance: null,
  shown: null, // the job whose image is on display
  imageUrl: null,
  stream: null, // AbortController of the open event stream
  poller: null,
  retries: 0,
  followLatest: true, // show each newly finished render until the user picks one
};

let view = null;

// -- signing in --------------------------------------------------------------------------------------------
function savedSession() {
  try {
    const saved = JSON.parse(sessionStorage.getItem(SESSION) ?? 'null');
    return saved && typeof saved.email === 'string' && typeof saved.token === 'string' ? saved : null;
  } catch {
    return null;
  }
}

async function signIn(email, token) {
  const api = new Api(email, token);
  // The scene is asked for while the token is checked: the room shows one round trip sooner.
  const saved = sessionStorage.getItem(SCENE);
  const scene = saved
    ? Promise.resolve(saved)
    : api.get(`/examples/${DEFAULT_EXAMPLE}`).then((s) => JSON.stringify(s, null, 2), () => null);
  const credits = await api.get(`${api.me}/credits`); // 401 / 403 say what is wrong with the pair
  sessionStorage.setItem(SESSION, JSON.stringify({ email, token }));
  state.api = api;
  state.balance = credits.balance;
  ui.token.value = '';
  ui.signInPanel.hidden = true;
  ui.app.hidden = false;
  ui.account.hidden = false;
  setText(ui.who, `Signed in as ${email}`);
  await start(await scene);
}

function signOut(message = '') {
  sessionStorage.removeItem(SESSION);
  stopStream();
  state.api = null;
  state.jobs.clear();
  state.shown = null;
  setImage(null);
  ui.app.hidden = true;
  ui.account.hidden = true;
  ui.signInPanel.hidden = false;
  setText(ui.signInError, message);
}

ui.signIn.addEventListener('submit', async (e) => {
  e.preventDefault();
  setText(ui.signInError, '');
  const email = ui.email.value.trim();
  const token = ui.token.value.trim();
  if (!email || !token) {
    setText(ui.signInError, 'Enter your email and your API token.');
    return;
  }
  try {
    await signIn(email, token);
  } catch (err) {
    setText(ui.signInError, err instanceof ApiError ? err.message : String(err));
  }
});
ui.signOut.addEventListener('click', () => signOut());

// -- balance and prices ------------------------------------------------------------------------------------
function showBalance() {
  const price = state.prices.hd;
  setText(ui.balance, state.balance === null ? '' : `Balance: ${state.balance} credits`);
  ui.renderHd.textContent = price === null ? 'Render this view in HD' : `Render this view in HD · ${price} credits`;
  const short = price !== null && state.balance !== null && state.balance < price;
  ui.renderHd.disabled = short;
  setText(ui.hdNote, short ? `HD needs ${price} credits; you have ${state.balance}.` : '');
}

// -- the scene ---------------------------------------------------------------------------------------------
function showSceneErrors(lines) {
  replaceChildren(ui.sceneErrors, lines.length ? el('ul', {}, lines.map((l) => el('li', {}, l))) : null);
}

function drawScene(scene) {
  view.setScene(scene);
  state.scene = scene;
  const items = (scene.objects ?? []).map((o, i) => {
    const name = o.name ?? `${o.kind}_${i}`;
    return el('li', {}, el('button', { type: 'button', onclick: () => view.focusOn(name) }, name), ` ${o.kind}`);
  });
  setText(ui.objectCount, String(items.length));
  replaceChildren(ui.objects, items);
}

function applySceneText(text) {
  if (state.scene && text === state.sceneText) return true; // drawn already
  let scene;
  try {
    scene = JSON.parse(text);
  } catch (err) {
    showSceneErrors([`Not valid JSON: ${err.message}`]);
    return false;
  }
  try {
    drawScene(scene);
  } catch (err) {
    showSceneErrors([`Cannot draw this scene: ${err.message}`]);
    return false;
  }
  showSceneErrors([]);
  state.sceneText = text;
  sessionStorage.setItem(SCENE, text);
  return true;
}

function setSceneText(text) {
  applySceneText(text); // drawn first, then the (long) text goes into the editor
  ui.sceneJson.value = text;
}

async function loadExample(name) {
  try {
    const scene = await state.api.get(`/examples/${encodeURIComponent(name)}`);
    setSceneText(JSON.stringify(scene, null, 2));
  } catch (err) {
    showSceneErrors([`Cannot load the example ${name}: ${err.message}`]);
  }
}

async function loadExamples() {
  const list = await state.api.get('/examples');
  replaceChildren(
    ui.example,
    el('option', { value: '' }, 'Pick an example…'),
    list.map((x) => el('option', { value: x.name }, `${x.title} (${x.objects} objects)`)),
  );
}

ui.example.addEventListener('change', () => {
  if (ui.example.value) loadExample(ui.example.value);
});
ui.upload.addEventListener('change', async () => {
  const file = ui.upload.files[0];
  if (!file) return;
  setSceneText(await file.text());
  ui.example.value = '';
});
ui.applyScene.addEventListener('click', () => applySceneText(ui.sceneJson.value));

// A 422's `loc` ["body", "scene", "objects", 3, "name"] as "scene.objects[3].name".
function fieldPath(loc) {
  let out = '';
  for (const part of loc.slice(loc[0] === 'body' ? 1 : 0)) {
    out += typeof part === 'number' ? `[${part}]` : out ? `.${part}` : String(part);
  }
  return out || 'request';
}

function fieldErrors(detail) {
  if (!Array.isArray(detail)) return [String(detail)];
  return detail.map((d) => {
    const got = d.input !== undefined && d.input !== null ? ` (got ${d.input})` : '';
    return `${fieldPath(d.loc ?? [])}: ${d.msg}${got}`;
  });
}

// -- the 3D view -------------------------------------------------------------------------------------------
function setMode(mode) {
  view.setMode(mode);
  ui.modeOrbit.setAttribute('aria-pressed', String(mode === 'orbit'));
  ui.modeWalk.setAttribute('aria-pressed', String(mode === 'walk'));
  ui.canvas.dataset.mode = mode;
  ui.canvas.focus();
}

ui.modeOrbit.addEventListener('click', () => setMode('orbit'));
ui.modeWalk.addEventListener('click', () => setMode('walk'));
ui.resetView.addEventListener('click', () => view.resetView());

function showEye([x, y, z]) {
  ui.eye.dataset.x = x.toFixed(3);
  ui.eye.dataset.y = y.toFixed(3);
  ui.eye.dataset.z = z.toFixed(3);
  setText(ui.eye, `Eye at x ${x.toFixed(2)}, y ${y.toFixed(2)}, z ${z.toFixed(2)} m`);
}

// -- rendering ---------------------------------------------------------------------------------------------
async function renderView(quality) {
  setText(ui.renderError, '');
  if (!applySceneText(ui.sceneJson.value)) {
    setText(ui.renderError, 'The scene has errors: see Scene.');
    return;
  }
  // The camera the view looks through becomes the scene's camera: the render shows what is on screen.
  const scene = { ...state.scene, camera: view.viewCamera() };
  const text = JSON.stringify(scene, null, 2);
  ui.sceneJson.value = text;
  sessionStorage.setItem(SCENE, text);
  state.scene = scene;
  state.sceneText = text;
  view.adoptCamera(scene.camera);
  const button = quality === 'hd' ? ui.renderHd : ui.renderPreview;
  button.disabled = true;
  try {
    const accepted = await state.api.post('/renders', { quality, scene });
    setText(ui.renderError, `Queued ${quality === 'hd' ? 'HD' : 'preview'} render ${shortId(accepted.mjid)} on ${accepted.queue}.`);
    state.followLatest = true;
    await refreshJobs();
  } catch (err) {
    if (err.status === 422) {
      showSceneErrors(fieldErrors(err.body?.detail));
      setText(ui.renderError, 'The API refused the scene: see the fields named under Scene.');
    } else if (err.status === 402) {
      state.balance = err.body?.balance ?? state.balance;
      setText(ui.renderError, `Not enough credits: ${err.message}`);
    } else if (err.status === 401) {
      signOut(`Signed out: ${err.message}`);
    } else {
      setText(ui.renderError, `The render was not queued: ${err.message}`);
    }
  } finally {
    button.disabled = false;
    showBalance();
  }
}

ui.renderPreview.addEventListener('click', () => renderView('preview'));
ui.renderHd.addEventListener('click', () => renderView('hd'));

// -- the finished image ------------------------------------------------------------------------------------
function setImage(blob, caption = 'No render yet.') {
  if (state.imageUrl) URL.revokeObjectURL(state.imageUrl);
  state.imageUrl = blob ? URL.createObjectURL(blob) : null;
  if (state.imageUrl) ui.image.src = state.imageUrl;
  else ui.image.removeAttribute('src');
  ui.image.hidden = !state.imageUrl;
  ui.refresh.disabled = !state.shown;
  ui.download.disabled = !state.imageUrl;
  setText(ui.imageCaption, caption);
}

async function showImage(job, { user = false } = {}) {
  if (user) state.followLatest = false;
  state.shown = job.mjid;
  try {
    const blob = await state.api.blob(`/renders/${job.mjid}/image`);
    const label = job.quality === 'hd' ? 'HD' : 'Preview';
    setImage(blob, `${label} render ${shortId(job.mjid)}, ${statusText(job)}.`);
    ui.image.alt = `${label} render ${shortId(job.mjid)} of the scene`;
    ui.image.dataset.mjid = job.mjid;
  } catch (err) {
    setImage(null, `Cannot fetch the image of ${shortId(job.mjid)}: ${err.message}`);
  }
  drawJobs();
}

function saveBlob(url, mjid) {
  const a = el('a', { href: url, download: `render-${mjid}.png` });
  document.body.append(a);
  a.click();
  a.remove();
}

ui.refresh.addEventListener('click', () => {
  const job = state.jobs.get(state.shown);
  if (job) showImage(job);
});
ui.download.addEventListener('click', () => {
  if (state.imageUrl) saveBlob(state.imageUrl, state.shown);
});

async function downloadJob(job) {
  try {
    const blob = await state.api.blob(`/renders/${job.mjid}/image`);
    const url = URL.createObjectURL(blob);
    saveBlob(url, job.mjid);
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (err) {
    setText(ui.renderError, `Cannot download ${shortId(job.mjid)}: ${err.message}`);
  }
}

// -- jobs: the list, pushed changes, polling while the stream is down ---------------------------------------
const JOBS_SHOWN = 20; // as many as the API's list gives by default

function drawJobs() {
  const jobs = [...state.jobs.values()].sort((a, b) => (a.created_at < b.created_at ? 1 : -1));
  for (const old of jobs.splice(JOBS_SHOWN)) if (old.mjid !== state.shown) state.jobs.delete(old.mjid);
  renderJobs(ui.jobs, jobs, { show: (job) => showImage(job, { user: true }), download: downloadJob, shown: state.shown });
}

function upsert(job, source) {
  const before = state.jobs.get(job.mjid);
  job.source = source;
  if (before && before.state === job.state && !job.received_at) job.received_at = before.received_at;
  state.jobs.set(job.mjid, job);
  const justFinished = job.state === 'finished' && before?.state !== 'finished';
  if (justFinished && before && state.followLatest) showImage(job);
  return before;
}

async function refreshJobs() {
  if (!state.api) return;
  try {
    const list = await state.api.get(`${state.api.me}/renders`);
    state.balance = list.balance;
    state.prices = { ...state.prices, ...list.prices };
    const seen = new Set();
    for (const job of list.jobs) {
      upsert(job, 'list');
      seen.add(job.mjid);
    }
    for (const mjid of [...state.jobs.keys()]) if (!seen.has(mjid)) state.jobs.delete(mjid);
    if (!state.shown) {
      const latest = list.jobs.find((j) => j.state === 'finished');
      if (latest) showImage(latest);
    }
    showBalance();
    drawJobs();
  } catch (err) {
    if (err.status === 401) signOut(`Signed out: ${err.message}`);
  }
}

function setConnection(status, text) {
  ui.connection.dataset.state = status;
  setText(ui.connection, text);
}

function onEvent(name, data) {
  if (name === 'ready') {
    state.retries = 0;
    if (data.push) {
      stopPolling();
      setConnection('live', 'Live');
      refreshJobs(); // whatever changed before the stream was open
    } else {
      startPolling(); // this server's Redis sends no change notifications: the list is read every few seconds
      setConnection('live', `Live (polled every ${POLL_EVERY / 1000} s)`);
    }
  } else if (name === 'job') {
    data.job.received_at = Date.now();
    upsert(data.job, 'push');
    if (typeof data.balance === 'number') state.balance = data.balance;
    showBalance();
    drawJobs();
  } else if (name === 'unavailable') {
    setConnection('lost', `Connection lost: the server's ${data.service} is unavailable; reconnecting…`);
  } else if (name === 'closing') {
    setConnection('lost', 'Connection lost: the API is restarting; reconnecting…');
  }
}

async function openStream() {
  stopStream();
  const controller = new AbortController();
  state.stream = controller;
  try {
    await state.api.stream(`${state.api.me}/renders/events`, onEvent, controller.signal);
  } catch (err) {
    if (controller.signal.aborted) return;
    if (err.status === 401) {
      signOut(`Signed out: ${err.message}`);
      return;
    }
  }
  if (controller.signal.aborted || state.stream !== controller) return;
  // The stream ended or failed: poll meanwhile, and try again after a while.
  const wait = RECONNECT[Math.min(state.retries, RECONNECT.length - 1)];
  state.retries += 1;
  setConnection('lost', `Connection lost; reconnecting in ${Math.round(wait / 1000) || 1} s (the list is polled meanwhile)…`);
  startPolling();
  setTimeout(() => {
    if (state.stream === controller && state.api) openStream();
  }, wait);
}

function stopStream() {
  if (state.stream) state.stream.abort();
  state.stream = null;
  stopPolling();
}

function startPolling() {
  if (state.poller) return;
  refreshJobs();
  state.poller = setInterval(refreshJobs, POLL_EVERY);
}

function stopPolling() {
  if (state.poller) clearInterval(state.poller);
  state.poller = null;
}

// -- start -------------------------------------------------------------------------------------------------
async function start(sceneText) {
  setConnection('connecting', 'Connecting…');
  showBalance();
  if (sceneText) setSceneText(sceneText);
  else await loadExample(DEFAULT_EXAMPLE);
  loadExamples().catch((err) => showSceneErrors([`Cannot list the examples: ${err.message}`]));
  await refreshJobs();
  openStream();
}

// A session of this tab (a reload): sign in again at once. Its requests go out first, and the 3D view (whose
// WebGL set-up takes a while) is made while they are on their way: signIn needs it only once they are back.
const saved = savedSession();
if (saved) {
  ui.email.value = saved.email;
  signIn(saved.email, saved.token).catch((err) => signOut(err instanceof ApiError ? err.message : String(err)));
}
view = new RoomView(ui.canvas, { onEye: showEye });
setImage(null);

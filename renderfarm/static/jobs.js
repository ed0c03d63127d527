// The user's jobs as the page lists them: what each one is doing, in words.
import { el, replaceChildren } from './dom.js';

const RETRIED = new Set(['preempted', 'lost', 'interrupted']);
const WHY = { preempted: 'its worker was preempted', lost: 'its worker was lost', interrupted: 'it was interrupted' };

export function shortId(mjid) {
  return mjid.slice(0, 8);
}

function seconds(from, to) {
  const s = (Date.parse(to) - Date.parse(from)) / 1000;
  return Number.isFinite(s) && s >= 0 ? `${s.toFixed(1)} s` : null;
}

// "retried on sq after its worker was preempted on pq", when an earlier attempt ended that way.
function retryNote(job) {
  const before = job.attempts.filter((a) => RETRIED.has(a.outcome));
  if (!before.length) return job.orphaned ? `queued again on ${job.queue}: a worker took it and vanished` : null;
  const last = before[before.length - 1];
  return `retried on ${job.queue} after ${WHY[last.outcome]} on ${last.queue}`;
}

// One line: the job's state in words.
export function statusText(job) {
  const retry = retryNote(job);
  switch (job.state) {
    case 'queued':
      return retry ?? `queued on ${job.queue}`;
    case 'started': {
      const text = `started on ${job.queue} by ${job.worker ?? 'a worker'} (attempt ${job.attempts.length || 1})`;
      return retry ? `${text}; ${retry}` : text;
    }
    case 'finished': {
      const took = seconds(job.created_at, job.finished_at);
      const text = took ? `finished in ${took}` : 'finished';
      return retry ? `${text}; ${retry}` : text;
    }
    case 'failed': {
      const refund = job.refunded ? ` · refunded ${job.price} credits` : '';
      return `failed${refund}`;
    }
    default:
      return job.state;
  }
}

function attemptLine(a) {
  const by = a.worker ? ` by ${a.worker}` : '';
  const outcome = a.outcome ? `: ${a.outcome}` : ': running';
  return `attempt ${a.attempt} on ${a.queue}${by}${outcome}`;
}

// jobs: newest first. actions: {show(job), download(job)}; shown: the mjid whose image is on display.
export function renderJobs(list, jobs, { show, download, shown }) {
  if (!jobs.length) {
    replaceChildren(list, el('li', { class: 'empty' }, 'No renders yet: render a view above.'));
    return;
  }
  const items = jobs.map((job) => {
    const label = job.quality === 'hd' ? `HD · ${job.price} credits` : 'Preview';
    const when = new Date(job.created_at).toLocaleTimeString();
    const actions =
      job.state === 'finished'
        ? el(
            'div',
            { class: 'job-actions' },
            el('button', { type: 'button', onclick: () => show(job), 'aria-pressed': String(job.mjid === shown) },
              `Show ${shortId(job.mjid)}`),
            el('button', { type: 'button', onclick: () => download(job) }, `Download ${shortId(job.mjid)}`),
          )
        : null;
    const error = job.state === 'failed' && job.error ? el('pre', { class: 'job-error' }, job.error) : null;
    const history = job.attempts.length
      ? el('ul', { class: 'attempts' }, job.attempts.map((a) => el('li', {}, attemptLine(a))))
      : null;
    return el(
      'li',
      { class: `job ${job.state}`, dataset: { mjid: job.mjid, state: job.state, queue: job.queue, source: job.source ?? '', receivedAt: job.received_at ?? '' } },
      el('div', { class: 'job-head' }, el('strong', {}, label), ` · ${shortId(job.mjid)} · ${when}`),
      el('div', { class: 'job-status' }, statusText(job)),
      error,
      history,
      actions,
    );
  });
  replaceChildren(list, items);
}

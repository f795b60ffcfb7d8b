/* Media Cleaner web page. Vanilla JS, no build step, no external assets; talks to the HTTP API in docs (API.md).
   URLs are relative to the page, so the server also works behind a proxy under a sub-path. */
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const KEY_STORE = 'mediaCleaner.apiKey';
  const USER_STORE = 'mediaCleaner.userId';
  const POLL_MS = 1000;
  const LIST_REFRESH_MS = 10000;
  const ACTIVE = new Set(['pending', 'processing']);
  const STATUS_WORDS = {
    pending: 'Waiting in line',
    processing: 'Processing',
    completed: 'Done',
    failed: 'Failed',
    cancelled: 'Cancelled',
  };
  const HEADINGS = {
    pending: 'Waiting:',
    processing: 'Processing',
    completed: 'Finished:',
    failed: 'Could not protect',
    cancelled: 'Cancelled:',
  };
  const PHASE_WORDS = {
    queued: 'Waiting for a free worker',
    pending: 'Waiting for a free worker',
    starting: 'Starting',
    probe: 'Reading the video',
    loading_models: 'Loading models',
    models: 'Loading models',
    decode: 'Reading frames',
    video: 'Protecting faces',
    faces: 'Protecting faces',
    audio: 'Protecting speech',
    speech: 'Protecting speech',
    encode: 'Writing the video',
    mux: 'Writing the video',
    quality: 'Measuring quality',
    evaluate: 'Checking the result',
    efficacy: 'Checking the result',
    finalise: 'Finishing',
    finalize: 'Finishing',
    done: 'Finished',
  };

  const state = {
    config: { max_upload_bytes: 2 * 1024 ** 3, max_video_size_gb: 2, auth_required: false },
    key: safeGet(KEY_STORE),
    userId: safeGet(USER_STORE), // the spec's optional user_id isolation, used when the server has no API keys
    file: null,
    xhr: null,
    current: null, // task id being watched
    pollTimer: null,
    listTimer: null,
    resultTask: null,
    view: 'slider',
    imageUrls: {},
    previewSeq: 0,
    keyWaiters: [],
    uploadStep: -1,
    followedOnLoad: false,
    milestone: '',
  };

  // ---------- small helpers ----------

  function safeGet(name) {
    try { return localStorage.getItem(name) || ''; } catch { return ''; }
  }
  function safeSet(name, value) {
    try { if (value) localStorage.setItem(name, value); else localStorage.removeItem(name); } catch { /* private mode */ }
  }

  function formatBytes(n) {
    if (n === null || n === undefined || Number.isNaN(n)) return '—';
    const units = ['bytes', 'KB', 'MB', 'GB', 'TB'];
    let i = 0;
    let v = Number(n);
    while (v >= 1000 && i < units.length - 1) { v /= 1024; i += 1; }
    const digits = i === 0 ? 0 : v < 10 ? 1 : 0;
    return `${v.toFixed(digits)} ${units[i]}`;
  }

  function formatLimit() {
    const gb = Number(state.config.max_video_size_gb);
    if (gb >= 1) return `${+gb.toFixed(2)} GB`;
    return formatBytes(state.config.max_upload_bytes);
  }

  function formatDuration(seconds) {
    if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return '';
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return `${s} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} min ${s % 60} s`;
    return `${Math.floor(m / 60)} h ${m % 60} min`;
  }

  function formatSeconds(seconds) {
    if (seconds < 1) return `${(seconds * 1000).toFixed(0)} ms`;
    if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 1 : 0)} s`;
    return formatDuration(seconds);
  }

  function formatAge(iso) {
    const then = Date.parse(iso);
    if (Number.isNaN(then)) return '—';
    const s = Math.max(0, (Date.now() - then) / 1000);
    if (s < 45) return 'just now';
    if (s < 3600) return `${Math.round(s / 60)} min ago`;
    if (s < 86400) return `${Math.round(s / 3600)} h ago`;
    return `${Math.round(s / 86400)} days ago`;
  }

  function phaseWords(phase) {
    if (!phase) return '';
    const key = String(phase).toLowerCase();
    if (PHASE_WORDS[key]) return PHASE_WORDS[key];
    const text = key.replace(/[_-]+/g, ' ').trim();
    return text.charAt(0).toUpperCase() + text.slice(1);
  }

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'class') node.className = v;
      else if (k === 'text') node.textContent = v;
      else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? '' : v);
    }
    for (const child of children) if (child !== null && child !== undefined) node.append(child);
    return node;
  }

  // ---------- errors in words people understand ----------

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message || code);
      this.status = status;
      this.code = code;
      this.serverMessage = message || '';
    }
  }

  function shortReason(message) {
    // Server messages are sentences, but never let anything long or multi-line (a trace) reach the page.
    const line = String(message || '').split('\n')[0].trim();
    if (!line || line.length > 200 || /Traceback|File "/.test(line)) return '';
    return line;
  }

  function humanError(err) {
    const status = err && err.status;
    const code = (err && err.code) || '';
    const reason = shortReason(err && err.serverMessage);
    switch (code) {
      case 'too_large':
        return `This file is larger than the server accepts (${formatLimit()}).`;
      case 'not_a_video':
      case 'invalid_media':
      case 'unsupported_media':
        return notAVideo(reason);
      case 'empty_file':
        return 'This file is empty. Please choose another one.';
      case 'validation_error':
        return `The server did not accept these settings.${reason ? ` ${reason}` : ''}`;
      case 'unauthorized':
        return 'The server did not accept the API key. Please enter a valid key.';
      case 'access_denied':
        return 'This video belongs to someone else.';
      case 'not_found':
        return 'This video is no longer on the server.';
      case 'not_ready':
        return "The protected video isn't ready yet.";
      case 'gone':
        return 'The protected file has already been removed from the server. Please upload the video again.';
      case 'not_cancellable':
        return 'This video has already finished, so there is nothing to cancel.';
      case 'network':
        return "Can't reach the server. Check your connection and try again.";
      case 'aborted':
        return 'Upload stopped.';
      case 'cancelled':
        return 'Processing was cancelled.';
      case 'timeout':
        return 'Processing took longer than the server allows and was stopped.';
      case 'internal_error':
        return 'Processing failed because of a problem on the server. Please try again; if it keeps happening, tell the administrator.';
      case 'worker_lost':
        return 'The server stopped while working on this video, more than once. Please try again later.';
      case 'config_error':
        return 'The server is not set up correctly. Please tell the administrator.';
      case 'model_missing':
        return 'The server is missing a model it needs. Please tell the administrator.';
      default:
        break;
    }
    if (status === 413) return `This file is larger than the server accepts (${formatLimit()}).`;
    if (status === 415) return "This file doesn't look like a video the server can read.";
    if (status === 429 || status === 503 || code === 'busy' || code === 'queue_full' || code === 'server_busy') {
      return 'The server is busy right now. Please try again in a minute.';
    }
    if (status >= 500) return 'Something went wrong on the server. Please try again; if it keeps happening, tell the administrator.';
    return reason || 'Something went wrong. Please try again.';
  }

  /** The prober's reasons name internal files and codecs; people get the gist in their own terms. */
  function notAVideo(reason) {
    const tail = ' Try an MP4, MOV, MKV, WebM or AVI file.';
    if (/no video stream/i.test(reason)) return `This file has no picture in it (sound or images only).${tail}`;
    if (/truncated|corrupt|stops before/i.test(reason)) return `This video seems cut short or damaged, so it cannot be read to the end.${tail}`;
    if (/no decoder for video codec/i.test(reason)) return `This video uses a format the server cannot decode.${tail}`;
    if (/empty/i.test(reason)) return 'This file is empty. Please choose another one.';
    return `This file doesn't look like a video the server can read.${tail}`;
  }

  async function errorFromResponse(resp) {
    let code = `http_${resp.status}`;
    let message = '';
    try {
      const body = await resp.json();
      if (body && body.error) {
        code = body.error.code || code;
        message = body.error.message || '';
      }
    } catch { /* not JSON: keep the status only */ }
    return new ApiError(resp.status, code, message);
  }

  function announce(message) {
    $('announcer').textContent = message;
  }

  function showBanner(message, kind = 'error') {
    $('banner-text').textContent = message;
    $('banner').classList.toggle('info', kind === 'info');
    $('banner').hidden = false;
    // On a phone the message may be far above the button that caused it: bring it into view.
    $('banner').scrollIntoView({ block: 'nearest' });
  }
  function hideBanner() { $('banner').hidden = true; }

  // ---------- API access (with the API key when the server wants one) ----------

  function authHeaders(extra = {}) {
    const headers = { ...extra };
    if (state.key) headers['X-API-Key'] = state.key;
    else if (state.userId) headers['X-User-Id'] = state.userId;
    return headers;
  }

  async function api(path, options = {}, retried = false) {
    let resp;
    try {
      resp = await fetch(path, { ...options, headers: authHeaders(options.headers), cache: 'no-store' });
    } catch {
      throw new ApiError(0, 'network', '');
    }
    if (resp.status === 401 && !retried) {
      await askForKey(state.key ? 'The server did not accept that key. Please check it.' : '');
      return api(path, options, true);
    }
    if (!resp.ok) throw await errorFromResponse(resp);
    return resp;
  }

  async function apiJson(path, options) {
    const resp = await api(path, options);
    return resp.json();
  }

  function updateAccount() {
    $('account').hidden = !state.key;
    if (state.key) $('account-text').textContent = `Using API key …${state.key.slice(-4)}`;
  }

  function askForKey(problem) {
    const dialog = $('key-dialog');
    $('key-error').textContent = problem || '';
    $('key-input').value = '';
    if (!dialog.open) {
      if (typeof dialog.showModal === 'function') dialog.showModal();
      else dialog.setAttribute('open', '');
    }
    $('key-input').focus();
    return new Promise((resolve, reject) => state.keyWaiters.push({ resolve, reject }));
  }

  function settleKeyWaiters(ok) {
    const waiters = state.keyWaiters.splice(0);
    for (const w of waiters) {
      if (ok) w.resolve();
      else w.reject(new ApiError(401, 'unauthorized', ''));
    }
  }

  function setupKeyDialog() {
    const dialog = $('key-dialog');
    $('key-form').addEventListener('submit', (event) => {
      event.preventDefault();
      const value = $('key-input').value.trim();
      if (!value) {
        $('key-error').textContent = 'Please enter the key.';
        return;
      }
      state.key = value;
      safeSet(KEY_STORE, value);
      updateAccount();
      dialog.close();
      settleKeyWaiters(true);
    });
    $('key-cancel').addEventListener('click', () => {
      dialog.close();
      settleKeyWaiters(false);
    });
    dialog.addEventListener('cancel', () => settleKeyWaiters(false));
    $('forget-key').addEventListener('click', () => {
      state.key = '';
      safeSet(KEY_STORE, '');
      updateAccount();
      renderTasks([]);
      refreshTasks();
    });
  }

  // ---------- choosing a file ----------

  function setFile(file) {
    state.file = file || null;
    hideBanner();
    if (!file) {
      $('file-chosen').textContent = '';
      return;
    }
    $('file-chosen').textContent = `${file.name} · ${formatBytes(file.size)}`;
  }

  function setupDropzone() {
    const zone = $('dropzone');
    const input = $('file-input');
    input.addEventListener('change', () => setFile(input.files[0]));
    for (const type of ['dragenter', 'dragover']) {
      zone.addEventListener(type, (event) => {
        event.preventDefault();
        zone.classList.add('dragging');
      });
    }
    for (const type of ['dragleave', 'dragend']) zone.addEventListener(type, () => zone.classList.remove('dragging'));
    zone.addEventListener('drop', (event) => {
      event.preventDefault();
      zone.classList.remove('dragging');
      const file = event.dataTransfer && event.dataTransfer.files && event.dataTransfer.files[0];
      if (file) setFile(file);
    });
    // A file dropped beside the zone would make the browser navigate away from the page.
    window.addEventListener('dragover', (event) => event.preventDefault());
    window.addEventListener('drop', (event) => event.preventDefault());
  }

  // ---------- upload with byte progress ----------

  function uploadFields() {
    const form = $('upload-form');
    const epsilon = form.querySelector('input[name="strength"]:checked').value;
    const level = form.querySelector('input[name="audio_level"]:checked').value;
    const fields = { epsilon, protect_video: 'true' };
    if (state.userId && !state.key) fields.user_id = state.userId;
    if (level === 'off') fields.protect_audio = 'false';
    else {
      fields.audio_level = level;
      fields.protect_audio = 'true';
      const objective = $('audio-objective').value;
      fields.audio_objective = objective;
      // The phrase goes only with its objective: the server refuses a phrase sent with any other one.
      if (objective === 'phrase') fields.audio_phrase = $('audio-phrase').value.trim();
    }
    return fields;
  }

  function sendUpload(file, fields) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      state.xhr = xhr;
      xhr.open('POST', 'upload');
      for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
      xhr.upload.addEventListener('progress', (event) => {
        showUploadProgress(event.loaded, event.lengthComputable ? event.total : file.size);
      });
      xhr.addEventListener('load', () => {
        let body = null;
        try { body = JSON.parse(xhr.responseText); } catch { /* handled below */ }
        if (xhr.status >= 200 && xhr.status < 300 && body && body.task_id) {
          resolve(body);
          return;
        }
        const err = body && body.error ? body.error : {};
        reject(new ApiError(xhr.status, err.code || `http_${xhr.status}`, err.message || ''));
      });
      xhr.addEventListener('error', () => {
        // A server that refuses a too-large body may close the connection before the browser sees the answer.
        if (file.size > state.config.max_upload_bytes) reject(new ApiError(413, 'too_large', ''));
        else reject(new ApiError(0, 'network', ''));
      });
      xhr.addEventListener('abort', () => reject(new ApiError(0, 'aborted', '')));
      const data = new FormData();
      data.append('file', file, file.name);
      for (const [k, v] of Object.entries(fields)) data.append(k, v);
      xhr.send(data);
    });
  }

  function showUploadProgress(loaded, total) {
    const pct = total > 0 ? Math.min(100, (100 * loaded) / total) : 0;
    $('upload-bar').value = pct;
    $('upload-text').textContent = `${formatBytes(loaded)} of ${formatBytes(total)} sent (${pct.toFixed(0)}%)`;
    const step = Math.floor(pct / 25);
    if (step !== state.uploadStep) {
      state.uploadStep = step;
      announce(`Upload ${step * 25}% done`);
    }
  }

  async function startUpload(event) {
    event.preventDefault();
    hideBanner();
    const file = state.file;
    if (!file) {
      showBanner('Please choose a video first.');
      $('file-input').focus();
      return;
    }
    if (file.size === 0) {
      showBanner(humanError(new ApiError(400, 'empty_file', '')));
      return;
    }
    if (file.size > state.config.max_upload_bytes) {
      showBanner(humanError(new ApiError(413, 'too_large', '')));
      return;
    }
    const fields = uploadFields();
    if (fields.audio_objective === 'phrase' && !fields.audio_phrase) {
      showBanner('Please type the phrase speech recognisers should hear, or choose another outcome.');
      $('speech-outcome').open = true;
      $('audio-phrase').focus();
      return;
    }
    $('submit').disabled = true;
    $('upload-progress').hidden = false;
    $('upload-label').textContent = `Uploading ${file.name}`;
    state.uploadStep = -1;
    showUploadProgress(0, file.size);
    try {
      let created;
      try {
        created = await sendUpload(file, fields);
      } catch (err) {
        if (err.status !== 401) throw err;
        await askForKey(state.key ? 'The server did not accept that key. Please check it.' : '');
        created = await sendUpload(file, fields);
      }
      $('upload-text').textContent = `Uploaded ${formatBytes(file.size)}.`;
      setFile(null);
      $('file-input').value = '';
      watchTask(created.task_id, file.name);
      refreshTasks();
    } catch (err) {
      showBanner(humanError(err), err.code === 'aborted' ? 'info' : 'error');
    } finally {
      state.xhr = null;
      $('submit').disabled = false;
      $('upload-progress').hidden = true;
    }
  }

  // ---------- processing progress ----------

  function watchTask(taskId, name) {
    stopPolling();
    state.current = taskId;
    $('current').hidden = false;
    $('current-name').textContent = name || '';
    $('current-heading').textContent = HEADINGS.pending;
    $('current-status').textContent = STATUS_WORDS.pending;
    $('current-status').className = 'badge pending';
    $('current-phase').textContent = '';
    $('current-bar').value = 0;
    $('current-text').textContent = 'Waiting for the server…';
    $('current-cancel').hidden = false;
    $('current-cancel').disabled = false;
    $('current-download').hidden = true;
    $('current-view').hidden = true;
    $('current').scrollIntoView({ block: 'nearest' });
    poll();
  }

  function stopPolling() {
    if (state.pollTimer) clearTimeout(state.pollTimer);
    state.pollTimer = null;
  }

  async function poll() {
    const taskId = state.current;
    if (!taskId) return;
    try {
      const task = await apiJson(`task/${encodeURIComponent(taskId)}`);
      if (state.current !== taskId) return;
      showCurrent(task);
      if (ACTIVE.has(task.status)) state.pollTimer = setTimeout(poll, POLL_MS);
      else refreshTasks();
    } catch (err) {
      if (state.current !== taskId) return;
      if (err.code === 'network' || err.status >= 500) {
        $('current-text').textContent = 'Lost contact with the server; trying again…';
        state.pollTimer = setTimeout(poll, POLL_MS * 3);
      } else {
        $('current-text').textContent = humanError(err);
      }
    }
  }

  /** One line about where the task is; the phase is left out where the status line above already shows it. */
  function progressSentence(task, withPhase = true) {
    const pct = Number(task.progress || 0);
    if (task.status === 'pending') return 'Waiting for a free worker. It starts automatically.';
    if (task.status === 'processing') {
      const parts = [`${pct.toFixed(0)}% done`];
      if (task.phase && withPhase) parts.push(phaseWords(task.phase));
      if (task.eta_seconds !== null && task.eta_seconds !== undefined) parts.push(`about ${formatDuration(task.eta_seconds)} left`);
      return parts.join(' · ');
    }
    if (task.status === 'completed') {
      const size = task.output_size_bytes ? ` (${formatBytes(task.output_size_bytes)})` : '';
      return `Done. Your protected video is ready${size}.`;
    }
    if (task.status === 'cancelled') return 'Cancelled. Nothing was kept.';
    if (task.status === 'failed') return `It didn't work: ${humanError(errorOfTask(task))}`;
    return '';
  }

  function errorOfTask(task) {
    const err = task.error || {};
    return new ApiError(0, err.code || 'failed', err.message || '');
  }

  function showCurrent(task) {
    $('current-heading').textContent = HEADINGS[task.status] || 'Processing';
    const badge = $('current-status');
    badge.textContent = STATUS_WORDS[task.status] || task.status;
    badge.className = `badge ${task.status}`;
    $('current-phase').textContent = task.status === 'processing' ? phaseWords(task.phase) : '';
    $('current-bar').value = task.status === 'completed' ? 100 : Number(task.progress || 0);
    $('current-name').textContent = task.original_filename || $('current-name').textContent;
    const sentence = progressSentence(task);
    const shown = progressSentence(task, false);
    if ($('current-text').textContent !== shown) $('current-text').textContent = shown;
    const milestone = `${task.status}|${task.phase || ''}|${Math.floor(Number(task.progress || 0) / 10)}`;
    if (milestone !== state.milestone) {
      if (milestone.split('|')[0] !== state.milestone.split('|')[0]) refreshTasks(); // the list shows status too
      state.milestone = milestone;
      announce(sentence);
    }
    const active = ACTIVE.has(task.status);
    $('current-cancel').hidden = !active;
    $('current-download').hidden = task.status !== 'completed';
    $('current-view').hidden = task.status !== 'completed';
    $('current-download').onclick = () => download(task);
    $('current-view').onclick = () => openResult(task.task_id);
  }

  async function cancelTask(taskId) {
    try {
      const task = await apiJson(`cancel/${encodeURIComponent(taskId)}`, { method: 'POST' });
      if (state.current === taskId) showCurrent(task);
    } catch (err) {
      showBanner(humanError(err));
    }
    refreshTasks();
  }

  // ---------- download ----------

  function downloadName(task) {
    const name = task.original_filename || 'video.mp4';
    const dot = name.lastIndexOf('.');
    const stem = dot > 0 ? name.slice(0, dot) : name;
    return `${stem}_protected.mp4`;
  }

  async function download(task) {
    hideBanner();
    const url = (task.download_url || `/download/${encodeURIComponent(task.task_id)}`).replace(/^\//, '');
    const link = document.createElement('a');
    link.download = ''; // the server's Content-Disposition names the file
    if (!state.key) {
      // Without a key the browser streams the file to disk itself (no size limit in page memory).
      link.href = state.userId ? `${url}?user_id=${encodeURIComponent(state.userId)}` : url;
      document.body.append(link);
      link.click();
      link.remove();
      return;
    }
    // Links cannot carry a header, so with a key the file is fetched and handed over as a blob.
    try {
      const resp = await api(url);
      const disposition = resp.headers.get('Content-Disposition') || '';
      const match = /filename="?([^";]+)"?/.exec(disposition);
      link.download = match ? match[1] : downloadName(task); // a blob has no name of its own
      const blob = await resp.blob();
      link.href = URL.createObjectURL(blob);
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(link.href), 60000);
    } catch (err) {
      showBanner(humanError(err));
    }
  }

  // ---------- task list ----------

  async function refreshTasks() {
    try {
      const data = await apiJson('tasks?limit=50');
      renderTasks(data.tasks || []);
    } catch (err) {
      if (err.status === 401) return;
      $('tasks-empty').hidden = false;
      $('tasks-empty').textContent = `Could not load your videos. ${humanError(err)}`;
    }
  }

  function renderTasks(tasks) {
    const body = $('tasks-body');
    // The list refreshes every few seconds while something runs: keep the keyboard focus where it was.
    const focused = body.contains(document.activeElement) ? document.activeElement.getAttribute('aria-label') : null;
    body.replaceChildren();
    $('tasks-table').hidden = tasks.length === 0;
    $('tasks-empty').hidden = tasks.length > 0;
    $('tasks-empty').textContent = 'No videos yet. Protected videos appear here.';
    for (const task of tasks) body.append(taskRow(task));
    if (focused) {
      const again = [...body.querySelectorAll('button')].find((b) => b.getAttribute('aria-label') === focused);
      if (again) again.focus();
    }
    const anyActive = tasks.some((t) => ACTIVE.has(t.status));
    // Back on the page (reload, new tab) while a video is still being worked on: follow it again.
    if (!state.followedOnLoad && !state.current && !state.xhr) {
      const active = tasks.find((t) => ACTIVE.has(t.status)); // newest first
      if (active) watchTask(active.task_id, active.original_filename);
    }
    state.followedOnLoad = true;
    if (state.listTimer) clearTimeout(state.listTimer);
    state.listTimer = setTimeout(refreshTasks, anyActive ? POLL_MS * 3 : LIST_REFRESH_MS);
  }

  function taskRow(task) {
    const name = task.original_filename || task.task_id;
    const statusCell = el('td', { 'data-label': 'Status' },
      el('span', { class: `badge ${task.status}`, text: STATUS_WORDS[task.status] || task.status }));
    if (task.status === 'processing') {
      statusCell.append(el('progress', {
        class: 'mini-progress', max: '100', value: String(Number(task.progress || 0)),
        'aria-label': `${name}: ${Number(task.progress || 0).toFixed(0)}% done`,
      }));
    }
    if (task.status === 'failed' && task.error) {
      // The words are for people; the server's own message stays at hand (hover) for whoever runs the server.
      const detail = shortReason(task.error.message);
      statusCell.append(el('span', { class: 'error-text', text: humanError(errorOfTask(task)), title: detail || null }));
    }
    const size = task.output_size_bytes
      ? `${formatBytes(task.input_size_bytes)} → ${formatBytes(task.output_size_bytes)}`
      : formatBytes(task.input_size_bytes);
    const actions = el('div', { class: 'row-actions' });
    if (task.status === 'completed') {
      actions.append(
        el('button', { type: 'button', class: 'button small', text: 'View', 'aria-label': `See what changed in ${name}`, onclick: () => openResult(task.task_id) }),
        el('button', { type: 'button', class: 'button small primary', text: 'Download', 'aria-label': `Download protected ${name}`, onclick: () => download(task) }),
      );
    }
    if (ACTIVE.has(task.status)) {
      if (state.current !== task.task_id) {
        actions.append(el('button', { type: 'button', class: 'button small', text: 'Follow', 'aria-label': `Follow progress of ${name}`, onclick: () => watchTask(task.task_id, name) }));
      }
      actions.append(el('button', { type: 'button', class: 'button small danger', text: 'Cancel', 'aria-label': `Cancel ${name}`, onclick: () => cancelTask(task.task_id) }));
    }
    return el('tr', { 'data-task-id': task.task_id },
      el('td', { class: 'name', 'data-label': null, text: name }),
      statusCell,
      el('td', { 'data-label': 'Added', title: task.created_at || '', text: formatAge(task.created_at) }),
      el('td', { 'data-label': 'Size', text: size }),
      el('td', {}, actions),
    );
  }

  // ---------- result view: comparison and report ----------

  async function openResult(taskId) {
    hideBanner();
    let task;
    try {
      task = await apiJson(`task/${encodeURIComponent(taskId)}`);
    } catch (err) {
      showBanner(humanError(err));
      return;
    }
    state.resultTask = task;
    $('result').hidden = false;
    $('result-title').textContent = `What changed in ${task.original_filename || task.task_id}`;
    const report = task.report || {};
    const duration = videoDuration(report);
    const picker = $('frame-time');
    picker.max = String(Math.max(0, duration - 0.04).toFixed(2));
    picker.value = String(Math.min(1, Number(picker.max)).toFixed(2));
    picker.disabled = duration <= 0.05;
    renderReport(task);
    setView(state.view);
    loadPreviews();
    $('result').focus();
    $('result').scrollIntoView({ block: 'start' });
  }

  function videoDuration(report) {
    const probe = report.probe || {};
    const candidates = [probe.duration, probe.duration_s, probe.duration_seconds, probe.video && probe.video.duration];
    for (const c of candidates) if (Number.isFinite(Number(c)) && Number(c) > 0) return Number(c);
    return 0;
  }

  function frameTime() {
    return Number($('frame-time').value || 0);
  }

  async function fetchImage(kind, t, seq) {
    const task = state.resultTask;
    // No more pixels than the screen shows (a 4K frame as PNG is megabytes); the server keeps the difference's peaks.
    const shown = Math.max($('result').clientWidth || 0, 320) * (window.devicePixelRatio || 1);
    const maxWidth = Math.min(8192, Math.max(1280, Math.ceil(shown))); // small videos always at full size
    const url = `task/${encodeURIComponent(task.task_id)}/preview?kind=${kind}&t=${t.toFixed(2)}&max_width=${maxWidth}`;
    const resp = await api(url);
    const blob = await resp.blob();
    if (seq !== state.previewSeq) return null;
    if (state.imageUrls[kind]) URL.revokeObjectURL(state.imageUrls[kind]);
    state.imageUrls[kind] = URL.createObjectURL(blob);
    return resp;
  }

  async function loadPreviews() {
    if (!state.resultTask) return;
    const seq = ++state.previewSeq;
    const t = frameTime();
    $('frame-time-out').textContent = `${t.toFixed(1)} s`;
    $('compare-status').textContent = 'Loading the frames…';
    try {
      // The pair first; the difference after, when the server has both frames decoded already.
      const [orig, prot] = await Promise.all(['original', 'protected'].map((k) => fetchImage(k, t, seq)));
      const diff = orig && prot ? await fetchImage('diff', t, seq) : null;
      if (seq !== state.previewSeq || !orig || !prot || !diff) return;
      for (const id of ['img-original', 'img-original-2']) $(id).src = state.imageUrls.original;
      for (const id of ['img-protected', 'img-protected-2']) $(id).src = state.imageUrls.protected;
      $('img-diff').src = state.imageUrls.diff;
      const gain = diff.headers.get('X-Diff-Gain');
      const mean = Number(diff.headers.get('X-Diff-Mean'));
      const shown = Number(diff.headers.get('X-Frame-Time'));
      const meanText = Number.isFinite(mean) ? ` The average pixel changed by ${mean.toFixed(2)} of 255 levels.` : '';
      $('diff-caption').textContent = `Difference between the two frames, made ${gain || 'many'} times brighter so you can see it.${meanText}`;
      const at = Number.isFinite(shown) ? shown : t;
      $('compare-status').textContent = `Showing the frame at ${at.toFixed(2)} s. The protected frame should look the same as the original.`;
    } catch (err) {
      if (seq !== state.previewSeq) return;
      $('compare-status').textContent = `The frames could not be shown. ${humanError(err)}`;
    }
  }

  function setView(view) {
    state.view = view;
    for (const button of document.querySelectorAll('.seg')) {
      button.setAttribute('aria-pressed', String(button.dataset.view === view));
    }
    $('view-slider').hidden = view !== 'slider';
    $('view-side').hidden = view !== 'side';
    $('view-diff').hidden = view !== 'diff';
  }

  function setWipe(percent) {
    const p = Math.max(0, Math.min(100, percent));
    $('img-protected').style.clipPath = `inset(0 0 0 ${p}%)`;
    $('wipe-line').style.left = `${p}%`;
    $('wipe').value = String(p);
    $('wipe').setAttribute('aria-valuetext', `${Math.round(p)}% original, ${Math.round(100 - p)}% protected`);
  }

  function setupCompare() {
    for (const button of document.querySelectorAll('.seg')) {
      button.addEventListener('click', () => setView(button.dataset.view));
    }
    $('wipe').addEventListener('input', () => setWipe(Number($('wipe').value)));
    // Dragging on the picture moves the divider too (the range below stays the keyboard control).
    const stack = $('wipe-stack');
    const fromPointer = (event) => {
      const rect = stack.getBoundingClientRect();
      if (rect.width > 0) setWipe((100 * (event.clientX - rect.left)) / rect.width);
    };
    stack.addEventListener('pointerdown', (event) => {
      stack.setPointerCapture(event.pointerId);
      fromPointer(event);
    });
    stack.addEventListener('pointermove', (event) => {
      if (stack.hasPointerCapture(event.pointerId)) fromPointer(event);
    });
    let timer = null;
    $('frame-time').addEventListener('input', () => {
      $('frame-time-out').textContent = `${frameTime().toFixed(1)} s`;
      clearTimeout(timer);
      timer = setTimeout(loadPreviews, 250);
    });
    $('result-close').addEventListener('click', () => {
      $('result').hidden = true;
      state.resultTask = null;
      $('tasks-title').focus(); // keyboard users land back on the list they came from
      $('tasks-title').scrollIntoView({ block: 'nearest' });
    });
    setWipe(50);
  }

  // ---------- report figures and plots ----------

  function flatten(obj, prefix = '', out = []) {
    if (obj === null || obj === undefined) return out;
    if (typeof obj === 'number' || typeof obj === 'boolean' || typeof obj === 'string') {
      out.push([prefix, obj]);
      return out;
    }
    if (Array.isArray(obj)) return out; // per-frame series are for the JSON view, not the summary
    for (const [k, v] of Object.entries(obj)) flatten(v, prefix ? `${prefix}.${k}` : k, out);
    return out;
  }

  function label(path) {
    const words = {
      psnr: 'PSNR', ssim: 'SSIM', snr: 'SNR', wer: 'word error rate', db: 'dB', fps: 'fps', eps: 'epsilon',
      pct: '%', rtf: 'realtime factor', asr: 'speech recogniser',
    };
    // The report's sections, in the page's words: `video` is measured before encoding, `encoded` on the file.
    const sections = { video: 'picture', audio: 'sound', encoded: 'delivered file', faces: 'faces', speech: 'speech' };
    return path
      .split('.')
      .map((part, i) => (i === 0 && sections[part]) || part.split(/[_-]+/).map((w) => words[w.toLowerCase()] || w).join(' '))
      .join(' · ');
  }

  function formatValue(path, value) {
    if (typeof value === 'boolean') return value ? 'yes' : 'no';
    if (typeof value === 'string') return value;
    if (!Number.isFinite(value)) return String(value);
    const key = path.toLowerCase();
    if (/(psnr|snr)/.test(key) || key.endsWith('_db')) return `${value.toFixed(1)} dB`;
    if (/ssim/.test(key)) return value.toFixed(4);
    if (/(wer|fraction|rate|ratio|share|frames_with|with_face)/.test(key) && value >= 0 && value <= 1.5 && !/rtf|realtime/.test(key)) {
      return `${(value * 100).toFixed(1)}%`;
    }
    if (/(seconds|_s$|time)/.test(key)) return formatSeconds(value);
    if (Number.isInteger(value)) return String(value);
    return Math.abs(value) >= 100 ? value.toFixed(0) : value.toPrecision(3);
  }

  function fillList(listId, entries, emptyText = 'Not measured for this video') {
    const list = $(listId);
    list.replaceChildren();
    for (const [path, value] of entries) {
      list.append(el('dt', { text: label(path) }), el('dd', { text: formatValue(path, value) }));
    }
    if (!entries.length) list.append(el('dt', { text: emptyText }), el('dd', { text: '—' }));
  }

  const SVG_NS = 'http://www.w3.org/2000/svg';
  function svg(tag, attrs = {}, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // Charts are drawn at the width they are shown at, so their text stays the page's size.
  let chartWidth = 320;

  function chartFrame(height, summary) {
    const root = svg('svg', { viewBox: `0 0 ${chartWidth} ${height}`, width: chartWidth, height, role: 'img', 'aria-label': summary, preserveAspectRatio: 'xMinYMin meet' });
    root.append(svg('title', {}, summary));
    return root;
  }

  /** Horizontal bars: one row per [label, seconds]; on narrow screens the label sits above its bar. */
  function barChart(rows, unitFormat, summary) {
    const stacked = chartWidth < 420;
    const rowH = stacked ? 36 : 24;
    const labelW = stacked ? 0 : Math.min(170, Math.round(chartWidth * 0.42));
    const width = chartWidth - labelW - 70;
    const max = Math.max(...rows.map((r) => r[1]), 1e-9);
    const root = chartFrame(rows.length * rowH + 4, summary);
    rows.forEach(([name, value], i) => {
      const y = i * rowH + 2;
      const barY = stacked ? y + 16 : y + 4;
      const bar = Math.max(1, (width * value) / max);
      root.append(svg('text', { x: 0, y: y + (stacked ? 11 : 15) }, name.length > 26 ? `${name.slice(0, 25)}…` : name));
      root.append(svg('rect', { class: 'bar', x: labelW, y: barY, width: bar, height: 14, rx: 2 }));
      root.append(svg('text', { x: labelW + bar + 4, y: barY + 11 }, unitFormat(value)));
    });
    return root;
  }

  const AUDIO_FLOOR = { weak: 40, medium: 35, strong: 30 };
  const dB = (v) => `${v.toFixed(1)} dB`;
  const ratio = (v) => v.toFixed(3);
  // The figures people ask about, in plain words, with the product's targets (PSNR >= 40 dB, SSIM >= 0.98,
  // audio SNR above the level's floor). Anything else in the report stays in the list below the chart.
  const QUALITY_FIGURES = [
    { path: 'video.psnr_db', name: 'Picture change (PSNR)', min: 20, max: 60, target: () => 40, fmt: dB },
    { path: 'video.ssim_mean', name: 'Picture similarity (SSIM)', min: 0.9, max: 1, target: () => 0.98, fmt: ratio },
    { path: 'audio.snr_db', name: 'Sound change (SNR)', min: 10, max: 60, target: (p) => AUDIO_FLOOR[p.audio_level] || 40, fmt: dB },
    { path: 'audio.worst_window_snr_db', name: 'Sound change, worst second', min: 10, max: 60, target: (p) => AUDIO_FLOOR[p.audio_level] || 40, fmt: dB },
    { path: 'encoded.psnr_mean_db', name: 'Delivered file vs original (PSNR)', min: 20, max: 60, target: () => null, fmt: dB },
    { path: 'encoded.ssim_mean', name: 'Delivered file vs original (SSIM)', min: 0.9, max: 1, target: () => null, fmt: ratio },
  ];
  const GENERIC_FIGURES = [
    { match: /ssim/, min: 0.9, max: 1, target: () => 0.98, fmt: ratio },
    { match: /psnr/, min: 20, max: 60, target: () => 40, fmt: dB },
    { match: /snr/, min: 10, max: 60, target: (p) => AUDIO_FLOOR[p.audio_level] || 40, fmt: dB },
  ];

  function qualityRows(entries, params) {
    const values = new Map(entries.filter(([, v]) => typeof v === 'number' && Number.isFinite(v)));
    const rows = [];
    for (const spec of QUALITY_FIGURES) {
      if (values.has(spec.path)) rows.push({ name: spec.name, value: values.get(spec.path), spec, target: spec.target(params) });
    }
    if (rows.length) return rows;
    for (const [path, value] of values) {
      const spec = GENERIC_FIGURES.find((s) => s.match.test(path.toLowerCase()));
      if (spec) rows.push({ name: label(path), value, spec, target: spec.target(params) });
    }
    return rows.slice(0, 8);
  }

  /** Bullet chart: each figure on its own scale with the target as a dashed tick; green when the target is met. */
  function qualityChart(entries, params) {
    const rows = qualityRows(entries, params);
    if (!rows.length) return null;
    const rowH = 40;
    const barW = chartWidth - 80;
    const summary = rows
      .map((r) => `${r.name} ${r.spec.fmt(r.value)}${r.target !== null ? ` (target at least ${r.spec.fmt(r.target)})` : ''}`)
      .join('; ');
    const root = chartFrame(rows.length * rowH + 4, `Quality against target: ${summary}`);
    rows.forEach((r, i) => {
      const y = i * rowH + 2;
      const scale = (v) => (barW * (Math.min(r.spec.max, Math.max(r.spec.min, v)) - r.spec.min)) / (r.spec.max - r.spec.min);
      const met = r.target === null || r.value >= r.target;
      root.append(svg('text', { x: 0, y: y + 11 }, r.name));
      root.append(svg('rect', { class: 'track', x: 0, y: y + 16, width: barW, height: 14, rx: 2 }));
      root.append(svg('rect', { class: `bar ${r.target === null ? '' : met ? 'ok' : 'bad'}`, x: 0, y: y + 16, width: Math.max(1, scale(r.value)), height: 14, rx: 2 }));
      if (r.target !== null) {
        root.append(svg('line', { class: 'target', x1: scale(r.target), x2: scale(r.target), y1: y + 13, y2: y + 33 }));
      }
      const note = r.target === null ? '' : met ? ' ✓' : ' ✗';
      root.append(svg('text', { x: barW + 6, y: y + 27 }, `${r.spec.fmt(r.value)}${note}`));
    });
    return root;
  }

  /** Before/after pairs (e.g. faces found in the original vs the protected video) as grouped bars. */
  function pairChart(entries) {
    const pairs = new Map();
    for (const [path, value] of entries) {
      if (typeof value !== 'number' || !Number.isFinite(value)) continue;
      const m = /^(.*?)(?:[._-]?)(original|before|protected|after)(?:[._-]?)(.*)$/i.exec(path);
      if (!m) continue;
      const stem = `${m[1]}|${m[3]}`.replace(/^[._|-]+|[._|-]+$/g, '');
      const side = /original|before/i.test(m[2]) ? 'before' : 'after';
      if (!pairs.has(stem)) pairs.set(stem, { stem, path });
      pairs.get(stem)[side] = value;
    }
    const rows = [...pairs.values()].filter((p) => p.before !== undefined && p.after !== undefined).slice(0, 6);
    if (!rows.length) return null;
    const rowH = 50;
    const barW = chartWidth - 120;
    const summary = rows.map((r) => `${label(r.stem.replace('|', '.'))}: ${formatValue(r.path, r.before)} before, ${formatValue(r.path, r.after)} after`).join('; ');
    const root = chartFrame(rows.length * rowH + 4, `Before and after: ${summary}`);
    rows.forEach((r, i) => {
      const y = i * rowH + 2;
      const max = Math.max(r.before, r.after, 1e-9);
      const scale = (v) => (barW * Math.max(0, v)) / (max <= 1 && r.before >= 0 ? 1 : max);
      const name = label(r.stem.replace('|', '.'));
      root.append(svg('text', { x: 0, y: y + 11 }, name.length > 48 ? `${name.slice(0, 47)}…` : name));
      root.append(svg('rect', { class: 'bar before', x: 0, y: y + 15, width: Math.max(1, scale(r.before)), height: 12, rx: 2 }));
      root.append(svg('text', { x: Math.max(1, scale(r.before)) + 4, y: y + 25 }, `before ${formatValue(r.path, r.before)}`));
      root.append(svg('rect', { class: 'bar', x: 0, y: y + 30, width: Math.max(1, scale(r.after)), height: 12, rx: 2 }));
      root.append(svg('text', { x: Math.max(1, scale(r.after)) + 4, y: y + 40 }, `after ${formatValue(r.path, r.after)}`));
    });
    return root;
  }

  /** What each recogniser made of the speech, before and after: the clearest evidence for a person. */
  function heardBlocks(obj, path = '', out = []) {
    if (!obj || typeof obj !== 'object' || Array.isArray(obj)) return out;
    if (typeof obj.original_text === 'string' || typeof obj.protected_text === 'string') {
      const quote = (text) => (text && text.trim() ? `“${text.trim()}”` : '(nothing)');
      out.push(el('figure', { class: 'heard-item' },
        el('figcaption', { text: `What ${obj.recogniser || label(path) || 'the recogniser'} heard` }),
        el('p', {}, el('span', { class: 'muted', text: 'Original: ' }), quote(obj.original_text)),
        el('p', {}, el('span', { class: 'muted', text: 'Protected: ' }), quote(obj.protected_text))));
      return out;
    }
    for (const [k, v] of Object.entries(obj)) heardBlocks(v, path ? `${path}.${k}` : k, out);
    return out;
  }

  // Bookkeeping numbers that say how something was measured, not how it came out.
  const SKIP_FIGURE = /(^|\.)(stream|sample_rate|lag_samples|ssim_every|ssim_frames|frames_original|frames_protected|max_time_offset_s)$/;

  const TIMING_WORDS = {
    probe: 'Reading the file',
    audio_decode: 'Decoding audio',
    audio_protect: 'Protecting speech',
    video_protect: 'Protecting faces',
    video_quality: 'Measuring the change',
    decode_encode: 'Decoding + encoding',
    quality: 'Checking the result',
    efficacy: 'Testing recognisers',
  };
  function timingLabel(key) {
    return TIMING_WORDS[key] || label(key);
  }

  function renderReport(task) {
    const report = task.report || {};
    chartWidth = Math.max(260, Math.min(640, ($('quality-chart').clientWidth || 320)));
    const params = { ...(task.parameters || {}), ...(report.parameters || {}) };

    const quality = flatten(report.quality || {}).filter(([path, v]) => typeof v === 'number' && !SKIP_FIGURE.test(path));
    $('quality-chart').replaceChildren(...[qualityChart(quality, params)].filter(Boolean));
    fillList('quality-list', quality);

    const efficacy = flatten(report.efficacy || {}).filter(([path, v]) => typeof v !== 'string' && !SKIP_FIGURE.test(path));
    $('efficacy-chart').replaceChildren(...[pairChart(efficacy)].filter(Boolean));
    fillList('efficacy-list', efficacy);
    $('efficacy-heard').replaceChildren(...heardBlocks(report.efficacy || {}));

    const timings = Object.entries(report.timings || {}).filter(
      ([k, v]) => k !== 'total' && typeof v === 'number' && Number.isFinite(v),
    );
    const chart = $('timings-chart');
    if (timings.length) {
      const total = Number.isFinite(report.timings.total) ? report.timings.total : timings.reduce((s, [, v]) => s + v, 0);
      const summary = timings.map(([k, v]) => `${timingLabel(k)} ${formatSeconds(v)}`).join(', ');
      chart.replaceChildren(barChart(timings.map(([k, v]) => [timingLabel(k), v]), formatSeconds, `Time per phase: ${summary}`));
      chart.append(el('p', { class: 'muted small', text: `In all ${formatSeconds(total)} of work on the server.` }));
    } else {
      chart.replaceChildren(el('p', { class: 'muted small', text: 'No timings in this report.' }));
    }

    const paramEntries = [];
    if (params.epsilon !== undefined) paramEntries.push(['strength (epsilon)', Number(params.epsilon)]);
    if (params.pixel_bound !== undefined) paramEntries.push(['largest pixel change (of 255)', Number(params.pixel_bound)]);
    if (params.audio_level !== undefined) paramEntries.push(['audio level', String(params.audio_level)]);
    if (params.audio_objective !== undefined) {
      const heard = params.audio_objective === 'phrase' ? `phrase “${params.audio_phrase || ''}”` : String(params.audio_objective);
      paramEntries.push(['speech outcome', heard]);
    }
    if (params.protect_video !== undefined) paramEntries.push(['picture protected', Boolean(params.protect_video)]);
    if (params.protect_audio !== undefined) paramEntries.push(['speech protected', Boolean(params.protect_audio)]);
    if (task.started_at && task.finished_at) {
      paramEntries.push(['processing time', (Date.parse(task.finished_at) - Date.parse(task.started_at)) / 1000]);
    }
    fillList('params-list', paramEntries);
    $('report-json').textContent = JSON.stringify(report, null, 2);
  }

  // ---------- start-up ----------

  async function loadConfig() {
    try {
      const resp = await fetch('web/config', { cache: 'no-store' });
      if (resp.ok) Object.assign(state.config, await resp.json());
    } catch { /* the defaults above are the spec's */ }
    $('drop-hint').textContent = `MP4, MOV, MKV, WebM, AVI or MPEG · up to ${formatLimit()}`;
    if (state.config.default_epsilon !== undefined) {
      const radio = document.querySelector(`input[name="strength"][value="${Number(state.config.default_epsilon).toFixed(2)}"]`);
      if (radio) radio.checked = true;
    }
    $('private').hidden = Boolean(state.config.auth_required); // with keys the key decides whose videos these are
    if (state.config.default_audio_level) {
      const radio = document.querySelector(`input[name="audio_level"][value="${state.config.default_audio_level}"]`);
      if (radio) radio.checked = true;
    }
  }

  function init() {
    for (const span of document.querySelectorAll('[data-bound]')) {
      span.textContent = (Number(span.dataset.bound) * 57.6).toFixed(1);
    }
    setupKeyDialog();
    setupDropzone();
    setupCompare();
    updateAccount();
    $('upload-form').addEventListener('submit', startUpload);
    const showPhrase = () => {
      const wanted = $('audio-objective').value === 'phrase';
      $('audio-phrase-block').hidden = !wanted;
    };
    $('audio-objective').addEventListener('change', showPhrase);
    showPhrase();
    $('user-id').value = state.userId;
    $('private').open = Boolean(state.userId);
    $('user-id').addEventListener('change', () => {
      state.userId = $('user-id').value.trim();
      safeSet(USER_STORE, state.userId);
      refreshTasks();
    });
    $('upload-cancel').addEventListener('click', () => state.xhr && state.xhr.abort());
    $('current-cancel').addEventListener('click', () => {
      if (!state.current) return;
      $('current-cancel').disabled = true;
      cancelTask(state.current);
    });
    $('tasks-refresh').addEventListener('click', refreshTasks);
    $('banner-close').addEventListener('click', hideBanner);
    // Charts are drawn for the width they are shown at: redraw them when the window changes size.
    let resizeTimer = null;
    window.addEventListener('resize', () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(() => {
        if (state.resultTask && !$('result').hidden) renderReport(state.resultTask);
      }, 150);
    });
    document.addEventListener('visibilitychange', () => {
      if (!document.hidden) refreshTasks();
    });
    loadConfig().then(async () => {
      if (state.config.auth_required && !state.key) {
        try { await askForKey(''); } catch { /* they can still browse; calls will ask again */ }
      }
      refreshTasks();
    });
  }

  init();
})();

// asrd's web page: pick, drop or record audio, submit it as a task, poll the task, show the
// transcript. Plain browser JavaScript, no build step, no dependencies. Server text is only ever
// put on the page with textContent.
(() => {
  "use strict";

  const POLL_MS = 1000; // poll every second...
  const SLOW_POLL_MS = 2000; // ...then every two once a task has taken this long:
  const SLOW_AFTER_MS = 30000;
  const MAX_POLL_RETRIES = 4; // consecutive network errors (or 5xx) before giving up
  const RETRY_STEP_MS = 1500; // waits of 1.5, 3, 4.5 and 6 s between those retries

  const $ = (id) => document.getElementById(id);
  const el = {
    form: $("form"),
    dropzone: $("dropzone"),
    file: $("file"),
    record: $("record"),
    recordLabel: $("record-label"),
    recordTime: $("record-time"),
    recordNote: $("record-note"),
    selected: $("selected"),
    selectedName: $("selected-name"),
    preview: $("preview"),
    modelField: $("model-field"),
    model: $("model"),
    language: $("language"),
    task: $("task"),
    modelNote: $("model-note"),
    submit: $("submit"),
    cancel: $("cancel"),
    status: $("status"),
    statusText: $("status-text"),
    error: $("error"),
    errorTitle: $("error-title"),
    errorDetail: $("error-detail"),
    result: $("result"),
    resultMeta: $("result-meta"),
    copy: $("copy"),
    copyNote: $("copy-note"),
    transcript: $("transcript"),
    expires: $("expires"),
    downloads: {
      txt: $("download-txt"),
      srt: $("download-srt"),
      vtt: $("download-vtt"),
    },
  };

  // ---------------------------------------------------------------- small helpers

  function clock(seconds) {
    const total = Math.max(0, Math.floor(Number(seconds) || 0));
    const h = Math.floor(total / 3600);
    const m = Math.floor((total % 3600) / 60);
    const s = total % 60;
    const pad = (n) => String(n).padStart(2, "0");
    return h > 0 ? `${h}:${pad(m)}:${pad(s)}` : `${pad(m)}:${pad(s)}`;
  }

  function humanSize(bytes) {
    if (bytes < 1024) return `${bytes} B`;
    if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(0)} KB`;
    return `${(bytes / (1024 * 1024)).toFixed(1)} MB`;
  }

  function humanSeconds(seconds) {
    const value = Number(seconds);
    if (!Number.isFinite(value)) return "";
    if (value < 10) return `${value.toFixed(1)} s`;
    if (value < 60) return `${Math.round(value)} s`;
    return clock(value).replace(/^0/, "");
  }

  function languageName(code) {
    try {
      const names = new Intl.DisplayNames([navigator.language || "en"], { type: "language" });
      const name = names.of(code);
      if (name && name !== code) return name.charAt(0).toUpperCase() + name.slice(1);
    } catch (_) {
      // an old browser or an odd code: fall through to the code itself
    }
    return code;
  }

  function sentence(text) {
    const value = String(text || "").trim();
    if (!value) return "";
    const first = value.charAt(0).toUpperCase() + value.slice(1);
    return /[.!?]$/.test(first) ? first : `${first}.`;
  }

  function parseJson(text) {
    try {
      return JSON.parse(text);
    } catch (_) {
      return null;
    }
  }

  // ---------------------------------------------------------------- messages

  function show(node, visible) {
    node.hidden = !visible;
  }

  function setStatus(state, text) {
    el.status.dataset.state = state;
    el.statusText.textContent = text;
    show(el.status, true);
  }

  function clearStatus() {
    delete el.status.dataset.state;
    el.statusText.textContent = "";
    show(el.status, false);
  }

  function showError(title, detail) {
    el.errorTitle.textContent = title;
    el.errorDetail.textContent = detail || "";
    show(el.error, true);
  }

  function clearError() {
    el.errorTitle.textContent = "";
    el.errorDetail.textContent = "";
    show(el.error, false);
  }

  const NETWORK_ERROR = [
    "Could not reach the server.",
    "Check your connection (or whether asrd is still running) and try again.",
  ];

  function retryHint(retryAfter) {
    const wait = Number.parseInt(retryAfter, 10);
    return Number.isFinite(wait) && wait > 0
      ? `Try again in ${wait} second${wait === 1 ? "" : "s"}.`
      : "Try again in a moment.";
  }

  // What an error code means, in plain words; null for a code the page doesn't know.
  function knownError(code, retryAfter) {
    switch (code) {
      case "invalid_audio":
        return "This file could not be read as audio.";
      case "invalid_language":
        return el.modelField.hidden
          ? "This language can't be used with this server's model."
          : "This language can't be used with the chosen model.";
      case "model_not_found":
        return "The chosen model isn't available on this server: pick another one.";
      case "too_large":
        return "The file is too large for this server.";
      case "audio_too_long":
        return "The audio is too long for this server.";
      case "queue_full":
        return `The server is busy: its queue is full. ${retryHint(retryAfter)}`;
      case "model_not_ready":
        return `The server is still loading its speech model. ${retryHint(retryAfter)}`;
      case "task_not_found":
        return "This task is no longer on the server: it expired or was deleted.";
      case "cancelled":
        return "The task was cancelled.";
      default:
        return null;
    }
  }

  // [title, detail] for an error answer: the title says what happened, the detail is the
  // server's own message.
  // ---------------------------------------------------------------- API key (API_KEYS)

  const KEY_STORAGE = "asrd-api-key";

  function authHeaders() {
    const key = window.sessionStorage.getItem(KEY_STORAGE);
    return key ? { Authorization: `Bearer ${key}` } : {};
  }

  // The server wants a key: ask once, keep it for this tab only.
  function askForKey() {
    const key = window.prompt("This server needs an API key. Key:");
    if (key && key.trim()) {
      window.sessionStorage.setItem(KEY_STORAGE, key.trim());
      loadCapabilities(); // read without a key, the model's status was refused too
    } else {
      window.sessionStorage.removeItem(KEY_STORAGE);
    }
  }

  function describeError(status, body, retryAfter) {
    const error = body && typeof body === "object" && body.error ? body.error : {};
    const detail = sentence(error.message);
    if (status === 401) {
      return ["This server needs a valid API key.", "Enter it when asked, then try again."];
    }
    const title = knownError(error.code, retryAfter);
    if (title) return [title, detail];
    if (status === 413) return [knownError("too_large"), detail];
    if (status === 429) return [`The server is busy. ${retryHint(retryAfter)}`, detail];
    if (status === 503) return [`The server is not ready. ${retryHint(retryAfter)}`, detail];
    if (status >= 500) return [`The server had a problem (HTTP ${status}).`, detail];
    return [`The server refused the request (HTTP ${status}).`, detail];
  }

  // A plain link can't carry the API key: with a key, fetch the file and save it from memory.
  async function downloadWithKey(event) {
    const headers = authHeaders();
    if (!headers.Authorization) return; // no key: the link works as it is
    event.preventDefault();
    const link = event.currentTarget;
    const response = await fetch(link.getAttribute("href"), { headers });
    if (!response.ok) return;
    const disposition = response.headers.get("Content-Disposition") || "";
    const match = /filename="([^"]+)"/.exec(disposition);
    const url = URL.createObjectURL(await response.blob());
    const anchor = document.createElement("a");
    anchor.href = url;
    anchor.download = match ? match[1] : "transcript.txt";
    document.body.appendChild(anchor);
    anchor.click();
    anchor.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  // ---------------------------------------------------------------- the chosen audio

  let chosen = null; // the File to upload
  let previewUrl = null;

  function choose(file) {
    chosen = file || null;
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = null;
    if (!chosen) {
      el.preview.removeAttribute("src");
      show(el.selected, false);
      return;
    }
    el.selectedName.textContent = `${chosen.name || "audio"} (${humanSize(chosen.size)})`;
    previewUrl = URL.createObjectURL(chosen);
    el.preview.src = previewUrl;
    show(el.selected, true);
    clearError();
  }

  el.file.addEventListener("change", () => {
    choose(el.file.files && el.file.files[0]);
  });

  // Drag and drop onto the drop zone; a file dropped anywhere else must not replace the page.
  const hasFiles = (event) =>
    event.dataTransfer && Array.from(event.dataTransfer.types || []).includes("Files");

  window.addEventListener("dragover", (event) => {
    if (hasFiles(event)) event.preventDefault();
  });
  window.addEventListener("drop", (event) => {
    if (hasFiles(event)) event.preventDefault();
  });

  let dragDepth = 0;
  el.dropzone.addEventListener("dragenter", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    dragDepth += 1;
    el.dropzone.classList.add("dragging");
  });
  el.dropzone.addEventListener("dragover", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = "copy";
  });
  el.dropzone.addEventListener("dragleave", () => {
    dragDepth = Math.max(0, dragDepth - 1);
    if (dragDepth === 0) el.dropzone.classList.remove("dragging");
  });
  el.dropzone.addEventListener("drop", (event) => {
    event.preventDefault();
    dragDepth = 0;
    el.dropzone.classList.remove("dragging");
    const files = event.dataTransfer && event.dataTransfer.files;
    if (!files || !files.length) return;
    try {
      el.file.files = files; // keeps the input in step where the browser allows it
    } catch (_) {
      // older browsers: the file is still used, from `chosen`
    }
    choose(files[0]);
  });

  // ---------------------------------------------------------------- microphone

  let recorder = null;
  let recordStream = null;
  let recordTimer = null;

  const canRecord = Boolean(
    window.isSecureContext &&
      navigator.mediaDevices &&
      navigator.mediaDevices.getUserMedia &&
      window.MediaRecorder,
  );

  if (!canRecord) {
    el.record.disabled = true;
    el.recordNote.textContent = window.isSecureContext
      ? "This browser can't record audio."
      : "Recording needs HTTPS (or localhost).";
    show(el.recordNote, true);
  }

  function recordingType() {
    const candidates = ["audio/webm;codecs=opus", "audio/webm", "audio/ogg;codecs=opus", "audio/mp4"];
    if (typeof MediaRecorder.isTypeSupported !== "function") return "";
    return candidates.find((type) => MediaRecorder.isTypeSupported(type)) || "";
  }

  function recordingName(type) {
    if (type.includes("mp4") || type.includes("aac")) return "recording.m4a";
    if (type.includes("ogg")) return "recording.ogg";
    return "recording.webm";
  }

  function stopStream() {
    if (recordStream) recordStream.getTracks().forEach((track) => track.stop());
    recordStream = null;
  }

  function setRecordingUi(active) {
    el.record.setAttribute("aria-pressed", String(active));
    el.record.classList.toggle("recording", active);
    el.recordLabel.textContent = active ? "Stop recording" : "Record from microphone";
    show(el.recordTime, active);
    if (recordTimer) clearInterval(recordTimer);
    recordTimer = null;
    if (active) {
      const started = Date.now();
      el.recordTime.textContent = "0:00";
      recordTimer = setInterval(() => {
        el.recordTime.textContent = clock((Date.now() - started) / 1000).replace(/^0/, "");
      }, 250);
    }
  }

  async function startRecording() {
    clearError();
    try {
      recordStream = await navigator.mediaDevices.getUserMedia({ audio: true });
    } catch (error) {
      const denied = error && (error.name === "NotAllowedError" || error.name === "SecurityError");
      showError(
        denied ? "Microphone access was refused." : "No microphone could be opened.",
        denied
          ? "Allow this page to use the microphone in the browser's settings, then try again."
          : String((error && error.message) || ""),
      );
      return;
    }
    const type = recordingType();
    let active;
    try {
      active = type ? new MediaRecorder(recordStream, { mimeType: type }) : new MediaRecorder(recordStream);
    } catch (error) {
      stopStream();
      showError("This browser can't record audio.", String((error && error.message) || ""));
      return;
    }
    const chunks = [];
    active.addEventListener("dataavailable", (event) => {
      if (event.data && event.data.size) chunks.push(event.data);
    });
    active.addEventListener("stop", () => {
      stopStream();
      setRecordingUi(false);
      recorder = null;
      const mime = (active.mimeType || type || "audio/webm").split(";")[0];
      if (!chunks.length) {
        showError("Nothing was recorded.", "Check the microphone and try again.");
        return;
      }
      const blob = new Blob(chunks, { type: mime });
      choose(new File([blob], recordingName(mime), { type: mime }));
    });
    recorder = active;
    active.start(1000);
    setRecordingUi(true);
  }

  el.record.addEventListener("click", () => {
    if (recorder) {
      if (recorder.state !== "inactive") recorder.stop();
    } else if (canRecord) {
      startRecording();
    }
  });

  // ---------------------------------------------------------------- options

  function syncTask() {
    const translate = el.task.value === "translate";
    el.submit.textContent = translate ? "Translate" : "Transcribe";
  }
  el.task.addEventListener("change", syncTask);
  syncTask();

  // Every language the page knows, as the HTML lists them: each model gets the ones it can use,
  // so switching models can bring back what another model had no use for.
  const ALL_LANGUAGES = Array.from(el.language.options).map((option) => ({
    value: option.value,
    text: option.textContent,
  }));
  // What the user picked (not what a model forced): kept for the next model that can do it.
  let wantedLanguage = el.language.value;
  let wantedTask = el.task.value;
  el.language.addEventListener("change", () => {
    wantedLanguage = el.language.value;
  });
  el.task.addEventListener("change", () => {
    wantedTask = el.task.value;
  });

  // Offer only what a model can do (GET /api/v1/decoder_status, or one of its `models`): an
  // English-only model (`*.en`) transcribes English and can't translate. If the status can't be
  // read, every choice stays and the server says no to what its model lacks. `several`: the
  // server serves more than one model, so the note names the model rather than "this server's".
  function applyCapabilities(status, several = false) {
    if (!status || typeof status !== "object") return;
    const languages = Array.isArray(status.languages) ? new Set(status.languages) : null;
    const tasks = Array.isArray(status.tasks) ? new Set(status.tasks) : null;
    const englishOnly = status.multilingual === false;
    // With one language there is nothing to detect: "Detect automatically" goes too.
    const usable = ({ value }) =>
      !languages || (value ? languages.has(value) : !englishOnly);
    const offered = ALL_LANGUAGES.filter(usable);
    el.language.replaceChildren(
      ...offered.map(({ value, text }) => {
        const option = document.createElement("option");
        option.value = value;
        option.textContent = text;
        return option;
      }),
    );
    if (offered.some(({ value }) => value === wantedLanguage)) {
      el.language.value = wantedLanguage;
    } else {
      el.language.selectedIndex = 0;
    }
    for (const option of Array.from(el.task.options)) {
      const unusable = tasks ? !tasks.has(option.value) : false;
      option.disabled = unusable;
      option.hidden = unusable;
    }
    const wanted = Array.from(el.task.options).find((option) => option.value === wantedTask);
    el.task.value = wanted && !wanted.disabled ? wantedTask : "transcribe";
    syncTask();
    if (englishOnly) {
      const id = typeof status.model === "string" && status.model ? status.model : "";
      el.modelNote.textContent = several
        ? `The model ${id} is English-only: it transcribes English speech and can't translate.`
        : `This server's model${id ? ` (${id})` : ""} is English-only: it transcribes English ` +
          "speech and can't translate.";
    } else {
      el.modelNote.textContent = "";
    }
    show(el.modelNote, englishOnly);
  }

  // The served models (`models` in the status), the default first; [] from a server that
  // doesn't list them.
  let models = [];

  function modelLabel(model) {
    let text = model.model;
    if (model.multilingual === false) text += " (English only)";
    if (model.default) text += " — default";
    return text;
  }

  // With more than one model, a picker: the default first and chosen, unless the user had
  // already chosen one the server still serves. With one, no picker, and no `model` sent.
  function applyStatus(status) {
    if (!status || typeof status !== "object") return;
    models = Array.isArray(status.models)
      ? status.models.filter((m) => m && typeof m === "object" && typeof m.model === "string")
      : [];
    const several = models.length > 1;
    if (several) {
      const previous = el.model.value;
      el.model.replaceChildren(
        ...models.map((model) => {
          const option = document.createElement("option");
          option.value = model.model;
          option.textContent = modelLabel(model);
          return option;
        }),
      );
      const fallback = models.find((model) => model.default) || models[0];
      el.model.value = models.some((model) => model.model === previous) ? previous : fallback.model;
    } else {
      el.model.replaceChildren();
    }
    show(el.modelField, several);
    applyCapabilities(several ? chosenModel() : status, several);
    el.form.dataset.capabilities = "applied";
  }

  function chosenModel() {
    return models.find((model) => model.model === el.model.value) || null;
  }

  el.model.addEventListener("change", () => {
    applyCapabilities(chosenModel(), true);
  });

  function loadCapabilities() {
    fetch("/api/v1/decoder_status", {
      headers: { Accept: "application/json", ...authHeaders() },
      cache: "no-store",
    })
      .then((response) => (response.ok ? response.json() : null))
      .then(applyStatus)
      .catch(() => {});
  }
  loadCapabilities();

  // ---------------------------------------------------------------- jobs: submit, poll, show

  // The one job the page follows. Every callback checks `isCurrent(job)` first, so starting a
  // new job (or cancelling) stops the previous one's poll loop and ignores its late answers.
  let current = null;

  const isCurrent = (job) => job === current && !job.stopped;
  let transcriptText = ""; // what Copy copies

  function stop(job) {
    job.stopped = true;
    if (job.timer) clearTimeout(job.timer);
    job.timer = null;
    if (job.controller) job.controller.abort();
    job.controller = null;
    if (job.xhr) job.xhr.abort();
    job.xhr = null;
    if (current === job) current = null;
  }

  // Stop following the current job; if the server still has it queued or running, drop it there
  // too (nobody can get at its result once the page has moved on).
  function abandon(job) {
    if (!job) return;
    const unfinished = job.taskId && !job.finished;
    stop(job);
    if (unfinished) {
      fetch(`/api/v1/tasks/${encodeURIComponent(job.taskId)}`, {
        method: "DELETE",
        headers: authHeaders(),
        keepalive: true,
      }).catch(() => {});
    }
  }

  function setWorking(working) {
    show(el.cancel, working);
    el.form.classList.toggle("working", working);
    el.form.setAttribute("aria-busy", String(working));
  }

  function resetResult() {
    show(el.result, false);
    el.transcript.replaceChildren();
    el.resultMeta.textContent = "";
    el.copyNote.textContent = "";
    show(el.expires, false);
    for (const link of Object.values(el.downloads)) link.setAttribute("href", "#");
    transcriptText = "";
  }

  function fail(job, [title, detail]) {
    stop(job);
    setWorking(false);
    clearStatus();
    showError(title, detail);
  }

  function submit() {
    if (recorder) {
      showError("Stop the recording first.", "Then submit it.");
      return;
    }
    if (!chosen) {
      showError("Choose an audio file first.", "Pick one, drop one on the page, or record one.");
      el.file.focus();
      return;
    }
    abandon(current);
    clearError();
    resetResult();

    const job = {
      taskId: null,
      timer: null,
      controller: null,
      xhr: null,
      stopped: false,
      finished: false,
      submittedAt: Date.now(),
      processingSince: null,
      failures: 0,
    };
    current = job;
    setWorking(true);
    setStatus("uploading", "Uploading…");

    const form = new FormData();
    form.append("file", chosen, chosen.name || "audio");
    if (el.language.value) form.append("language", el.language.value);
    // Only with a picker: a server with one model gets the same request as ever.
    if (!el.modelField.hidden && el.model.value) form.append("model", el.model.value);
    const endpoint = el.task.value === "translate" ? "/api/v1/translate" : "/api/v1/transcribe";

    // XMLHttpRequest rather than fetch, for upload progress on big files and slow phones.
    const xhr = new XMLHttpRequest();
    job.xhr = xhr;
    xhr.open("POST", endpoint);
    xhr.setRequestHeader("Accept", "application/json");
    for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
    xhr.upload.addEventListener("progress", (event) => {
      if (!isCurrent(job) || !event.lengthComputable) return;
      const percent = Math.min(100, Math.round((event.loaded / event.total) * 100));
      setStatus("uploading", percent < 100 ? `Uploading… ${percent}%` : "Uploaded, checking the audio…");
    });
    xhr.addEventListener("load", () => {
      if (!isCurrent(job)) return;
      job.xhr = null;
      const body = parseJson(xhr.responseText);
      if (xhr.status < 200 || xhr.status >= 300) {
        if (xhr.status === 401) askForKey();
        if (body && body.error && body.error.code === "model_not_found") loadCapabilities();
        fail(job, describeError(xhr.status, body, xhr.getResponseHeader("Retry-After")));
        return;
      }
      if (!body || typeof body.task_id !== "string" || !body.task_id) {
        fail(job, ["The server's answer made no sense.", "It gave no task id."]);
        return;
      }
      job.taskId = body.task_id;
      showProgress(job, body);
      job.timer = setTimeout(() => poll(job), POLL_MS);
    });
    xhr.addEventListener("error", () => {
      if (isCurrent(job)) fail(job, NETWORK_ERROR);
    });
    xhr.send(form);
  }

  function showProgress(job, task) {
    if (task.status === "processing") {
      if (job.processingSince === null) job.processingSince = Date.now();
      const seconds = Math.round((Date.now() - job.processingSince) / 1000);
      setStatus("processing", seconds >= 2 ? `Processing… ${seconds} s` : "Processing…");
      return;
    }
    const position = task.position_in_queue;
    setStatus(
      "pending",
      Number.isInteger(position) && position > 0
        ? `Pending: position ${position} in queue`
        : "Pending: waiting in the queue",
    );
  }

  async function poll(job) {
    job.timer = null;
    if (!isCurrent(job)) return;
    const controller = new AbortController();
    job.controller = controller;
    let response;
    let body;
    try {
      response = await fetch(`/api/v1/tasks/${encodeURIComponent(job.taskId)}`, {
        headers: { Accept: "application/json", ...authHeaders() },
        cache: "no-store",
        signal: controller.signal,
      });
      body = parseJson(await response.text());
    } catch (_) {
      if (!isCurrent(job)) return; // aborted: a newer job or a cancel took over
      retryOrGiveUp(job, NETWORK_ERROR);
      return;
    }
    if (!isCurrent(job)) return;
    job.controller = null;

    if (response.status === 404) {
      fail(job, [knownError("task_not_found"), "Submit the audio again."]);
      return;
    }
    if (response.status >= 500) {
      retryOrGiveUp(job, describeError(response.status, body, response.headers.get("Retry-After")));
      return;
    }
    if (!response.ok || !body || typeof body !== "object") {
      fail(job, describeError(response.status, body));
      return;
    }
    job.failures = 0;

    switch (body.status) {
      case "pending":
      case "processing":
        showProgress(job, body);
        job.timer = setTimeout(() => poll(job), nextDelay(job));
        return;
      case "finished":
        if (body.result && typeof body.result === "object") {
          finish(job, body);
        } else {
          fail(job, ["The task finished without a result.", ""]);
        }
        return;
      case "failed": {
        const error = body.error && typeof body.error === "object" ? body.error : {};
        if (error.code === "model_not_found") loadCapabilities(); // the list has changed
        const verb = body.task_type === "translate" ? "translation" : "transcription";
        fail(job, [
          knownError(error.code) || `The ${verb} failed.`,
          sentence(error.message) || "The server gave no reason.",
        ]);
        return;
      }
      default:
        fail(job, ["The server's answer made no sense.", `Unknown status ${String(body.status)}.`]);
    }
  }

  function nextDelay(job) {
    return Date.now() - job.submittedAt > SLOW_AFTER_MS ? SLOW_POLL_MS : POLL_MS;
  }

  // A dropped connection or a restarting proxy shouldn't lose a long job at once.
  function retryOrGiveUp(job, message) {
    job.controller = null;
    job.failures += 1;
    if (job.failures > MAX_POLL_RETRIES) {
      fail(job, message);
      return;
    }
    setStatus("retrying", `Lost contact with the server, retrying (${job.failures}/${MAX_POLL_RETRIES})…`);
    job.timer = setTimeout(() => poll(job), RETRY_STEP_MS * job.failures);
  }

  function finish(job, task) {
    job.finished = true;
    stop(job);
    setWorking(false);
    const result = task.result;
    const segments = Array.isArray(result.segments) ? result.segments : [];

    const list = el.transcript;
    list.replaceChildren();
    for (const segment of segments) {
      const row = document.createElement("li");
      row.className = "segment";
      const time = document.createElement("time");
      time.className = "timestamp";
      time.dateTime = `PT${Math.max(0, Number(segment.start) || 0).toFixed(2)}S`;
      time.title = `${clock(segment.start)} – ${clock(segment.end)}`;
      time.textContent = `[${clock(segment.start)}]`;
      const text = document.createElement("span");
      text.className = "segment-text";
      text.textContent = String(segment.text || "").trim();
      row.append(time, " ", text);
      list.append(row);
    }
    if (!segments.length) {
      const row = document.createElement("li");
      row.className = "segment empty";
      row.textContent = "No speech was found in this audio.";
      list.append(row);
    }
    transcriptText = String(result.text || segments.map((s) => String(s.text || "").trim()).join(" ")).trim();

    const meta = [];
    if (result.language) meta.push(languageName(result.language));
    if (task.task_type === "translate") meta.push("translated to English");
    if (Number.isFinite(result.duration)) meta.push(`${humanSeconds(result.duration)} of audio`);
    if (Number.isFinite(task.processing_duration)) {
      meta.push(`done in ${humanSeconds(task.processing_duration)}`);
    }
    el.resultMeta.textContent = meta.join(" · ");

    const id = encodeURIComponent(job.taskId);
    for (const [format, link] of Object.entries(el.downloads)) {
      link.setAttribute("href", `/api/v1/${format}?task_id=${id}`);
      link.onclick = downloadWithKey;
    }

    const expires = task.expires_at ? new Date(task.expires_at) : null;
    if (expires && !Number.isNaN(expires.getTime())) {
      const when = expires.toLocaleString([], { dateStyle: "medium", timeStyle: "short" });
      el.expires.textContent = `The server keeps this result (and its downloads) until ${when}.`;
      show(el.expires, true);
    }

    setStatus("finished", task.task_type === "translate" ? "Translated." : "Transcribed.");
    show(el.result, true);
  }

  el.form.addEventListener("submit", (event) => {
    event.preventDefault();
    submit();
  });

  el.cancel.addEventListener("click", () => {
    if (!current) return;
    abandon(current);
    setWorking(false);
    setStatus("cancelled", "Cancelled.");
  });

  // ---------------------------------------------------------------- copy

  function legacyCopy(text) {
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.append(area);
    area.select();
    let copied = false;
    try {
      copied = document.execCommand("copy");
    } catch (_) {
      copied = false;
    }
    area.remove();
    return copied;
  }

  let copyNoteTimer = null;
  el.copy.addEventListener("click", async () => {
    if (!transcriptText) return;
    let copied = false;
    if (navigator.clipboard && window.isSecureContext) {
      try {
        await navigator.clipboard.writeText(transcriptText);
        copied = true;
      } catch (_) {
        copied = false;
      }
    }
    if (!copied) copied = legacyCopy(transcriptText);
    el.copyNote.textContent = copied ? "Copied." : "Copy failed: select the text and copy it by hand.";
    if (copyNoteTimer) clearTimeout(copyNoteTimer);
    copyNoteTimer = setTimeout(() => {
      el.copyNote.textContent = "";
    }, 3000);
  });
})();

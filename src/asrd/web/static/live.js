// asrd's live captions: the microphone, at 24 kHz 16-bit, streamed to /v1/realtime (OpenAI's
// Realtime API, transcription session, server VAD); partial words shown as they come (greyed),
// replaced by each sentence's final text. Server text only ever goes on the page as textContent.
(() => {
  "use strict";

  const RATE = 24000; // OpenAI's audio/pcm rate
  const SEND_EVERY = 2400; // samples per append: 100 ms
  const DRAIN_MS = 5000; // after stopping: wait this long for the last sentence's text
  const KEY_STORAGE = "asrd-api-key"; // the same key as the rest of the page

  const $ = (id) => document.getElementById(id);
  const el = {
    toggle: $("live-toggle"),
    label: $("live-label"),
    status: $("live-status"),
    captions: $("live-captions"),
    copy: $("live-copy"),
    download: $("live-download"),
    note: $("live-note"),
    model: $("model"),
    modelField: $("model-field"),
    language: $("language"),
  };
  if (!el.toggle) return;

  let live = null; // { socket, context, stream, node, pending, stopping }
  const items = new Map(); // item id -> its <p>

  function status(text) {
    el.status.textContent = text;
  }

  function key() {
    return window.sessionStorage.getItem(KEY_STORAGE) || "";
  }

  // A server with API_KEYS wants a key; a WebSocket handshake can't say why it failed, so ask
  // a plain route first.
  async function ensureKey() {
    const headers = key() ? { Authorization: `Bearer ${key()}` } : {};
    const response = await fetch("/v1/models", { headers });
    if (response.status !== 401) return true;
    const given = window.prompt("This server needs an API key. Key:");
    if (!given || !given.trim()) return false;
    window.sessionStorage.setItem(KEY_STORAGE, given.trim());
    return true;
  }

  function paragraph(itemId) {
    let node = items.get(itemId);
    if (!node) {
      node = document.createElement("p");
      node.className = "partial";
      node.dataset.item = itemId;
      el.captions.append(node);
      items.set(itemId, node);
    }
    return node;
  }

  function transcriptText() {
    return [...el.captions.querySelectorAll("p.final")]
      .map((p) => p.textContent.trim())
      .filter(Boolean)
      .join("\n");
  }

  function syncTools() {
    const has = transcriptText() !== "";
    el.copy.disabled = !has;
    el.download.disabled = !has;
  }

  function onEvent(event) {
    switch (event.type) {
      case "input_audio_buffer.speech_started":
        paragraph(event.item_id);
        break;
      case "conversation.item.input_audio_transcription.delta": {
        const node = paragraph(event.item_id);
        if (node.className === "partial") node.textContent += event.delta || "";
        break;
      }
      case "conversation.item.input_audio_transcription.completed": {
        const node = paragraph(event.item_id);
        node.className = "final";
        node.textContent = event.transcript || "";
        if (!node.textContent.trim()) node.remove();
        syncTools();
        el.captions.scrollTop = el.captions.scrollHeight;
        break;
      }
      case "conversation.item.input_audio_transcription.failed": {
        const node = paragraph(event.item_id);
        node.className = "failed";
        node.textContent = "(this sentence could not be transcribed)";
        break;
      }
      case "error":
        if (event.error && event.error.code === "input_audio_buffer_commit_empty") break;
        status(`The server said: ${(event.error && event.error.message) || "error"}`);
        break;
      default:
        break;
    }
  }

  function base64(int16) {
    const bytes = new Uint8Array(int16.buffer, int16.byteOffset, int16.byteLength);
    let binary = "";
    for (let i = 0; i < bytes.length; i += 0x8000) {
      binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    }
    return window.btoa(binary);
  }

  function sender(socket) {
    let block = new Int16Array(SEND_EVERY);
    let filled = 0;
    return (samples) => {
      for (let i = 0; i < samples.length; i += 1) {
        const s = Math.max(-1, Math.min(1, samples[i]));
        block[filled] = s < 0 ? s * 0x8000 : s * 0x7fff;
        filled += 1;
        if (filled === SEND_EVERY) {
          if (socket.readyState === WebSocket.OPEN) {
            socket.send(JSON.stringify({ type: "input_audio_buffer.append", audio: base64(block) }));
          }
          block = new Int16Array(SEND_EVERY);
          filled = 0;
        }
      }
    };
  }

  function setUi(active) {
    el.toggle.setAttribute("aria-pressed", String(active));
    el.toggle.classList.toggle("recording", active);
    el.label.textContent = active ? "Stop live captions" : "Start live captions";
  }

  function release(session) {
    if (session.node) session.node.port.onmessage = null;
    if (session.stream) session.stream.getTracks().forEach((track) => track.stop());
    if (session.context) session.context.close().catch(() => {});
  }

  async function start() {
    status("Connecting…");
    if (!(await ensureKey())) {
      status("This server needs an API key.");
      return;
    }
    const session = { socket: null, context: null, stream: null, node: null, stopping: false };
    live = session;
    setUi(true);
    try {
      session.stream = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true },
      });
    } catch (error) {
      live = null;
      setUi(false);
      status("No microphone could be opened (allow this page to use it, then try again).");
      return;
    }
    const scheme = window.location.protocol === "https:" ? "wss" : "ws";
    const protocols = ["realtime"];
    if (key()) protocols.push(`openai-insecure-api-key.${key()}`);
    const socket = new WebSocket(`${scheme}://${window.location.host}/v1/realtime?intent=transcription`, protocols);
    session.socket = socket;
    const send = sender(socket);
    socket.onmessage = (message) => {
      try {
        onEvent(JSON.parse(message.data));
      } catch (_) {
        // not an event: ignore
      }
    };
    socket.onclose = (closed) => {
      release(session);
      if (live === session) live = null;
      setUi(false);
      if (!session.stopping) {
        status(closed.reason ? `Stopped: ${closed.reason}` : "The connection closed.");
      } else {
        status("Stopped.");
      }
    };
    socket.onopen = async () => {
      const transcription = {};
      if (el.modelField && !el.modelField.hidden && el.model.value) transcription.model = el.model.value;
      if (el.language && el.language.value) transcription.language = el.language.value;
      socket.send(JSON.stringify({
        type: "session.update",
        session: { type: "transcription", audio: { input: { transcription } } },
      }));
      try {
        session.context = new AudioContext({ sampleRate: RATE });
        await session.context.audioWorklet.addModule("/static/live-worklet.js");
        const source = session.context.createMediaStreamSource(session.stream);
        session.node = new AudioWorkletNode(session.context, "asrd-capture");
        const mute = session.context.createGain();
        mute.gain.value = 0;
        source.connect(session.node).connect(mute).connect(session.context.destination);
        session.node.port.onmessage = (message) => send(message.data);
        await session.context.resume();
        status("Listening…");
      } catch (error) {
        status("This browser can't capture audio for live captions.");
        stop();
      }
    };
  }

  function stop() {
    const session = live;
    if (!session || session.stopping) return;
    session.stopping = true;
    release(session);
    const socket = session.socket;
    if (socket && socket.readyState === WebSocket.OPEN) {
      // The sentence being spoken: ask for its text now, then close once it has come.
      socket.send(JSON.stringify({ type: "input_audio_buffer.commit" }));
      status("Finishing…");
      setTimeout(() => socket.close(1000), DRAIN_MS);
      const settled = () => el.captions.querySelectorAll("p.partial").length === 0;
      const check = setInterval(() => {
        if (settled() || socket.readyState !== WebSocket.OPEN) {
          clearInterval(check);
          if (socket.readyState === WebSocket.OPEN) socket.close(1000);
        }
      }, 200);
    } else if (socket) {
      socket.close();
    }
  }

  el.toggle.addEventListener("click", () => {
    if (live) stop();
    else start();
  });

  el.copy.addEventListener("click", async () => {
    const text = transcriptText();
    if (!text) return;
    try {
      await navigator.clipboard.writeText(text);
      el.note.textContent = "Copied.";
    } catch (_) {
      el.note.textContent = "Copy failed: select the text and copy it by hand.";
    }
  });

  el.download.addEventListener("click", () => {
    const text = transcriptText();
    if (!text) return;
    const url = URL.createObjectURL(new Blob([`${text}\n`], { type: "text/plain" }));
    const anchor = document.createElement("a");
    anchor.href = url;
    anchor.download = "live-captions.txt";
    document.body.append(anchor);
    anchor.click();
    anchor.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  });
})();

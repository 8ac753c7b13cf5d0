// The duplex browser client: talks to /v1/realtime with the OpenAI Realtime
// API like any other client, plus duplex's extensions (avatar frames, camera
// frames, latency waterfalls, backchannels).
"use strict";

const $ = (id) => document.getElementById(id);

// Counters the end-to-end tests read (window.duplexStats).
const stats = {
  connected: false,
  sessionId: null,
  micChunksSent: 0,
  audioBytesReceived: 0,
  audioDeltas: 0,
  avatarFramesDrawn: 0,
  userTranscripts: [],
  assistantTranscripts: [],
  waterfalls: [],
  flushes: [],
  truncations: [],
  errors: [],
  events: {},
};
window.duplexStats = stats;

let ws = null;
let audio = null; // {ctx, mic, player, stream, source}
let camera = null; // {stream, timer}
let muted = false;
let talking = false; // push-to-talk button held
let positions = {}; // item id -> ms played
let playingItem = null; // assistant item whose audio is queued
let paused = false;
const avatarQueue = []; // frames waiting for their audio to play
const items = new Map(); // item id -> <li>

function showError(message) {
  const el = $("error");
  el.textContent = message;
  el.hidden = false;
  stats.errors.push(message);
}

function clearError() {
  $("error").hidden = true;
}

function setStatus(text) {
  $("status").textContent = text;
}

function send(event) {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(event));
}

function toBase64(buffer) {
  const bytes = new Uint8Array(buffer);
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(s);
}

function fromBase64(b64) {
  const s = atob(b64);
  const bytes = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) bytes[i] = s.charCodeAt(i);
  return bytes.buffer;
}

// ---- transcript -----------------------------------------------------------

function line(itemId, role) {
  let li = items.get(itemId);
  if (!li) {
    li = document.createElement("li");
    li.className = role;
    li.dataset.item = itemId;
    li.appendChild(document.createElement("span"));
    $("transcript").appendChild(li);
    items.set(itemId, li);
  }
  return li;
}

function setText(li, text, partial) {
  li.firstChild.textContent = text;
  li.classList.toggle("partial", !!partial);
  $("transcript").scrollTop = $("transcript").scrollHeight;
}

// ---- audio ----------------------------------------------------------------

async function startAudio() {
  const deviceId = $("mic").value;
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      audio: {
        deviceId: deviceId ? { exact: deviceId } : undefined,
        echoCancellation: true,
        noiseSuppression: true,
        autoGainControl: true,
      },
    });
  } catch (e) {
    throw new Error(`microphone permission denied or no microphone (${e.name})`);
  }
  const ctx = new AudioContext();
  await ctx.audioWorklet.addModule("/mic-worklet.js");
  const source = ctx.createMediaStreamSource(stream);
  const mic = new AudioWorkletNode(ctx, "mic-capture");
  const player = new AudioWorkletNode(ctx, "player", { outputChannelCount: [1] });
  source.connect(mic);
  player.connect(ctx.destination);
  mic.port.onmessage = (e) => onMicChunk(e.data);
  player.port.onmessage = (e) => onPlayerReport(e.data);
  if (ctx.state === "suspended") await ctx.resume();
  audio = { ctx, mic, player, stream, source };
  await listDevices();
}

function stopAudio() {
  if (!audio) return;
  audio.stream.getTracks().forEach((t) => t.stop());
  audio.ctx.close();
  audio = null;
}

function onMicChunk(buffer) {
  const pcm = new Int16Array(buffer);
  let sum = 0;
  for (let i = 0; i < pcm.length; i++) sum += (pcm[i] / 32768) ** 2;
  const rms = Math.sqrt(sum / pcm.length);
  $("level").style.width = `${Math.min(100, rms * 400)}%`;
  const ptt = $("ptt-mode").checked;
  if (muted || (ptt && !talking)) return;
  send({ type: "input_audio_buffer.append", audio: toBase64(buffer) });
  stats.micChunksSent++;
}

function onPlayerReport(report) {
  positions = report.positions;
  drawDueAvatarFrames();
}

function play(itemId, b64) {
  if (!audio) return;
  const pcm = fromBase64(b64);
  stats.audioBytesReceived += pcm.byteLength;
  stats.audioDeltas++;
  playingItem = itemId;
  audio.player.port.postMessage({ type: "audio", itemId, pcm }, [pcm]);
}

/// Barge-in: empty the player at once and tell the server what was heard.
function flushPlayback(reason) {
  if (!audio || !playingItem) return;
  const itemId = playingItem;
  audio.player.port.postMessage({ type: "flush" });
  const heardMs = positions[itemId] || 0;
  stats.flushes.push({ itemId, heardMs, reason, at: performance.now() });
  send({ type: "conversation.item.truncate", item_id: itemId, content_index: 0, audio_end_ms: heardMs });
  stats.truncations.push({ itemId, heardMs });
  playingItem = null;
  avatarQueue.length = 0;
}

async function listDevices() {
  const select = $("mic");
  const chosen = select.value;
  const devices = await navigator.mediaDevices.enumerateDevices();
  select.innerHTML = '<option value="">default</option>';
  for (const d of devices.filter((d) => d.kind === "audioinput")) {
    const o = document.createElement("option");
    o.value = d.deviceId;
    o.textContent = d.label || `microphone ${select.length}`;
    select.appendChild(o);
  }
  select.value = chosen;
}

// ---- avatar ---------------------------------------------------------------

function drawFrame(b64) {
  const img = new Image();
  img.onload = () => {
    const c = $("avatar");
    c.getContext("2d").drawImage(img, 0, 0, c.width, c.height);
    stats.avatarFramesDrawn++;
  };
  img.src = `data:image/jpeg;base64,${b64}`;
}

function drawDueAvatarFrames() {
  while (avatarQueue.length) {
    const f = avatarQueue[0];
    const played = positions[f.item_id];
    if (played === undefined || played < f.offset_ms) break;
    avatarQueue.shift();
    drawFrame(f.image);
  }
}

function onAvatarFrame(e) {
  if (e.item_id && e.state === "speaking") {
    avatarQueue.push(e); // drawn when its audio plays
    drawDueAvatarFrames();
  } else {
    drawFrame(e.image);
  }
}

// ---- camera ---------------------------------------------------------------

async function setCamera(on) {
  if (!on) {
    if (camera) {
      clearInterval(camera.timer);
      camera.stream.getTracks().forEach((t) => t.stop());
      camera = null;
    }
    $("preview").hidden = true;
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 } });
  } catch (e) {
    $("camera").checked = false;
    showError(`camera permission denied or no camera (${e.name})`);
    return;
  }
  const video = $("preview");
  video.srcObject = stream;
  video.hidden = false;
  const canvas = document.createElement("canvas");
  canvas.width = 320;
  canvas.height = 240;
  const timer = setInterval(() => {
    if (!video.videoWidth) return;
    canvas.getContext("2d").drawImage(video, 0, 0, canvas.width, canvas.height);
    canvas.toBlob(async (blob) => {
      if (!blob) return;
      const b64 = toBase64(await blob.arrayBuffer());
      send({ type: "duplex.input_video.append", image: b64, format: "jpeg" });
    }, "image/jpeg", 0.7);
  }, 1000);
  camera = { stream, timer };
}

// ---- latency --------------------------------------------------------------

function showWaterfall(e) {
  const stages = e.since_speech_end || {};
  stats.waterfalls.push(stages);
  const total = Math.max(1, ...Object.values(stages));
  const li = document.createElement("li");
  const label = document.createElement("span");
  label.textContent = `${stages.first_audio_out_ms ?? total} ms`;
  const bars = document.createElement("div");
  bars.className = "bars";
  let previous = 0;
  for (const [name, ms] of Object.entries(stages).sort((a, b) => a[1] - b[1])) {
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.dataset.stage = name.replace(/_ms$/, "");
    bar.style.left = `${(previous / total) * 100}%`;
    bar.style.width = `${Math.max(1, ((ms - previous) / total) * 100)}%`;
    bar.title = `${name.replace(/_ms$/, "").replaceAll("_", " ")}: ${ms} ms`;
    bars.appendChild(bar);
    previous = ms;
  }
  li.append(label, bars);
  $("waterfall").prepend(li);
}

// ---- events ---------------------------------------------------------------

function onEvent(e) {
  stats.events[e.type] = (stats.events[e.type] || 0) + 1;
  switch (e.type) {
    case "session.created":
      stats.connected = true;
      stats.sessionId = e.session && e.session.id;
      setStatus("listening");
      break;
    case "input_audio_buffer.speech_started":
      setStatus("hearing you");
      if (playingItem && audio) {
        audio.player.port.postMessage({ type: "pause" });
        paused = true;
        stats.pauses = (stats.pauses || 0) + 1;
      }
      line(e.item_id, "user");
      break;
    case "input_audio_buffer.speech_stopped":
      setStatus("thinking");
      break;
    case "conversation.item.input_audio_transcription.delta": {
      const li = line(e.item_id, "user");
      setText(li, (li.firstChild.textContent || "") + e.delta, true);
      break;
    }
    case "conversation.item.input_audio_transcription.completed":
      setText(line(e.item_id, "user"), e.transcript, false);
      stats.userTranscripts.push(e.transcript);
      break;
    case "response.output_audio_transcript.delta":
    case "response.output_text.delta": {
      const li = line(e.item_id, "assistant");
      setText(li, (li.firstChild.textContent || "") + e.delta, false);
      break;
    }
    case "response.output_audio.delta":
      setStatus("speaking");
      play(e.item_id, e.delta);
      break;
    case "response.done": {
      const r = e.response || {};
      const item = (r.output || [])[0];
      if (r.status === "cancelled" && item) {
        const li = line(item.id, "assistant");
        const heard = ((item.content || [])[0] || {}).transcript || "";
        setText(li, heard, false);
        const cut = document.createElement("span");
        cut.className = "cut";
        cut.textContent = "(interrupted)";
        li.appendChild(cut);
        flushPlayback("barge-in");
      } else if (item) {
        const text = ((item.content || [])[0] || {}).transcript;
        if (text) stats.assistantTranscripts.push(text);
      }
      setStatus("listening");
      break;
    }
    case "duplex.backchannel":
      // Only a "mhm": go on where we stopped.
      if (paused && audio) audio.player.port.postMessage({ type: "resume" });
      paused = false;
      break;
    case "duplex.avatar.frame":
      onAvatarFrame(e);
      break;
    case "duplex.turn.latency":
      showWaterfall(e);
      break;
    case "error":
      showError(`server: ${(e.error && e.error.message) || "error"}`);
      break;
  }
}

// ---- connection -----------------------------------------------------------

async function connect() {
  clearError();
  const key = $("key").value.trim();
  localStorage.setItem("duplex.key", key);
  try {
    await startAudio();
  } catch (e) {
    showError(e.message);
    return;
  }
  const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/v1/realtime?model=duplex`;
  const protocols = ["realtime"];
  if (key) protocols.push(`openai-insecure-api-key.${key}`);
  let opened = false;
  ws = new WebSocket(url, protocols);
  ws.onopen = () => {
    opened = true;
    $("connect").textContent = "Disconnect";
    $("connect").classList.add("on");
    $("mute").disabled = false;
    $("talk").disabled = !$("ptt-mode").checked;
    configureTurns();
  };
  ws.onmessage = (m) => {
    try {
      onEvent(JSON.parse(m.data));
    } catch (err) {
      showError(`bad event from the server: ${err.message}`);
    }
  };
  ws.onclose = (c) => {
    if (!opened) {
      showError("could not connect: the server is unreachable, or it refused the API key");
    } else if (c.code !== 1000) {
      showError(`the server closed the session (${c.code}${c.reason ? `: ${c.reason}` : ""})`);
    }
    disconnect();
  };
}

function disconnect() {
  if (ws) {
    ws.onclose = null;
    ws.close(1000);
    ws = null;
  }
  stopAudio();
  setCamera(false);
  $("camera").checked = false;
  stats.connected = false;
  $("connect").textContent = "Connect";
  $("connect").classList.remove("on");
  $("mute").disabled = true;
  $("talk").disabled = true;
  setStatus("disconnected");
}

function configureTurns() {
  const ptt = $("ptt-mode").checked;
  send({
    type: "session.update",
    session: {
      type: "realtime",
      audio: {
        input: {
          turn_detection: ptt
            ? null
            : { type: "server_vad", threshold: 0.5, prefix_padding_ms: 300, silence_duration_ms: 500 },
        },
      },
    },
  });
  $("talk").disabled = !ptt || !ws;
}

$("connect").onclick = () => (ws ? disconnect() : connect());
$("mute").onclick = () => {
  muted = !muted;
  $("mute").classList.toggle("on", muted);
  $("mute").textContent = muted ? "Unmute" : "Mute";
  if (audio) audio.mic.port.postMessage({ type: "mute", muted });
};
$("ptt-mode").onchange = configureTurns;
const pressTalk = () => {
  if (!ws) return;
  talking = true;
  $("talk").classList.add("on");
  flushPlayback("push-to-talk");
};
const releaseTalk = () => {
  if (!talking) return;
  talking = false;
  $("talk").classList.remove("on");
  send({ type: "input_audio_buffer.commit" });
  send({ type: "response.create" });
};
$("talk").addEventListener("pointerdown", pressTalk);
$("talk").addEventListener("pointerup", releaseTalk);
$("talk").addEventListener("pointerleave", releaseTalk);
$("camera").onchange = (e) => setCamera(e.target.checked);
$("key").value = localStorage.getItem("duplex.key") || "";

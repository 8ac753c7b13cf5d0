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
  // What the player worklet last reported: ms played (all items), ms
  // buffered, the RMS of what it played, and whether it is held.
  player: { playedMs: 0, bufferedMs: 0, playedRms: 0, paused: false, positions: {} },
  // Speech onsets heard in the microphone, on the page's clocks:
  // {ctxTime (s, AudioContext clock), detectedCtx (when the detector was
  // sure), at (performance.now() ms of ctxTime)}.
  onsets: [],
  // Each time the user talked over the answer: when their speech began
  // (onsetCtx), when the player fell silent (stopCtx), stopMs between the
  // two (negative when the server's VAD held the audio before the page's
  // own onset detector fired), when the server's speech_started arrived,
  // and the outcome (cancelled and flushed, or resumed).
  bargeIns: [],
  // The audio clock (s) when each answer's audio began to play.
  soundStartCtx: {},
};
window.duplexStats = stats;

let ws = null;
let audio = null; // {ctx, mic, player, stream, source}
let camera = null; // {stream, timer}
let muted = false;
let talking = false; // push-to-talk button held
let positions = {}; // item id -> ms played
let playingItem = null; // assistant item whose audio is queued
let paused = false; // the player is held (a possible barge-in)
let bargeIn = null; // the open stats.bargeIns entry
let gateTimer = null; // releases a hold the server did not confirm
let videoErrors = 0;
let truncateOnFlush = null; // {itemId, flush}: sent when the player confirms
const finishedItems = new Set(); // answers the server has played out (response.done)
// A hold of the player by a speech onset is released if the server's VAD has
// not heard speech by then (a cough, a door).
const GATE_CONFIRM_MS = 1000;
// Which speech onset stopped the answer: one at most this long before the
// stop, or (when the server's VAD was first) this long after it.
const ONSET_BEFORE_STOP_S = 1.5;
const ONSET_AFTER_STOP_S = 0.5;
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
    const why =
      e.name === "NotAllowedError"
        ? "microphone permission denied: allow the microphone for this page"
        : e.name === "NotFoundError" || e.name === "OverconstrainedError"
          ? "no microphone found"
          : e.name === "NotReadableError"
            ? "the microphone is in use by another program"
            : `cannot open the microphone (${e.name}: ${e.message})`;
    const err = new Error(why);
    err.microphone = true;
    throw err;
  }
  const ctx = new AudioContext();
  try {
    await ctx.audioWorklet.addModule("/mic-worklet.js");
  } catch (e) {
    stream.getTracks().forEach((t) => t.stop());
    ctx.close();
    throw e;
  }
  const source = ctx.createMediaStreamSource(stream);
  const mic = new AudioWorkletNode(ctx, "mic-capture");
  const player = new AudioWorkletNode(ctx, "player", { outputChannelCount: [1] });
  source.connect(mic);
  player.connect(ctx.destination);
  mic.port.onmessage = (e) => onMicMessage(e.data);
  player.port.onmessage = (e) => onPlayerReport(e.data);
  if (ctx.state === "suspended") await ctx.resume();
  audio = { ctx, mic, player, stream, source };
  mic.port.postMessage({ type: "gate", on: !$("ptt-mode").checked });
  await listDevices();
}

function stopAudio() {
  if (!audio) return;
  audio.stream.getTracks().forEach((t) => t.stop());
  audio.ctx.close();
  audio = null;
}

// performance.now() of an AudioContext time, from the context's own mapping.
function ctxToPerf(ctxTime) {
  if (!audio) return null;
  const ts = audio.ctx.getOutputTimestamp();
  return ts.performanceTime + (ctxTime - ts.contextTime) * 1000;
}

function onMicMessage(m) {
  if (m instanceof ArrayBuffer) onMicChunk(m);
  else if (m.type === "onset") {
    stats.onsets.push({ ctxTime: m.time, detectedCtx: m.detectedAt, at: ctxToPerf(m.time) });
    if (stats.onsets.length > 50) stats.onsets.shift();
    // The server's VAD can hear speech before this detector does: a hold
    // that came first takes the onset that follows it closely.
    if (bargeIn && bargeIn.onsetCtx === null && m.time - (bargeIn.stopCtx ?? m.time) <= ONSET_AFTER_STOP_S) {
      setOnset(bargeIn, m.time);
    }
  }
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

function onPlayerReport(m) {
  if (m.type === "sound") {
    stats.soundStartCtx[m.itemId] = m.time;
    return;
  }
  if (m.type === "gated") {
    // A speech onset held the answer's audio, in the worklet itself.
    openBargeIn(m.onset);
    bargeIn.gatedCtx = m.time;
    paused = true;
    clearTimeout(gateTimer);
    gateTimer = setTimeout(() => {
      if (bargeIn && !bargeIn.speechStartedAt && paused) resumePlayback("no speech heard by the server");
    }, GATE_CONFIRM_MS);
    return;
  }
  if (m.type === "stopped") {
    if (!bargeIn && (m.cause === "pause" || m.cause === "gate")) openBargeIn(lastOnsetBefore(m.time));
    if (bargeIn && bargeIn.stopCtx === undefined) {
      bargeIn.stopCtx = m.time;
      bargeIn.stopAt = ctxToPerf(m.time);
      bargeIn.stopCause = m.cause;
      bargeIn.playedMsAtStop = m.positions[bargeIn.itemId] || 0;
      setOnset(bargeIn, bargeIn.onsetCtx);
    }
    return;
  }
  positions = m.positions;
  if (m.flushed && truncateOnFlush) {
    // The player's own count at the flush: exactly what the person heard.
    const { itemId, flush } = truncateOnFlush;
    truncateOnFlush = null;
    const heardMs = positions[itemId] || 0;
    send({ type: "conversation.item.truncate", item_id: itemId, content_index: 0, audio_end_ms: heardMs });
    stats.truncations.push({ itemId, heardMs });
    flush.heardMs = heardMs;
  }
  stats.player = {
    playedMs: m.playedMs,
    bufferedMs: m.bufferedMs,
    playedRms: m.playedRms,
    paused: m.paused,
    positions: m.positions,
  };
  drawDueAvatarFrames();
}

/// The onset of the speech that stopped the answer at `ctxTime`: the latest
/// one shortly before it, if any.
function lastOnsetBefore(ctxTime) {
  const before = stats.onsets.filter((o) => o.ctxTime <= ctxTime && o.ctxTime >= ctxTime - ONSET_BEFORE_STOP_S);
  return before.length ? before[before.length - 1].ctxTime : null;
}

function setOnset(b, onsetCtx) {
  b.onsetCtx = onsetCtx;
  b.onsetAt = onsetCtx === null ? null : ctxToPerf(onsetCtx);
  if (onsetCtx !== null && b.stopCtx !== undefined) b.stopMs = Math.round((b.stopCtx - onsetCtx) * 10000) / 10;
  if (b.onsetAt !== null && b.speechStartedAt) b.speechStartedAfterOnsetMs = Math.round(b.speechStartedAt - b.onsetAt);
}

function openBargeIn(onsetCtx) {
  if (bargeIn) return bargeIn;
  bargeIn = { itemId: playingItem };
  setOnset(bargeIn, onsetCtx);
  stats.bargeIns.push(bargeIn);
  return bargeIn;
}

function closeBargeIn(outcome) {
  if (!bargeIn) return;
  bargeIn.outcome = outcome;
  bargeIn.closedAt = performance.now();
  bargeIn = null;
  clearTimeout(gateTimer);
}

/// The player is busy with the answer: audio queued, or held.
function playerBusy() {
  return !!playingItem && (stats.player.bufferedMs > 0 || paused || stats.player.paused);
}

function pausePlayback() {
  if (!audio) return;
  audio.player.port.postMessage({ type: "pause" });
  paused = true;
  stats.pauses = (stats.pauses || 0) + 1;
}

function resumePlayback(why) {
  if (audio) audio.player.port.postMessage({ type: "resume" });
  paused = false;
  if (bargeIn) bargeIn.resumedBecause = why;
  closeBargeIn("resumed");
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
  const busy = playerBusy();
  audio.player.port.postMessage({ type: "flush" });
  paused = false;
  const flush = { itemId, reason, at: performance.now() };
  stats.flushes.push(flush);
  // Only what was really played stays in the conversation: the truncate
  // goes out when the player reports its position at the flush.
  if (busy) truncateOnFlush = { itemId, flush };
  if (bargeIn) bargeIn.flushedAt = flush.at;
  closeBargeIn(reason);
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
    $("sees").hidden = true;
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
      stats.videoFramesSent = (stats.videoFramesSent || 0) + 1;
      send({ type: "duplex.input_video.append", event_id: `video_${stats.videoFramesSent}`, image: b64, format: "jpeg" });
    }, "image/jpeg", 0.7);
  }, 1000);
  camera = { stream, timer };
}

// ---- latency --------------------------------------------------------------

// Every turn's bars share one time scale, so turns compare at a glance.
function showWaterfall(e) {
  const stages = e.since_speech_end || {};
  stats.waterfalls.push(stages);
  const shown = stats.waterfalls.slice(-8).reverse(); // newest first
  const scale = Math.max(1, ...shown.flatMap((s) => Object.values(s)));
  const list = $("waterfall");
  list.replaceChildren();
  for (const turn of shown) {
    const total = Math.max(0, ...Object.values(turn));
    const li = document.createElement("li");
    const label = document.createElement("span");
    label.textContent = `${turn.first_audio_out_ms ?? total} ms`;
    const bars = document.createElement("div");
    bars.className = "bars";
    let previous = 0;
    for (const [name, ms] of Object.entries(turn).sort((a, b) => a[1] - b[1])) {
      const bar = document.createElement("div");
      bar.className = "bar";
      bar.dataset.stage = name.replace(/_ms$/, "");
      bar.style.left = `${(previous / scale) * 100}%`;
      bar.style.width = `max(2px, ${((ms - previous) / scale) * 100}%)`;
      bar.title = `${name.replace(/_ms$/, "").replaceAll("_", " ")}: ${ms} ms (+${ms - previous})`;
      bars.appendChild(bar);
      previous = ms;
    }
    li.append(label, bars);
    list.appendChild(li);
  }
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
      if (playerBusy()) {
        // The user talks over the answer: hold it (if the onset gate has not
        // already) until the server decides: cancel, or only a "mhm".
        if (!paused) pausePlayback();
        const b = openBargeIn(lastOnsetBefore(audio ? audio.ctx.currentTime : 0));
        b.speechStartedAt = performance.now();
        setOnset(b, b.onsetCtx);
        clearTimeout(gateTimer);
        // Over the last words the server has already played out: it will
        // not cancel them, the user simply has the turn.
        if (finishedItems.has(playingItem)) flushPlayback("spoke over the end");
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
      if (!(e.transcript || "").trim()) {
        // Not words after all (a cough): no empty bubble.
        const li = items.get(e.item_id);
        if (li) li.remove();
        items.delete(e.item_id);
        break;
      }
      setText(line(e.item_id, "user"), e.transcript, false);
      stats.userTranscripts.push(e.transcript);
      break;
    case "response.output_audio_transcript.delta":
    case "response.output_text.delta": {
      const li = line(e.item_id, "assistant");
      setText(li, (li.firstChild.textContent || "") + e.delta, false);
      break;
    }
    case "response.created":
      // A new answer: anything still held of an earlier one is over.
      if (paused) flushPlayback("new response");
      break;
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
        if (bargeIn) {
          bargeIn.textBeforeCut = li.firstChild.textContent;
          bargeIn.textAfterCut = heard;
        }
        setText(li, heard, false);
        const cut = document.createElement("span");
        cut.className = "cut";
        cut.textContent = "(interrupted)";
        li.appendChild(cut);
        if (bargeIn) bargeIn.cancelled = true;
        flushPlayback("barge-in");
      } else if (item) {
        finishedItems.add(item.id);
        const text = ((item.content || [])[0] || {}).transcript;
        if (text) stats.assistantTranscripts.push(text);
        // The user spoke over the last words (too late to cancel them): they
        // have the turn now.
        if (paused) flushPlayback("spoke over the end");
      }
      setStatus("listening");
      break;
    }
    case "duplex.backchannel":
      // Only a "mhm": go on where we stopped.
      if (paused) resumePlayback("backchannel");
      break;
    case "duplex.avatar.frame":
      onAvatarFrame(e);
      break;
    case "duplex.turn.latency":
      showWaterfall(e);
      break;
    case "duplex.vision.frame":
      // What the agent makes of the camera (a pipeline with a vision node).
      stats.visionFrames = (stats.visionFrames || 0) + 1;
      stats.lastScene = e.scene;
      $("sees").textContent = e.scene ? `sees: ${e.scene}` : "";
      $("sees").hidden = !e.scene || !camera;
      break;
    case "error": {
      const err = e.error || {};
      if (String(err.event_id || "").startsWith("video_")) {
        // This server does not take camera frames: stop sending them.
        if (videoErrors++ === 0) {
          setCamera(false);
          $("camera").checked = false;
          showError("this server does not take camera frames; the camera is off");
        }
        break;
      }
      showError(`server: ${err.message || "error"}`);
      break;
    }
  }
}

// ---- connection -----------------------------------------------------------

let connecting = false;

async function connect() {
  if (connecting) return;
  clearError();
  const key = $("key").value.trim();
  localStorage.setItem("duplex.key", key);
  connecting = true;
  setStatus("connecting");
  try {
    await startAudio();
  } catch (e) {
    setStatus("disconnected");
    if (e.microphone) showError(e.message);
    else if (!(await serverIsUp())) showError(`cannot reach the server at ${location.host}: is duplex serve running?`);
    else showError(`cannot start audio: ${e.message}`);
    return;
  } finally {
    connecting = false;
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
  ws.onclose = async (c) => {
    disconnect();
    const up = await serverIsUp();
    if (!opened) {
      if (!up) showError(`cannot reach the server at ${location.host}: is duplex serve running?`);
      else if (key) showError("the server refused the connection: the API key is wrong (or the server is full)");
      else showError("the server refused the connection: it needs an API key (enter it above)");
    } else if (c.code !== 1000) {
      const why = c.reason ? `: ${c.reason}` : "";
      if (!up) showError(`lost the connection: the server at ${location.host} is down (${c.code}${why})`);
      else showError(`the server closed the session (${c.code}${why})`);
    }
  };
}

/// Whether the server answers at all (to tell "down" from "refused").
async function serverIsUp() {
  try {
    const r = await fetch("/healthz", { cache: "no-store", signal: AbortSignal.timeout(3000) });
    return r.ok;
  } catch {
    return false;
  }
}

function disconnect() {
  clearTimeout(gateTimer);
  bargeIn = null;
  paused = false;
  playingItem = null;
  truncateOnFlush = null;
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
  // In push-to-talk mode the button, not the voice, takes the turn.
  if (audio) audio.mic.port.postMessage({ type: "gate", on: !ptt });
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

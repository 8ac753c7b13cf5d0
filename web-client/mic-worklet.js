// Audio worklets of the duplex browser client.
//
// "mic-capture": takes the microphone at the context's rate, resamples to
// 24 kHz mono with linear interpolation, and posts Int16 chunks of 20 ms. It
// also finds the onsets of speech by energy and stamps them with the audio
// clock: after 300 ms of quiet, two 10 ms frames over the trigger level
// (-50 dBFS, or 12 dB over the tracked noise floor) start speech, and the
// onset is where that loud run began (frames over half the trigger level,
// going back), so a soft first sound counts from its start.
// "player": a jitter buffer for the agent's 24 kHz speech; resamples to the
// context's rate, plays it, reports the played position of each item, holds
// still on "pause" (the user may be barging in), and empties at once on
// "flush" (they did).
//
// Barge-in gate: both processors run in the one AudioWorkletGlobalScope of
// the page's AudioContext, so a speech onset in the microphone holds the
// player still in the same render quantum, without waiting for the server's
// VAD (its speech_started comes tens of ms later, more on a busy server or
// network). The player reports the hold; the page
// releases it if the server does not hear speech (`resume`), or empties the
// player when the server cancels the answer (`flush`).

const TARGET_RATE = 24000;
const CHUNK = 480; // 20 ms at 24 kHz
const FRAME = 240; // 10 ms at 24 kHz: the onset detector's frame

// Shared by the two processors (one global scope per AudioContext).
const shared = {
  gate: true, // a speech onset holds the player (voice activity mode)
  onset: null, // {time} of the latest onset, while not yet taken by the player
};

class MicCapture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.ratio = sampleRate / TARGET_RATE;
    this.pos = 0; // fractional read position into `pending`
    this.pending = [];
    this.out = new Int16Array(CHUNK);
    this.filled = 0;
    this.muted = false;
    // Onset detection on 10 ms frames of the 24 kHz signal.
    this.frameSum = 0;
    this.frameN = 0;
    this.floor = 0.001; // noise floor (RMS), tracked while quiet
    this.quietMs = 0; // quiet time before the current loud run
    this.loudFrames = 0;
    this.recent = []; // [{rms, time}] of the last 0.5 s of frames, newest last
    this.port.onmessage = (e) => {
      const m = e.data || {};
      if (m.type === "mute") this.muted = !!m.muted;
      if (m.type === "gate") shared.gate = !!m.on;
    };
  }

  frameDone(rms, time) {
    const trigger = Math.max(0.003, this.floor * 4);
    this.recent.push({ rms, time });
    if (this.recent.length > 50) this.recent.shift();
    if (rms < trigger) {
      // Quiet: follow the noise floor (quickly down, slowly up).
      this.floor = rms < this.floor ? rms : this.floor * 0.98 + rms * 0.02;
      this.quietMs += 10;
      this.loudFrames = 0;
      return;
    }
    this.loudFrames++;
    if (this.loudFrames === 2 && this.quietMs >= 300) {
      // Speech. Where did it begin? Back over the frames above half the
      // trigger level (at most 0.5 s).
      let start = this.recent.length - 2;
      while (start > 0 && this.recent[start - 1].rms >= trigger / 2) start--;
      const at = this.recent[start].time - FRAME / TARGET_RATE;
      if (!this.muted) shared.onset = { time: at };
      this.port.postMessage({ type: "onset", time: at, detectedAt: time, rms });
    }
    if (this.loudFrames >= 2) this.quietMs = 0;
  }

  process(inputs) {
    const input = inputs[0];
    if (!input || input.length === 0) return true;
    const mono = input[0];
    for (let i = 0; i < mono.length; i++) this.pending.push(mono[i]);
    // Linear interpolation down (or up) to 24 kHz.
    // pending[k] is the input sample of time currentTime + (k - base) / sampleRate.
    const base = this.pending.length - mono.length;
    while (this.pos + 1 < this.pending.length) {
      const i = Math.floor(this.pos);
      const frac = this.pos - i;
      const s = this.pending[i] * (1 - frac) + this.pending[i + 1] * frac;
      const v = this.muted ? 0 : Math.max(-1, Math.min(1, s));
      this.out[this.filled++] = v < 0 ? v * 32768 : v * 32767;
      if (this.filled === CHUNK) {
        this.port.postMessage(this.out.buffer.slice(0));
        this.filled = 0;
      }
      this.frameSum += v * v;
      if (++this.frameN === FRAME) {
        // The audio clock at the end of this frame.
        const time = currentTime + (this.pos - base) / sampleRate;
        this.frameDone(Math.sqrt(this.frameSum / FRAME), time);
        this.frameSum = 0;
        this.frameN = 0;
      }
      this.pos += this.ratio;
    }
    const used = Math.floor(this.pos);
    this.pending.splice(0, used);
    this.pos -= used;
    return true;
  }
}

class Player extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = TARGET_RATE / sampleRate; // source samples per output sample
    this.queue = []; // [{itemId, samples: Float32Array}]
    this.pos = 0; // fractional position in the head chunk
    this.played = new Map(); // itemId -> source samples played
    this.playedTotal = 0; // source samples played, all items
    this.energy = 0; // sum of squares of what was played
    this.reportEvery = Math.round(sampleRate / 50); // ~20 ms
    this.sinceReport = 0;
    this.paused = false;
    this.sounding = false; // the last quantum played audio
    this.stopCause = null; // why the next quantum will be silent
    this.port.onmessage = (e) => {
      const m = e.data;
      if (m.type === "pause") {
        if (!this.paused && this.sounding) this.stopCause = "pause";
        this.paused = true;
      } else if (m.type === "resume") {
        this.paused = false;
        this.stopCause = null;
      } else if (m.type === "audio") {
        const pcm = new Int16Array(m.pcm);
        const f = new Float32Array(pcm.length);
        for (let i = 0; i < pcm.length; i++) f[i] = pcm[i] / 32768;
        this.queue.push({ itemId: m.itemId, samples: f });
      } else if (m.type === "flush") {
        const dropped = this.queue.reduce((n, c) => n + c.samples.length, 0);
        if (!this.paused && this.sounding) this.stopCause = "flush";
        this.queue = [];
        this.pos = 0;
        this.paused = false;
        this.report(true, dropped);
      }
    };
  }

  buffered() {
    return this.queue.reduce((n, c) => n + c.samples.length, 0) - Math.floor(this.pos);
  }

  positions() {
    const positions = {};
    for (const [id, n] of this.played) positions[id] = Math.round((n * 1000) / TARGET_RATE);
    return positions;
  }

  report(flushed, dropped) {
    const positions = this.positions();
    this.port.postMessage({
      type: "position",
      positions,
      playedMs: Math.round((this.playedTotal * 1000) / TARGET_RATE),
      playedRms: this.playedTotal ? Math.sqrt(this.energy / this.playedTotal) : 0,
      bufferedMs: Math.round((Math.max(0, this.buffered()) * 1000) / TARGET_RATE),
      paused: this.paused,
      flushed: !!flushed,
      droppedMs: Math.round(((dropped || 0) * 1000) / TARGET_RATE),
      time: currentTime,
    });
  }

  process(_inputs, outputs) {
    // A speech onset in the microphone holds the audio at once.
    if (shared.onset) {
      const onset = shared.onset;
      shared.onset = null;
      if (shared.gate && !this.paused && (this.sounding || this.queue.length > 0)) {
        this.paused = true;
        this.stopCause = "gate";
        this.port.postMessage({ type: "gated", onset: onset.time, time: currentTime });
      }
    }
    const out = outputs[0][0];
    let sounded = false;
    for (let i = 0; i < out.length; i++) {
      const head = this.paused ? null : this.queue[0];
      if (!head) {
        out[i] = 0;
        continue;
      }
      if (!this.played.has(head.itemId)) {
        this.played.set(head.itemId, 0);
        this.port.postMessage({ type: "sound", itemId: head.itemId, time: currentTime + i / sampleRate });
      }
      sounded = true;
      const j = Math.floor(this.pos);
      const frac = this.pos - j;
      const a = head.samples[j];
      const b = j + 1 < head.samples.length ? head.samples[j + 1] : a;
      const s = a * (1 - frac) + b * frac;
      out[i] = s;
      this.pos += this.step;
      const whole = Math.floor(this.pos);
      if (whole > j) {
        const n = whole - j;
        this.played.set(head.itemId, (this.played.get(head.itemId) || 0) + n);
        this.playedTotal += n;
        this.energy += s * s * n;
      }
      if (this.pos >= head.samples.length) {
        this.pos -= head.samples.length;
        this.queue.shift();
      }
    }
    if (this.sounding && !sounded && this.stopCause) {
      // The first silent quantum after a pause, gate or flush: the audio
      // stopped at this quantum's start.
      this.port.postMessage({ type: "stopped", cause: this.stopCause, time: currentTime, positions: this.positions() });
      this.stopCause = null;
    }
    this.sounding = sounded;
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);
    this.sinceReport += out.length;
    if (this.sinceReport >= this.reportEvery) {
      this.sinceReport = 0;
      this.report(false, 0);
    }
    return true;
  }
}

registerProcessor("mic-capture", MicCapture);
registerProcessor("player", Player);

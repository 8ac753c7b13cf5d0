// Audio worklets of the duplex browser client.
//
// "mic-capture": takes the microphone at the context's rate, resamples to
// 24 kHz mono with linear interpolation, and posts Int16 chunks of 20 ms.
// "player": a jitter buffer for the agent's 24 kHz speech; resamples to the
// context's rate, plays it, reports the played position of each item, holds
// still on "pause" (the user may be barging in), and empties at once on
// "flush" (they did).

const TARGET_RATE = 24000;
const CHUNK = 480; // 20 ms at 24 kHz

class MicCapture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.ratio = sampleRate / TARGET_RATE;
    this.pos = 0; // fractional read position into `pending`
    this.pending = [];
    this.out = new Int16Array(CHUNK);
    this.filled = 0;
    this.muted = false;
    this.port.onmessage = (e) => {
      if (e.data && e.data.type === "mute") this.muted = !!e.data.muted;
    };
  }

  process(inputs) {
    const input = inputs[0];
    if (!input || input.length === 0) return true;
    const mono = input[0];
    for (let i = 0; i < mono.length; i++) this.pending.push(mono[i]);
    // Linear interpolation down (or up) to 24 kHz.
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
    this.queue = []; // [{itemId, samples: Float32Array, offset}]
    this.pos = 0; // fractional position in the head chunk
    this.played = new Map(); // itemId -> source samples played
    this.reportEvery = Math.round(sampleRate / 50); // ~20 ms
    this.sinceReport = 0;
    this.paused = false;
    this.port.onmessage = (e) => {
      const m = e.data;
      if (m.type === "pause") this.paused = true;
      if (m.type === "resume") this.paused = false;
      if (m.type === "audio") {
        const pcm = new Int16Array(m.pcm);
        const f = new Float32Array(pcm.length);
        for (let i = 0; i < pcm.length; i++) f[i] = pcm[i] / 32768;
        this.queue.push({ itemId: m.itemId, samples: f });
      } else if (m.type === "flush") {
        const dropped = this.queue.reduce((n, c) => n + c.samples.length, 0);
        this.queue = [];
        this.pos = 0;
        this.paused = false;
        this.report(true, dropped);
      }
    };
  }

  report(flushed, dropped) {
    const positions = {};
    for (const [id, n] of this.played) positions[id] = Math.round((n * 1000) / TARGET_RATE);
    const buffered = this.queue.reduce((n, c) => n + c.samples.length, 0);
    this.port.postMessage({
      type: "position",
      positions,
      bufferedMs: Math.round((buffered * 1000) / TARGET_RATE),
      flushed: !!flushed,
      droppedMs: Math.round(((dropped || 0) * 1000) / TARGET_RATE),
    });
  }

  process(_inputs, outputs) {
    const out = outputs[0][0];
    for (let i = 0; i < out.length; i++) {
      const head = this.paused ? null : this.queue[0];
      if (!head) {
        out[i] = 0;
        continue;
      }
      const j = Math.floor(this.pos);
      const frac = this.pos - j;
      const a = head.samples[j];
      const b = j + 1 < head.samples.length ? head.samples[j + 1] : a;
      out[i] = a * (1 - frac) + b * frac;
      this.pos += this.step;
      const whole = Math.floor(this.pos);
      if (whole > j) {
        this.played.set(head.itemId, (this.played.get(head.itemId) || 0) + (whole - j));
      }
      if (this.pos >= head.samples.length) {
        this.pos -= head.samples.length;
        this.queue.shift();
      }
    }
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

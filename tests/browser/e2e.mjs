// Drives duplex's web client in headless Chromium (Debian's /usr/bin/chromium)
// with playwright-core, for tests/browser.rs.
//
//   node tests/browser/e2e.mjs '<json config>'
//
// config: {scenario: "turn" | "barge-in" | "errors", url, wav, key, wrongKey,
//          screenshot, timeoutMs, chromium}
//
// The fake microphone plays `wav` (at its true speed, once). The driver only
// operates the page and reads it back; the Rust test asserts. It prints
// progress as `{"step": ...}` lines and, last, one `{"result": ...}` line on
// stdout. In the "errors" scenario it prints `{"step": "stop-server"}` and
// waits for a line on stdin (the test has stopped the server) before going on.

import { chromium } from "playwright-core";
import { createInterface } from "node:readline";

const cfg = JSON.parse(process.argv[2] || "{}");
const t0 = Date.now();
const log = (...a) => console.error(`[e2e ${((Date.now() - t0) / 1000).toFixed(1)}s]`, ...a);
const emit = (obj) => process.stdout.write(`${JSON.stringify(obj)}\n`);

const stdinLines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function waitForTest(step) {
  emit({ step });
  const { done } = await stdinLines.next();
  if (done) throw new Error(`stdin closed while waiting after step ${step}`);
}

function launchArgs(wav) {
  const args = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
  ];
  if (wav) args.push(`--use-file-for-fake-audio-capture=${wav}%noloop`);
  return args;
}

// Everything the page shows, read back for the test.
async function readPage(page) {
  return page.evaluate(() => {
    const s = window.duplexStats;
    const visible = (el) => !!el && !el.hidden && el.offsetParent !== null && el.textContent.trim() !== "";
    const errorEl = document.getElementById("error");
    const canvas = document.getElementById("avatar");
    // Distinct colours on the avatar canvas: a drawn face has many, a blank one one.
    const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
    const colours = new Set();
    for (let i = 0; i < pixels.length; i += 4 * 7) colours.add((pixels[i] << 16) | (pixels[i + 1] << 8) | pixels[i + 2]);
    return {
      stats: JSON.parse(JSON.stringify(s)),
      status: document.getElementById("status").textContent,
      error: visible(errorEl) ? errorEl.textContent : null,
      transcript: [...document.querySelectorAll("#transcript li")].map((li) => ({
        role: li.classList.contains("user") ? "user" : "assistant",
        text: (li.firstChild && li.firstChild.textContent) || "",
        partial: li.classList.contains("partial"),
        cut: li.querySelector(".cut") ? li.querySelector(".cut").textContent : null,
      })),
      waterfall: [...document.querySelectorAll("#waterfall li")].map((li) => ({
        label: li.firstChild.textContent,
        bars: [...li.querySelectorAll(".bar")].map((b) => ({
          stage: b.dataset.stage,
          widthPx: b.getBoundingClientRect().width,
          title: b.title,
        })),
      })),
      avatarColours: colours.size,
      connectLabel: document.getElementById("connect").textContent,
    };
  });
}

async function waitFor(page, what, fn, timeoutMs, arg) {
  try {
    await page.waitForFunction(fn, arg, { timeout: timeoutMs, polling: 50 });
    log(`ok: ${what}`);
    return true;
  } catch (e) {
    log(`timed out waiting for: ${what}`);
    return false;
  }
}

async function withBrowser(wav, body) {
  const browser = await chromium.launch({
    executablePath: cfg.chromium || "/usr/bin/chromium",
    headless: true,
    args: launchArgs(wav),
  });
  try {
    const context = await browser.newContext({ viewport: { width: 1100, height: 760 } });
    const page = await context.newPage();
    const consoleLines = [];
    page.on("console", (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
    page.on("pageerror", (e) => consoleLines.push(`pageerror: ${e.message}`));
    const out = await body(page);
    out.console = consoleLines;
    return out;
  } finally {
    await browser.close();
  }
}

async function connect(page, key) {
  await page.goto(cfg.url, { waitUntil: "load" });
  if (key !== undefined) await page.fill("#key", key);
  await page.click("#connect");
}

const scenarios = {
  // One voice turn: the clip is heard, answered aloud, the avatar speaks and
  // the turn's latency waterfall is drawn.
  async turn(page) {
    await connect(page, cfg.key);
    const waited = {};
    waited.connected = await waitFor(page, "session.created", () => window.duplexStats.connected, 15000);
    // The camera too (Chromium's fake device): about one JPEG a second.
    await page.check("#camera");
    waited.userFinal = await waitFor(page, "user transcript", () => window.duplexStats.userTranscripts.length > 0, cfg.timeoutMs);
    waited.responseDone = await waitFor(
      page,
      "response.done",
      () => (window.duplexStats.events["response.done"] || 0) > 0,
      cfg.timeoutMs,
    );
    // All of the answer played out (the player reports its buffer empty).
    waited.playedOut = await waitFor(
      page,
      "answer played out",
      () => window.duplexStats.player.playedMs > 0 && window.duplexStats.player.bufferedMs === 0,
      30000,
    );
    waited.waterfall = await waitFor(page, "waterfall", () => document.querySelectorAll("#waterfall .bar").length > 0, 5000);
    waited.cameraFrames = await waitFor(page, "camera frames sent", () => (window.duplexStats.videoFramesSent || 0) >= 2, 10000);
    const metrics = await page.evaluate(async () => (await fetch("/metrics")).text());
    const shown = await readPage(page);
    shown.videoFramesReceived = Number((metrics.match(/^duplex_video_frames_total (\d+)/m) || [])[1] ?? -1);
    if (cfg.screenshot) await page.screenshot({ path: cfg.screenshot, fullPage: true });
    return { waited, ...shown };
  },

  // Speech, a pause for the answer, then more speech over the answer: the
  // player stops, the answer is cut, the transcript shows it.
  async "barge-in"(page) {
    await connect(page, cfg.key);
    const waited = {};
    waited.connected = await waitFor(page, "session.created", () => window.duplexStats.connected, 15000);
    waited.speaking = await waitFor(page, "answer audio playing", () => window.duplexStats.player.playedMs > 0, cfg.timeoutMs);
    // Cut, or (when the interruption missed the answer) an answer completed.
    await waitFor(
      page,
      "answer cancelled, or an answer completed",
      () => window.duplexStats.bargeIns.some((b) => b.cancelled) || window.duplexStats.assistantTranscripts.length > 0,
      cfg.timeoutMs,
    );
    waited.cancelled = await page.evaluate(() => window.duplexStats.bargeIns.some((b) => b.cancelled));
    waited.secondAnswer =
      waited.cancelled &&
      (await waitFor(
        page,
        "an answer to the interruption",
        () => window.duplexStats.assistantTranscripts.length > 0,
        cfg.timeoutMs,
      ));
    const shown = await readPage(page);
    if (cfg.screenshot) await page.screenshot({ path: cfg.screenshot, fullPage: true });
    return { waited, ...shown };
  },

  // A wrong API key, then (after the test stops the server) connecting to a
  // server that is down, and a session whose server goes away.
  async errors(page) {
    const result = {};
    await connect(page, cfg.wrongKey);
    await waitFor(page, "error shown (wrong key)", () => !document.getElementById("error").hidden, 15000);
    result.wrongKey = await readPage(page);
    // The right key connects.
    await page.fill("#key", cfg.key);
    await page.click("#connect");
    await waitFor(page, "connected (right key)", () => window.duplexStats.connected, 15000);
    result.rightKey = await readPage(page);
    await waitForTest("stop-server");
    await waitFor(page, "error shown (server went away)", () => !document.getElementById("error").hidden, 15000);
    result.serverGone = await readPage(page);
    // Connect again while the server is down.
    await page.click("#connect");
    await waitFor(
      page,
      "error shown (server down)",
      () => !document.getElementById("error").hidden && document.getElementById("connect").textContent === "Connect",
      15000,
    );
    await page.waitForTimeout(300);
    result.serverDown = await readPage(page);
    if (cfg.screenshot) await page.screenshot({ path: cfg.screenshot, fullPage: true });
    return result;
  },
};

async function main() {
  const scenario = scenarios[cfg.scenario];
  if (!scenario) throw new Error(`unknown scenario ${cfg.scenario}`);
  const result = await withBrowser(cfg.wav, scenario);
  result.driverMs = Date.now() - t0;
  emit({ result });
}

main()
  .then(() => process.exit(0))
  .catch((e) => {
    emit({ fatal: String((e && e.stack) || e) });
    process.exit(1);
  });

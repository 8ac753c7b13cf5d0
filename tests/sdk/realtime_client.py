"""Drives duplex with the official `openai` Python SDK (Realtime API).

Usage: realtime_client.py PORT AUDIO_PCM16_24K [ga|beta] [--barge-in AUDIO2] [--key KEY] [--semantic]

Streams the raw pcm16 (24 kHz mono, little-endian) file as 20 ms appends at
real-time pace with server VAD on (semantic VAD, eagerness auto, with
--semantic), then silence, and prints one JSON object
summarizing what the server sent: event types in order, the user's
transcript, the number of audio deltas and bytes, response statuses, and the
final assistant item. With --barge-in, a second utterance is streamed while
the bot is speaking and the cut is reported (truncate after the cancel).
"""

import asyncio
import base64
import json
import sys
import time

from openai import AsyncOpenAI

CHUNK = 480 * 2  # 20 ms of pcm16 at 24 kHz


async def stream(conn, pcm, seconds_of_silence=0.0):
    silence = bytes(int(24000 * seconds_of_silence) * 2)
    data = pcm + silence
    start = time.monotonic()
    for i in range(0, len(data), CHUNK):
        await conn.input_audio_buffer.append(audio=base64.b64encode(data[i:i + CHUNK]).decode())
        due = start + (i + CHUNK) / 2 / 24000
        await asyncio.sleep(max(0.0, due - time.monotonic()))


async def main():
    port, audio_path = sys.argv[1], sys.argv[2]
    mode = sys.argv[3] if len(sys.argv) > 3 and not sys.argv[3].startswith("--") else "ga"
    barge = sys.argv[sys.argv.index("--barge-in") + 1] if "--barge-in" in sys.argv else None
    key = sys.argv[sys.argv.index("--key") + 1] if "--key" in sys.argv else "unused"
    server_vad = {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
                  "silence_duration_ms": 500}
    detection = {"type": "semantic_vad", "eagerness": "auto"} if "--semantic" in sys.argv else server_vad
    pcm = open(audio_path, "rb").read()
    client = AsyncOpenAI(api_key=key, websocket_base_url=f"ws://127.0.0.1:{port}/v1")
    connect = client.beta.realtime.connect if mode == "beta" else client.realtime.connect
    summary = {"types": [], "transcripts": [], "audio_deltas": 0, "audio_bytes": 0,
               "responses": [], "items": [], "truncated": [], "errors": []}
    async with connect(model="duplex") as conn:
        if mode == "beta":
            await conn.session.update(session={
                "modalities": ["audio", "text"],
                "turn_detection": detection,
            })
        else:
            await conn.session.update(session={
                "type": "realtime",
                "audio": {"input": {"turn_detection": {
                    **detection, "create_response": True, "interrupt_response": True}}},
            })
        sender = asyncio.create_task(stream(conn, pcm, 1.5))
        barge_task = None
        first_audio_item = None
        done_count = 0
        audio_since_barge = 0
        deadline = time.monotonic() + 90
        async for event in conn:
            t = event.type
            summary["types"].append(t)
            if t == "error":
                summary["errors"].append(event.error.message)
            elif t == "conversation.item.input_audio_transcription.completed":
                summary["transcripts"].append(event.transcript)
            elif t in ("response.output_audio.delta", "response.audio.delta"):
                summary["audio_deltas"] += 1
                summary["audio_bytes"] += len(base64.b64decode(event.delta))
                first_audio_item = first_audio_item or event.item_id
                if barge and barge_task is None and summary["audio_deltas"] == 10:
                    # One microphone: the user speaks again instead of the
                    # silence still being streamed (two streams at once
                    # would interleave their chunks).
                    sender.cancel()
                    barge_task = asyncio.create_task(stream(conn, open(barge, "rb").read(), 1.5))
                    summary["barge_in_sent_at_delta"] = summary["audio_deltas"]
            elif t == "conversation.item.truncated":
                summary["truncated"].append(event.item_id)
            elif t == "response.done":
                done_count += 1
                r = event.response
                details = getattr(r, "status_details", None)
                reason = getattr(details, "reason", None) if details else None
                item = (r.output or [None])[0]
                text = None
                if item is not None and item.content:
                    part = item.content[0]
                    text = getattr(part, "transcript", None) or getattr(part, "text", None)
                summary["responses"].append({"status": r.status, "reason": reason, "text": text})
                if r.status == "cancelled" and first_audio_item:
                    # What a real client does after a barge-in: say how much it played.
                    await conn.conversation.item.truncate(
                        item_id=first_audio_item, content_index=0, audio_end_ms=800)
                if (not barge and done_count >= 1) or (barge and done_count >= 2):
                    break
            if time.monotonic() > deadline:
                summary["errors"].append("timed out waiting for response.done")
                break
        sender.cancel()
        if barge_task:
            barge_task.cancel()
    print(json.dumps(summary))


asyncio.run(main())

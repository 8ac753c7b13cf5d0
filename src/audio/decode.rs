//! Decoding audio files (WAV, FLAC, MP3, OGG Vorbis) into mono [`Pcm`] via
//! symphonia: any sample format, channels averaged down to mono, native
//! sample rate kept (resample with [`crate::audio::resample()`] if needed).

use std::fs::File;
use std::io::Cursor;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use symphonia::core::codecs::audio::AudioDecoderOptions;
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, TrackType};
use symphonia::core::io::{MediaSource, MediaSourceStream};
use symphonia::core::meta::MetadataOptions;

use super::pcm::Pcm;

/// Decode the audio file at `path` to mono `f32` at its native sample rate.
///
/// The file extension is used as a format hint, but the content is probed,
/// so a misnamed file still decodes. Errors name the path and the cause
/// (unreadable file, unsupported format or codec, no audio track, nothing
/// decodable). A corrupt packet is skipped with a warning; decoding fails
/// only if no packet at all could be decoded.
pub fn decode_file(path: &Path) -> Result<Pcm> {
    let label = path.display().to_string();
    let result = File::open(path)
        .with_context(|| "cannot open file".to_string())
        .and_then(|file| {
            let ext = path.extension().and_then(|e| e.to_str());
            decode_source(Box::new(file), ext, &label)
        });
    result.map_err(|e| e.context(format!("failed to decode audio file {label}")))
}

/// Decode an in-memory encoded audio file (e.g. an uploaded WAV/MP3), with an
/// optional extension hint such as `"wav"` or `"mp3"`. Same semantics as
/// [`decode_file`].
pub fn decode_bytes(bytes: &[u8], hint_ext: Option<&str>) -> Result<Pcm> {
    let label = match hint_ext {
        Some(ext) => format!("<{} bytes in memory, .{ext}>", bytes.len()),
        None => format!("<{} bytes in memory>", bytes.len()),
    };
    decode_source(Box::new(Cursor::new(bytes)), hint_ext, &label)
        .map_err(|e| e.context(format!("failed to decode audio {label}")))
}

fn decode_source<'s>(
    source: Box<dyn MediaSource + 's>,
    hint_ext: Option<&str>,
    label: &str,
) -> Result<Pcm> {
    let mss = MediaSourceStream::new(source, Default::default());
    let mut hint = Hint::new();
    if let Some(ext) = hint_ext {
        hint.with_extension(ext);
    }

    let mut format = symphonia::default::get_probe()
        .probe(
            &hint,
            mss,
            FormatOptions::default(),
            MetadataOptions::default(),
        )
        .map_err(|e| match e {
            SymError::Unsupported(_) => anyhow!("unsupported or unrecognized audio format ({e})"),
            SymError::IoError(_) => anyhow!("could not read the container ({e})"),
            other => anyhow!("could not parse the container ({other})"),
        })?;

    let track = format
        .default_track(TrackType::Audio)
        .ok_or_else(|| anyhow!("no audio track found"))?;
    let track_id = track.id;
    let params = track
        .codec_params
        .as_ref()
        .and_then(|p| p.audio())
        .ok_or_else(|| anyhow!("audio track has no codec parameters"))?
        .clone();

    let mut decoder = symphonia::default::get_codecs()
        .make_audio_decoder(&params, &AudioDecoderOptions::default())
        .map_err(|e| anyhow!("unsupported audio codec {:?} ({e})", params.codec))?;

    let mut sample_rate = params.sample_rate.unwrap_or(0);
    let mut samples: Vec<f32> = Vec::new();
    let mut scratch: Vec<f32> = Vec::new();
    let mut decoded_packets = 0usize;
    let mut bad_packets = 0usize;
    let mut first_error: Option<String> = None;

    loop {
        let packet = match format.next_packet() {
            Ok(Some(packet)) => packet,
            Ok(None) => break,
            Err(SymError::ResetRequired) => {
                // Chained streams (e.g. concatenated OGG): keep what we have.
                tracing::warn!(
                    source = label,
                    "audio track list changed mid-stream; stopping"
                );
                break;
            }
            Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                // Truncated file: keep what decoded so far.
                if decoded_packets > 0 {
                    tracing::warn!(
                        source = label,
                        "audio stream truncated; keeping decoded part"
                    );
                }
                break;
            }
            Err(e) => {
                if decoded_packets > 0 {
                    tracing::warn!(source = label, error = %e, "demuxing stopped early; keeping decoded part");
                    break;
                }
                bail!("failed to read packets: {e}");
            }
        };
        if packet.track_id != track_id {
            continue;
        }

        match decoder.decode(&packet) {
            Ok(buf) => {
                let channels = buf.num_planes();
                let frames = buf.frames();
                if channels == 0 || frames == 0 {
                    continue;
                }
                let rate = buf.spec().rate();
                if sample_rate == 0 {
                    sample_rate = rate;
                } else if rate != sample_rate {
                    tracing::warn!(
                        source = label,
                        expected = sample_rate,
                        got = rate,
                        "sample rate changed mid-stream; treating samples as the first rate"
                    );
                }
                buf.copy_to_vec_interleaved::<f32>(&mut scratch);
                if channels == 1 {
                    samples.extend_from_slice(&scratch);
                } else {
                    let inv = 1.0 / channels as f32;
                    samples.extend(
                        scratch
                            .chunks_exact(channels)
                            .map(|frame| frame.iter().sum::<f32>() * inv),
                    );
                }
                decoded_packets += 1;
            }
            Err(SymError::DecodeError(msg)) => {
                bad_packets += 1;
                tracing::warn!(source = label, error = msg, "skipping corrupt audio packet");
                first_error.get_or_insert_with(|| format!("malformed packet: {msg}"));
            }
            Err(SymError::IoError(e)) => {
                bad_packets += 1;
                tracing::warn!(source = label, error = %e, "skipping unreadable audio packet");
                first_error.get_or_insert_with(|| format!("packet read error: {e}"));
            }
            Err(SymError::ResetRequired) => {
                decoder.reset();
            }
            Err(e) => bail!("audio decoder failed: {e}"),
        }
    }

    if decoded_packets == 0 && bad_packets > 0 {
        bail!(
            "no audio could be decoded: all {bad_packets} packet(s) were corrupt (first error: {})",
            first_error.unwrap_or_default()
        );
    }
    if sample_rate == 0 {
        if samples.is_empty() {
            bail!("no audio could be decoded: stream is empty and declares no sample rate");
        }
        bail!("stream does not declare a sample rate");
    }
    if bad_packets > 0 {
        tracing::warn!(
            source = label,
            bad_packets,
            decoded_packets,
            "decoded audio with some corrupt packets skipped"
        );
    }
    // Keep the project-wide invariant: finite samples in [-1, 1].
    for s in &mut samples {
        *s = if s.is_finite() {
            s.clamp(-1.0, 1.0)
        } else {
            0.0
        };
    }
    Ok(Pcm::new(samples, sample_rate))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("duplex-decode-{}-{name}", std::process::id()))
    }

    #[test]
    fn decodes_stereo_44k_wav_to_mono() {
        let path = temp_path("stereo-440.wav");
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: 44100,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let n = 44100usize; // 1 s
        {
            let mut w = hound::WavWriter::create(&path, spec).expect("create wav");
            for i in 0..n {
                let s = 0.6 * (2.0 * std::f64::consts::PI * 440.0 * i as f64 / 44100.0).sin();
                let v = (s * 32767.0).round() as i16;
                // Left carries the tone, right carries it inverted at half level:
                // the average is 0.25 * tone.
                w.write_sample(v).expect("write L");
                w.write_sample((-(s * 0.5) * 32767.0).round() as i16)
                    .expect("write R");
            }
            w.finalize().expect("finalize");
        }
        let pcm = decode_file(&path).expect("decode");
        let _ = std::fs::remove_file(&path);
        assert_eq!(pcm.sample_rate, 44100);
        assert_eq!(pcm.samples.len(), n);
        let peak = pcm.samples.iter().fold(0.0f32, |m, &x| m.max(x.abs()));
        assert!((peak - 0.15).abs() < 0.005, "peak {peak}");
        // RMS of a sine of amplitude 0.15.
        let rms = super::super::pcm::rms(&pcm.samples);
        assert!((rms - 0.15 / 2f32.sqrt()).abs() < 0.003, "rms {rms}");
        // Sample-accurate check mid-clip.
        let i = 12345;
        let want = 0.15 * (2.0 * std::f32::consts::PI * 440.0 * i as f32 / 44100.0).sin();
        assert!((pcm.samples[i] - want).abs() < 1e-3);
    }

    #[test]
    fn decodes_real_librivox_clip() {
        let dir = Path::new("/usr/share/pocketsphinx/test/data/librivox");
        let mut wavs: Vec<PathBuf> = std::fs::read_dir(dir)
            .expect("pocketsphinx-testdata is installed")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "wav"))
            .collect();
        wavs.sort();
        assert!(!wavs.is_empty(), "no WAVs in {}", dir.display());
        let mut checked = 0;
        for path in &wavs {
            let pcm = decode_file(path).expect("decode librivox clip");
            assert_eq!(pcm.sample_rate, 16000, "{}", path.display());
            let secs = pcm.duration_secs();
            if (3.0..=7.0).contains(&secs) {
                checked += 1;
                let level = super::super::pcm::rms(&pcm.samples);
                assert!(level > 0.005 && level < 0.5, "speech rms {level}");
            }
        }
        assert!(checked >= 1, "no librivox clip between 3 and 7 s");
        // The first clip (-0870) is 227244 bytes: (227244 - 44) / 2 samples = 7.1 s at 16 kHz;
        // -0880 is about 3 s. Spot-check one exact length.
        let p = dir.join("sense_and_sensibility_01_austen_64kb-0890.wav");
        let pcm = decode_file(&p).expect("decode 0890");
        assert!(
            (3.0..=7.0).contains(&pcm.duration_secs()),
            "{}",
            pcm.duration_secs()
        );
    }

    #[test]
    fn garbage_file_error_names_path() {
        let path = temp_path("garbage.wav");
        let junk: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        std::fs::write(&path, &junk).expect("write junk");
        let err = decode_file(&path).unwrap_err();
        let _ = std::fs::remove_file(&path);
        let msg = format!("{err:#}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(err.to_string().contains(&path.display().to_string()));
        assert!(
            msg.contains("unsupported") || msg.contains("format"),
            "{msg}"
        );
    }

    #[test]
    fn garbage_with_any_extension_is_an_error() {
        let junk: Vec<u8> = (0..20000u32)
            .map(|i| (i.wrapping_mul(2654435761).rotate_left(7) >> 5) as u8)
            .collect();
        for ext in ["mp3", "ogg", "flac", "wav", "bin"] {
            let path = temp_path(&format!("junk.{ext}"));
            std::fs::write(&path, &junk).expect("write junk");
            let res = decode_file(&path);
            let _ = std::fs::remove_file(&path);
            let msg = format!("{:#}", res.expect_err(ext));
            assert!(msg.contains(&path.display().to_string()), "{msg}");
        }
    }

    #[test]
    fn missing_file_error_names_path() {
        let path = temp_path("does-not-exist.flac");
        let msg = format!("{:#}", decode_file(&path).unwrap_err());
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("cannot open"), "{msg}");
    }

    #[test]
    fn decode_bytes_wav_and_float_format() {
        // 32-bit float WAV, 3 channels, 8 kHz, written to memory.
        let spec = hound::WavSpec {
            channels: 3,
            sample_rate: 8000,
            bits_per_sample: 32,
            sample_format: hound::SampleFormat::Float,
        };
        let mut cursor = Cursor::new(Vec::new());
        {
            let mut w = hound::WavWriter::new(&mut cursor, spec).expect("writer");
            for _ in 0..800 {
                w.write_sample(0.3f32).expect("c0");
                w.write_sample(0.6f32).expect("c1");
                w.write_sample(-0.3f32).expect("c2");
            }
            w.finalize().expect("finalize");
        }
        let bytes = cursor.into_inner();
        let pcm = decode_bytes(&bytes, Some("wav")).expect("decode bytes");
        assert_eq!(pcm.sample_rate, 8000);
        assert_eq!(pcm.samples.len(), 800);
        assert!(pcm.samples.iter().all(|&x| (x - 0.2).abs() < 1e-6));

        let msg = format!("{:#}", decode_bytes(&bytes[..20], None).unwrap_err());
        assert!(msg.contains("in memory"), "{msg}");
    }

    #[test]
    fn truncated_wav_keeps_decoded_part() {
        // A valid WAV header followed by truncated data decodes what is there.
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 16000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut cursor = Cursor::new(Vec::new());
        {
            let mut w = hound::WavWriter::new(&mut cursor, spec).expect("writer");
            for i in 0..16000 {
                w.write_sample(((i % 100) * 100) as i16).expect("s");
            }
            w.finalize().expect("finalize");
        }
        let mut bytes = cursor.into_inner();
        bytes.truncate(bytes.len() / 2 + 1); // cut mid-stream (odd cut, mid-sample)
        let pcm = decode_bytes(&bytes, Some("wav")).expect("truncated WAV keeps decoded part");
        assert_eq!(pcm.sample_rate, 16000);
        assert!(
            pcm.samples.len() > 4000 && pcm.samples.len() < 16000,
            "{}",
            pcm.samples.len()
        );
    }
    /// FLAC and OGG Vorbis, encoded by `sox` when it is installed (skipped
    /// otherwise; there is no pure-Rust encoder among the dependencies).
    #[test]
    fn decodes_flac_and_ogg_vorbis_made_by_sox() {
        let have_sox = std::process::Command::new("sox")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !have_sox {
            eprintln!("sox not installed; skipping FLAC/OGG decode test");
            return;
        }
        for (ext, rate) in [("flac", 44100u32), ("ogg", 48000)] {
            let path = temp_path(&format!("sox-sine.{ext}"));
            let status = std::process::Command::new("sox")
                .args(["-n", "-r", &rate.to_string(), "-c", "2"])
                .arg(&path)
                .args(["synth", "6", "sine", "440", "gain", "-6"])
                .status()
                .expect("run sox");
            assert!(status.success(), "sox failed for {ext}");
            let pcm = decode_file(&path).expect("decode sox output");
            assert_eq!(pcm.sample_rate, rate, "{ext}");
            assert!(
                (pcm.samples.len() as i64 - 6 * rate as i64).abs() < rate as i64 / 100,
                "{ext}: {} samples",
                pcm.samples.len()
            );
            let level = super::super::pcm::rms(&pcm.samples);
            // -6 dB sine: amplitude ~0.5, RMS ~0.354.
            assert!((level - 0.354).abs() < 0.02, "{ext}: rms {level}");

            // Corrupt some bytes mid-file: the damaged part is skipped with a
            // warning, the rest still decodes.
            let mut bytes = std::fs::read(&path).expect("read back");
            let mid = bytes.len() / 2;
            for b in &mut bytes[mid..mid + 100] {
                *b ^= 0x5a;
            }
            let pcm2 = decode_bytes(&bytes, Some(ext)).expect("decode corrupted file");
            let _ = std::fs::remove_file(&path);
            assert_eq!(pcm2.sample_rate, rate);
            assert!(
                pcm2.samples.len() > 2 * rate as usize && pcm2.samples.len() <= pcm.samples.len(),
                "{ext}: corrupted decode kept {} samples",
                pcm2.samples.len()
            );
        }
    }
}

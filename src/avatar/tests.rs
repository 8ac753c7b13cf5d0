//! Tests of the avatar building blocks: rendering, pixel measures, blinks,
//! lip-sync (from the audio and from the rendered pixels), chunking
//! invariance, JPEG round trips and render timing. Also writes
//! `target/avatar-contact-sheet.png` (one second of a synthetic utterance)
//! and `target/avatar-states.png` (idle / listening / speaking / blink) for a
//! person to look at.

use super::*;
use image::RgbImage;

const RATE: u32 = 16_000;
const FPS: u32 = 25;
const FRAME: usize = (RATE / FPS) as usize;

fn pose(state: AvatarState, open: f32, t_ms: u64) -> Pose {
    Pose {
        state,
        mouth_open: open,
        mouth_wide: 0.5,
        t_ms,
    }
}

/// A deterministic pseudo-random generator (xorshift) for the test signals.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Speech-like audio: syllables at about 4 Hz (varying length and loudness),
/// each a voiced vowel (130 Hz harmonics shaped by two formants that differ
/// per syllable) plus a little breath noise, with short pauses between
/// phrases. Peaks around -14 dBFS RMS.
fn synthetic_speech(seconds: f32) -> Vec<f32> {
    let n = (seconds * RATE as f32) as usize;
    let mut out = vec![0.0f32; n];
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let vowels = [
        (300.0, 870.0),
        (270.0, 2290.0),
        (730.0, 1090.0),
        (530.0, 1840.0),
        (570.0, 840.0),
    ];
    let mut t0 = 0.05f32;
    let mut syl = 0;
    while t0 < seconds {
        let len = 0.17 + 0.12 * rng.next();
        let amp = 0.08 + 0.12 * rng.next();
        let (f1, f2) = vowels[syl % vowels.len()];
        let f0 = 120.0 + 25.0 * rng.next();
        let a = (t0 * RATE as f32) as usize;
        let b = (((t0 + len) * RATE as f32) as usize).min(n);
        for (i, s) in out[a..b].iter_mut().enumerate() {
            let t = i as f32 / RATE as f32;
            let env = (std::f32::consts::PI * t / len).sin().powi(2);
            let mut v = 0.0;
            for h in 1..30 {
                let f = f0 * h as f32;
                if f > 4000.0 {
                    break;
                }
                let g = 1.0 / (1.0 + ((f - f1) / 120.0).powi(2))
                    + 0.6 / (1.0 + ((f - f2) / 180.0).powi(2));
                v += g * (std::f32::consts::TAU * f * t).sin();
            }
            *s = amp * env * (0.5 * v + 0.08 * (rng.next() - 0.5));
        }
        t0 += len + 0.02 + 0.06 * rng.next();
        syl += 1;
        // A pause between phrases every 7 syllables.
        if syl % 7 == 0 {
            t0 += 0.35;
        }
    }
    out
}

fn frame_rms(audio: &[f32]) -> Vec<f32> {
    audio
        .chunks_exact(FRAME)
        .map(|c| (c.iter().map(|x| x * x).sum::<f32>() / c.len() as f32).sqrt())
        .collect()
}

fn pearson(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len()) as f64;
    let (a, b) = (&a[..n as usize], &b[..n as usize]);
    let ma = a.iter().map(|&x| x as f64).sum::<f64>() / n;
    let mb = b.iter().map(|&x| x as f64).sum::<f64>() / n;
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (dx, dy) = (x as f64 - ma, y as f64 - mb);
        sab += dx * dy;
        saa += dx * dx;
        sbb += dy * dy;
    }
    (sab / (saa * sbb).sqrt().max(1e-12)) as f32
}

fn lipsync_in_chunks(audio: &[f32], chunk: usize) -> Vec<MouthFrame> {
    let mut ls = LipSync::new(RATE, FPS);
    let mut out = Vec::new();
    for c in audio.chunks(chunk) {
        out.extend(ls.push(c));
    }
    out
}

fn mean_abs_diff(a: &RgbImage, b: &RgbImage) -> f32 {
    let s: u64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(&x, &y)| (x as i32 - y as i32).unsigned_abs() as u64)
        .sum();
    s as f32 / a.as_raw().len() as f32
}

fn target_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

#[test]
fn avatar_renders_are_deterministic() {
    let poses: Vec<Pose> = (0..30)
        .map(|i| Pose {
            state: [
                AvatarState::Idle,
                AvatarState::Listening,
                AvatarState::Speaking,
            ][i / 10],
            mouth_open: (i % 5) as f32 / 4.0,
            mouth_wide: (i % 3) as f32 / 2.0,
            t_ms: 40 * i as u64,
        })
        .collect();
    let (mut a, mut b) = (AvatarRenderer::new(256), AvatarRenderer::new(256));
    for p in &poses {
        assert_eq!(a.render(p), b.render(p), "pose {p:?}");
    }
    // One pose on a fresh renderer is a pure function of the pose.
    let p = pose(AvatarState::Listening, 0.3, 12_345);
    assert_eq!(
        AvatarRenderer::new(256).render(&p),
        AvatarRenderer::new(256).render(&p)
    );
    assert_eq!(AvatarRenderer::new(256).render(&p).dimensions(), (256, 256));
    assert_eq!(
        AvatarRenderer::new(100).size(),
        256,
        "size is clamped up to 256"
    );
}

#[test]
fn avatar_mouth_measure_follows_mouth_open() {
    for size in [256u32, 384] {
        for state in [
            AvatarState::Idle,
            AvatarState::Listening,
            AvatarState::Speaking,
        ] {
            for wide in [0.0f32, 0.5, 1.0] {
                let measures: Vec<f32> = [0.0f32, 0.25, 0.5, 0.75, 1.0]
                    .iter()
                    .map(|&o| {
                        let p = Pose {
                            state,
                            mouth_open: o,
                            mouth_wide: wide,
                            t_ms: 1_000,
                        };
                        mouth_open_measure(&AvatarRenderer::new(size).render(&p), size)
                    })
                    .collect();
                println!("size {size} {state:?} wide {wide}: {measures:.3?}");
                assert!(measures[0] < 0.01, "closed mouth reads {}", measures[0]);
                for w in measures.windows(2) {
                    assert!(w[1] > w[0] + 0.08, "not increasing: {measures:?}");
                }
                assert!(
                    (0.7..1.4).contains(&measures[4]),
                    "fully open reads {}",
                    measures[4]
                );
            }
        }
    }
    // Non-finite input is harmless.
    let p = Pose {
        state: AvatarState::Idle,
        mouth_open: f32::NAN,
        mouth_wide: f32::INFINITY,
        t_ms: 0,
    };
    assert!(mouth_open_measure(&AvatarRenderer::new(256).render(&p), 256) < 0.01);
}

#[test]
fn avatar_blinks_naturally() {
    let mut r = AvatarRenderer::new(256);
    let mut measures = Vec::new();
    for i in 0..150u64 {
        let t = 40 * i;
        let m = eye_open_measure(&r.render(&pose(AvatarState::Idle, 0.0, t)), 256);
        measures.push((t, m, eye_openness(t)));
    }
    let shut = measures.iter().filter(|(_, m, _)| *m < 0.15).count();
    let open = measures.iter().filter(|(_, m, _)| *m > 0.5).count();
    println!(
        "eye measures over 6 s: {} shut, {} open of {}",
        shut,
        open,
        measures.len()
    );
    assert!(shut >= 1, "no blink within 6 s: {measures:?}");
    assert!(
        open as f32 >= 0.9 * measures.len() as f32,
        "eyes not open most of the time: {measures:?}"
    );
    // Pixels agree with the schedule.
    for (t, m, o) in &measures {
        if *o > 0.99 {
            assert!(*m > 0.5, "t={t} open by schedule but reads {m}");
        }
        if *o < 0.01 {
            assert!(*m < 0.1, "t={t} shut by schedule but reads {m}");
        }
    }
    // Any 6 s window holds a blink, over an hour of clock.
    let mut last_shut = 0u64;
    for t in (0..3_600_000u64).step_by(20) {
        if eye_openness(t) < 0.05 {
            assert!(
                t - last_shut < 6000,
                "no blink between {last_shut} and {t} ms"
            );
            last_shut = t;
        }
    }
}

#[test]
fn avatar_listening_differs_from_idle() {
    for t in [500u64, 1_700, 4_100] {
        let idle = AvatarRenderer::new(256).render(&pose(AvatarState::Idle, 0.0, t));
        let listening = AvatarRenderer::new(256).render(&pose(AvatarState::Listening, 0.0, t));
        let d = mean_abs_diff(&idle, &listening);
        println!("t={t}: idle vs listening mean abs diff {d:.2}");
        assert!(d > 1.0, "listening looks like idle at t={t} ({d})");
    }
    // Switching state eases over a few frames instead of popping.
    let mut r = AvatarRenderer::new(256);
    let a = r.render(&pose(AvatarState::Idle, 0.0, 1000));
    let b = r.render(&pose(AvatarState::Listening, 0.0, 1040));
    let jump = mean_abs_diff(&a, &b);
    let snapped = mean_abs_diff(
        &a,
        &AvatarRenderer::new(256).render(&pose(AvatarState::Listening, 0.0, 1040)),
    );
    println!("state switch: eased step {jump:.2}, snapped step {snapped:.2}");
    assert!(jump < snapped);
}

#[test]
fn avatar_lipsync_follows_the_audio_envelope() {
    let audio = synthetic_speech(8.0);
    let rms = frame_rms(&audio);
    let poses = lipsync_in_chunks(&audio, 320);
    assert_eq!(poses.len(), audio.len() / FRAME);
    let open: Vec<f32> = poses.iter().map(|p| p.open).collect();
    let r_open = pearson(&rms, &open);
    // The reported rms is the frame's own.
    for (p, r) in poses.iter().zip(&rms) {
        assert!((p.rms - r).abs() < 1e-4);
    }

    let mut renderer = AvatarRenderer::new(256);
    let measured: Vec<f32> = poses
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let p = Pose {
                state: AvatarState::Speaking,
                mouth_open: m.open,
                mouth_wide: m.wide,
                t_ms: 40 * i as u64,
            };
            mouth_open_measure(&renderer.render(&p), 256)
        })
        .collect();
    let r_pixels = pearson(&rms, &measured);
    let max_open = open.iter().cloned().fold(0.0, f32::max);
    let wides: Vec<f32> = poses.iter().map(|p| p.wide).collect();
    let (wmin, wmax) = wides
        .iter()
        .fold((1.0f32, 0.0f32), |(a, b), &w| (a.min(w), b.max(w)));
    println!(
        "lip-sync over {} frames: corr(rms, open) = {r_open:.3}, corr(rms, pixels) = {r_pixels:.3}, \
         max open {max_open:.2}, wide {wmin:.2}..{wmax:.2}",
        poses.len()
    );
    assert!(r_open > 0.8, "corr(rms, open) = {r_open}");
    assert!(r_pixels > 0.5, "corr(rms, mouth pixels) = {r_pixels}");
    assert!(
        max_open > 0.7,
        "speech at normal level should open the mouth well ({max_open})"
    );
    assert!(
        wmax - wmin > 0.2,
        "mouth_wide does not vary ({wmin}..{wmax})"
    );
}

#[test]
fn avatar_lipsync_is_chunking_invariant_and_gates_silence() {
    let audio = synthetic_speech(4.0);
    let a = lipsync_in_chunks(&audio, 320); // 20 ms
    let b = lipsync_in_chunks(&audio, 592); // 37 ms
    let c = lipsync_in_chunks(&audio, 1); // sample by sample
    let d = lipsync_in_chunks(&audio, audio.len()); // all at once
    assert_eq!(a, b);
    assert_eq!(a, c);
    assert_eq!(a, d);

    // Silence and faint noise keep the mouth shut.
    let mut ls = LipSync::new(RATE, FPS);
    let mut rng = Rng(7);
    let noise: Vec<f32> = (0..RATE).map(|_| 0.002 * (rng.next() - 0.5)).collect();
    let poses = ls.push(&noise);
    assert_eq!(poses.len(), 25);
    assert!(poses.iter().all(|p| p.open == 0.0), "{poses:?}");
    // Non-finite samples are silence.
    assert!(ls.push(&[f32::NAN; 640]).iter().all(|p| p.open == 0.0));

    // After speech, silence closes the mouth within a few frames.
    let mut ls = LipSync::new(RATE, FPS);
    let loud: Vec<f32> = (0..FRAME * 5)
        .map(|i| 0.2 * (i as f32 * 0.05).sin())
        .collect();
    let opened = ls.push(&loud);
    assert!(opened.last().is_some_and(|p| p.open > 0.8), "{opened:?}");
    let closed = ls.push(&vec![0.0; FRAME * 5]);
    assert!(closed.last().is_some_and(|p| p.open < 0.02), "{closed:?}");

    // flush() returns the partial frame; reset() forgets everything.
    let mut ls = LipSync::new(RATE, FPS);
    assert!(ls.push(&loud[..100]).is_empty());
    assert!(ls.flush().is_some_and(|p| p.open > 0.0));
    assert!(ls.flush().is_none());
    ls.reset();
    assert_eq!(
        ls.push(&loud[..FRAME]),
        lipsync_in_chunks(&loud[..FRAME], FRAME)
    );

    // Rates that do not divide evenly still give one pose per frame on average.
    let mut ls = LipSync::new(22_050, 30);
    let n: usize = (0..100).map(|_| ls.push(&[0.1; 441]).len()).sum();
    assert_eq!(n, 44_100 * 30 / 22_050);
}

#[test]
fn avatar_jpeg_round_trip_and_size() {
    let mut r = AvatarRenderer::new(256);
    let mut sizes = Vec::new();
    for i in 0..25u64 {
        let img = r.render(&pose(AvatarState::Speaking, (i % 5) as f32 / 4.0, 40 * i));
        let jpeg = encode_jpeg(&img, 80).expect("encode");
        let back = image::load_from_memory(&jpeg).expect("decode").to_rgb8();
        assert_eq!(back.dimensions(), (256, 256));
        let d = mean_abs_diff(&img, &back);
        assert!(d < 4.0, "JPEG too lossy: {d}");
        sizes.push(jpeg.len());
    }
    let mean = sizes.iter().sum::<usize>() / sizes.len();
    println!(
        "JPEG q80 256x256: mean {mean} bytes/frame (min {}, max {})",
        sizes.iter().min().unwrap_or(&0),
        sizes.iter().max().unwrap_or(&0)
    );
    assert!(mean < 30_000);
    // Odd qualities are clamped, not rejected.
    assert!(encode_jpeg(&r.render(&Pose::default()), 0).is_ok());
}

#[test]
fn avatar_render_time() {
    for size in [256u32, 512] {
        let mut r = AvatarRenderer::new(size);
        let n = 200;
        let t0 = std::time::Instant::now();
        let mut sink = 0u64;
        for i in 0..n {
            let img = r.render(&pose(
                AvatarState::Speaking,
                (i % 7) as f32 / 6.0,
                40 * i as u64,
            ));
            sink += img.as_raw()[(i as usize * 997) % img.as_raw().len()] as u64;
        }
        let ms = t0.elapsed().as_secs_f64() * 1000.0 / n as f64;
        println!("render {size}x{size}: {ms:.3} ms/frame (checksum {sink})");
        assert!(
            ms < 50.0 * (size as f64 / 256.0).powi(2),
            "render too slow: {ms} ms"
        );
    }
}

#[test]
fn avatar_contact_sheets() {
    let mut sheet_frames = Vec::new();
    // One second of a synthetic utterance, 25 frames.
    let audio = synthetic_speech(1.0);
    let poses = lipsync_in_chunks(&audio, 320);
    let mut r = AvatarRenderer::new(256);
    for (i, m) in poses.iter().enumerate() {
        let p = Pose {
            state: AvatarState::Speaking,
            mouth_open: m.open,
            mouth_wide: m.wide,
            t_ms: 40 * i as u64,
        };
        sheet_frames.push(r.render(&p));
    }
    assert_eq!(sheet_frames.len(), 25);
    let sheet = contact_sheet(&sheet_frames, 5);
    assert_eq!(sheet.dimensions(), (5 * 256, 5 * 256));
    let path = target_dir().join("avatar-contact-sheet.png");
    save_png(&sheet, &path).expect("save contact sheet");
    println!("wrote {}", path.display());

    // States and details: idle, listening, speaking (mouth shapes), a blink.
    let blink_t = (0..6000u64)
        .step_by(10)
        .find(|&t| eye_openness(t) < 0.01)
        .unwrap_or(0);
    let shots = [
        Pose {
            state: AvatarState::Idle,
            mouth_open: 0.0,
            mouth_wide: 0.5,
            t_ms: 1000,
        },
        Pose {
            state: AvatarState::Listening,
            mouth_open: 0.0,
            mouth_wide: 0.5,
            t_ms: 1000,
        },
        Pose {
            state: AvatarState::Listening,
            mouth_open: 0.0,
            mouth_wide: 0.5,
            t_ms: 5300,
        },
        Pose {
            state: AvatarState::Idle,
            mouth_open: 0.0,
            mouth_wide: 0.5,
            t_ms: blink_t,
        },
        Pose {
            state: AvatarState::Speaking,
            mouth_open: 0.3,
            mouth_wide: 0.5,
            t_ms: 1000,
        },
        Pose {
            state: AvatarState::Speaking,
            mouth_open: 1.0,
            mouth_wide: 0.5,
            t_ms: 1000,
        },
        Pose {
            state: AvatarState::Speaking,
            mouth_open: 0.6,
            mouth_wide: 0.0,
            t_ms: 1000,
        },
        Pose {
            state: AvatarState::Speaking,
            mouth_open: 0.6,
            mouth_wide: 1.0,
            t_ms: 1000,
        },
    ];
    let frames: Vec<RgbImage> = shots
        .iter()
        .map(|p| AvatarRenderer::new(256).render(p))
        .collect();
    let path = target_dir().join("avatar-states.png");
    save_png(&contact_sheet(&frames, 4), &path).expect("save states sheet");
    println!("wrote {}", path.display());
    assert_eq!(contact_sheet(&[], 3).dimensions(), (1, 1));
}

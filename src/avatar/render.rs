//! The procedural 2-D face: [`AvatarRenderer`] draws one RGB frame per [`Pose`].
//!
//! Owns the drawing (signed-distance shapes with analytic antialiasing), the
//! animation curves (breathing, sway, blinks, gaze, state-dependent brows,
//! tilt and nods) and the pixel measures the tests use to check a rendered
//! frame ([`mouth_open_measure`], [`eye_open_measure`]).
//!
//! Everything is deterministic: a frame depends only on the sequence of poses
//! given to one renderer (the only history is a ~0.2 s smoothing of the
//! state-dependent parameters so that Idle/Listening/Speaking switches do not
//! pop). A fresh renderer given one pose always draws the same image.
//!
//! Coordinates: shapes are laid out in "face units" where 1.0 is the image
//! side, the origin is the image centre and y points down. Each shape is a
//! signed distance function in those units; the coverage of a pixel is
//! `clamp(0.5 - distance_in_pixels, 0, 1)`, which antialiases edges without
//! supersampling.

use image::RgbImage;
use serde::{Deserialize, Serialize};

/// The smallest (and default) frame side in pixels.
pub const DEFAULT_SIZE: u32 = 256;
/// The largest frame side [`AvatarRenderer::new`] accepts; larger requests are clamped.
pub const MAX_SIZE: u32 = 2048;

/// What the agent is doing, which sets the avatar's demeanour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AvatarState {
    /// Nobody is talking: relaxed breathing, wandering gaze.
    #[default]
    Idle,
    /// The user is talking: brows raised a little, head tilted, small nods, eyes on the user.
    Listening,
    /// The agent is talking: lively brows and head, mouth follows the speech.
    Speaking,
}

/// Everything one frame depends on.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Pose {
    pub state: AvatarState,
    /// How open the mouth is, 0 (closed) to 1 (wide open). Clamped; NaN reads as 0.
    pub mouth_open: f32,
    /// Mouth shape, 0 (round, "oo") to 1 (wide, "ee"); 0.5 is neutral. Clamped; NaN reads as 0.5.
    pub mouth_wide: f32,
    /// Session clock in ms; drives blinks, breathing, sway and nods.
    pub t_ms: u64,
}

impl Default for Pose {
    fn default() -> Self {
        Pose {
            state: AvatarState::Idle,
            mouth_open: 0.0,
            mouth_wide: 0.5,
            t_ms: 0,
        }
    }
}

// ---------------------------------------------------------------------------
// Layout constants (face units, relative to the image centre, y down).

const HEAD_CY: f32 = -0.04;
const HEAD_RX: f32 = 0.255;
const HEAD_RY: f32 = 0.29;
/// Head rotation pivot (the neck).
const PIVOT: (f32, f32) = (0.0, 0.21);
const EYE_DX: f32 = 0.097;
const EYE_CY: f32 = -0.005;
const EYE_RX: f32 = 0.047;
const EYE_RY: f32 = 0.053;
const IRIS_R: f32 = 0.033;
const PUPIL_R: f32 = 0.017;
const BROW_CY: f32 = -0.094;
const MOUTH_CY: f32 = 0.148;
/// Half-height of the whole mouth opening at `mouth_open == 1` (neutral width).
const MOUTH_H_MAX: f32 = 0.088;
const LIP_W: f32 = 0.0075;

// Colours (sRGB 0..255).
const BG_TOP: [f32; 3] = [228.0, 238.0, 250.0];
const BG_BOTTOM: [f32; 3] = [190.0, 208.0, 234.0];
const SKIN: [f32; 3] = [250.0, 210.0, 182.0];
const SKIN_SHADE: [f32; 3] = [226.0, 170.0, 142.0];
const HAIR: [f32; 3] = [88.0, 56.0, 42.0];
const HAIR_LIGHT: [f32; 3] = [128.0, 86.0, 62.0];
const SHIRT: [f32; 3] = [84.0, 132.0, 196.0];
const SHIRT_DARK: [f32; 3] = [62.0, 100.0, 160.0];
const EYE_WHITE: [f32; 3] = [253.0, 253.0, 252.0];
const EYE_LINE: [f32; 3] = [62.0, 40.0, 34.0];
const IRIS: [f32; 3] = [72.0, 128.0, 168.0];
const IRIS_DARK: [f32; 3] = [40.0, 80.0, 118.0];
const PUPIL: [f32; 3] = [22.0, 22.0, 28.0];
const BROW: [f32; 3] = [96.0, 62.0, 46.0];
const LIPS: [f32; 3] = [200.0, 100.0, 106.0];
const MOUTH_IN: [f32; 3] = [84.0, 28.0, 38.0];
const TEETH: [f32; 3] = [250.0, 248.0, 242.0];
const TONGUE: [f32; 3] = [214.0, 108.0, 118.0];
const BLUSH: [f32; 3] = [244.0, 150.0, 150.0];

// ---------------------------------------------------------------------------

/// Draws the face. Cheap to create; keeps the static background layer and the
/// smoothed state parameters between frames.
pub struct AvatarRenderer {
    size: u32,
    background: Vec<u8>,
    smooth: Option<(u64, Demeanour)>,
}

impl Default for AvatarRenderer {
    fn default() -> Self {
        AvatarRenderer::new(DEFAULT_SIZE)
    }
}

impl AvatarRenderer {
    /// A renderer for `size` x `size` frames; `size` is clamped to
    /// [`DEFAULT_SIZE`]..=[`MAX_SIZE`].
    pub fn new(size: u32) -> Self {
        let size = size.clamp(DEFAULT_SIZE, MAX_SIZE);
        AvatarRenderer {
            size,
            background: background_layer(size),
            smooth: None,
        }
    }

    /// Side of the frames in pixels.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Forgets the smoothed state parameters (the next frame snaps to its pose's state).
    pub fn reset(&mut self) {
        self.smooth = None;
    }

    /// Draws one frame.
    pub fn render(&mut self, pose: &Pose) -> RgbImage {
        let dem = self.demeanour(pose);
        let params = frame_params(pose, &dem);
        let mut buf = self.background.clone();
        let n = self.size as usize;
        draw_face(
            &mut Canvas {
                px: &mut buf,
                w: n,
                h: n,
            },
            &params,
            self.size as f32,
        );
        RgbImage::from_raw(self.size, self.size, buf)
            .unwrap_or_else(|| RgbImage::new(self.size, self.size))
    }

    /// The state-dependent parameters, eased towards the pose's state with a
    /// ~200 ms time constant on the pose clock. Snaps on the first frame and
    /// when the clock goes backwards or jumps by more than 2 s.
    fn demeanour(&mut self, pose: &Pose) -> Demeanour {
        let target = Demeanour::of(pose.state);
        let next = match self.smooth {
            Some((t_prev, cur)) if pose.t_ms >= t_prev && pose.t_ms - t_prev <= 2000 => {
                let dt = (pose.t_ms - t_prev) as f32;
                cur.lerp(&target, 1.0 - (-dt / 200.0).exp())
            }
            _ => target,
        };
        self.smooth = Some((pose.t_ms, next));
        next
    }
}

/// Per-state parameters that are eased between states.
#[derive(Debug, Clone, Copy)]
struct Demeanour {
    tilt: f32,
    brow_raise: f32,
    brow_tilt: f32,
    nod: f32,
    sway: f32,
    lively: f32,
    smile: f32,
    focus: f32,
    /// How far the upper lids are open when not blinking (1 = wide awake).
    lid: f32,
}

impl Demeanour {
    fn of(state: AvatarState) -> Self {
        match state {
            AvatarState::Idle => Demeanour {
                tilt: 0.0,
                brow_raise: 0.0,
                brow_tilt: 0.0,
                nod: 0.0,
                sway: 1.0,
                lively: 0.0,
                smile: 0.55,
                focus: 0.35,
                lid: 0.86,
            },
            AvatarState::Listening => Demeanour {
                tilt: 0.085,
                brow_raise: 0.012,
                brow_tilt: 0.0,
                nod: 1.0,
                sway: 0.5,
                lively: 0.0,
                smile: 0.75,
                focus: 0.92,
                lid: 1.0,
            },
            AvatarState::Speaking => Demeanour {
                tilt: -0.02,
                brow_raise: 0.003,
                brow_tilt: 0.0,
                nod: 0.0,
                sway: 1.3,
                lively: 1.0,
                smile: 0.45,
                focus: 0.7,
                lid: 0.94,
            },
        }
    }

    fn lerp(&self, o: &Demeanour, a: f32) -> Demeanour {
        let l = |x: f32, y: f32| x + (y - x) * a;
        Demeanour {
            tilt: l(self.tilt, o.tilt),
            brow_raise: l(self.brow_raise, o.brow_raise),
            brow_tilt: l(self.brow_tilt, o.brow_tilt),
            nod: l(self.nod, o.nod),
            sway: l(self.sway, o.sway),
            lively: l(self.lively, o.lively),
            smile: l(self.smile, o.smile),
            focus: l(self.focus, o.focus),
            lid: l(self.lid, o.lid),
        }
    }
}

/// Everything `draw_face` needs for one frame.
#[derive(Debug, Clone, Copy)]
struct FrameParams {
    body_dy: f32,
    head_dx: f32,
    head_dy: f32,
    tilt: f32,
    /// Offset of the features inside the head (fakes small turns and nods).
    feat_dx: f32,
    feat_dy: f32,
    eye_open: f32,
    gaze: (f32, f32),
    brow_raise: f32,
    brow_tilt: f32,
    mouth_open: f32,
    mouth_wide: f32,
    smile: f32,
}

fn unit(v: f32, default: f32) -> f32 {
    if v.is_finite() {
        v.clamp(0.0, 1.0)
    } else {
        default
    }
}

fn wave(t: f64, period_s: f64, phase: f64) -> f32 {
    (std::f64::consts::TAU * (t / period_s) + phase).sin() as f32
}

fn smoothstep(x: f32) -> f32 {
    let x = x.clamp(0.0, 1.0);
    x * x * (3.0 - 2.0 * x)
}

/// splitmix64: a deterministic hash for the blink and gaze schedules.
fn hash(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

const BLINK_SLOT_MS: u64 = 3000;

/// Eye openness (1 open, 0 shut) at `t_ms`: one blink of ~180 ms at a
/// pseudo-random moment in every 3 s slot, sometimes a double blink, so the
/// gap between blinks is 0.3..5.6 s. Deterministic in `t_ms`.
pub fn eye_openness(t_ms: u64) -> f32 {
    let slot = t_ms / BLINK_SLOT_MS;
    let mut open = 1.0f32;
    for s in slot.saturating_sub(1)..=slot {
        let h = hash(s ^ 0xB11C);
        let start = s * BLINK_SLOT_MS + 150 + h % 2550;
        let double = (h >> 20).is_multiple_of(6);
        for st in [Some(start), double.then_some(start + 260)]
            .into_iter()
            .flatten()
        {
            if t_ms >= st {
                open = open.min(blink_curve((t_ms - st) as f32));
            }
        }
    }
    open
}

/// Lid profile of one blink, `dt` ms after it starts: closes in 70 ms, stays
/// shut 30 ms, reopens over 80 ms.
fn blink_curve(dt: f32) -> f32 {
    if dt < 70.0 {
        1.0 - smoothstep(dt / 70.0)
    } else if dt < 100.0 {
        0.0
    } else if dt < 180.0 {
        smoothstep((dt - 100.0) / 80.0)
    } else {
        1.0
    }
}

/// Gaze target in -1..1 (x), -0.6..0.6 (y): a new fixation every 1.1..2.3 s,
/// reached with a fast 70 ms saccade.
fn gaze_wander(t_ms: u64) -> (f32, f32) {
    const SLOT: u64 = 1700;
    let target = |s: u64| {
        let h = hash(s ^ 0x6A2E);
        let gx = ((h & 0xFFFF) as f32 / 65535.0) * 2.0 - 1.0;
        let gy = (((h >> 16) & 0xFFFF) as f32 / 65535.0) * 1.2 - 0.6;
        // One fixation in three looks straight ahead.
        if (h >> 40).is_multiple_of(3) {
            (0.0, 0.0)
        } else {
            (gx, gy)
        }
    };
    let slot = t_ms / SLOT;
    // Jitter where in the slot the saccade happens.
    let jitter = hash(slot ^ 0x51) % 600;
    let start = slot * SLOT + jitter;
    let (from, to) = if t_ms >= start {
        (target(slot.wrapping_sub(1)), target(slot))
    } else {
        (target(slot.wrapping_sub(2)), target(slot.wrapping_sub(1)))
    };
    let a = if t_ms >= start {
        smoothstep((t_ms - start) as f32 / 70.0)
    } else {
        1.0
    };
    (from.0 + (to.0 - from.0) * a, from.1 + (to.1 - from.1) * a)
}

fn frame_params(pose: &Pose, d: &Demeanour) -> FrameParams {
    let t = pose.t_ms as f64 / 1000.0;
    let open = unit(pose.mouth_open, 0.0);
    let wide = unit(pose.mouth_wide, 0.5);

    let breath = wave(t, 4.2, 0.0);
    let sway = d.sway * (0.020 * wave(t, 7.3, 0.3) + 0.008 * wave(t, 3.1, 1.7));
    // Nods: a short dip every 2.6 s.
    let ph = (t % 2.6 / 2.6) as f32;
    let nod = if ph < 0.32 {
        (std::f32::consts::PI * ph / 0.32).sin()
    } else {
        0.0
    } * d.nod;
    // Speaking emphasis: brow flashes and head bobs at irregular moments.
    let emph = {
        let slot = pose.t_ms / 1300;
        let h = hash(slot ^ 0xE3);
        let ph = (pose.t_ms % 1300) as f32 / 1300.0;
        let on = (!h.is_multiple_of(3)) as u8 as f32;
        on * if ph < 0.4 {
            (std::f32::consts::PI * ph / 0.4).sin()
        } else {
            0.0
        }
    } * d.lively;

    let gw = gaze_wander(pose.t_ms);
    let wander = 1.0 - d.focus;
    FrameParams {
        body_dy: 0.004 * breath,
        head_dx: 0.006 * d.sway * wave(t, 9.1, 0.8),
        head_dy: 0.005 * breath + 0.010 * nod + d.lively * 0.006 * open,
        tilt: d.tilt + sway + d.lively * 0.012 * wave(t, 2.3, 0.5),
        feat_dx: 0.010 * d.sway * wave(t, 6.1, 2.0) + d.lively * 0.004 * wave(t, 1.9, 0.1),
        feat_dy: 0.006 * nod,
        eye_open: eye_openness(pose.t_ms) * d.lid,
        gaze: (gw.0 * wander, gw.1 * wander + 0.15 * nod),
        brow_raise: d.brow_raise + d.lively * (0.005 * open + 0.008 * emph),
        brow_tilt: d.brow_tilt - d.lively * 0.05 * emph,
        mouth_open: open,
        mouth_wide: wide,
        smile: d.smile,
    }
}

// ---------------------------------------------------------------------------
// Rasterising.

/// Local (face units) <-> screen (pixels) transform: rotation `angle` about
/// `pivot`, then translation by `(dx, dy)`.
#[derive(Debug, Clone, Copy)]
struct Xf {
    scale: f32,
    cos: f32,
    sin: f32,
    pivot: (f32, f32),
    /// Screen position of the pivot, in pixels.
    origin: (f32, f32),
}

impl Xf {
    fn new(size: f32, angle: f32, pivot: (f32, f32), dx: f32, dy: f32) -> Self {
        let c = size * 0.5;
        Xf {
            scale: size,
            cos: angle.cos(),
            sin: angle.sin(),
            pivot,
            origin: (c + size * (pivot.0 + dx), c + size * (pivot.1 + dy)),
        }
    }

    fn to_screen(self, x: f32, y: f32) -> (f32, f32) {
        let (x, y) = (x - self.pivot.0, y - self.pivot.1);
        (
            self.origin.0 + self.scale * (self.cos * x - self.sin * y),
            self.origin.1 + self.scale * (self.sin * x + self.cos * y),
        )
    }

    fn to_local(self, sx: f32, sy: f32) -> (f32, f32) {
        let dx = (sx - self.origin.0) / self.scale;
        let dy = (sy - self.origin.1) / self.scale;
        (
            self.cos * dx + self.sin * dy + self.pivot.0,
            -self.sin * dx + self.cos * dy + self.pivot.1,
        )
    }
}

struct Canvas<'a> {
    px: &'a mut [u8],
    w: usize,
    h: usize,
}

impl Canvas<'_> {
    /// Fills the shape `sdf < 0` (distances in face units) inside the local
    /// bounding box `bb = [x0, y0, x1, y1]`, with `color(x, y)`, opacity
    /// `alpha` and an edge ramp `feather` pixels wide (1 = crisp antialiasing).
    #[allow(clippy::too_many_arguments)]
    fn fill<S, C>(&mut self, xf: &Xf, bb: [f32; 4], feather: f32, alpha: f32, sdf: S, color: C)
    where
        S: Fn(f32, f32) -> f32,
        C: Fn(f32, f32) -> [f32; 3],
    {
        if alpha <= 0.0 {
            return;
        }
        let corners = [
            xf.to_screen(bb[0], bb[1]),
            xf.to_screen(bb[2], bb[1]),
            xf.to_screen(bb[0], bb[3]),
            xf.to_screen(bb[2], bb[3]),
        ];
        let pad = feather + 1.0;
        let (mut x0, mut y0, mut x1, mut y1) = (f32::MAX, f32::MAX, f32::MIN, f32::MIN);
        for (x, y) in corners {
            x0 = x0.min(x);
            y0 = y0.min(y);
            x1 = x1.max(x);
            y1 = y1.max(y);
        }
        let xa = (x0 - pad).floor().max(0.0) as usize;
        let ya = (y0 - pad).floor().max(0.0) as usize;
        let xb = ((x1 + pad).ceil().max(0.0) as usize).min(self.w);
        let yb = ((y1 + pad).ceil().max(0.0) as usize).min(self.h);
        if xa >= xb || ya >= yb {
            return;
        }
        let k = xf.scale / feather;
        // Local step per screen pixel along x.
        let (stx, sty) = (xf.cos / xf.scale, -xf.sin / xf.scale);
        for y in ya..yb {
            let (mut lx, mut ly) = xf.to_local(xa as f32 + 0.5, y as f32 + 0.5);
            let row = &mut self.px[(y * self.w + xa) * 3..(y * self.w + xb) * 3];
            for p in row.chunks_exact_mut(3) {
                let d = sdf(lx, ly);
                let cov = (0.5 - d * k).min(1.0) * alpha;
                if cov > 0.0 {
                    let c = color(lx, ly);
                    if cov >= 1.0 {
                        p[0] = c[0] as u8;
                        p[1] = c[1] as u8;
                        p[2] = c[2] as u8;
                    } else {
                        for i in 0..3 {
                            let v = p[i] as f32;
                            p[i] = (v + (c[i] - v) * cov + 0.5) as u8;
                        }
                    }
                }
                lx += stx;
                ly += sty;
            }
        }
    }
}

// Signed distance helpers (approximate where noted; exact near the edges is
// all antialiasing needs).

fn circle(x: f32, y: f32, cx: f32, cy: f32, r: f32) -> f32 {
    ((x - cx) * (x - cx) + (y - cy) * (y - cy)).sqrt() - r
}

/// Approximate distance to an axis-aligned ellipse centred at the origin.
fn ellipse(x: f32, y: f32, rx: f32, ry: f32) -> f32 {
    let k0 = ((x / rx) * (x / rx) + (y / ry) * (y / ry)).sqrt();
    let k1 = ((x / (rx * rx)) * (x / (rx * rx)) + (y / (ry * ry)) * (y / (ry * ry))).sqrt();
    if k1 < 1e-12 {
        -rx.min(ry)
    } else {
        k0 * (k0 - 1.0) / k1
    }
}

/// Ellipse with a different vertical radius above (`ry_top`) and below (`ry_bot`) its centre.
fn ellipse2(x: f32, y: f32, rx: f32, ry_top: f32, ry_bot: f32) -> f32 {
    ellipse(x, y, rx, if y < 0.0 { ry_top } else { ry_bot })
}

/// Distance to a capsule from `(-half, 0)` to `(half, 0)` with radius `r`.
fn capsule_h(x: f32, y: f32, half: f32, r: f32) -> f32 {
    let cx = x.clamp(-half, half);
    ((x - cx) * (x - cx) + y * y).sqrt() - r
}

fn mix(a: [f32; 3], b: [f32; 3], t: f32) -> [f32; 3] {
    let t = t.clamp(0.0, 1.0);
    [
        a[0] + (b[0] - a[0]) * t,
        a[1] + (b[1] - a[1]) * t,
        a[2] + (b[2] - a[2]) * t,
    ]
}

/// The static layer: a vertical gradient with a soft light halo behind the head.
fn background_layer(size: u32) -> Vec<u8> {
    let n = size as usize;
    let mut buf = vec![0u8; n * n * 3];
    for y in 0..n {
        let fy = (y as f32 + 0.5) / n as f32;
        let base = mix(BG_TOP, BG_BOTTOM, fy);
        for x in 0..n {
            let fx = (x as f32 + 0.5) / n as f32;
            let r = ((fx - 0.5) * (fx - 0.5) + (fy - 0.42) * (fy - 0.42)).sqrt();
            let c = mix([246.0, 249.0, 255.0], base, smoothstep((r - 0.12) / 0.38));
            let i = (y * n + x) * 3;
            for k in 0..3 {
                buf[i + k] = (c[k] + 0.5) as u8;
            }
        }
    }
    buf
}

fn draw_face(cv: &mut Canvas, p: &FrameParams, size: f32) {
    let body = Xf::new(size, 0.0, (0.0, 0.0), 0.0, p.body_dy);
    let neck_xf = Xf::new(
        size,
        p.tilt * 0.3,
        PIVOT,
        p.head_dx * 0.5,
        (p.body_dy + p.head_dy) * 0.5,
    );
    let head = Xf::new(size, p.tilt, PIVOT, p.head_dx, p.head_dy);

    // Neck, with a shadow under the chin.
    cv.fill(
        &neck_xf,
        [-0.09, 0.1, 0.09, 0.42],
        1.0,
        1.0,
        |x, y| {
            let dx = x.abs() - 0.074;
            let dy = (y - 0.26).abs() - 0.14;
            dx.max(dy).min(0.0) + (dx.max(0.0).powi(2) + dy.max(0.0).powi(2)).sqrt()
        },
        |_, y| mix(SKIN_SHADE, SKIN, (y - 0.23) / 0.12),
    );
    // Shoulders and shirt, with a round collar opening.
    cv.fill(
        &body,
        [-0.5, 0.3, 0.5, 0.5],
        1.0,
        1.0,
        |x, y| {
            let b = ellipse(x, y - 0.62, 0.44, 0.29);
            let collar = ellipse(x, y - 0.335, 0.088, 0.05);
            b.max(-collar)
        },
        |x, y| mix(SHIRT, SHIRT_DARK, (x.abs() - 0.15) / 0.3 + (y - 0.34) * 0.5),
    );
    // Collar rim.
    cv.fill(
        &body,
        [-0.12, 0.26, 0.12, 0.42],
        1.0,
        1.0,
        |x, y| {
            let b = ellipse(x, y - 0.62, 0.44, 0.29);
            let rim = ellipse(x, y - 0.335, 0.088, 0.05).abs() - 0.008;
            rim.max(b)
        },
        |_, _| SHIRT_DARK,
    );

    // Hair behind the head (volume at the back and sides).
    cv.fill(
        &head,
        [-0.31, -0.4, 0.31, 0.1],
        1.0,
        1.0,
        |x, y| ellipse(x, y - (HEAD_CY - 0.03), HEAD_RX + 0.03, HEAD_RY + 0.02).max(y - 0.02),
        |_, _| mix(HAIR, [0.0, 0.0, 0.0], 0.15),
    );

    // Ears.
    for s in [-1.0f32, 1.0] {
        let ex = s * (HEAD_RX - 0.005);
        cv.fill(
            &head,
            [ex - 0.06, -0.08, ex + 0.06, 0.08],
            1.0,
            1.0,
            move |x, y| ellipse(x - ex, y - 0.01, 0.038, 0.056),
            |_, _| mix(SKIN, SKIN_SHADE, 0.35),
        );
        let ix = s * (HEAD_RX + 0.008);
        cv.fill(
            &head,
            [ix - 0.04, -0.05, ix + 0.04, 0.06],
            2.0,
            0.6,
            move |x, y| ellipse(x - ix, y - 0.012, 0.016, 0.032),
            |_, _| SKIN_SHADE,
        );
    }

    // Head, slightly narrower at the jaw, softly shaded at the rim.
    let head_sdf = |x: f32, y: f32| {
        let yy = y - HEAD_CY;
        let taper = 1.0 - 0.11 * smoothstep(yy / HEAD_RY);
        ellipse(x, yy, HEAD_RX * taper, HEAD_RY)
    };
    cv.fill(
        &head,
        [-HEAD_RX, HEAD_CY - HEAD_RY, HEAD_RX, HEAD_CY + HEAD_RY],
        1.0,
        1.0,
        head_sdf,
        |x, y| {
            let nx = (x + 0.04) / HEAD_RX;
            let ny = (y - HEAD_CY + 0.03) / HEAD_RY;
            let r2 = nx * nx + ny * ny;
            mix(SKIN, SKIN_SHADE, (r2 - 0.55) * 0.45)
        },
    );

    // Hair cap with a side-swept fringe.
    let fringe = |x: f32| {
        let u = x / 0.27;
        -0.185 + 0.05 * u + 0.11 * u * u + 0.011 * (x * 55.0).sin()
    };
    cv.fill(
        &head,
        [-0.3, -0.4, 0.3, 0.05],
        1.0,
        1.0,
        |x, y| {
            let cap = ellipse(x, y - (HEAD_CY - 0.022), HEAD_RX + 0.018, HEAD_RY + 0.005);
            let f = (y - fringe(x)) / 1.25;
            cap.max(f)
        },
        |x, y| {
            // A soft highlight band across the crown.
            let band = ((y + 0.24 - 0.25 * x).abs() / 0.05).min(1.0);
            mix(HAIR_LIGHT, HAIR, band)
        },
    );

    let fx = p.feat_dx;
    let fy = p.feat_dy;

    // Cheeks.
    for s in [-1.0f32, 1.0] {
        let cx = s * 0.158 + fx * 0.8;
        let cy = 0.085 + fy;
        cv.fill(
            &head,
            [cx - 0.07, cy - 0.06, cx + 0.07, cy + 0.06],
            0.035 * size,
            0.42,
            move |x, y| ellipse(x - cx, y - cy, 0.036, 0.026),
            |_, _| BLUSH,
        );
    }

    // Eyes.
    let open = p.eye_open.clamp(0.0, 1.0);
    for s in [-1.0f32, 1.0] {
        let ex = s * EYE_DX + fx;
        let ey = EYE_CY + fy + (1.0 - open) * EYE_RY * 0.35;
        let ry = EYE_RY * open;
        let bb = [
            ex - EYE_RX - 0.02,
            ey - EYE_RY - 0.02,
            ex + EYE_RX + 0.02,
            ey + EYE_RY + 0.02,
        ];
        // Lash line (thicker on top), which becomes the closed lid when ry -> 0.
        cv.fill(
            &head,
            bb,
            1.0,
            1.0,
            move |x, y| {
                let (lx, ly) = (x - ex, y - ey);
                // Closing lids curve down into a soft arc.
                let ly = ly + 5.0 * (1.0 - open) * lx * lx;
                ellipse2(lx, ly, EYE_RX + 0.002, ry + 0.0075, ry * 0.97 + 0.003)
            },
            |_, _| EYE_LINE,
        );
        if ry * size < 0.6 {
            continue;
        }
        let eye = move |x: f32, y: f32| ellipse(x - ex, y - ey, EYE_RX, ry);
        cv.fill(&head, bb, 1.0, 1.0, eye, |_, y| {
            mix(
                EYE_WHITE,
                [222.0, 226.0, 236.0],
                (ey - ry * 0.2 - y) / (ry * 0.8),
            )
        });
        let ix = ex + p.gaze.0 * 0.016;
        let iy = EYE_CY + fy + p.gaze.1 * 0.012 + 0.003;
        cv.fill(
            &head,
            bb,
            1.0,
            1.0,
            move |x, y| circle(x, y, ix, iy, IRIS_R).max(eye(x, y)),
            move |x, y| {
                let r = ((x - ix).powi(2) + (y - iy).powi(2)).sqrt() / IRIS_R;
                mix(IRIS, IRIS_DARK, (r - 0.55) * 2.2 + (iy - y) / IRIS_R * 0.5)
            },
        );
        cv.fill(
            &head,
            bb,
            1.0,
            1.0,
            move |x, y| circle(x, y, ix, iy, PUPIL_R).max(eye(x, y)),
            |_, _| PUPIL,
        );
        cv.fill(
            &head,
            bb,
            1.0,
            0.95,
            move |x, y| circle(x, y, ix - 0.011, iy - 0.012, 0.0085).max(eye(x, y)),
            |_, _| [255.0, 255.0, 255.0],
        );
        cv.fill(
            &head,
            bb,
            1.0,
            0.7,
            move |x, y| circle(x, y, ix + 0.01, iy + 0.01, 0.004).max(eye(x, y)),
            |_, _| [255.0, 255.0, 255.0],
        );
    }

    // Eyebrows: bent capsules; `brow_tilt` lifts the inner ends.
    for s in [-1.0f32, 1.0] {
        let bx = s * (EYE_DX + 0.004) + fx;
        let by = BROW_CY + fy - p.brow_raise;
        let (c, sn) = ((s * p.brow_tilt).cos(), (s * p.brow_tilt).sin());
        cv.fill(
            &head,
            [bx - 0.08, by - 0.06, bx + 0.08, by + 0.05],
            1.0,
            1.0,
            move |x, y| {
                let (dx, dy) = (x - bx, y - by);
                let (u, v) = (c * dx + sn * dy, -sn * dx + c * dy);
                // Arch: ends lower than the middle; thinner towards the outer end.
                let v = v - 5.0 * u * u;
                let taper = 1.0 - 0.35 * smoothstep(u * s / 0.05 * 0.5 + 0.5);
                capsule_h(u, v, 0.042, 0.0105 * taper)
            },
            |_, _| BROW,
        );
    }

    // Nose: a soft shadow and a small smiling curve.
    let nx = fx * 1.2;
    let ny = 0.072 + fy;
    cv.fill(
        &head,
        [nx - 0.05, ny - 0.05, nx + 0.05, ny + 0.03],
        0.02 * size,
        0.35,
        move |x, y| ellipse(x - nx - 0.004, y - ny + 0.012, 0.018, 0.03),
        |_, _| SKIN_SHADE,
    );
    cv.fill(
        &head,
        [nx - 0.04, ny - 0.03, nx + 0.04, ny + 0.03],
        1.0,
        1.0,
        move |x, y| capsule_h(x - nx, y - ny + 40.0 * (x - nx).powi(2), 0.014, 0.0045),
        |_, _| [222.0, 150.0, 128.0],
    );

    // Mouth.
    let m = mouth_geometry(p.mouth_open, p.mouth_wide, p.smile);
    let mx = fx * 1.1;
    let my = MOUTH_CY + fy;
    let bend = m.bend;
    let to_m = move |x: f32, y: f32| {
        let u = x - mx;
        (u, y - my + bend * u * u)
    };
    let bb = [
        mx - m.w - 0.03,
        my - m.ht - 0.04,
        mx + m.w + 0.03,
        my + m.hb + 0.03,
    ];
    let (w, ht, hb) = (m.w, m.ht, m.hb);
    cv.fill(
        &head,
        bb,
        1.0,
        1.0,
        move |x, y| {
            let (u, v) = to_m(x, y);
            ellipse2(u, v, w + LIP_W, ht + LIP_W * 0.9, hb + LIP_W * 1.1)
        },
        |_, _| LIPS,
    );
    if m.ht + m.hb > 0.5 / size {
        let inner = move |x: f32, y: f32| {
            let (u, v) = to_m(x, y);
            ellipse2(u, v, w, ht, hb)
        };
        cv.fill(&head, bb, 1.0, 1.0, inner, |_, _| MOUTH_IN);
        let h = ht + hb;
        // Upper teeth: the top quarter of the opening.
        cv.fill(
            &head,
            bb,
            1.0,
            1.0,
            move |x, y| {
                let (_, v) = to_m(x, y);
                inner(x, y).max(v - (-ht + 0.24 * h))
            },
            |_, _| TEETH,
        );
        // Tongue at the bottom.
        cv.fill(
            &head,
            bb,
            1.0,
            1.0,
            move |x, y| {
                let (u, v) = to_m(x, y);
                inner(x, y).max(ellipse(u, v - hb * 0.95, w * 0.62, hb * 0.5))
            },
            |_, _| TONGUE,
        );
    } else {
        // Closed: the line between the lips.
        cv.fill(
            &head,
            bb,
            1.0,
            1.0,
            move |x, y| {
                let (u, v) = to_m(x, y);
                capsule_h(u, v, w - 0.002, 0.0016)
            },
            |_, _| [150.0, 70.0, 76.0],
        );
    }
}

struct MouthGeom {
    /// Half width of the opening.
    w: f32,
    /// Opening above / below the lip line.
    ht: f32,
    hb: f32,
    /// Smile curvature (corners up), in 1/face units.
    bend: f32,
}

fn mouth_geometry(open: f32, wide: f32, smile: f32) -> MouthGeom {
    let open = unit(open, 0.0);
    let wide = unit(wide, 0.5);
    // Round vowels are narrower and taller, wide ones wider and flatter; the
    // area at a given `open` stays about the same.
    let w = 0.056 + 0.026 * wide - 0.006 * open;
    let h = MOUTH_H_MAX * open * (0.0676 / w);
    MouthGeom {
        w,
        ht: 0.28 * h,
        hb: 0.72 * h,
        bend: 1.2 + 1.8 * smile - 0.8 * open,
    }
}

// ---------------------------------------------------------------------------
// Pixel measures.

/// Mouth region in screen fractions `[x0, y0, x1, y1]`: the mouth with room
/// for sway, tilt and nods, clear of the nose and the eyes.
const MOUTH_REGION: [f32; 4] = [0.34, 0.595, 0.66, 0.775];
/// Dark-interior weight of a fully open neutral mouth, per pixel of area (calibrated).
const MOUTH_FULL_AREA: f32 = 0.00493;

/// How open the mouth is in a frame rendered at `size`, from its pixels:
/// the (antialiasing-weighted) count of dark mouth-interior pixels in the
/// mouth region, normalised so a fully open neutral mouth reads about 1.
/// A closed mouth reads 0. Works on any image; pixels outside it are ignored.
pub fn mouth_open_measure(img: &RgbImage, size: u32) -> f32 {
    let s = size.max(1) as f32;
    let weight = |p: &image::Rgb<u8>| {
        let [r, g, b] = p.0;
        let (r, g, b) = (r as f32, g as f32, b as f32);
        let luma = 0.299 * r + 0.587 * g + 0.114 * b;
        // Dark and reddish: the inside of the mouth (not hair, not pupils).
        if r >= g && r >= b {
            ((100.0 - luma) / 40.0).clamp(0.0, 1.0)
        } else {
            0.0
        }
    };
    region_sum(img, s, MOUTH_REGION, weight) / (MOUTH_FULL_AREA * s * s)
}

/// Both eye regions, in screen fractions.
const EYE_REGIONS: [[f32; 4]; 2] = [[0.33, 0.41, 0.48, 0.57], [0.52, 0.41, 0.67, 0.57]];
/// Eye-white weight of two open eyes, per pixel of area (calibrated).
const EYE_FULL_AREA: f32 = 0.00737;

/// How open the eyes are in a frame rendered at `size`, from its pixels: the
/// count of eye-white pixels in both eye regions, normalised so open eyes
/// read about 1 when wide open (Listening; relaxed Idle lids read ~0.7). Shut eyes read 0.
pub fn eye_open_measure(img: &RgbImage, size: u32) -> f32 {
    let s = size.max(1) as f32;
    let weight = |p: &image::Rgb<u8>| {
        let [r, g, b] = p.0;
        let lo = r.min(g).min(b) as f32;
        let hi = r.max(g).max(b) as f32;
        // Near-white and near-grey (the skin and the background are not).
        if hi - lo < 22.0 {
            ((lo - 205.0) / 30.0).clamp(0.0, 1.0)
        } else {
            0.0
        }
    };
    let total: f32 = EYE_REGIONS
        .iter()
        .map(|r| region_sum(img, s, *r, weight))
        .sum();
    total / (EYE_FULL_AREA * s * s)
}

fn region_sum(img: &RgbImage, s: f32, r: [f32; 4], weight: impl Fn(&image::Rgb<u8>) -> f32) -> f32 {
    let x0 = ((r[0] * s) as u32).min(img.width());
    let x1 = ((r[2] * s) as u32).min(img.width());
    let y0 = ((r[1] * s) as u32).min(img.height());
    let y1 = ((r[3] * s) as u32).min(img.height());
    let mut sum = 0.0;
    for y in y0..y1 {
        for x in x0..x1 {
            sum += weight(img.get_pixel(x, y));
        }
    }
    sum
}

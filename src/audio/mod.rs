//! Audio: decoding, resampling, PCM helpers and voice activity detection.
//!
//! Everything here works on mono `f32` samples in `[-1, 1]`:
//! - [`pcm`]: the [`Pcm`] clip type, i16/byte/base64 conversions, levels.
//! - [`decode`]: any supported file (WAV/FLAC/MP3/OGG Vorbis) to mono [`Pcm`].
//! - [`resample`](mod@resample): streaming ([`StreamResampler`]) and whole-clip ([`resample()`]) rate conversion.
//! - [`wav`]: writing 16-bit WAV files.

pub mod decode;
pub mod pcm;
pub mod resample;
pub mod vad;
pub mod wav;

pub use decode::{decode_bytes, decode_file};
pub use pcm::*;
pub use resample::{StreamResampler, resample};
pub use wav::write_wav;

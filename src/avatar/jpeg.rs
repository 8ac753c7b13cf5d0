//! Frame encoding and inspection: JPEG for the wire ([`encode_jpeg`]), PNG
//! for looking at frames ([`save_png`]) and a grid of frames in one image
//! ([`contact_sheet`]).

use std::path::Path;

use anyhow::{Context, Result};
use image::RgbImage;
use image::codecs::jpeg::JpegEncoder;

/// Encodes `img` as a baseline JPEG; `quality` is clamped to 1..=100 (~80 is a
/// good trade-off for video frames).
pub fn encode_jpeg(img: &RgbImage, quality: u8) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity((img.width() * img.height()) as usize / 4 + 1024);
    JpegEncoder::new_with_quality(&mut out, quality.clamp(1, 100))
        .encode_image(img)
        .context("encoding a JPEG frame")?;
    Ok(out)
}

/// Lays `frames` out in a grid `columns` wide (at least 1), row by row, on a
/// white background; cells are the size of the largest frame. No frames give
/// a 1x1 white image.
pub fn contact_sheet(frames: &[RgbImage], columns: usize) -> RgbImage {
    if frames.is_empty() {
        return RgbImage::from_pixel(1, 1, image::Rgb([255, 255, 255]));
    }
    let cols = columns.clamp(1, frames.len());
    let rows = frames.len().div_ceil(cols);
    let cw = frames.iter().map(|f| f.width()).max().unwrap_or(1);
    let ch = frames.iter().map(|f| f.height()).max().unwrap_or(1);
    let mut sheet = RgbImage::from_pixel(
        cw * cols as u32,
        ch * rows as u32,
        image::Rgb([255, 255, 255]),
    );
    for (i, f) in frames.iter().enumerate() {
        let x = (i % cols) as i64 * cw as i64;
        let y = (i / cols) as i64 * ch as i64;
        image::imageops::replace(&mut sheet, f, x, y);
    }
    sheet
}

/// Writes `img` as a PNG file, creating the parent directory if needed.
pub fn save_png(img: &RgbImage, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    img.save_with_format(path, image::ImageFormat::Png)
        .with_context(|| format!("writing {}", path.display()))
}

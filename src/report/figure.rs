//! Figures as files, for every figure fewshot draws (gate traces, a run's
//! validation curves, optimisation loss curves): the font of their text and
//! one drawing rendered as SVG text and as a PNG.
//!
//! Text is measured and (in the PNG) rasterised with DejaVu Sans compiled
//! into the binary, or the font file named by `$FEWSHOT_FONT`; it never
//! depends on the system's fonts. The SVG writes `<text>` elements (family
//! `sans-serif`).

use std::path::PathBuf;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

/// Environment variable naming a TrueType/OpenType font file for PNG text.
pub const FONT_ENV: &str = "FEWSHOT_FONT";

/// What a drawing function returns on a backend.
pub type DrawResult<DB> =
    std::result::Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// Register the font of the figures' text once per process: the file named
/// by `$FEWSHOT_FONT` when it is set and usable, else DejaVu Sans compiled
/// into the binary (the `dejavu` crate), so text never depends on what the
/// system has installed. True when a font is registered (false only if
/// plotters rejects the embedded font, which would be a build fault).
pub(crate) fn font_available() -> bool {
    static FOUND: OnceLock<bool> = OnceLock::new();
    *FOUND.get_or_init(|| {
        if let Some(path) = std::env::var_os(FONT_ENV).map(PathBuf::from) {
            match std::fs::read(&path) {
                Ok(bytes) => {
                    // plotters keeps fonts for the whole process: leak one copy.
                    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                    if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                        .is_ok()
                    {
                        tracing::debug!("figure text uses the font {}", path.display());
                        return true;
                    }
                    tracing::warn!(
                        "{FONT_ENV}={} is not a usable TrueType font; using the embedded DejaVu Sans",
                        path.display()
                    );
                }
                Err(e) => tracing::warn!(
                    "{FONT_ENV}={} cannot be read ({e}); using the embedded DejaVu Sans",
                    path.display()
                ),
            }
        }
        let ok = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        )
        .is_ok();
        if !ok {
            tracing::warn!("the embedded DejaVu Sans was refused; figures are drawn without text");
        }
        ok
    })
}

/// `draw` on a `size` canvas as SVG text (the font registered first, so
/// that text is measured as the PNG draws it); the error says what failed.
pub fn svg(
    size: (u32, u32),
    draw: impl for<'b> FnOnce(&DrawingArea<SVGBackend<'b>, Shift>) -> DrawResult<SVGBackend<'b>>,
) -> std::result::Result<String, String> {
    font_available();
    let mut s = String::new();
    {
        let root = SVGBackend::with_string(&mut s, size).into_drawing_area();
        draw(&root).map_err(|e| e.to_string())?;
    }
    Ok(s)
}

/// `draw` on a white `size` canvas as an RGB PNG file's bytes.
pub fn png(
    size: (u32, u32),
    draw: impl for<'b> FnOnce(&DrawingArea<BitMapBackend<'b>, Shift>) -> DrawResult<BitMapBackend<'b>>,
) -> std::result::Result<Vec<u8>, String> {
    let (w, h) = size;
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        draw(&root).map_err(|e| e.to_string())?;
    }
    let img = image::RgbImage::from_raw(w, h, buf)
        .ok_or_else(|| "bitmap buffer has the wrong size".to_string())?;
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .map_err(|e| format!("PNG encoding failed: {e}"))?;
    Ok(out)
}

//! RLE Lossless decoding (PS3.5 Annex G), including 32-bit samples.
//!
//! dicom-pixeldata decodes RLE only up to 16 bits, and RT Dose is usually
//! 32-bit, so the decoder is here. A frame is one fragment: a 64-byte header
//! (segment count, then up to 15 segment offsets) and PackBits-coded
//! segments, one per byte plane, most significant byte first.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RleError(pub String);

impl fmt::Display for RleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RLE data: {}", self.0)
    }
}

impl std::error::Error for RleError {}

/// Decode one frame of `pixels` samples of `bytes_per_sample` (1, 2 or 4)
/// into unsigned values.
pub fn decode_frame(
    fragment: &[u8],
    pixels: usize,
    bytes_per_sample: usize,
) -> Result<Vec<u32>, RleError> {
    if fragment.len() < 64 {
        return Err(RleError("frame shorter than its 64-byte header".into()));
    }
    let word = |i: usize| {
        u32::from_le_bytes([
            fragment[i * 4],
            fragment[i * 4 + 1],
            fragment[i * 4 + 2],
            fragment[i * 4 + 3],
        ])
    };
    let n_segments = word(0) as usize;
    if n_segments != bytes_per_sample {
        return Err(RleError(format!(
            "{n_segments} segments for {bytes_per_sample}-byte samples (one sample per pixel expected)"
        )));
    }
    let offsets: Vec<usize> = (0..n_segments).map(|s| word(1 + s) as usize).collect();
    let mut out = vec![0u32; pixels];
    for s in 0..n_segments {
        let start = offsets[s];
        let end = if s + 1 < n_segments {
            offsets[s + 1]
        } else {
            fragment.len()
        };
        if start < 64 || start > end || end > fragment.len() {
            return Err(RleError(format!(
                "segment {s} offsets {start}..{end} out of range"
            )));
        }
        let plane = unpack_bits(&fragment[start..end], pixels)?;
        let shift = 8 * (n_segments - 1 - s);
        for (o, b) in out.iter_mut().zip(plane) {
            *o |= u32::from(b) << shift;
        }
    }
    Ok(out)
}

/// PackBits: a header byte n, then n+1 literal bytes (0..=127) or one byte
/// repeated 1-n times (-127..=-1); -128 is a no-op.
fn unpack_bits(src: &[u8], expected: usize) -> Result<Vec<u8>, RleError> {
    let mut out = Vec::with_capacity(expected);
    let mut i = 0;
    while i < src.len() && out.len() < expected {
        let n = src[i] as i8;
        i += 1;
        if n >= 0 {
            let len = n as usize + 1;
            let lit = src
                .get(i..i + len)
                .ok_or_else(|| RleError("literal run past the end of its segment".into()))?;
            out.extend_from_slice(lit);
            i += len;
        } else if n != -128 {
            let b = *src
                .get(i)
                .ok_or_else(|| RleError("replicate run past the end of its segment".into()))?;
            out.extend(std::iter::repeat_n(b, (1 - i16::from(n)) as usize));
            i += 1;
        }
    }
    if out.len() < expected {
        return Err(RleError(format!(
            "segment decodes to {} bytes, {expected} expected",
            out.len()
        )));
    }
    out.truncate(expected);
    Ok(out)
}

/// Encode one frame (for tests and synthetic data): literal runs only where
/// values vary, replicate runs where they repeat.
pub fn encode_frame(values: &[u32], bytes_per_sample: usize) -> Vec<u8> {
    let mut segments = Vec::new();
    for s in 0..bytes_per_sample {
        let shift = 8 * (bytes_per_sample - 1 - s);
        let plane: Vec<u8> = values.iter().map(|v| (v >> shift) as u8).collect();
        let mut seg = pack_bits(&plane);
        if seg.len() % 2 == 1 {
            seg.push(0x80); // no-op pad to an even length
        }
        segments.push(seg);
    }
    let mut out = vec![0u8; 64];
    out[..4].copy_from_slice(&(bytes_per_sample as u32).to_le_bytes());
    let mut offset = 64u32;
    for (s, seg) in segments.iter().enumerate() {
        out[4 + s * 4..8 + s * 4].copy_from_slice(&offset.to_le_bytes());
        offset += seg.len() as u32;
    }
    for seg in segments {
        out.extend(seg);
    }
    out
}

fn pack_bits(src: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < src.len() {
        let mut run = 1;
        while i + run < src.len() && src[i + run] == src[i] && run < 128 {
            run += 1;
        }
        if run >= 2 {
            out.push((1i16 - run as i16) as i8 as u8);
            out.push(src[i]);
            i += run;
            continue;
        }
        let start = i;
        while i < src.len() && i - start < 128 && !(i + 1 < src.len() && src[i + 1] == src[i]) {
            i += 1;
        }
        if i == start {
            i += 1;
        }
        out.push((i - start - 1) as u8);
        out.extend_from_slice(&src[start..i]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_32_bit() {
        let values: Vec<u32> = (0..1000u32)
            .map(|i| {
                if i % 7 == 0 {
                    0
                } else {
                    i.wrapping_mul(2_654_435_761) >> 3
                }
            })
            .chain(std::iter::repeat_n(123_456_789, 300))
            .collect();
        let enc = encode_frame(&values, 4);
        assert_eq!(decode_frame(&enc, values.len(), 4).expect("decode"), values);
    }

    #[test]
    fn round_trips_16_bit() {
        let values: Vec<u32> = (0..513u32).map(|i| (i * 37) % 65536).collect();
        let enc = encode_frame(&values, 2);
        assert_eq!(decode_frame(&enc, values.len(), 2).expect("decode"), values);
    }

    #[test]
    fn packbits_from_the_standard() {
        // PS3.5 G.3.1 style: a literal of 3, a replicate of 4, a no-op.
        let seg = [2u8, 1, 2, 3, (-3i8) as u8, 9, 0x80];
        assert_eq!(
            unpack_bits(&seg, 7).expect("unpack"),
            vec![1, 2, 3, 9, 9, 9, 9]
        );
    }

    #[test]
    fn corrupt_frames_are_errors() {
        let values: Vec<u32> = (0..100).collect();
        let enc = encode_frame(&values, 4);
        assert!(decode_frame(&enc[..40], 100, 4).is_err());
        assert!(decode_frame(&enc[..enc.len() - 10], 100, 4).is_err());
        assert!(decode_frame(&enc, 100, 2).is_err());
    }
}

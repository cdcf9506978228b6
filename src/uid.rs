//! DICOM UID checks and generation.
//!
//! A UID names directories and files in the store, so it is checked before it
//! is ever joined to a path: only digits and dots, at most 64 characters, no
//! empty component (PS3.5 §9.1). This rules out `..`, `/`, and every other
//! path trick by construction. Leading zeros in a component are against the
//! standard but common in older systems; they are harmless here and accepted.

use std::fmt;

/// Why a string is not a valid UID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UidError {
    Empty,
    TooLong(usize),
    BadCharacter(char),
    EmptyComponent,
}

impl fmt::Display for UidError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UidError::Empty => f.write_str("empty"),
            UidError::TooLong(n) => write!(f, "{n} characters, more than 64"),
            UidError::BadCharacter(c) => write!(f, "character {c:?} is not a digit or a dot"),
            UidError::EmptyComponent => {
                f.write_str("empty component (two dots in a row, or a dot at an end)")
            }
        }
    }
}

/// Strip the trailing NUL or space padding that DICOM allows on UIDs.
pub fn trim(uid: &str) -> &str {
    uid.trim_end_matches(['\0', ' ']).trim_start_matches(' ')
}

/// Check a UID (already trimmed of padding).
pub fn validate(uid: &str) -> Result<(), UidError> {
    if uid.is_empty() {
        return Err(UidError::Empty);
    }
    if uid.len() > 64 {
        return Err(UidError::TooLong(uid.len()));
    }
    if let Some(c) = uid.chars().find(|c| !(c.is_ascii_digit() || *c == '.')) {
        return Err(UidError::BadCharacter(c));
    }
    for part in uid.split('.') {
        if part.is_empty() {
            return Err(UidError::EmptyComponent);
        }
    }
    Ok(())
}

/// The project's UID root: a UUID-derived root under `2.25`, fixed once.
pub const ROOT: &str = "2.25.238912379870381227473521938102547823";

/// Implementation Class UID written in file meta information and A-ASSOCIATE.
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.238912379870381227473521938102547823.1.1";

/// Implementation Version Name (at most 16 characters).
pub const IMPLEMENTATION_VERSION_NAME: &str = concat!("ESORISK_", env!("CARGO_PKG_VERSION"));

/// A new UID under `2.25` from 128 random bits (PS3.5 §B.2).
pub fn generate() -> String {
    let mut bytes = [0u8; 16];
    fill_random(&mut bytes);
    format!("2.25.{}", u128::from_be_bytes(bytes))
}

fn fill_random(buf: &mut [u8]) {
    // SAFETY: `buf` is valid for writes of its length.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n == buf.len() as isize {
        return;
    }
    // Fallback: time, a counter and an address; unique, if not unpredictable.
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
        ^ (u128::from(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)) << 64)
        ^ (buf.as_ptr() as usize as u128);
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (seed >> ((i % 16) * 8)) as u8 ^ (i as u8).wrapping_mul(31);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_real_uids() {
        assert_eq!(validate("1.2.840.10008.5.1.4.1.1.481.2"), Ok(()));
        assert_eq!(validate("2.25.0"), Ok(()));
        assert_eq!(validate("1.2."), Err(UidError::EmptyComponent));
        assert_eq!(validate(&generate()), Ok(()));
    }

    #[test]
    fn refuses_path_tricks_and_junk() {
        assert_eq!(validate("../../etc"), Err(UidError::BadCharacter('/')));
        assert_eq!(validate(".."), Err(UidError::EmptyComponent));
        assert_eq!(validate("1.2/3"), Err(UidError::BadCharacter('/')));
        assert_eq!(validate(""), Err(UidError::Empty));
        assert_eq!(validate("1..2"), Err(UidError::EmptyComponent));
        assert_eq!(validate("1.02"), Ok(()));
        assert!(matches!(
            validate(&"1".repeat(65)),
            Err(UidError::TooLong(65))
        ));
        assert_eq!(validate("1.2 .3"), Err(UidError::BadCharacter(' ')));
    }

    #[test]
    fn trims_padding() {
        assert_eq!(trim("1.2.3\0"), "1.2.3");
        assert_eq!(trim("1.2.3 "), "1.2.3");
    }

    #[test]
    fn version_name_fits() {
        assert!(IMPLEMENTATION_VERSION_NAME.len() <= 16);
        assert_eq!(validate(IMPLEMENTATION_CLASS_UID), Ok(()));
    }
}

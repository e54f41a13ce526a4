//! Request ids: the client's `X-Request-Id` when it is safe to pass on, else one
//! made here. The id goes to the upstream and back to the client in
//! `X-Request-Id`, into the access log and into error bodies, so one request can
//! be followed through every log that sees it.
//!
//! An id lives inline ([`RequestId`] is a fixed array, `Copy`), so taking,
//! storing and sending one never allocates.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The longest incoming id accepted; a longer one is replaced.
pub const MAX_LEN: usize = 128;

/// The request-id header, lower case as HTTP/2 and Pingora want it.
pub const HEADER: &str = "x-request-id";

/// One request's id: 1 to [`MAX_LEN`] characters of `[A-Za-z0-9._:-]`, so it
/// can be written into a header, a JSON string or a log line as it is.
#[derive(Clone, Copy)]
pub struct RequestId {
    len: u8,
    bytes: [u8; MAX_LEN],
}

impl RequestId {
    /// The client's id when `incoming` is a valid one (see [`is_valid`]), else a
    /// generated one. The second value says whether the client's was kept.
    pub fn accept_or_generate(incoming: Option<&[u8]>) -> (RequestId, bool) {
        match incoming.and_then(RequestId::parse) {
            Some(id) => (id, true),
            None => (RequestId::generate(), false),
        }
    }

    /// `value` as an id when it is valid; `None` otherwise.
    pub fn parse(value: &[u8]) -> Option<RequestId> {
        if !is_valid(value) {
            return None;
        }
        let mut bytes = [0u8; MAX_LEN];
        bytes[..value.len()].copy_from_slice(value);
        Some(RequestId {
            len: value.len() as u8,
            bytes,
        })
    }

    /// A new id, unique within this process and very likely across processes:
    /// 16 hex digits of a random per-process prefix, then 16 of a counter. One
    /// atomic add, no lock, no allocation.
    pub fn generate() -> RequestId {
        static PREFIX: OnceLock<u64> = OnceLock::new();
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let prefix = *PREFIX.get_or_init(random_prefix);
        let count = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut bytes = [0u8; MAX_LEN];
        write_hex(&mut bytes[..16], prefix);
        write_hex(&mut bytes[16..32], count);
        RequestId { len: 32, bytes }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Only ASCII is ever stored (checked by `is_valid`, or hex digits).
        std::str::from_utf8(self.as_bytes()).unwrap_or("")
    }

    /// The id's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RequestId({})", self.as_str())
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq for RequestId {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for RequestId {}

/// True for 1 to [`MAX_LEN`] bytes of `[A-Za-z0-9._:-]`. Anything else could
/// carry a header or log injection, or be mistaken for another field, so it is
/// replaced rather than cleaned.
pub fn is_valid(value: &[u8]) -> bool {
    (1..=MAX_LEN).contains(&value.len())
        && value
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// 64 random bits for this process's ids; falls back to the time and pid when
/// the system has no randomness to give (ids then stay unique in the process).
fn random_prefix() -> u64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_ok() {
        return u64::from_le_bytes(bytes);
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 32)
}

/// Writes `value` as `out.len()` (16) lower-case hex digits.
fn write_hex(out: &mut [u8], value: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let n = out.len();
    for (i, byte) in out.iter_mut().enumerate() {
        let shift = 4 * (n - 1 - i);
        *byte = DIGITS[((value >> shift) & 0xf) as usize];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_ids_are_kept() {
        for id in [
            "a",
            "req-42",
            "0af7651916cd43dd8448eb211c80319c",
            "x.y_z:1-2",
        ] {
            let (kept, from_client) = RequestId::accept_or_generate(Some(id.as_bytes()));
            assert!(from_client, "{id}");
            assert_eq!(kept.as_str(), id);
        }
        let longest = "a".repeat(MAX_LEN);
        assert_eq!(
            RequestId::parse(longest.as_bytes()).unwrap().as_str(),
            longest
        );
    }

    #[test]
    fn invalid_ids_are_replaced() {
        let too_long = "a".repeat(MAX_LEN + 1);
        for bad in [
            "",
            "has space",
            "quote\"",
            "new\nline",
            "slash/",
            "ünicode",
            "semi;colon",
            too_long.as_str(),
        ] {
            let (id, from_client) = RequestId::accept_or_generate(Some(bad.as_bytes()));
            assert!(!from_client, "{bad:?}");
            assert_eq!(id.as_str().len(), 32);
            assert!(is_valid(id.as_bytes()));
        }
        assert!(!RequestId::accept_or_generate(None).1);
    }

    #[test]
    fn generated_ids_are_hex_unique_and_share_the_prefix() {
        let a = RequestId::generate();
        let b = RequestId::generate();
        assert_ne!(a, b);
        assert_eq!(a.as_str()[..16], b.as_str()[..16]);
        assert!(a.as_str().bytes().all(|c| c.is_ascii_hexdigit()));
        let seen: std::collections::HashSet<String> = (0..10_000)
            .map(|_| RequestId::generate().to_string())
            .collect();
        assert_eq!(seen.len(), 10_000);
    }

    #[test]
    fn hex_digits() {
        let mut out = [0u8; 16];
        write_hex(&mut out, 0x0123_4567_89ab_cdef);
        assert_eq!(&out, b"0123456789abcdef");
    }
}

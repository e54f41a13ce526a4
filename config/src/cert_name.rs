//! Certificate names: the handle `ingressctl cert` and `tls.default_cert` use.

/// What a certificate name may be, for error messages.
pub const CERT_NAME_RULE: &str = "a certificate name is 1 to 64 characters of a-z, 0-9, '.', '_' and '-', starting with a letter or digit";

/// Whether `name` follows [`CERT_NAME_RULE`]. Names are also file names in
/// `tls.cert_dir`, so no '/' and no leading '.'.
pub fn is_cert_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 64
        && bytes[0].is_ascii_alphanumeric()
        && bytes.iter().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_cert_name("shop.example.com"));
        assert!(is_cert_name("wild_1-2"));
        for bad in ["", ".hidden", "a/b", "Upper", "a b", &"x".repeat(65)] {
            assert!(!is_cert_name(bad), "{bad:?}");
        }
    }
}

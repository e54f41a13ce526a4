//! Server-side rules for names that end up in host names: app names, preview
//! labels (normalised from branch names) and route hosts. Every error states the rule.

use ingress_proxy::host::{is_dns_label, normalise_host, HostBuf, MAX_HOST_LEN, MAX_LABEL_LEN};

use crate::model::RouteKind;

/// The rule a DNS label must follow, for error messages.
pub const LABEL_RULE: &str =
    "1 to 63 characters of a-z, 0-9 and '-', not starting or ending with '-' (RFC 1123)";

/// Normalises a branch-like name into a preview label (`Feature/Login_Page` →
/// `feature-login-page`): lower-case, every run of other characters becomes one `-`,
/// no `-` at either end. Then checks the RFC 1123 rule.
pub fn normalise_label(raw: &str) -> Result<String, String> {
    let mut label = String::with_capacity(raw.len());
    for c in raw.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            label.push(c);
        } else if !label.is_empty() && !label.ends_with('-') {
            label.push('-');
        }
    }
    while label.ends_with('-') {
        label.pop();
    }
    if label.is_empty() {
        return Err(format!(
            "label {raw:?} has no letters or digits; a label must be {LABEL_RULE}"
        ));
    }
    if label.len() > MAX_LABEL_LEN {
        return Err(format!(
            "label {raw:?} is {} characters once normalised ({label:?}); a label must be {LABEL_RULE}",
            label.len()
        ));
    }
    Ok(label)
}

/// Checks an app name: it is used in host-like places, so it must be a DNS label.
pub fn check_app_name(name: &str) -> Result<(), String> {
    if is_dns_label(name) {
        Ok(())
    } else {
        Err(format!(
            "app name {name:?} is invalid; an app name must be {LABEL_RULE}"
        ))
    }
}

/// Parses a route host as an admin writes it: `shop.example.com` (exact) or
/// `*.example.com` (wildcard, one label). Returns its kind and canonical host (the
/// suffix for a wildcard).
pub fn parse_route_host(raw: &str) -> Result<(RouteKind, String), String> {
    let (kind, host) = match raw.strip_prefix("*.") {
        Some(suffix) => (RouteKind::Wildcard, suffix),
        None => (RouteKind::Exact, raw),
    };
    if host.contains('*') {
        return Err(format!(
            "route host {raw:?} is invalid; write an exact host (shop.example.com) or one wildcard label in front (*.example.com)"
        ));
    }
    if host.contains(':') || host.starts_with('[') {
        return Err(format!(
            "route host {raw:?} is invalid; a route is a host name without port or IP literal"
        ));
    }
    let mut buf: HostBuf = [0; MAX_HOST_LEN + 2];
    let canonical = normalise_host(host.as_bytes(), &mut buf)
        .map_err(|e| format!("route host {raw:?} is invalid: {e}"))?;
    Ok((kind, canonical.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_normalised_from_branch_names() {
        assert_eq!(
            normalise_label("Feature/Login_Page").unwrap(),
            "feature-login-page"
        );
        assert_eq!(normalise_label("pr-42").unwrap(), "pr-42");
        assert_eq!(normalise_label("--Fix  bug!!--").unwrap(), "fix-bug");
        assert_eq!(
            normalise_label("a".repeat(63).as_str()).unwrap(),
            "a".repeat(63)
        );
    }

    #[test]
    fn invalid_labels_name_the_rule() {
        for bad in ["", "---", "日本", "/"] {
            let error = normalise_label(bad).unwrap_err();
            assert!(error.contains("RFC 1123"), "{bad}: {error}");
        }
        let error = normalise_label(&"a".repeat(64)).unwrap_err();
        assert!(error.contains("64 characters"), "{error}");
    }

    #[test]
    fn route_hosts() {
        assert_eq!(
            parse_route_host("Shop.Example.com").unwrap(),
            (RouteKind::Exact, "shop.example.com".to_string())
        );
        assert_eq!(
            parse_route_host("*.example.com").unwrap(),
            (RouteKind::Wildcard, "example.com".to_string())
        );
        for bad in [
            "*.*.example.com",
            "a.*.com",
            "shop.example.com:80",
            "[::1]",
            "bad host",
            "",
        ] {
            assert!(parse_route_host(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn app_names() {
        assert!(check_app_name("shop").is_ok());
        assert!(check_app_name("Shop").unwrap_err().contains("RFC 1123"));
        assert!(check_app_name("a.b").is_err());
    }
}

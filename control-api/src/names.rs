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

/// What a route host may be, for error messages.
pub const ROUTE_HOST_RULE: &str =
    "write a DNS host name (shop.example.com) or one wildcard label in front of one (*.example.com)";

/// Parses a route host as an admin writes it: `shop.example.com` (exact) or
/// `*.example.com` (wildcard, one label). Returns its kind and canonical host (the
/// suffix for a wildcard).
///
/// IP literals are refused, IPv4 and IPv6 alike: a route is a DNS name, and its
/// previews are `label.host`, which an IP address cannot have.
pub fn parse_route_host(raw: &str) -> Result<(RouteKind, String), String> {
    if raw.is_empty() {
        return Err(format!("the route host is empty; {ROUTE_HOST_RULE}"));
    }
    let (kind, host) = match raw.strip_prefix("*.") {
        Some(suffix) => (RouteKind::Wildcard, suffix),
        None => (RouteKind::Exact, raw),
    };
    if kind == RouteKind::Wildcard && host.is_empty() {
        return Err(format!(
            "route host {raw:?} has nothing after \"*.\"; a wildcard names the domain whose labels it covers: {ROUTE_HOST_RULE}"
        ));
    }
    if host.contains('*') {
        return Err(format!("route host {raw:?} is invalid; {ROUTE_HOST_RULE}"));
    }
    if host.starts_with('[') || host.parse::<std::net::IpAddr>().is_ok() {
        return Err(format!(
            "route host {raw:?} is an IP address; routes are DNS host names (previews are label.host), so IP literals are refused: {ROUTE_HOST_RULE}"
        ));
    }
    if host.contains(':') {
        return Err(format!(
            "route host {raw:?} has a port; a route matches every port: {ROUTE_HOST_RULE}"
        ));
    }
    let mut buf: HostBuf = [0; MAX_HOST_LEN + 2];
    let canonical = normalise_host(host.as_bytes(), &mut buf)
        .map_err(|e| format!("route host {raw:?} is invalid: {e}; {ROUTE_HOST_RULE}"))?;
    if ends_in_a_number(canonical) {
        return Err(format!(
            "route host {raw:?} ends in a number, so browsers read it as an IPv4 address; routes are DNS host names (previews are label.host), so IP literals are refused: {ROUTE_HOST_RULE}"
        ));
    }
    Ok((kind, canonical.to_string()))
}

/// True when the last label of `host` is a number (decimal, or hex after `0x`):
/// the WHATWG URL standard's "ends in a number", which makes browsers parse the
/// whole host as an IPv4 address (`127.1`, `10.0.0.1`, `0x7f.1`).
fn ends_in_a_number(host: &str) -> bool {
    let last = host.rsplit('.').next().unwrap_or(host);
    let decimal = !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit());
    let hex = last
        .strip_prefix("0x")
        .is_some_and(|digits| digits.bytes().all(|b| b.is_ascii_hexdigit()));
    decimal || hex
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
        // Hosts that look like DNS names but are not IP literals stay allowed.
        for good in ["1.example.com", "example.1a", "0xg.example", "x-0x1.com"] {
            assert!(parse_route_host(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn ip_literals_are_refused_alike() {
        for ip in [
            "127.0.0.1",
            "[::1]",
            "::1",
            "[::1]:80",
            "10.1",
            "0x7f.1",
            "*.10.0.0.1",
            "127.0.0.1.",
        ] {
            let error = parse_route_host(ip).unwrap_err();
            assert!(
                error.contains("IP literals are refused") && error.contains("*.example.com"),
                "{ip}: {error}"
            );
        }
    }

    #[test]
    fn an_empty_host_or_wildcard_names_the_real_cause() {
        let error = parse_route_host("").unwrap_err();
        assert!(error.starts_with("the route host is empty;"), "{error}");
        let error = parse_route_host("*.").unwrap_err();
        assert!(error.contains("nothing after \"*.\""), "{error}");
        for bad in ["", "*.", ".", "*..", "*"] {
            let error = parse_route_host(bad).unwrap_err();
            assert!(!error.contains("Host header"), "{bad:?}: {error}");
            assert!(error.contains("shop.example.com"), "{bad:?}: {error}");
        }
    }

    #[test]
    fn app_names() {
        assert!(check_app_name("shop").is_ok());
        assert!(check_app_name("Shop").unwrap_err().contains("RFC 1123"));
        assert!(check_app_name("a.b").is_err());
    }
}

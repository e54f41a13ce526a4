//! Which requests may wake a sleeping version (SPEC §4): health probes and metric
//! scrapers, named by path or user agent in `wake.ignore_paths` and
//! `wake.ignore_user_agents`, neither wake a version nor count as its activity.

use memchr::memmem::Finder;

/// The compiled `wake.ignore_*` rules. Checked on every request, so the user-agent
/// substrings are searched with precompiled finders.
#[derive(Debug, Clone, Default)]
pub struct IgnoreRules {
    exact_paths: Vec<Box<str>>,
    path_prefixes: Vec<Box<str>>,
    user_agents: Vec<Finder<'static>>,
}

impl IgnoreRules {
    /// Rules from the configured paths (exact, or a prefix when written with a
    /// trailing `*`) and user-agent substrings (case-sensitive).
    pub fn new(paths: &[String], user_agents: &[String]) -> IgnoreRules {
        let mut rules = IgnoreRules::default();
        for path in paths {
            match path.strip_suffix('*') {
                Some(prefix) => rules.path_prefixes.push(prefix.into()),
                None => rules.exact_paths.push(path.as_str().into()),
            }
        }
        rules.user_agents = user_agents
            .iter()
            .map(|agent| Finder::new(agent.as_bytes()).into_owned())
            .collect();
        rules
    }

    /// True when a request for `path` from `user_agent` must not wake its version
    /// nor count as activity.
    pub fn ignores(&self, path: &str, user_agent: Option<&[u8]>) -> bool {
        if self.exact_paths.iter().any(|p| **p == *path)
            || self.path_prefixes.iter().any(|p| path.starts_with(&**p))
        {
            return true;
        }
        match user_agent {
            Some(agent) => self.user_agents.iter().any(|f| f.find(agent).is_some()),
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_exact_or_by_prefix_and_agents_by_substring() {
        let rules = IgnoreRules::new(
            &["/healthz".into(), "/internal/*".into()],
            &["kube-probe".into(), "Prometheus".into()],
        );
        assert!(rules.ignores("/healthz", None));
        assert!(!rules.ignores("/healthz/deep", None));
        assert!(!rules.ignores("/", None));
        assert!(rules.ignores("/internal/metrics", None));
        assert!(rules.ignores("/", Some(b"kube-probe/1.29")));
        assert!(rules.ignores("/", Some(b"Prometheus/2.51.0")));
        assert!(!rules.ignores("/", Some(b"prometheus-lowercase")));
        assert!(!rules.ignores("/", Some(b"curl/8.5.0")));
        assert!(!IgnoreRules::default().ignores("/healthz", Some(b"kube-probe")));
    }
}

//! The lifecycle operations of the control plane (SPEC §5): manual stop and wake,
//! the idle sweep, branch supersede, stored schedules and what the pools report.
//!
//! Overwrite rules: an admin's stop or wake, and a request's wake, replace a
//! pending change of the version; the idle sweep and supersede never do, so they
//! cannot undo a change someone asked for.

use std::time::Duration;

use ingress_proxy::time::format_unix_millis;

use super::{refuse, ControlError, ControlPlane, ErrorKind, LoopReport, VersionView, SYSTEM_ACTOR};
use crate::model::{
    ChangeReason, DesiredState, Environment, Mutation, RuntimeSpec, Schedule, State, Version,
};
use crate::pools::{Observed, PoolEvent};
use crate::runtime::ProcessRuntime;

/// Most bytes `ingressctl logs` returns.
pub const MAX_LOG_BYTES: usize = 1 << 20;

/// The last `limit` bytes of the file at `path`, without reading the rest.
fn read_tail(path: &std::path::Path, limit: usize) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path)?;
    let length = file.metadata()?.len();
    let limit = u64::try_from(limit).unwrap_or(u64::MAX);
    file.seek(SeekFrom::Start(length.saturating_sub(limit)))?;
    let mut bytes = Vec::new();
    file.take(limit).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// A preview for the idle and supersede loops: labelled, or deployed as preview.
fn is_preview(version: &Version) -> bool {
    version.label.is_some() || version.env == Environment::Preview
}

impl ControlPlane {
    /// The version `id` of `app` for a stop or wake: it must exist and not be
    /// expired.
    fn lifecycle_target(
        &self,
        state: &State,
        app: &str,
        id: &str,
        now_ms: u64,
        action: &str,
    ) -> Result<Version, ControlError> {
        if !state.apps.contains_key(app) {
            return Err(super::not_found_app(app));
        }
        let version = match state.versions.get(id) {
            Some(version) if version.app == app => version,
            _ => {
                return Err(refuse(
                    ErrorKind::FailedPrecondition,
                    format!(
                        "cannot {action} version {id} of app {app}: it does not exist (never deployed, or deleted); see `ingressctl versions {app}`"
                    ),
                ))
            }
        };
        if version.is_expired(now_ms) {
            return Err(refuse(
                ErrorKind::FailedPrecondition,
                format!(
                    "cannot {action} version {id} of app {app}: it expired at {} and is about to be deleted",
                    version.expires_at_ms.map_or_else(String::new, format_unix_millis)
                ),
            ));
        }
        Ok(version.clone())
    }

    /// Stops a version now (reason `manual`), replacing any pending change. Its
    /// pool drains and stops unless a clone still holds it. The active production
    /// version is stopped only with `force`.
    pub fn stop_version(
        &self,
        actor: &str,
        app: &str,
        id: &str,
        force: bool,
    ) -> Result<VersionView, ControlError> {
        let now = self.now();
        let mut inner = self.lock();
        let version = self.lifecycle_target(&inner.state, app, id, now, "stop")?;
        let active = inner
            .state
            .apps
            .get(app)
            .and_then(|a| a.active_version.as_deref())
            == Some(id);
        if active && version.env == Environment::Production && !force {
            return Err(refuse(
                ErrorKind::FailedPrecondition,
                format!(
                    "version {id} is the active production version of app {app}; stopping it makes its next request wait for a cold start. Pass --force to stop it anyway"
                ),
            ));
        }
        let mut detail = format!("reason {}", ChangeReason::Manual.as_str());
        if force {
            detail.push_str(", forced");
        }
        let mut mutations = self.replace_pending(&inner.state, id, &mut detail);
        let mut stopped = version;
        stopped.desired = DesiredState::Stopped;
        mutations.push(Mutation::PutVersion(stopped.clone()));
        let audit = self.audit(actor, "version.stop", &format!("{app}/{id}"), detail);
        self.commit(&mut inner, mutations, audit)?;
        Ok(self.view(&inner.state, &stopped, now))
    }

    /// Wakes a version (reason `manual`), replacing any pending change, and with
    /// `wait` waits up to that long for it to be ready. Refused for a version no
    /// request can reach (neither active nor holding a live label).
    pub async fn wake_version(
        &self,
        actor: &str,
        app: &str,
        id: &str,
        wait: Option<Duration>,
    ) -> Result<VersionView, ControlError> {
        let now = self.now();
        {
            let mut inner = self.lock();
            let version = self.lifecycle_target(&inner.state, app, id, now, "wake")?;
            if !inner.state.is_reachable(&version, now) {
                return Err(refuse(
                    ErrorKind::FailedPrecondition,
                    format!(
                        "version {id} of app {app} is {}: no request can reach it, so waking it would only cost resources. Deploy it (--version {id}) or give it a label (--ephemeral LABEL --version {id}) first",
                        inner.state.status(&version, now)
                    ),
                ));
            }
            let mut detail = format!("reason {}", ChangeReason::Manual.as_str());
            let mut mutations = self.replace_pending(&inner.state, id, &mut detail);
            let mut running = version;
            running.desired = DesiredState::Running;
            mutations.push(Mutation::PutVersion(running));
            let audit = self.audit(actor, "version.wake", &format!("{app}/{id}"), detail);
            self.commit(&mut inner, mutations, audit)?;
        }
        // An admin's wake does not wait out a failure back-off.
        let ready = self
            .pools
            .hold(id, true)
            .map_err(|e| refuse(ErrorKind::Internal, e))?;
        if let Some(limit) = wait {
            match tokio::time::timeout(limit, ready.ready()).await {
                Ok(Ok(())) => {}
                Ok(Err(reason)) => {
                    return Err(refuse(
                        ErrorKind::Unavailable,
                        format!("version {id} of app {app} failed to start: {reason}"),
                    ))
                }
                Err(_) => {
                    return Err(refuse(
                        ErrorKind::Unavailable,
                        format!(
                            "version {id} of app {app} was not ready within {}ms; it goes on starting (see `ingressctl versions {app}`)",
                            limit.as_millis()
                        ),
                    ))
                }
            }
        }
        let inner = self.lock();
        let version = inner.state.versions.get(id).cloned().ok_or_else(|| {
            refuse(
                ErrorKind::FailedPrecondition,
                format!("version {id} of app {app} was deleted while it woke"),
            )
        })?;
        Ok(self.view(&inner.state, &version, self.now()))
    }

    /// How long a wake waits for readiness when no timeout is given
    /// (`wake.timeout`).
    pub fn default_wake_wait(&self) -> Duration {
        self.lifecycle.wake_timeout
    }

    /// The mutations that schedule an automatic stop of `version` at `due_at_ms`
    /// for `reason`, with its audit entry explaining `why`.
    pub(super) fn system_stop(
        &self,
        version: &Version,
        due_at_ms: u64,
        reason: ChangeReason,
        why: String,
    ) -> [Mutation; 2] {
        [
            Mutation::PutSchedule(Schedule {
                version: version.id.clone(),
                desired: DesiredState::Stopped,
                due_at_ms,
                reason,
                actor: SYSTEM_ACTOR.to_string(),
                created_at_ms: self.now(),
            }),
            Mutation::Audit(self.audit(
                SYSTEM_ACTOR,
                "version.schedule",
                &format!("{}/{}", version.app, version.id),
                format!(
                    "stop at {} (reason {}: {why})",
                    format_unix_millis(due_at_ms),
                    reason.as_str()
                ),
            )),
        ]
    }

    /// The mutations that drop `id`'s pending change, noting it in `detail`.
    fn replace_pending(&self, state: &State, id: &str, detail: &mut String) -> Vec<Mutation> {
        match state.schedules.get(id) {
            Some(pending) => {
                detail.push_str(&format!(
                    ", replaced a pending {} at {} (reason {})",
                    pending.desired.as_str(),
                    format_unix_millis(pending.due_at_ms),
                    pending.reason.as_str()
                ));
                vec![Mutation::DeleteSchedule(id.to_string())]
            }
            None => Vec::new(),
        }
    }

    /// The end of a process version's output (at most `max_bytes`), from its
    /// pool's log file; empty if it never ran.
    pub fn logs(&self, app: &str, id: &str, max_bytes: usize) -> Result<String, ControlError> {
        let pool = {
            let inner = self.lock();
            if !inner.state.apps.contains_key(app) {
                return Err(super::not_found_app(app));
            }
            match inner.state.versions.get(id) {
                Some(version) if version.app == app => match &version.spec {
                    RuntimeSpec::Process { .. } => version.pool.clone(),
                    RuntimeSpec::Static { .. } => {
                        return Err(refuse(
                            ErrorKind::FailedPrecondition,
                            format!("version {id} of app {app} runs on the static runtime, which runs nothing here and has no logs"),
                        ))
                    }
                },
                _ => {
                    return Err(refuse(
                        ErrorKind::NotFound,
                        format!("app {app} has no version {id}"),
                    ))
                }
            }
        };
        let path = ProcessRuntime::log_path(&self.lifecycle.log_dir, &pool);
        let limit = max_bytes.min(MAX_LOG_BYTES);
        let bytes = match read_tail(&path, limit) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                return Err(refuse(
                    ErrorKind::Internal,
                    format!("cannot read {}: {e}", path.display()),
                ))
            }
        };
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The idle sweep (SPEC §5): schedules a stop, due now, for every running
    /// preview (every running version with `idle.include_production`) that has
    /// been ready with no request for `idle.timeout` and has nothing in flight.
    /// Versions with a pending change are left alone.
    pub fn check_idle(&self) -> Result<LoopReport, ControlError> {
        let now = self.now();
        let timeout = u64::try_from(self.lifecycle.idle.timeout.0.as_millis()).unwrap_or(u64::MAX);
        let mut inner = self.lock();
        let mut mutations = Vec::new();
        let mut report = LoopReport::default();
        for version in inner.state.versions.values() {
            if version.desired != DesiredState::Running
                || inner.state.schedules.contains_key(&version.id)
                || !(self.lifecycle.idle.include_production || is_preview(version))
            {
                continue;
            }
            let observed = self.pools.observe(&version.id);
            let Some(ready_since) = observed.ready_since_ms else {
                continue;
            };
            let activity = self.snapshots.activity().get(&version.id);
            let in_flight = activity.as_ref().map_or(0, |a| a.in_flight());
            let last_seen = activity.as_ref().map_or(0, |a| a.last_seen_ms());
            let idle_since = last_seen.max(ready_since);
            if in_flight > 0 || now < idle_since.saturating_add(timeout) {
                continue;
            }
            report
                .versions
                .push(format!("{}/{}", version.app, version.id));
            mutations.extend(self.system_stop(
                version,
                now,
                ChangeReason::Idle,
                format!("no request since {}", format_unix_millis(idle_since)),
            ));
        }
        if mutations.is_empty() {
            return Ok(report);
        }
        let audit = self.audit(
            SYSTEM_ACTOR,
            "idle.sweep",
            &report.versions.join(","),
            format!("{} idle versions scheduled to stop", report.versions.len()),
        );
        self.commit(&mut inner, mutations, audit)?;
        Ok(report)
    }

    /// Executes every stored schedule that is due: the version's desired state
    /// changes, the schedule is deleted, and the pools follow.
    pub fn run_due_schedules(&self) -> Result<LoopReport, ControlError> {
        let now = self.now();
        let mut inner = self.lock();
        let due: Vec<Schedule> = inner
            .state
            .schedules
            .values()
            .filter(|s| s.due_at_ms <= now)
            .cloned()
            .collect();
        if due.is_empty() {
            return Ok(LoopReport::default());
        }
        let mut mutations = Vec::new();
        let mut report = LoopReport::default();
        let (mut idle, mut superseded) = (0, 0);
        for schedule in &due {
            mutations.push(Mutation::DeleteSchedule(schedule.version.clone()));
            let Some(version) = inner.state.versions.get(&schedule.version) else {
                continue;
            };
            let target = format!("{}/{}", version.app, version.id);
            let action = match schedule.desired {
                DesiredState::Running => "version.wake",
                DesiredState::Stopped => "version.stop",
            };
            if schedule.desired == DesiredState::Stopped {
                match schedule.reason {
                    ChangeReason::Idle => idle += 1,
                    ChangeReason::Superseded => superseded += 1,
                    _ => {}
                }
            }
            let mut changed = version.clone();
            changed.desired = schedule.desired;
            mutations.push(Mutation::PutVersion(changed));
            mutations.push(Mutation::Audit(self.audit(
                &schedule.actor,
                action,
                &target,
                format!(
                    "reason {} (scheduled at {})",
                    schedule.reason.as_str(),
                    format_unix_millis(schedule.created_at_ms)
                ),
            )));
            report.versions.push(target);
        }
        let audit = self.audit(
            SYSTEM_ACTOR,
            "schedule.run",
            &report.versions.join(","),
            format!("{} scheduled changes executed", due.len()),
        );
        self.commit(&mut inner, mutations, audit)?;
        self.metrics.idle_stops.inc_by(idle);
        self.metrics.supersede_stops.inc_by(superseded);
        Ok(report)
    }

    /// The earliest due time of a stored schedule, if any.
    pub fn next_schedule_due(&self) -> Option<u64> {
        self.lock()
            .state
            .schedules
            .values()
            .map(|s| s.due_at_ms)
            .min()
    }

    /// Records what the pools report: a request's wake as desired state running,
    /// a ready preview's older siblings on its branch as scheduled to stop, and
    /// failed starts and exits in the audit log.
    pub fn handle_event(&self, event: &PoolEvent) -> Result<(), ControlError> {
        let now = self.now();
        let mut inner = self.lock();
        let mut mutations = Vec::new();
        let audit = match event {
            PoolEvent::Woken { version } => {
                let Some(woken) = inner.state.versions.get(version) else {
                    return Ok(());
                };
                // Only while the pools still hold it: an admin's stop may have come
                // in between, and it wins.
                if woken.desired == DesiredState::Running || !self.pools.holds(version) {
                    return Ok(());
                }
                let mut detail = format!("reason {}", ChangeReason::Request.as_str());
                mutations = self.replace_pending(&inner.state, version, &mut detail);
                let mut running = woken.clone();
                running.desired = DesiredState::Running;
                let target = format!("{}/{}", running.app, running.id);
                mutations.push(Mutation::PutVersion(running));
                self.audit(SYSTEM_ACTOR, "version.wake", &target, detail)
            }
            PoolEvent::Ready { versions } => {
                let grace =
                    u64::try_from(self.lifecycle.supersede_grace.as_millis()).unwrap_or(u64::MAX);
                let mut stopped = Vec::new();
                for id in versions {
                    let Some(newer) = inner.state.versions.get(id) else {
                        continue;
                    };
                    let Some(branch) = newer.branch.as_deref().filter(|_| is_preview(newer)) else {
                        continue;
                    };
                    for older in inner.state.versions.values() {
                        let sibling = older.app == newer.app
                            && older.id != newer.id
                            && older.pool != newer.pool
                            && is_preview(older)
                            && older.branch.as_deref() == Some(branch)
                            && older.created_at_ms < newer.created_at_ms
                            && older.desired == DesiredState::Running;
                        if !sibling
                            || inner.state.schedules.contains_key(&older.id)
                            || stopped.contains(&older.id)
                        {
                            continue;
                        }
                        let due = now.saturating_add(grace);
                        stopped.push(older.id.clone());
                        mutations.extend(self.system_stop(
                            older,
                            due,
                            ChangeReason::Superseded,
                            format!("{} of branch {branch} is ready", newer.id),
                        ));
                    }
                }
                if mutations.is_empty() {
                    return Ok(());
                }
                self.audit(
                    SYSTEM_ACTOR,
                    "supersede",
                    &stopped.join(","),
                    format!("{} older previews scheduled to stop", stopped.len()),
                )
            }
            PoolEvent::StartFailed { versions, reason } => self.audit(
                SYSTEM_ACTOR,
                "version.start_failed",
                &versions.join(","),
                reason.clone(),
            ),
            PoolEvent::Exited { versions, status } => self.audit(
                SYSTEM_ACTOR,
                "version.exited",
                &versions.join(","),
                format!(
                    "the process exited on its own ({status}); the next request starts it again"
                ),
            ),
        };
        self.commit(&mut inner, mutations, audit)
    }

    /// Sets the gauge of versions by observed state.
    pub fn refresh_version_gauge(&self) {
        let inner = self.lock();
        let mut counts: Vec<(Observed, i64)> = Observed::ALL.iter().map(|s| (*s, 0)).collect();
        for version in inner.state.versions.values() {
            let observed = self.pools.observe(&version.id).observed;
            if let Some(entry) = counts.iter_mut().find(|(s, _)| *s == observed) {
                entry.1 += 1;
            }
        }
        self.metrics.set_versions(&counts);
    }
}

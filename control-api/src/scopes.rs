//! Token scopes: which role may make which admin API call. The whole table is
//! [`Rpc::roles`], one `match` with no wildcard arm; every handler in
//! [`crate::grpc`] asks [`check`] with its own [`Rpc`] before doing anything else.
//! A test checks that [`Rpc::ALL`] is exactly the `Admin` service of the proto,
//! so a new call cannot be added without a scope decision.
//!
//! Roles (`admin.tokens[i].role`):
//! - `admin`: every call (the default, and the only role before roles existed);
//! - `read`: listings (also of a control node's replicas), show and check, the
//!   audit log, logs and `Watch`;
//! - `replica`: what a proxy-only replica needs from its control node: `Watch`
//!   here, and the whole `Replication` service (routing stream, wakes, activity
//!   reports), which admits `replica` and `admin` tokens only
//!   (`grpc::authorize_replica`).

pub use ingress_config::TokenRole as Role;

/// One call of the `Admin` service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rpc {
    CreateApp,
    DeleteApp,
    ListApps,
    AddRoute,
    RemoveRoute,
    SetDefaultRoute,
    ListRoutes,
    Deploy,
    ListVersions,
    DeleteVersion,
    Import,
    StopVersion,
    WakeVersion,
    Logs,
    Audit,
    Watch,
    CertAdd,
    CertList,
    CertShow,
    CertRemove,
    CertReload,
    CertCheck,
    ListNodes,
}

/// Who may make a call.
const ADMIN: &[Role] = &[Role::Admin];
const READ: &[Role] = &[Role::Admin, Role::Read];
/// The routing stream: replicas follow it, and a read token may watch it.
const ROUTING: &[Role] = &[Role::Admin, Role::Read, Role::Replica];

impl Rpc {
    /// Every call, in the order of the proto.
    pub const ALL: [Rpc; 23] = [
        Rpc::CreateApp,
        Rpc::DeleteApp,
        Rpc::ListApps,
        Rpc::AddRoute,
        Rpc::RemoveRoute,
        Rpc::SetDefaultRoute,
        Rpc::ListRoutes,
        Rpc::Deploy,
        Rpc::ListVersions,
        Rpc::DeleteVersion,
        Rpc::Import,
        Rpc::StopVersion,
        Rpc::WakeVersion,
        Rpc::Logs,
        Rpc::Audit,
        Rpc::Watch,
        Rpc::CertAdd,
        Rpc::CertList,
        Rpc::CertShow,
        Rpc::CertRemove,
        Rpc::CertReload,
        Rpc::CertCheck,
        Rpc::ListNodes,
    ];

    /// The scope table: the roles that may make this call.
    pub fn roles(self) -> &'static [Role] {
        match self {
            // Changes: admin only.
            Rpc::CreateApp
            | Rpc::DeleteApp
            | Rpc::AddRoute
            | Rpc::RemoveRoute
            | Rpc::SetDefaultRoute
            | Rpc::Deploy
            | Rpc::DeleteVersion
            | Rpc::Import
            | Rpc::StopVersion
            | Rpc::WakeVersion
            | Rpc::CertAdd
            | Rpc::CertRemove
            | Rpc::CertReload => ADMIN,
            // Reading: listings, show and check, audit, logs.
            Rpc::ListApps
            | Rpc::ListRoutes
            | Rpc::ListVersions
            | Rpc::Logs
            | Rpc::Audit
            | Rpc::CertList
            | Rpc::CertShow
            | Rpc::CertCheck
            | Rpc::ListNodes => READ,
            // The routing stream.
            Rpc::Watch => ROUTING,
        }
    }

    /// The method's name in the proto.
    pub fn name(self) -> &'static str {
        match self {
            Rpc::CreateApp => "CreateApp",
            Rpc::DeleteApp => "DeleteApp",
            Rpc::ListApps => "ListApps",
            Rpc::AddRoute => "AddRoute",
            Rpc::RemoveRoute => "RemoveRoute",
            Rpc::SetDefaultRoute => "SetDefaultRoute",
            Rpc::ListRoutes => "ListRoutes",
            Rpc::Deploy => "Deploy",
            Rpc::ListVersions => "ListVersions",
            Rpc::DeleteVersion => "DeleteVersion",
            Rpc::Import => "Import",
            Rpc::StopVersion => "StopVersion",
            Rpc::WakeVersion => "WakeVersion",
            Rpc::Logs => "Logs",
            Rpc::Audit => "Audit",
            Rpc::Watch => "Watch",
            Rpc::CertAdd => "CertAdd",
            Rpc::CertList => "CertList",
            Rpc::CertShow => "CertShow",
            Rpc::CertRemove => "CertRemove",
            Rpc::CertReload => "CertReload",
            Rpc::CertCheck => "CertCheck",
            Rpc::ListNodes => "ListNodes",
        }
    }

    /// What the call does, as `ingressctl` says it.
    pub fn action(self) -> &'static str {
        match self {
            Rpc::CreateApp => "app create",
            Rpc::DeleteApp => "app delete",
            Rpc::ListApps => "app list",
            Rpc::AddRoute => "route add",
            Rpc::RemoveRoute => "route remove",
            Rpc::SetDefaultRoute => "route default",
            Rpc::ListRoutes => "route list",
            Rpc::Deploy => "deploy",
            Rpc::ListVersions => "versions",
            Rpc::DeleteVersion => "delete",
            Rpc::Import => "import",
            Rpc::StopVersion => "stop",
            Rpc::WakeVersion => "wake",
            Rpc::Logs => "logs",
            Rpc::Audit => "audit",
            Rpc::Watch => "watch",
            Rpc::CertAdd => "cert add",
            Rpc::CertList => "cert list",
            Rpc::CertShow => "cert show",
            Rpc::CertRemove => "cert remove",
            Rpc::CertReload => "cert reload",
            Rpc::CertCheck => "cert check",
            Rpc::ListNodes => "nodes",
        }
    }
}

/// What a role may do, for a refusal.
fn allows(role: Role) -> &'static str {
    match role {
        Role::Admin => "may call everything",
        Role::Read => "may only list, show, check, read the audit log and logs, and watch",
        Role::Replica => "may only follow the routing stream (watch)",
    }
}

/// Whether the token `name` with `role` may make `rpc`; if not, the refusal:
/// `token "ci" has role read, which may only list, ...; deploy needs role admin`.
pub fn check(name: &str, role: Role, rpc: Rpc) -> Result<(), String> {
    let roles = rpc.roles();
    if roles.contains(&role) {
        return Ok(());
    }
    let needed = roles
        .iter()
        .map(|role| role.as_str())
        .collect::<Vec<_>>()
        .join(" or ");
    Err(format!(
        "token {name:?} has role {role}, which {}; {} ({}) needs role {needed}",
        allows(role),
        rpc.action(),
        rpc.name(),
    ))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    include!(concat!(env!("OUT_DIR"), "/admin_rpcs.rs"));

    #[test]
    fn every_rpc_of_the_service_has_a_scope() {
        let listed: BTreeSet<&str> = Rpc::ALL.iter().map(|rpc| rpc.name()).collect();
        let served: BTreeSet<&str> = ADMIN_RPCS.iter().copied().collect();
        assert_eq!(listed.len(), Rpc::ALL.len(), "Rpc::ALL lists a call twice");
        assert_eq!(
            served.difference(&listed).collect::<Vec<_>>(),
            Vec::<&&str>::new(),
            "calls of the proto's Admin service without a scope: add them to Rpc, Rpc::ALL and Rpc::roles"
        );
        assert_eq!(
            listed.difference(&served).collect::<Vec<_>>(),
            Vec::<&&str>::new(),
            "Rpc lists calls the proto does not have"
        );
        for rpc in Rpc::ALL {
            assert!(
                rpc.roles().contains(&Role::Admin),
                "{rpc:?}: an admin token may call everything"
            );
        }
    }

    #[test]
    fn the_table() {
        let allowed = |role: Role| -> Vec<&str> {
            Rpc::ALL
                .into_iter()
                .filter(|rpc| check("t", role, *rpc).is_ok())
                .map(Rpc::name)
                .collect()
        };
        assert_eq!(allowed(Role::Admin).len(), Rpc::ALL.len());
        assert_eq!(
            allowed(Role::Read),
            [
                "ListApps",
                "ListRoutes",
                "ListVersions",
                "Logs",
                "Audit",
                "Watch",
                "CertList",
                "CertShow",
                "CertCheck",
                "ListNodes"
            ]
        );
        assert_eq!(allowed(Role::Replica), ["Watch"]);
    }

    #[test]
    fn a_refusal_names_the_token_its_role_and_what_is_needed() {
        assert_eq!(
            check("ci", Role::Read, Rpc::Deploy).unwrap_err(),
            "token \"ci\" has role read, which may only list, show, check, read the audit log and logs, and watch; deploy (Deploy) needs role admin"
        );
        assert_eq!(
            check("edge-2", Role::Replica, Rpc::ListApps).unwrap_err(),
            "token \"edge-2\" has role replica, which may only follow the routing stream (watch); app list (ListApps) needs role admin or read"
        );
    }
}

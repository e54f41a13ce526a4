//! The ingress's one configuration file (SPEC §10): TOML parsed with serde into typed
//! settings with defaults, durations written `90s`/`30m`/`24h`/`7d`, and validation
//! whose errors name the key at fault. Unknown keys are errors.

mod cert_name;
mod duration;
mod load;
mod settings;

pub use cert_name::{is_cert_name, CERT_NAME_RULE};
pub use duration::{format_duration, parse_duration, ConfigDuration, DURATION_RULE};
pub use load::ConfigError;
pub use settings::{
    AccessFormat, AccessLog, ActivitySettings, AdminSettings, Config, ControlSettings,
    EphemeralSettings, IdleSettings, LogFormat, LogLevel, LogSettings, Misdirected, NodeRole,
    NodeSettings, ProcessSettings, ProxySettings, RuntimeSettings, StoreSettings,
    SupersedeSettings, TlsSettings, TokenRole, TokenSettings, UnknownSni, WakeMode, WakeSettings,
};

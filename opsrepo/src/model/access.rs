//! Access: RBAC roles and bindings as code.

use super::Duration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Permission domains of the control-plane PRD.
pub const PERMISSION_DOMAINS: [&str; 8] = [
    "iam",
    "tenants",
    "configs",
    "definitions",
    "scale",
    "ops",
    "observability",
    "audit",
];

/// `access/roles/<id>.toml`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Role {
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9-]{0,62}$"))]
    pub id: String,
    pub description: String,
    /// Permissions as `<domain>.<resource>.<action>`; `*` allowed as the last segments
    /// (`ops.*`, `iam.sessions.*`).
    #[schemars(regex(pattern = r"^[a-z]+(\.([a-z_]+|\*))*$"))]
    pub permissions: Vec<String>,
    /// Sensitive actions require recent re-authentication.
    #[serde(default)]
    pub requires_step_up: bool,
    /// Maximum session length for this role (break-glass is time-boxed).
    #[serde(default)]
    pub max_session: Option<Duration>,
}

/// `access/bindings/<id>.toml`: principals bound to roles in a scope.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleBinding {
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9-]{0,62}$"))]
    pub id: String,
    pub description: String,
    pub roles: Vec<String>,
    pub subjects: Vec<Subject>,
    pub scope: Scope,
    /// RFC 3339 expiry for temporary grants.
    #[serde(default)]
    pub expires_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Subject {
    pub kind: SubjectKind,
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SubjectKind {
    User,
    Group,
    ServiceAccount,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Scope {
    pub kind: ScopeKind,
    /// Tenant id or environment name; absent for `global`.
    #[serde(default)]
    pub value: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ScopeKind {
    Global,
    Tenant,
    Environment,
}

//! Document kinds: which path holds which kind, and the JSON Schema of each kind.

use std::sync::{Arc, OnceLock};

use serde_json::Value;

use crate::model::*;

macro_rules! kinds {
    ($( $variant:ident => $name:literal, $ty:ty, $doc:literal; )*) => {
        /// Every kind of document in an ops repo.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
        #[serde(rename_all = "kebab-case")]
        pub enum Kind { $( #[doc = $doc] $variant, )* Runbook }

        impl Kind {
            /// Kinds that have a JSON Schema (all but runbook markdown).
            pub const WITH_SCHEMA: &'static [Kind] = &[ $( Kind::$variant, )* ];

            pub fn name(self) -> &'static str {
                match self { $( Kind::$variant => $name, )* Kind::Runbook => "runbook" }
            }

            pub fn description(self) -> &'static str {
                match self { $( Kind::$variant => $doc, )* Kind::Runbook => "runbook markdown (runbooks/<id>.md)" }
            }

            pub fn from_name(name: &str) -> Option<Kind> {
                match name { $( $name => Some(Kind::$variant), )* "runbook" => Some(Kind::Runbook), _ => None }
            }

            /// Calls `v` with the Rust type of this kind's documents; `None` for runbooks,
            /// which have none.
            pub(crate) fn with_type<V: WithType>(self, v: V) -> Option<V::Out> {
                match self { $( Kind::$variant => Some(v.with::<$ty>()), )* Kind::Runbook => None }
            }

            /// The schema generated from the Rust type, with its `$id`.
            fn generate_schema(self) -> Option<Value> {
                let generator = schemars::generate::SchemaSettings::draft2020_12().into_generator();
                let schema = match self {
                    $( Kind::$variant => generator.into_root_schema_for::<$ty>(), )*
                    Kind::Runbook => return None,
                };
                let mut v = schema.to_value();
                if let Value::Object(m) = &mut v {
                    m.insert("$id".into(), Value::String(self.schema_id()));
                    m.insert("description".into(), Value::String($crate::kinds::describe(self)));
                }
                Some(v)
            }
        }
    };
}

/// Work generic over the Rust type of a kind's documents ([`Kind::with_type`]).
pub(crate) trait WithType {
    type Out;
    fn with<T: serde::de::DeserializeOwned + Send + Sync + 'static>(self) -> Self::Out;
}

kinds! {
    Manifest => "manifest", Manifest, "ops repo manifest (vakt.toml)";
    GlobalConfig => "global-config", GlobalConfig, "global platform config (config/global/platform.toml)";
    ConfigItem => "config-item", ConfigItem, "config item (config/global/<name>.toml, config/tenants/<tenant>/<name>.toml)";
    Tenant => "tenant", Tenant, "tenant (config/tenants/<tenant>/tenant.toml)";
    Aggregate => "aggregate", Aggregate, "aggregate definition (definitions/aggregates/<name>.toml)";
    Projection => "projection", Projection, "projection definition (definitions/projections/<name>.toml)";
    Saga => "saga", Saga, "saga definition (definitions/sagas/<name>.toml)";
    EffectProvider => "effect", EffectProvider, "effect provider definition (definitions/effects/<name>.toml)";
    DefinitionManifest => "definition-manifest", DefinitionManifest, "definition manifest (definitions/manifests/<name>.toml)";
    Site => "site", Site, "site / datacenter (inventory/sites/<id>.toml)";
    Node => "node", Node, "node (inventory/nodes/<id>.toml)";
    Shard => "shard", Shard, "shard (inventory/shards/<id>.toml)";
    Service => "service", Service, "service (inventory/services/<kind>.toml)";
    Placement => "placement", Placement, "tenant placement (inventory/placement/<tenant>.toml)";
    Exporter => "exporter", Exporter, "external metrics exporter (inventory/exporters/<id>.toml)";
    Role => "role", Role, "RBAC role (access/roles/<id>.toml)";
    RoleBinding => "role-binding", RoleBinding, "RBAC binding (access/bindings/<id>.toml)";
    RunbookCatalog => "runbook-catalog", RunbookCatalog, "runbook catalog (runbooks/runbooks.catalog.json)";
    Datasources => "datasources", Datasources, "datasource registry (dashboards/datasources.toml)";
    SavedQuery => "saved-query", SavedQuery, "saved query template (dashboards/queries/<id>.toml)";
    Dashboard => "dashboard", Dashboard, "Grafana dashboard (dashboards/<uid>.json)";
    AlertRules => "alert-rules", RuleFile, "Prometheus / vmalert rule group file (alerts/<name>.yaml)";
    DrStore => "dr-store", DrStore, "disaster-recovery store posture (dr/stores/<id>.toml)";
}

pub(crate) fn describe(kind: Kind) -> String {
    format!("vakt {}", kind.description())
}

/// Base of every schema `$id`.
pub const SCHEMA_BASE: &str = "https://schemas.vakt.dev/v1/";

impl Kind {
    pub fn schema_id(self) -> String {
        format!("{SCHEMA_BASE}{}.schema.json", self.name())
    }

    /// Path of the committed schema file, relative to the repository root.
    pub fn schema_path(self) -> String {
        format!("schemas/{}.schema.json", self.name())
    }

    /// The JSON Schema of this kind (generated once, cached).
    pub fn schema(self) -> Option<&'static Value> {
        static SCHEMAS: OnceLock<Vec<(Kind, Value)>> = OnceLock::new();
        let all = SCHEMAS.get_or_init(|| {
            Kind::WITH_SCHEMA
                .iter()
                .filter_map(|k| k.generate_schema().map(|s| (*k, s)))
                .collect()
        });
        all.iter().find(|(k, _)| *k == self).map(|(_, s)| s)
    }

    /// The compiled validator of this kind (compiled once, shared across threads).
    pub fn validator(self) -> Option<Arc<jsonschema::Validator>> {
        static VALIDATORS: OnceLock<Vec<(Kind, Arc<jsonschema::Validator>)>> = OnceLock::new();
        let all = VALIDATORS.get_or_init(|| {
            Kind::WITH_SCHEMA
                .iter()
                .filter_map(|k| {
                    let schema = k.schema()?;
                    // A generated schema that does not compile is a bug in vakt, caught by tests.
                    let v = jsonschema::draft202012::options().build(schema).ok()?;
                    Some((*k, Arc::new(v)))
                })
                .collect()
        });
        all.iter().find(|(k, _)| *k == self).map(|(_, v)| v.clone())
    }

    /// Kinds whose documents feed NATS KV.
    pub fn is_definition(self) -> bool {
        matches!(
            self,
            Kind::Aggregate
                | Kind::Projection
                | Kind::Saga
                | Kind::EffectProvider
                | Kind::DefinitionManifest
        )
    }
}

/// Built-in layout: the kind of a base path (not under `environments/`).
pub fn kind_of_base_path(path: &str, extra: &[Binding]) -> Option<Kind> {
    for b in extra {
        if glob_match(&b.glob, path) {
            return Kind::from_name(&b.kind);
        }
    }
    let segs: Vec<&str> = path.split('/').collect();
    let ext = path.rsplit_once('.').map_or("", |(_, e)| e);
    Some(match (segs.as_slice(), ext) {
        (["vakt.toml"], _) => Kind::Manifest,
        (["config", "global", "platform.toml"], _) => Kind::GlobalConfig,
        (["config", "global", _], "toml") => Kind::ConfigItem,
        (["config", "tenants", _, "tenant.toml"], _) => Kind::Tenant,
        (["config", "tenants", _, _], "toml") => Kind::ConfigItem,
        (["definitions", "aggregates", _], "toml") => Kind::Aggregate,
        (["definitions", "projections", _], "toml") => Kind::Projection,
        (["definitions", "sagas", _], "toml") => Kind::Saga,
        (["definitions", "effects", _], "toml") => Kind::EffectProvider,
        (["definitions", "manifests", _], "toml") => Kind::DefinitionManifest,
        (["inventory", "sites", _], "toml") => Kind::Site,
        (["inventory", "nodes", _], "toml") => Kind::Node,
        (["inventory", "shards", _], "toml") => Kind::Shard,
        (["inventory", "services", _], "toml") => Kind::Service,
        (["inventory", "placement", _], "toml") => Kind::Placement,
        (["inventory", "exporters", _], "toml") => Kind::Exporter,
        (["access", "roles", _], "toml") => Kind::Role,
        (["access", "bindings", _], "toml") => Kind::RoleBinding,
        (["runbooks", "runbooks.catalog.json"], _) => Kind::RunbookCatalog,
        (["runbooks", _], "md") => Kind::Runbook,
        (["dashboards", "datasources.toml"], _) => Kind::Datasources,
        (["dashboards", "queries", _], "toml") => Kind::SavedQuery,
        (["dashboards", _], "json") => Kind::Dashboard,
        (["alerts", _], "yaml" | "yml") => Kind::AlertRules,
        (["dr", "stores", _], "toml") => Kind::DrStore,
        _ => return None,
    })
}

/// Splits `environments/<env>/<rest>` into `(env, rest)`.
pub fn split_overlay(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("environments/")?;
    rest.split_once('/')
}

/// Matches `*` within a segment and `**` across segments.
pub fn glob_match(glob: &str, path: &str) -> bool {
    let g: Vec<&str> = glob.split('/').collect();
    let p: Vec<&str> = path.split('/').collect();
    match_segs(&g, &p)
}

fn match_segs(g: &[&str], p: &[&str]) -> bool {
    match (g.first(), p.first()) {
        (None, None) => true,
        (Some(&"**"), _) => match_segs(&g[1..], p) || (!p.is_empty() && match_segs(g, &p[1..])),
        (Some(gs), Some(ps)) => match_seg(gs, ps) && match_segs(&g[1..], &p[1..]),
        _ => false,
    }
}

fn match_seg(g: &str, s: &str) -> bool {
    match g.split_once('*') {
        None => g == s,
        Some((pre, post)) => {
            s.len() >= pre.len() + post.len()
                && s.starts_with(pre)
                && match_seg_rest(post, &s[pre.len()..])
        }
    }
}

fn match_seg_rest(g: &str, s: &str) -> bool {
    if !g.contains('*') {
        return s.ends_with(g);
    }
    (0..=s.len()).any(|i| s.is_char_boundary(i) && match_seg(g, &s[i..]))
}

/// Every schema as `(file name, pretty JSON text)`, as committed under `schemas/`.
pub fn schema_files() -> Vec<(String, String)> {
    Kind::WITH_SCHEMA
        .iter()
        .filter_map(|k| {
            let s = k.schema()?;
            let text = serde_json::to_string_pretty(s).ok()? + "\n";
            Some((format!("{}.schema.json", k.name()), text))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_bindings() {
        assert_eq!(
            kind_of_base_path("config/tenants/acme/tenant.toml", &[]),
            Some(Kind::Tenant)
        );
        assert_eq!(
            kind_of_base_path("config/tenants/acme/limits.toml", &[]),
            Some(Kind::ConfigItem)
        );
        assert_eq!(
            kind_of_base_path("alerts/x.yaml", &[]),
            Some(Kind::AlertRules)
        );
        assert_eq!(kind_of_base_path("alerts/x.txt", &[]), None);
        assert_eq!(
            split_overlay("environments/prod/inventory/nodes/a.toml"),
            Some(("prod", "inventory/nodes/a.toml"))
        );
    }

    #[test]
    fn globs() {
        assert!(glob_match("extra/**/*.toml", "extra/a/b/c.toml"));
        assert!(glob_match("extra/*.toml", "extra/c.toml"));
        assert!(!glob_match("extra/*.toml", "extra/a/c.toml"));
    }

    #[test]
    fn every_schema_compiles() {
        for k in Kind::WITH_SCHEMA {
            assert!(k.validator().is_some(), "{k:?}");
        }
    }
}

//! Definition references: events, commands, effects and pinned versions.

use crate::diag::Finding;
use crate::load::{Doc, IdMap, Model, index_by};
use crate::model::{Aggregate, DefinitionRef};

pub(super) fn check(m: &Model, out: &mut Vec<Finding>) {
    let aggs = index_by(&m.aggregates, |a| &a.name, "/name", "aggregate", out);
    let projs = index_by(&m.projections, |p| &p.name, "/name", "projection", out);
    let sagas = index_by(&m.sagas, |s| &s.name, "/name", "saga", out);
    let effects = index_by(&m.effects, |e| &e.name, "/name", "effect provider", out);
    index_by(
        &m.definition_manifests,
        |d| &d.name,
        "/name",
        "definition manifest",
        out,
    );

    let bad = |loc: (&str, crate::diag::Pos), msg: String, help: &str| {
        Finding::new("ref.definition", loc.0, loc.1, msg).help(help.to_owned())
    };
    // `<aggregate>.<member>` where member is an event or a command of that aggregate.
    let member =
        |aggs: &IdMap<&str, &Doc<Aggregate>>, r: &str, events: bool| -> Result<(), String> {
            let Some((agg, name)) = r.split_once('.') else {
                return Err(format!("`{r}` is not of the form <aggregate>.<name>"));
            };
            let Some(a) = aggs.get(agg) else {
                return Err(format!("`{r}` names unknown aggregate `{agg}`"));
            };
            let list = if events {
                &a.spec.events
            } else {
                &a.spec.commands
            };
            if list.iter().any(|x| x == name) {
                Ok(())
            } else {
                Err(format!(
                    "aggregate `{agg}` has no {} `{name}`",
                    if events { "event" } else { "command" }
                ))
            }
        };
    let help_ev = "name an event the aggregate emits (its `events` list)";
    let help_cmd = "name a command the aggregate decides (its `commands` list)";
    for p in &m.projections {
        for (i, c) in p.spec.consumes.iter().enumerate() {
            if let Err(e) = member(&aggs, c, true) {
                out.push(bad(p.at(&format!("/consumes/{i}")), e, help_ev));
            }
        }
    }
    for s in &m.sagas {
        for (i, c) in s.spec.triggered_by.iter().enumerate() {
            if let Err(e) = member(&aggs, c, true) {
                out.push(bad(s.at(&format!("/triggered_by/{i}")), e, help_ev));
            }
        }
        for (i, st) in s.spec.steps.iter().enumerate() {
            let base = format!("/steps/{i}");
            if st.command.is_none() && st.effect.is_none() {
                out.push(bad(
                    s.at(&base),
                    format!(
                        "saga step `{}` neither sends a command nor invokes an effect",
                        st.name
                    ),
                    "set `command` or `effect`",
                ));
            }
            if let Some(c) = &st.command
                && let Err(e) = member(&aggs, c, false)
            {
                out.push(bad(s.at(&format!("{base}/command")), e, help_cmd));
            }
            if let Some(c) = &st.compensate
                && let Err(e) = member(&aggs, c, false)
            {
                out.push(bad(s.at(&format!("{base}/compensate")), e, help_cmd));
            }
            if let Some(eff) = &st.effect
                && !effects.contains_key(eff.as_str())
            {
                out.push(bad(
                    s.at(&format!("{base}/effect")),
                    format!("unknown effect provider `{eff}`"),
                    "name a provider under definitions/effects/",
                ));
            }
        }
    }
    for t in &m.tenants {
        for (i, c) in t.spec.kill_switches.commands.iter().enumerate() {
            if let Err(e) = member(&aggs, c, false) {
                out.push(bad(
                    t.at(&format!("/kill_switches/commands/{i}")),
                    e,
                    help_cmd,
                ));
            }
        }
        for (i, eff) in t.spec.kill_switches.effects.iter().enumerate() {
            if !effects.contains_key(eff.as_str()) {
                out.push(bad(
                    t.at(&format!("/kill_switches/effects/{i}")),
                    format!("unknown effect provider `{eff}`"),
                    "name a provider under definitions/effects/",
                ));
            }
        }
    }
    for d in &m.definition_manifests {
        let check = |list: &[DefinitionRef],
                     field: &str,
                     versions: &dyn Fn(&str) -> Option<String>,
                     out: &mut Vec<Finding>| {
            for (i, r) in list.iter().enumerate() {
                match versions(&r.name) {
                    None => out.push(bad(
                        d.at(&format!("/{field}/{i}/name")),
                        format!(
                            "manifest `{}` pins unknown {field} entry `{}`",
                            d.spec.name, r.name
                        ),
                        "name a definition that exists",
                    )),
                    Some(v) if v != r.version => out.push(bad(
                        d.at(&format!("/{field}/{i}/version")),
                        format!(
                            "manifest pins `{}` at {}, but the definition is at {v}",
                            r.name, r.version
                        ),
                        "pin the version the definition declares (or bump both in one change)",
                    )),
                    Some(_) => {}
                }
            }
        };
        check(
            &d.spec.aggregates,
            "aggregates",
            &|n| aggs.get(n).map(|a| a.spec.version.clone()),
            out,
        );
        check(
            &d.spec.projections,
            "projections",
            &|n| projs.get(n).map(|a| a.spec.version.clone()),
            out,
        );
        check(
            &d.spec.sagas,
            "sagas",
            &|n| sagas.get(n).map(|a| a.spec.version.clone()),
            out,
        );
        check(
            &d.spec.effects,
            "effects",
            &|n| effects.get(n).map(|a| a.spec.version.clone()),
            out,
        );
    }
}

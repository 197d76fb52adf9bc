//! A small YAML writer for the files the import produces (rule groups): block mappings and
//! sequences, strings double-quoted (JSON escapes are valid YAML) or as `|-` blocks when they
//! span lines. The output is parsed back and compared before it is used.

use serde_json::Value;

/// Writes `v` as a YAML document.
pub(crate) fn to_yaml(v: &Value) -> String {
    let mut out = String::new();
    block(v, 0, &mut out);
    out
}

fn key(k: &str) -> String {
    let plain = !k.is_empty()
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !k.starts_with(|c: char| c.is_ascii_digit())
        && !matches!(
            k.to_ascii_lowercase().as_str(),
            "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "y" | "n"
        );
    if plain { k.to_owned() } else { quote(k) }
}

fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// A multi-line string that reads back the same as a `|-` block at `indent`.
fn literal_ok(s: &str) -> bool {
    s.contains('\n')
        && !s.starts_with([' ', '\n'])
        && !s.ends_with('\n')
        && s.lines().all(|l| !l.ends_with([' ', '\t']))
        && !s.chars().any(|c| c.is_control() && c != '\n')
        && !s.contains("\n\n\n")
}

fn scalar(v: &Value, indent: usize) -> String {
    match v {
        Value::String(s) if literal_ok(s) => {
            let pad = " ".repeat(indent + 2);
            let mut out = String::from("|-");
            for l in s.split('\n') {
                out.push('\n');
                if !l.is_empty() {
                    out.push_str(&pad);
                    out.push_str(l);
                }
            }
            out
        }
        Value::String(s) => quote(s),
        Value::Null => "null".to_owned(),
        Value::Array(a) if a.is_empty() => "[]".to_owned(),
        Value::Object(o) if o.is_empty() => "{}".to_owned(),
        other => other.to_string(),
    }
}

fn is_block(v: &Value) -> bool {
    match v {
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        _ => false,
    }
}

fn block(v: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(o) if !o.is_empty() => {
            for (k, val) in o {
                out.push_str(&pad);
                out.push_str(&key(k));
                out.push(':');
                if is_block(val) {
                    out.push('\n');
                    let child = if val.is_array() { indent } else { indent + 2 };
                    block(val, child, out);
                } else {
                    out.push(' ');
                    out.push_str(&scalar(val, indent));
                    out.push('\n');
                }
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for item in a {
                out.push_str(&pad);
                out.push_str("- ");
                if let Value::Object(o) = item
                    && !o.is_empty()
                {
                    let mut inner = String::new();
                    block(item, indent + 2, &mut inner);
                    out.push_str(inner.trim_start_matches(' '));
                } else if is_block(item) {
                    out.push('\n');
                    block(item, indent + 2, out);
                } else {
                    out.push_str(&scalar(item, indent + 2));
                    out.push('\n');
                }
            }
        }
        other => {
            out.push_str(&pad);
            out.push_str(&scalar(other, indent));
            out.push('\n');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let v = serde_json::json!({
            "groups": [{
                "name": "k8s",
                "rules": [{
                    "alert": "A",
                    "expr": "sum(rate(x[5m]))\n  > 0",
                    "labels": {"severity": "critical", "on": "yes"},
                    "annotations": {"description": "{{ $labels.pod }}: \"quoted\" \\ back", "x y": ""}
                }, {"record": "r:x", "expr": "1", "labels": {}}]
            }]
        });
        let text = to_yaml(&v);
        let back = crate::parse::parse_value("t.yaml", crate::parse::Format::Yaml, &text).unwrap();
        assert_eq!(back, v, "{text}");
    }
}

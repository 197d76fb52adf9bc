//! Canonical JSON: object keys sorted by their UTF-8 bytes, no insignificant whitespace, numbers
//! and strings as `serde_json` writes them. Equal values always give equal bytes, so digests of
//! unchanged documents never move.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Appends object `m` with its keys sorted by their UTF-8 bytes, each member's value written by
/// `value(key, value, out)` (canonical JSON with [`write()`]; a caller may leave a gap instead).
pub fn write_object(
    m: &serde_json::Map<String, Value>,
    out: &mut Vec<u8>,
    mut value: impl FnMut(&str, &Value, &mut Vec<u8>),
) {
    let mut keys: Vec<(&String, &Value)> = m.iter().collect();
    keys.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    out.push(b'{');
    for (i, (k, v)) in keys.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(k, out);
        out.push(b':');
        value(k, v, out);
    }
    out.push(b'}');
}

/// Writes `v` as canonical JSON.
pub fn to_vec(v: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    write(v, &mut out);
    out
}

/// Appends `v` as canonical JSON.
pub fn write(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(m) => write_object(m, out, |_, v, out| write(v, out)),
        Value::Array(a) => {
            out.push(b'[');
            for (i, v) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(v, out);
            }
            out.push(b']');
        }
        Value::String(s) => write_str(s, out),
        // null, bool and numbers have one serde_json rendering (writing to a Vec cannot fail)
        other => serde_json::to_writer(&mut *out, other).unwrap_or_default(),
    }
}

/// Appends `s` as a JSON string, escaped as serde_json escapes it (deterministic).
pub fn write_str(s: &str, out: &mut Vec<u8>) {
    serde_json::to_writer(&mut *out, s).unwrap_or_default();
}

/// Lowercase hex SHA-256 of `bytes`, prefixed `sha256:`.
pub fn digest(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    let mut s = String::with_capacity(7 + 64);
    s.push_str("sha256:");
    for b in d {
        s.push(char::from(HEX[(b >> 4) as usize]));
        s.push(char::from(HEX[(b & 15) as usize]));
    }
    s
}

const HEX: &[u8; 16] = b"0123456789abcdef";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strings_and_numbers_are_written_as_serde_json_writes_them() {
        for v in [
            json!("plain"),
            json!("quote \" backslash \\ nl \n tab \t ctl \u{1} é 😀 </script>"),
            json!(0),
            json!(-12),
            json!(u64::MAX),
            json!(1.5e300),
            json!(0.1),
            json!(true),
            json!(null),
        ] {
            assert_eq!(to_vec(&v), v.to_string().into_bytes(), "{v}");
        }
    }

    #[test]
    fn sorts_keys_at_every_level_and_drops_whitespace() {
        let a = json!({"b": 1, "a": {"y": [1, {"d": 2, "c": 3}], "x": "é\n"}});
        assert_eq!(
            String::from_utf8(to_vec(&a)).unwrap(),
            r#"{"a":{"x":"é\n","y":[1,{"c":3,"d":2}]},"b":1}"#
        );
    }

    #[test]
    fn equal_values_equal_digests_regardless_of_key_order() {
        let a: Value = serde_json::from_str(r#"{"x":1,"y":[true,null,1.5]}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{ "y" : [true, null, 1.5], "x" : 1 }"#).unwrap();
        assert_eq!(digest(&to_vec(&a)), digest(&to_vec(&b)));
        let c: Value = serde_json::from_str(r#"{"x":2,"y":[true,null,1.5]}"#).unwrap();
        assert_ne!(digest(&to_vec(&a)), digest(&to_vec(&c)));
        assert!(digest(b"").starts_with("sha256:e3b0c442"));
    }
}

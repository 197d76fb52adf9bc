//! Parsing TOML, YAML and JSON into one JSON value model while keeping source positions.
//!
//! Every value gets a JSON pointer; [`Spans`] maps pointers to `line:col` of the value and of its
//! key, so schema errors and cross-document findings point at the offending text. Inputs are
//! bounded before they reach a parser: nesting deeper than [`MAX_DEPTH`] and YAML alias
//! expansion beyond [`MAX_NODES`] are refused with a finding instead of exhausting the stack or
//! memory.

use std::collections::HashMap;

use saphyr::{LoadableYamlNode, MarkedYaml, Scalar, YamlData};
use serde_json::{Map, Number, Value};

use crate::diag::{Finding, Pos};

/// Deepest nesting accepted in any document.
pub const MAX_DEPTH: usize = 64;
/// Most values one document may expand to (YAML aliases included).
pub const MAX_NODES: usize = 200_000;

/// The format of a document, from its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Toml,
    Yaml,
    Json,
    Markdown,
}

impl Format {
    pub fn from_path(path: &str) -> Option<Format> {
        let ext = path.rsplit_once('.').map(|(_, e)| e)?;
        match ext {
            "toml" => Some(Format::Toml),
            "yaml" | "yml" => Some(Format::Yaml),
            "json" => Some(Format::Json),
            "md" => Some(Format::Markdown),
            _ => None,
        }
    }
}

/// Source positions by JSON pointer.
#[derive(Debug, Clone, Default)]
pub struct Spans {
    values: HashMap<String, Pos>,
    keys: HashMap<String, Pos>,
    /// Positions are not recorded (a parse for the value alone).
    off: bool,
}

impl Spans {
    /// The pointer of a child of `ptr`; empty when positions are off (nothing records it).
    fn child(&self, ptr: &str, segment: &str) -> String {
        if self.off {
            String::new()
        } else {
            format!("{ptr}/{}", escape_segment(segment))
        }
    }

    fn put_value(&mut self, pointer: &str, pos: Pos) {
        if !self.off {
            self.values.insert(pointer.to_owned(), pos);
        }
    }

    fn put_key(&mut self, pointer: &str, pos: Pos) {
        if !self.off {
            self.keys.insert(pointer.to_owned(), pos);
        }
    }

    /// Position of the value at `pointer`, or of its closest ancestor that has one.
    pub fn value(&self, pointer: &str) -> Pos {
        self.lookup(&self.values, pointer)
    }

    /// Position of the key of the value at `pointer` (falls back to the value).
    pub fn key(&self, pointer: &str) -> Pos {
        if let Some(p) = self.keys.get(pointer) {
            return *p;
        }
        self.value(pointer)
    }

    fn lookup(&self, map: &HashMap<String, Pos>, pointer: &str) -> Pos {
        let mut p = pointer;
        loop {
            if let Some(pos) = map.get(p) {
                return *pos;
            }
            match p.rfind('/') {
                Some(i) => p = &p[..i],
                None => return Pos { line: 1, col: 1 },
            }
        }
    }

    /// Overlays another document's spans (used when a merge patch replaces values).
    pub fn extend_from(&mut self, other: &Spans) {
        self.values
            .extend(other.values.iter().map(|(k, v)| (k.clone(), *v)));
        self.keys
            .extend(other.keys.iter().map(|(k, v)| (k.clone(), *v)));
    }

    pub fn contains(&self, pointer: &str) -> bool {
        self.values.contains_key(pointer)
    }
}

/// Escapes one JSON pointer segment.
pub fn escape_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    push_segment(&mut out, s);
    out
}

/// Appends one escaped JSON pointer segment to `out`.
pub fn push_segment(out: &mut String, s: &str) {
    if !s.contains(['~', '/']) {
        out.push_str(s);
        return;
    }
    for c in s.chars() {
        match c {
            '~' => out.push_str("~0"),
            '/' => out.push_str("~1"),
            c => out.push(c),
        }
    }
}

/// A parsed structured document.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub value: Value,
    pub spans: Spans,
}

/// Maps byte offsets to 1-based line and character column.
pub struct LineIndex<'a> {
    text: &'a str,
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    pub fn new(text: &'a str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { text, starts }
    }

    pub fn pos(&self, offset: usize) -> Pos {
        let offset = offset.min(self.text.len());
        let line = self.starts.partition_point(|&s| s <= offset) - 1;
        let start = self.starts[line];
        let col = self
            .text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count());
        Pos {
            line: line as u32 + 1,
            col: col as u32 + 1,
        }
    }
}

/// Decodes bytes as UTF-8, or returns a finding at the first invalid byte.
pub fn decode<'a>(path: &str, bytes: &'a [u8]) -> Result<&'a str, Finding> {
    std::str::from_utf8(bytes).map_err(|e| {
        let valid = &bytes[..e.valid_up_to()];
        let text = std::str::from_utf8(valid).unwrap_or_default();
        let pos = LineIndex::new(text).pos(text.len());
        Finding::new(
            "input.encoding",
            path,
            pos,
            format!("invalid UTF-8 at byte {}", e.valid_up_to()),
        )
        .help("save the file as UTF-8")
    })
}

/// Parses a structured document of the given format, with the source position of every value
/// and key.
pub fn parse(path: &str, format: Format, text: &str) -> Result<Parsed, Finding> {
    parse_with(path, format, text, Spans::default())
}

/// Parses a document for its value alone: the same checks and errors as [`parse`], no
/// positions recorded. Positions are computed later, only for a document a finding names
/// ([`LazySpans`]).
pub fn parse_value(path: &str, format: Format, text: &str) -> Result<Value, Finding> {
    let off = Spans {
        off: true,
        ..Spans::default()
    };
    parse_with(path, format, text, off).map(|p| p.value)
}

/// Parses a YAML stream that may hold several documents (`---`), each bounded like
/// [`parse_value`]. Used by `vakt import` for Kubernetes manifests; ops repo documents hold one.
pub fn parse_yaml_documents(path: &str, text: &str) -> Result<Vec<Value>, Finding> {
    check_depth(path, Format::Yaml, text)?;
    let docs = MarkedYaml::load_from_str(text).map_err(|e| {
        let m = e.marker();
        Finding::new(
            "input.syntax",
            path,
            Pos {
                line: m.line() as u32,
                col: m.col() as u32 + 1,
            },
            format!("YAML: {}", e.info()),
        )
        .help("fix the YAML syntax at this position")
    })?;
    let mut spans = Spans {
        off: true,
        ..Spans::default()
    };
    let mut conv = YamlConv {
        spans: &mut spans,
        path,
        nodes: 0,
        json: false,
        source: CharIndex::new(text),
    };
    docs.iter().map(|d| conv.node(d, "", 0)).collect()
}

fn parse_with(path: &str, format: Format, text: &str, spans: Spans) -> Result<Parsed, Finding> {
    check_depth(path, format, text)?;
    match format {
        Format::Toml => parse_toml(path, text, spans),
        Format::Yaml | Format::Json => parse_yaml(path, text, format, spans),
        Format::Markdown => Ok(Parsed {
            value: Value::String(text.to_owned()),
            spans: Spans::default(),
        }),
    }
}

/// A cheap scan that refuses pathological nesting before any parser recurses into it.
fn check_depth(path: &str, format: Format, text: &str) -> Result<(), Finding> {
    let too_deep = |offset: usize, depth: usize| {
        let pos = LineIndex::new(text).pos(offset);
        Err(Finding::new(
            "input.too-deep",
            path,
            pos,
            format!("nesting deeper than {MAX_DEPTH} levels (reached {depth})"),
        )
        .help("flatten the document; no ops repo document needs this much nesting"))
    };
    // Bracket depth outside strings and comments (TOML, JSON, YAML flow style).
    let mut depth = 0usize;
    let mut quote: Option<u8> = None;
    let mut escaped = false;
    let mut comment = false;
    let bytes = text.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if comment {
            if b == b'\n' {
                comment = false;
            }
            continue;
        }
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if b == b'\\' && q == b'"' {
                escaped = true;
            } else if b == q || (b == b'\n' && format == Format::Yaml && q == b'\'') {
                quote = None;
            }
            continue;
        }
        match b {
            b'"' => quote = Some(b'"'),
            b'\'' if format != Format::Json => quote = Some(b'\''),
            b'#' if format != Format::Json => comment = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return too_deep(i, depth);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    if format == Format::Yaml {
        // Block nesting: a stack of indentation levels, plus `- - -` chains on one line.
        let mut stack: Vec<usize> = Vec::new();
        let mut offset = 0;
        for line in text.split_inclusive('\n') {
            let start = offset;
            offset += line.len();
            let trimmed = line.trim_start_matches(' ');
            if trimmed.trim().is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let indent = line.len() - trimmed.len();
            while stack.last().is_some_and(|&top| top >= indent) {
                stack.pop();
            }
            stack.push(indent);
            let dashes = trimmed
                .as_bytes()
                .chunks(2)
                .take_while(|c| c == b"- ")
                .count();
            let d = stack.len() + dashes;
            if d > MAX_DEPTH {
                return too_deep(start + indent, d);
            }
        }
    }
    Ok(())
}

fn parse_toml(path: &str, text: &str, mut spans: Spans) -> Result<Parsed, Finding> {
    let table = toml::de::DeTable::parse(text).map_err(|e| {
        let pos = e
            .span()
            .map_or(Pos::default(), |s| LineIndex::new(text).pos(s.start));
        Finding::new(
            "input.syntax",
            path,
            pos,
            format!("TOML: {}", e.message().trim()),
        )
        .help("fix the TOML syntax at this position")
    })?;
    // Line positions only when they are recorded (an error computes its own).
    let idx = (!spans.off).then(|| LineIndex::new(text));
    let mut conv = TomlConv {
        idx: idx.as_ref(),
        text,
        spans: &mut spans,
        path,
    };
    let pos = conv.pos(table.span().start);
    conv.spans.put_value("", pos);
    let value = conv.table(table.get_ref(), "")?;
    Ok(Parsed { value, spans })
}

struct TomlConv<'a, 'b> {
    /// `None` when positions are off.
    idx: Option<&'a LineIndex<'b>>,
    text: &'b str,
    spans: &'a mut Spans,
    path: &'a str,
}

impl TomlConv<'_, '_> {
    /// The position recorded for `offset` (none when positions are off).
    fn pos(&self, offset: usize) -> Pos {
        self.idx.map_or(Pos::default(), |i| i.pos(offset))
    }

    fn table(&mut self, t: &toml::de::DeTable<'_>, ptr: &str) -> Result<Value, Finding> {
        // Sized once: a parsed repo holds tens of thousands of these maps.
        let mut map = Map::with_capacity(t.len());
        for (k, v) in t.iter() {
            let key = k.get_ref().to_string();
            let child = self.spans.child(ptr, &key);
            let pos = self.pos(k.span().start);
            self.spans.put_key(&child, pos);
            let value = self.value(v, &child)?;
            map.insert(key, value);
        }
        Ok(Value::Object(map))
    }

    fn value(
        &mut self,
        v: &toml::Spanned<toml::de::DeValue<'_>>,
        ptr: &str,
    ) -> Result<Value, Finding> {
        use toml::de::DeValue;
        let start = v.span().start;
        let pos = self.pos(start);
        self.spans.put_value(ptr, pos);
        // An error names its position even when positions are not recorded.
        let text = self.text;
        let at = || LineIndex::new(text).pos(start);
        let bad_number = |raw: &str| {
            Finding::new(
                "input.syntax",
                self.path,
                at(),
                format!("number `{raw}` cannot be represented"),
            )
            .help("use a finite number within the 64-bit range")
        };
        let out_of_range = |raw: &str| integer_out_of_range(self.path, at(), raw);
        Ok(match v.get_ref() {
            DeValue::String(s) => Value::String(s.to_string()),
            DeValue::Boolean(b) => Value::Bool(*b),
            DeValue::Datetime(d) => Value::String(d.to_string()),
            // The common case, a plain decimal that fits: no copies.
            DeValue::Integer(i) if i.radix() == 10 && !i.as_str().contains('_') => {
                match i.as_str().trim_start_matches('+').parse::<i64>() {
                    Ok(n) => Value::Number(n.into()),
                    Err(_) => return Err(out_of_range(i.as_str())),
                }
            }
            DeValue::Integer(i) => {
                let raw = i.as_str().replace('_', "");
                let (digits, neg) = match raw.strip_prefix('-') {
                    Some(r) => (r.to_owned(), true),
                    None => (raw.trim_start_matches('+').to_owned(), false),
                };
                let digits = digits
                    .trim_start_matches("0x")
                    .trim_start_matches("0o")
                    .trim_start_matches("0b");
                let n = i128::from_str_radix(digits, i.radix())
                    .map_err(|_| out_of_range(i.as_str()))?;
                let n = if neg { -n } else { n };
                // TOML integers are 64-bit signed; anything else is out of range, not a float.
                match i64::try_from(n) {
                    Ok(s) => Value::Number(s.into()),
                    Err(_) => return Err(out_of_range(i.as_str())),
                }
            }
            DeValue::Float(f) => {
                let raw = f.as_str().replace('_', "");
                let n: f64 = raw.parse().map_err(|_| bad_number(f.as_str()))?;
                Value::Number(Number::from_f64(n).ok_or_else(|| bad_number(f.as_str()))?)
            }
            DeValue::Array(a) => {
                let mut out = Vec::with_capacity(a.len());
                for (i, item) in a.iter().enumerate() {
                    out.push(self.value(item, &self.spans.child(ptr, &i.to_string()))?);
                }
                Value::Array(out)
            }
            DeValue::Table(t) => self.table(t, ptr)?,
        })
    }
}

fn parse_yaml(path: &str, text: &str, format: Format, mut spans: Spans) -> Result<Parsed, Finding> {
    let lang = if format == Format::Json {
        "JSON"
    } else {
        "YAML"
    };
    if format == Format::Json {
        check_strict_json(path, text)?;
    }
    let docs = MarkedYaml::load_from_str(text).map_err(|e| {
        let m = e.marker();
        let rule = if e.info().contains("alias") {
            "input.too-large"
        } else {
            "input.syntax"
        };
        Finding::new(
            rule,
            path,
            Pos {
                line: m.line() as u32,
                col: m.col() as u32 + 1,
            },
            format!("{lang}: {}", e.info()),
        )
        .help(format!("fix the {lang} syntax at this position"))
    })?;
    if docs.len() > 1 {
        let pos = docs[1].span.start;
        return Err(Finding::new(
            "input.syntax",
            path,
            Pos {
                line: pos.line() as u32,
                col: pos.col() as u32 + 1,
            },
            format!(
                "{lang}: the file holds {} documents; vakt expects one",
                docs.len()
            ),
        )
        .help("split the file, one document per file"));
    }
    let mut conv = YamlConv {
        spans: &mut spans,
        path,
        nodes: 0,
        json: format == Format::Json,
        source: CharIndex::new(text),
    };
    let value = match docs.first() {
        Some(doc) => conv.node(doc, "", 0)?,
        None => Value::Null,
    };
    Ok(Parsed { value, spans })
}

/// A `.json` document is read by the YAML parser (for its positions), but YAML is a superset of
/// JSON: tags (`!x`), anchors, comments and block style would load silently. A strict JSON
/// syntax pass first refuses anything that is not JSON, at its line and column; it builds
/// nothing (`IgnoredAny`) and its nesting is already bounded by [`check_depth`].
fn check_strict_json(path: &str, text: &str) -> Result<(), Finding> {
    serde_json::from_str::<serde::de::IgnoredAny>(text)
        .map(|_| ())
        .map_err(|e| {
            Finding::new(
                "input.syntax",
                path,
                Pos {
                    line: e.line() as u32,
                    col: e.column() as u32,
                },
                format!("JSON: {e}"),
            )
            .help("a .json file must be plain JSON (no YAML tags, anchors or comments); fix it at this position")
        })
}

/// An integer literal outside i64: refused rather than loaded as a float (which would lose
/// digits silently).
fn integer_out_of_range(path: &str, pos: Pos, raw: &str) -> Finding {
    Finding::new(
        "input.syntax",
        path,
        pos,
        format!(
            "integer out of range: `{raw}` is outside the 64-bit range ({}..={})",
            i64::MIN,
            i64::MAX
        ),
    )
    .help("use a smaller number, or quote it if it is an identifier rather than a number")
}

/// An integer the YAML parser could not hold in an `i64` comes back as a float: the value
/// would change silently (`9223372036854775808` → `9.223372036854776e18`). The source text of
/// such a scalar tells an integer from a float written as one.
fn is_integer_literal(raw: &str) -> bool {
    let digits = raw.strip_prefix(['-', '+']).unwrap_or(raw);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// Maps saphyr's character indices to byte offsets of the source text.
struct CharIndex<'a> {
    text: &'a str,
    /// Byte offset of every character; built only for non-ASCII text, on first use.
    offsets: Option<Vec<usize>>,
}

impl<'a> CharIndex<'a> {
    fn new(text: &'a str) -> Self {
        CharIndex {
            text,
            offsets: None,
        }
    }

    fn slice(&mut self, start: usize, end: usize) -> Option<&'a str> {
        let text = self.text;
        if text.is_ascii() {
            return text.get(start..end);
        }
        let offsets = self.offsets.get_or_insert_with(|| {
            let mut v: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
            v.push(text.len());
            v
        });
        text.get(*offsets.get(start)?..*offsets.get(end)?)
    }
}

struct YamlConv<'a> {
    spans: &'a mut Spans,
    path: &'a str,
    nodes: usize,
    /// Plain JSON has no aliases: the budget message must not blame them.
    json: bool,
    /// The source, to read back the text of a scalar that loaded as a float.
    source: CharIndex<'a>,
}

fn ypos(n: &MarkedYaml<'_>) -> Pos {
    Pos {
        // saphyr marks an empty tagged scalar (`a: !x`) at line 0; positions are 1-based
        // (found by the `parse_json` fuzz target).
        line: (n.span.start.line() as u32).max(1),
        col: n.span.start.col() as u32 + 1,
    }
}

impl YamlConv<'_> {
    fn node(&mut self, n: &MarkedYaml<'_>, ptr: &str, depth: usize) -> Result<Value, Finding> {
        let pos = ypos(n);
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            if self.json {
                return Err(Finding::new(
                    "input.too-large",
                    self.path,
                    pos,
                    format!("document holds more than {MAX_NODES} values"),
                )
                .help("split the document (a dashboard: fewer panels per dashboard)"));
            }
            return Err(Finding::new(
                "input.too-large",
                self.path,
                pos,
                format!("document expands to more than {MAX_NODES} values (alias expansion?)"),
            )
            .help("remove the alias chain; ops repo documents do not need aliases"));
        }
        if depth > MAX_DEPTH {
            return Err(Finding::new(
                "input.too-deep",
                self.path,
                pos,
                format!("nesting deeper than {MAX_DEPTH} levels"),
            )
            .help("flatten the document"));
        }
        self.spans.put_value(ptr, pos);
        if let YamlData::Value(Scalar::FloatingPoint(_)) = &n.data {
            let raw = self
                .source
                .slice(n.span.start.index(), n.span.end.index())
                .unwrap_or_default()
                .trim();
            if is_integer_literal(raw) {
                return Err(integer_out_of_range(self.path, pos, raw));
            }
        }
        Ok(match &n.data {
            YamlData::Value(s) => scalar(s).ok_or_else(|| {
                Finding::new(
                    "input.syntax",
                    self.path,
                    pos,
                    "number cannot be represented (NaN or infinity)",
                )
                .help("use a finite number")
            })?,
            YamlData::Representation(s, _, _) => Value::String(s.to_string()),
            YamlData::Sequence(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    out.push(self.node(item, &self.spans.child(ptr, &i.to_string()), depth + 1)?);
                }
                Value::Array(out)
            }
            YamlData::Mapping(m) => {
                let mut map = Map::with_capacity(m.len());
                for (k, v) in m.iter() {
                    let key = match &k.data {
                        YamlData::Value(Scalar::String(s)) => s.to_string(),
                        YamlData::Value(s) => match scalar(s) {
                            Some(Value::String(s)) => s,
                            Some(other) => other.to_string(),
                            None => String::new(),
                        },
                        _ => {
                            return Err(Finding::new(
                                "input.syntax",
                                self.path,
                                ypos(k),
                                "mapping keys must be plain scalars",
                            )
                            .help("use a string key"));
                        }
                    };
                    let child = self.spans.child(ptr, &key);
                    self.spans.put_key(&child, ypos(k));
                    let value = self.node(v, &child, depth + 1)?;
                    map.insert(key, value);
                }
                Value::Object(map)
            }
            YamlData::Tagged(_, inner) => self.node(inner, ptr, depth + 1)?,
            YamlData::Alias(_) | YamlData::BadValue => {
                return Err(Finding::new(
                    "input.syntax",
                    self.path,
                    pos,
                    "unresolved alias or invalid value",
                )
                .help("define the anchor before using it, or write the value out"));
            }
        })
    }
}

fn scalar(s: &Scalar<'_>) -> Option<Value> {
    Some(match s {
        Scalar::Null => Value::Null,
        Scalar::Boolean(b) => Value::Bool(*b),
        Scalar::Integer(i) => Value::Number((*i).into()),
        Scalar::FloatingPoint(f) => Value::Number(Number::from_f64(f.into_inner())?),
        Scalar::String(s) => Value::String(s.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_spans_point_at_values_and_keys() {
        let p = parse(
            "a.toml",
            Format::Toml,
            "x = 1\n[t]\nname = \"n\"\nlist = [1, 2]\n",
        )
        .unwrap();
        assert_eq!(p.value["t"]["name"], "n");
        assert_eq!(p.spans.value("/t/name"), Pos { line: 3, col: 8 });
        assert_eq!(p.spans.key("/t/list"), Pos { line: 4, col: 1 });
        assert_eq!(p.spans.value("/t/list/1"), Pos { line: 4, col: 12 });
    }

    #[test]
    fn yaml_spans_and_errors() {
        let p = parse(
            "a.yaml",
            Format::Yaml,
            "groups:\n  - name: g\n    rules: []\n",
        )
        .unwrap();
        assert_eq!(p.spans.value("/groups/0/name"), Pos { line: 2, col: 11 });
        let e = parse("a.yaml", Format::Yaml, "a: [1, 2\n").unwrap_err();
        assert_eq!(e.rule, "input.syntax");
        let e = parse("a.yaml", Format::Yaml, "a: 1\na: 2\n").unwrap_err();
        assert_eq!(e.rule, "input.syntax", "duplicate keys are refused: {e:?}");
    }

    #[test]
    fn deep_nesting_is_refused_before_parsing() {
        let deep = format!("a = {}{}\n", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(
            parse("a.toml", Format::Toml, &deep).unwrap_err().rule,
            "input.too-deep"
        );
        let mut yaml = String::new();
        for i in 0..10_000 {
            yaml.push_str(&" ".repeat(i));
            yaml.push_str("k:\n");
        }
        assert_eq!(
            parse("a.yaml", Format::Yaml, &yaml).unwrap_err().rule,
            "input.too-deep"
        );
        let json = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(
            parse("a.json", Format::Json, &json).unwrap_err().rule,
            "input.too-deep"
        );
    }

    #[test]
    fn alias_bomb_is_bounded() {
        let bomb = "a: &a [\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\"]\n\
            b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n\
            c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n\
            d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n\
            e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n\
            f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n\
            g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\n\
            h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]\n\
            i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]\n";
        let e = parse("bomb.yaml", Format::Yaml, bomb).unwrap_err();
        assert!(
            matches!(e.rule, "input.too-large" | "input.syntax"),
            "{e:?}"
        );
    }

    #[test]
    fn an_empty_tagged_value_has_a_position_inside_the_file() {
        // Fuzz regression (parse_json): `!false` is an empty scalar with a tag, which saphyr
        // marks at line 0. YAML accepts it; JSON refuses it (below).
        let text = "{\n  \"a\":!false,\n  \"b\": 1\n}\n";
        let p = parse("a.yaml", Format::Yaml, text).unwrap();
        let pos = p.spans.value("/a");
        assert!(pos.line >= 1 && pos.col >= 1, "{pos:?}");
        assert_eq!(p.spans.value("/b").line, 3);
    }

    #[test]
    fn json_is_parsed_as_json_only() {
        // YAML tags, anchors, comments and block style load under the YAML parser; a .json file
        // must refuse each at its line.
        for (text, line) in [
            ("{\n  \"a\": !!str 1\n}\n", 2),
            ("{\n  \"a\":!false,\n  \"b\": 1\n}\n", 2),
            ("{\"a\": 1,\n \"b\": &x 2}\n", 2),
            ("{\"a\": 1}\n# comment\n", 2),
            ("a: 1\n", 1),
        ] {
            let e = parse("a.json", Format::Json, text).unwrap_err();
            assert_eq!((e.rule, e.line), ("input.syntax", line), "{text:?}: {e:?}");
            assert!(e.message.starts_with("JSON: "), "{e:?}");
            // The value-only parse refuses it the same way.
            assert_eq!(
                parse_value("a.json", Format::Json, text).unwrap_err().line,
                line
            );
        }
        let p = parse("a.json", Format::Json, "{\n  \"a\": [1, \"x\"]\n}\n").unwrap();
        assert_eq!(p.value["a"][1], "x");
        assert_eq!(p.spans.value("/a/0").line, 2);
    }

    #[test]
    fn integers_outside_i64_are_refused_not_turned_into_floats() {
        for (path, format, text) in [
            ("a.yaml", Format::Yaml, "a: 1\nb: 9223372036854775808\n"),
            ("a.yaml", Format::Yaml, "a: 1\nb: -9223372036854775809\n"),
            (
                "a.yaml",
                Format::Yaml,
                "a: 1\nb: [1, +99999999999999999999]\n",
            ),
            (
                "a.json",
                Format::Json,
                "{\"a\": 1,\n \"b\": 9223372036854775808}\n",
            ),
            (
                "a.json",
                Format::Json,
                "{\"a\": 1,\n \"b\": -9223372036854775809}\n",
            ),
            ("a.toml", Format::Toml, "a = 1\nb = 9223372036854775808\n"),
            ("a.toml", Format::Toml, "a = 1\nb = -9223372036854775809\n"),
            ("a.toml", Format::Toml, "a = 1\nb = 0xffffffffffffffff\n"),
        ] {
            let e = parse(path, format, text).unwrap_err();
            assert_eq!((e.rule, e.line), ("input.syntax", 2), "{text:?}: {e:?}");
            assert!(e.message.contains("integer out of range"), "{e:?}");
            assert!(parse_value(path, format, text).is_err(), "{text:?}");
        }
        // The bounds themselves load as integers; floats stay floats, and so do quoted digits
        // and non-ASCII text before a float (character indices, not bytes).
        for (path, format, text) in [
            ("a.yaml", Format::Yaml, "b: 9223372036854775807\n"),
            ("a.json", Format::Json, "{\"b\": -9223372036854775808}"),
            ("a.toml", Format::Toml, "b = -9223372036854775808\n"),
        ] {
            let v = parse(path, format, text).unwrap().value;
            assert!(v["b"].is_i64(), "{text:?}: {v}");
        }
        let v = parse(
            "a.yaml",
            Format::Yaml,
            "é: \"9223372036854775808\"\nf: 1.5e300\ng: 12.0\n",
        )
        .unwrap()
        .value;
        assert_eq!(v["é"], "9223372036854775808");
        assert_eq!(v["f"], 1.5e300);
        assert_eq!(v["g"], 12.0);
        let e = parse("a.yaml", Format::Yaml, "é: ü\nb: 18446744073709551616\n").unwrap_err();
        assert!(e.message.contains("`18446744073709551616`"), "{e:?}");
    }

    #[test]
    fn invalid_utf8_is_located() {
        let e = decode("a.toml", b"x = 1\ny = \"\xff\"\n").unwrap_err();
        assert_eq!((e.rule, e.line), ("input.encoding", 2));
    }
}

/// The text of a file, read when first needed: a document whose parse came from the validation
/// cache (`crate::cache`) has its text read from Git only if a finding has to point into it.
pub struct LazyText {
    cell: std::sync::OnceLock<Option<std::sync::Arc<str>>>,
    load: Box<dyn Fn() -> Option<std::sync::Arc<str>> + Send + Sync>,
}

impl LazyText {
    /// A text that is already in memory.
    pub fn loaded(text: std::sync::Arc<str>) -> LazyText {
        let cell = std::sync::OnceLock::new();
        let _ = cell.set(Some(text));
        LazyText {
            cell,
            load: Box::new(|| None),
        }
    }

    /// A text `load` reads on first use (`None`: it could not be read).
    pub fn deferred(
        load: impl Fn() -> Option<std::sync::Arc<str>> + Send + Sync + 'static,
    ) -> LazyText {
        LazyText {
            cell: std::sync::OnceLock::new(),
            load: Box::new(load),
        }
    }

    pub fn get(&self) -> Option<&std::sync::Arc<str>> {
        self.cell.get_or_init(|| (self.load)()).as_ref()
    }
}

impl std::fmt::Debug for LazyText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.cell.get() {
            Some(Some(t)) => write!(f, "LazyText({} bytes)", t.len()),
            Some(None) => f.write_str("LazyText(unreadable)"),
            None => f.write_str("LazyText(not read)"),
        }
    }
}

/// The source positions of one file, computed the first time a finding asks for one: parsing
/// every document of a large repo with its positions doubles what validation holds in memory,
/// and a clean document never needs them.
#[derive(Debug)]
pub struct LazySpans {
    path: String,
    format: Format,
    text: std::sync::Arc<LazyText>,
    /// Boxed: nearly every file's spans are never computed, and a parse holds one per file.
    cell: std::sync::OnceLock<Box<Spans>>,
}

impl LazySpans {
    pub fn new(path: &str, format: Format, text: std::sync::Arc<str>) -> LazySpans {
        Self::with_text(path, format, std::sync::Arc::new(LazyText::loaded(text)))
    }

    /// Spans over a text that may not be read yet.
    pub fn with_text(path: &str, format: Format, text: std::sync::Arc<LazyText>) -> LazySpans {
        LazySpans {
            path: path.to_owned(),
            format,
            text,
            cell: std::sync::OnceLock::new(),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The file's text (read now if it was deferred; `None` if it cannot be read).
    pub fn text(&self) -> Option<std::sync::Arc<str>> {
        self.text.get().cloned()
    }

    /// The positions (parsed again, once, with positions recorded).
    pub fn get(&self) -> &Spans {
        self.cell.get_or_init(|| {
            self.text
                .get()
                .and_then(|t| parse(&self.path, self.format, t).ok())
                .map(|p| Box::new(p.spans))
                .unwrap_or_default()
        })
    }
}

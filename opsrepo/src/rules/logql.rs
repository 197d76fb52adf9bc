//! A syntax checker for Grafana Loki's LogQL (the Loki 2.9–3.x grammar of
//! `pkg/logql/syntax/syntax.y` and its lexer).
//!
//! [`check`] answers "is this LogQL?" and, if not, where (a byte offset) and why, phrased so an
//! operator knows what to fix. It is a hand-written lexer plus a recursive-descent parser that
//! builds no AST: it only tracks what each sub-expression yields (log query, log range, metric)
//! so it can reject what Loki rejects — a log range outside a range aggregation, a log query
//! inside `sum(...)`, `sum_over_time` without `unwrap`, `by` on `rate(...)`, and so on.
//!
//! Covered: stream selectors; line filters (`|=`, `!=`, `|~`, `!~`, `|>`, `!>`, `or` chains,
//! `ip("...")`); the parsers `json` and `logfmt` (flags, extractions), `regexp`, `pattern`,
//! `unpack`; `line_format`, `label_format`, `drop`, `keep`, `decolorize`, `unwrap` (with
//! `bytes`/`duration`/`duration_seconds` conversions and post-filters); label filters on
//! strings, numbers, durations, byte sizes and `ip(...)`, joined by `and`, `or`, `,`,
//! juxtaposition and parentheses; range and vector aggregations with `by`/`without`,
//! `label_replace`, `vector`, number literals, binary operators with `bool`, `on`/`ignoring`
//! and `group_left`/`group_right`; `offset`; `#` comments. Keywords are case-insensitive.
//!
//! Deliberately not checked (this is a syntax check, not Loki):
//! - regexes, templates, `pattern` expressions and `ip(...)` ranges are not compiled, only
//!   required to be well-formed strings;
//! - Loki's "at least one matcher must not match the empty string" rule is approximated: only
//!   `=""`, negative matchers and a few obviously empty-matching regexes (`.*`, ...) count;
//! - operator precedence is not modelled (it changes meaning, not which strings are accepted);
//! - the experimental `variants(...) of (...)`, the `xml` parser and hex number literals;
//! - Loki reserves keywords (e.g. a label called `json` or `ip` is rejected there); we only
//!   reject them where they would be ambiguous.

use std::fmt;

/// `return Err(...)` with a formatted message.
macro_rules! bail {
    ($at:expr, $($fmt:tt)+) => {
        return Err(LogqlError { offset: $at, message: format!($($fmt)+) })
    };
}

/// Deepest nesting of parentheses / function calls accepted before giving up.
const MAX_DEPTH: usize = 128;

/// A LogQL syntax error: byte offset into the query and what is wrong, phrased so an operator
/// knows what to fix (e.g. "expected `)` to close `sum(` opened at offset 3", "unknown range
/// function `rates`", "a log query needs a stream selector `{label=\"value\"}`").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogqlError {
    pub offset: usize,
    pub message: String,
}

impl fmt::Display for LogqlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at offset {}: {}", self.offset, self.message)
    }
}

/// Checks the syntax of a LogQL query (log query or metric query).
pub fn check(query: &str) -> Result<(), LogqlError> {
    let toks = lex(query)?;
    let mut p = Parser {
        src: query,
        toks,
        pos: 0,
        depth: 0,
    };
    let first = p.peek();
    if first.kind == K::Eof {
        bail!(first.start, "empty query: {NEEDS_SELECTOR}");
    }
    let kind = p.expr()?;
    let t = p.peek();
    match kind {
        _ if t.kind != K::Eof => {
            let what = if p.sym(t, ")") || p.sym(t, "}") {
                "unmatched"
            } else {
                "unexpected"
            };
            bail!(
                t.start,
                "{what} {} after a complete expression",
                p.describe(t)
            )
        }
        Kind::Log { unwrap: Some(at) } => bail!(
            at,
            "`unwrap` is only valid inside a range aggregation, \
             e.g. `sum_over_time({{app=\"x\"}} | unwrap bytes [5m])`"
        ),
        Kind::LogRange { .. } => bail!(first.start, "{RANGE_ALONE}"),
        _ => Ok(()),
    }
}

type Res<T> = Result<T, LogqlError>;

const NEEDS_SELECTOR: &str = "a log query needs a stream selector `{label=\"value\"}`";
const RANGE_ALONE: &str = "a log range `{...}[5m]` is not a query by itself: wrap it in a \
                           range aggregation such as `rate(...)` or `count_over_time(...)`";
#[rustfmt::skip]
const RANGE_OPS: &[&str] = &[
    "rate", "rate_counter", "count_over_time", "bytes_rate", "bytes_over_time",
    "absent_over_time", "sum_over_time", "avg_over_time", "max_over_time", "min_over_time",
    "first_over_time", "last_over_time", "stdvar_over_time", "stddev_over_time",
    "quantile_over_time",
];
/// Range aggregations that work without `unwrap` (all others require it).
const COUNTING_OPS: &[&str] = &[
    "rate",
    "count_over_time",
    "bytes_rate",
    "bytes_over_time",
    "absent_over_time",
];
/// Range aggregations that forbid `unwrap`.
const NEVER_UNWRAP: &[&str] = &["count_over_time", "bytes_rate", "bytes_over_time"];
/// Range aggregations that take `by`/`without`.
#[rustfmt::skip]
const GROUPABLE: &[&str] = &[
    "avg_over_time", "min_over_time", "max_over_time", "stddev_over_time", "stdvar_over_time",
    "quantile_over_time", "first_over_time", "last_over_time",
];
#[rustfmt::skip]
const VECTOR_OPS: &[&str] = &[
    "sum", "avg", "min", "max", "count", "stddev", "stdvar", "bottomk", "topk", "sort",
    "sort_desc", "approx_topk",
];
#[rustfmt::skip]
const STAGES: &[&str] = &[
    "json", "logfmt", "regexp", "pattern", "unpack", "line_format", "label_format", "drop",
    "keep", "decolorize", "unwrap",
];
/// Operators and punctuation, longest first so `|=` wins over `|`.
#[rustfmt::skip]
const SYMBOLS: &[&str] = &[
    "|=", "|~", "|>", "!=", "!~", "!>", "=~", "==", ">=", "<=", "|", "=", ">", "<", "+", "-",
    "*", "/", "%", "^", "{", "}", "(", ")", ",",
];
const LINE_FILTERS: &[&str] = &["|=", "|~", "|>", "!=", "!~", "!>"];
const COMPARISONS: &[&str] = &["==", "!=", ">", ">=", "<", "<="];
const LABEL_OPS: &[&str] = &["=", "!=", "=~", "!~", "==", ">", ">=", "<", "<="];
/// Regexes that obviously match the empty string (so `name=~re` alone selects every stream).
const EMPTY_REGEXES: &[&str] = &["", ".*", ".*?", "^.*$", "^.*", ".*$", "(.*)", "(?s).*"];

// ---------------------------------------------------------------------------------------------
// Lexer
// ---------------------------------------------------------------------------------------------

/// Token kinds. Keywords and function names are `Ident`s, matched case-insensitively by the
/// parser where they mean something; operators and punctuation are `Sym`s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum K {
    Sym,
    Str,
    Num,
    Dur,
    Bytes,
    Ident,
    /// `[5m]`, already validated as a duration.
    Range,
    /// `--strict`, `--keep-empty`
    Flag,
    Eof,
}

#[derive(Debug, Clone, Copy)]
struct Tok {
    kind: K,
    start: usize,
    end: usize,
}

/// Splits the query into tokens ending with `Eof`, or reports the first lexical error
/// (unterminated string, bad escape, bad duration, stray character).
fn lex(src: &str) -> Res<Vec<Tok>> {
    let mut toks = Vec::new();
    let mut i = 0;
    while let Some(rest) = src.get(i..) {
        let Some(ch) = rest.chars().next() else { break };
        let second = rest.as_bytes().get(1).copied().unwrap_or(0);
        let (kind, len) = if ch.is_whitespace() {
            i += ch.len_utf8();
            continue;
        } else if ch == '#' {
            i += rest.find('\n').unwrap_or(rest.len()); // comment to end of line
            continue;
        } else if ch == '"' || ch == '`' {
            (K::Str, lex_string(src, i)? - i)
        } else if ch == '[' {
            (K::Range, lex_range(src, i)? - i)
        } else if ch.is_ascii_digit() || (ch == '.' && second.is_ascii_digit()) {
            lex_number(src, i)?
        } else if ch.is_ascii_alphabetic() || ch == '_' {
            let n = rest
                .bytes()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == b'_');
            (K::Ident, n.count())
        } else if rest.starts_with("--")
            && rest.as_bytes().get(2).is_some_and(u8::is_ascii_alphabetic)
        {
            let n = rest
                .bytes()
                .take_while(|c| c.is_ascii_alphabetic() || *c == b'-')
                .count();
            let flag = &rest[..n];
            if flag != "--strict" && flag != "--keep-empty" {
                bail!(
                    i,
                    "unknown parser flag `{}`: `logfmt` takes `--strict` and `--keep-empty`",
                    clip(flag)
                );
            }
            (K::Flag, n)
        } else if let Some(s) = SYMBOLS.iter().find(|s| rest.starts_with(**s)) {
            (K::Sym, s.len())
        } else if ch == '\'' {
            bail!(
                i,
                "single quotes do not delimit strings in LogQL: use double quotes or backticks"
            );
        } else {
            bail!(i, "unexpected character `{ch}`");
        };
        toks.push(Tok {
            kind,
            start: i,
            end: i + len,
        });
        i += len;
    }
    toks.push(Tok {
        kind: K::Eof,
        start: src.len(),
        end: src.len(),
    });
    Ok(toks)
}

/// Scans a `"..."` string (Go escapes) or a `` `...` `` string starting at `start`; returns
/// its end.
fn lex_string(src: &str, start: usize) -> Res<usize> {
    let b = src.as_bytes();
    let quote = b.get(start).copied().unwrap_or(b'"');
    let mut i = start + 1;
    while let Some(&c) = b.get(i) {
        if c == quote {
            return Ok(i + 1);
        } else if quote == b'`' || c != b'\\' {
            if c == b'\n' && quote == b'"' {
                bail!(
                    start,
                    "unterminated string: a double-quoted string cannot span lines (use backticks)"
                );
            }
            i += 1;
            continue;
        }
        let all =
            |n: usize, f: fn(&u8) -> bool| b.get(i + 2..i + 2 + n).is_some_and(|s| s.iter().all(f));
        i += match b.get(i + 1) {
            None => break,
            Some(b'a' | b'b' | b'f' | b'n' | b'r' | b't' | b'v' | b'\\' | b'"') => 2,
            Some(b'x') if all(2, u8::is_ascii_hexdigit) => 4,
            Some(b'u') if all(4, u8::is_ascii_hexdigit) => 6,
            Some(b'U') if all(8, u8::is_ascii_hexdigit) => 10,
            Some(b'0'..=b'7') if all(2, |c| (b'0'..=b'7').contains(c)) => 4,
            Some(_) => {
                let e = src
                    .get(i + 1..)
                    .and_then(|s| s.chars().next())
                    .unwrap_or('?');
                bail!(
                    i,
                    "invalid escape `\\{e}` in a string: write `\\\\{e}` inside double quotes, \
                     or use a backtick string for regular expressions"
                );
            }
        };
    }
    bail!(
        start,
        "unterminated string: add the closing `{}`",
        quote as char
    )
}

/// Scans `[duration]` starting at `start`; returns its end.
fn lex_range(src: &str, start: usize) -> Res<usize> {
    let Some(len) = src.get(start..).and_then(|s| s.find(']')) else {
        bail!(start, "missing `]` to close the range opened here");
    };
    let inner = src.get(start + 1..start + len).unwrap_or("");
    if !is_duration(inner) {
        let hint = if inner.contains(':') {
            " (LogQL has no subqueries)"
        } else {
            ""
        };
        bail!(
            start + 1,
            "invalid range `[{}]`: expected a duration such as `[5m]` or `[1h30m]`{hint}",
            clip(inner)
        );
    }
    Ok(start + len + 1)
}

/// Scans a number, duration (`1h30m`) or byte size (`20MB`); returns its kind and length.
fn lex_number(src: &str, start: usize) -> Res<(K, usize)> {
    let b = src.as_bytes();
    let digits = |j: usize| {
        j + b
            .get(j..)
            .map_or(0, |s| s.iter().take_while(|c| c.is_ascii_digit()).count())
    };
    let mut j = digits(start);
    if b.get(j) == Some(&b'.') && b.get(j + 1).is_some_and(u8::is_ascii_digit) {
        j = digits(j + 1);
    }
    if matches!(b.get(j), Some(b'e' | b'E')) {
        let k = if matches!(b.get(j + 1), Some(b'+' | b'-')) {
            j + 2
        } else {
            j + 1
        };
        if b.get(k).is_some_and(u8::is_ascii_digit) {
            j = digits(k);
        }
    }
    // A unit suffix runs up to the next character that cannot be part of one.
    let suffix = src.get(j..).unwrap_or("");
    let unit_len: usize = suffix
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | 'µ'))
        .map(char::len_utf8)
        .sum();
    let text = src.get(start..j + unit_len).unwrap_or("");
    if unit_len == 0 {
        Ok((K::Num, text.len()))
    } else if is_duration(text) {
        Ok((K::Dur, text.len()))
    } else if is_bytes(text) {
        Ok((K::Bytes, text.len()))
    } else {
        bail!(
            start,
            "`{}` is not a valid number, duration (e.g. `5m`, `1h30m`, `250ms`) or byte size \
             (e.g. `20MB`, `1KiB`)",
            clip(text)
        )
    }
}

/// Length of a leading `digits[.digits]` (0 if none).
fn number_prefix(s: &str) -> usize {
    let b = s.as_bytes();
    let n = b.iter().take_while(|c| c.is_ascii_digit()).count();
    let frac = match b.get(n) {
        Some(b'.') => b[n + 1..].iter().take_while(|c| c.is_ascii_digit()).count(),
        _ => 0,
    };
    if frac > 0 { n + 1 + frac } else { n }
}

/// `[0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h|d|w|y)`, repeated; or the bare `0`.
fn is_duration(s: &str) -> bool {
    const UNITS: &[&str] = &["ns", "us", "µs", "ms", "s", "m", "h", "d", "w", "y"];
    let mut rest = s;
    while !rest.is_empty() {
        let n = number_prefix(rest);
        let Some(unit) = UNITS.iter().find(|u| rest[n..].starts_with(**u)) else {
            return s == "0";
        };
        if n == 0 {
            return false;
        }
        rest = &rest[n + unit.len()..];
    }
    !s.is_empty()
}

/// A number followed by a byte unit as go-humanize parses them (`B`, `kB`, `KiB`, `MB`, `M`...).
fn is_bytes(s: &str) -> bool {
    #[rustfmt::skip]
    const UNITS: &[&str] = &[
        "b", "k", "kb", "ki", "kib", "m", "mb", "mi", "mib", "g", "gb", "gi", "gib", "t", "tb",
        "ti", "tib", "p", "pb", "pi", "pib",
    ];
    let n = number_prefix(s);
    let unit = &s[n..];
    n > 0
        && unit.chars().all(|c| "BikKMGTP".contains(c))
        && UNITS.contains(&unit.to_ascii_lowercase().as_str())
}

/// Shortens user text quoted in messages.
fn clip(s: &str) -> String {
    let mut out: String = s.chars().take(40).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

/// " (did you mean `x`?)" for the candidate within edit distance 2, if any.
fn suggest(word: &str, candidates: &[&str]) -> String {
    let distance = |b: &str| {
        let b: Vec<char> = b.chars().collect();
        let mut prev: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in word.chars().enumerate() {
            let mut cur = vec![i + 1; b.len() + 1];
            for (j, cb) in b.iter().enumerate() {
                cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                    .min(prev[j + 1] + 1)
                    .min(cur[j] + 1);
            }
            prev = cur;
        }
        prev[b.len()]
    };
    if word.len() > 40 {
        return String::new();
    }
    let best = candidates
        .iter()
        .map(|c| (distance(c), c))
        .filter(|(d, _)| *d <= 2)
        .min();
    best.map(|(_, c)| format!(" (did you mean `{c}`?)"))
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Parser
// ---------------------------------------------------------------------------------------------

/// What a sub-expression yields, which decides where it may appear.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// `{...} | pipeline`; `unwrap` holds the offset of an `unwrap` stage, if any.
    Log { unwrap: Option<usize> },
    /// `{...} | pipeline [5m]`: only valid as the argument of a range aggregation.
    LogRange { unwrap: bool },
    /// A sample vector or scalar; `literal` for plain numbers.
    Metric { literal: bool },
}

struct Parser<'a> {
    src: &'a str,
    toks: Vec<Tok>,
    pos: usize,
    depth: usize,
}

impl Parser<'_> {
    fn peek_at(&self, n: usize) -> Tok {
        let eof = Tok {
            kind: K::Eof,
            start: self.src.len(),
            end: self.src.len(),
        };
        self.toks.get(self.pos + n).copied().unwrap_or(eof)
    }

    fn peek(&self) -> Tok {
        self.peek_at(0)
    }

    fn bump(&mut self) -> Tok {
        let t = self.peek();
        if t.kind != K::Eof {
            self.pos += 1;
        }
        t
    }

    fn text(&self, t: Tok) -> &str {
        self.src.get(t.start..t.end).unwrap_or("")
    }

    fn lower(&self, t: Tok) -> String {
        self.text(t).to_ascii_lowercase()
    }

    fn sym(&self, t: Tok, s: &str) -> bool {
        t.kind == K::Sym && self.text(t) == s
    }

    fn kw(&self, t: Tok, kw: &str) -> bool {
        t.kind == K::Ident && self.text(t).eq_ignore_ascii_case(kw)
    }

    fn at(&self, s: &str) -> bool {
        self.sym(self.peek(), s)
    }

    fn at_kw(&self, kw: &str) -> bool {
        self.kw(self.peek(), kw)
    }

    fn at_any(&self, syms: &[&str]) -> bool {
        syms.iter().any(|s| self.at(s))
    }

    fn eat(&mut self, s: &str) -> bool {
        let hit = self.at(s);
        if hit {
            self.bump();
        }
        hit
    }

    fn describe(&self, t: Tok) -> String {
        match t.kind {
            K::Eof => "the end of the query".to_string(),
            K::Str => format!("the string {}", clip(self.text(t))),
            _ => format!("`{}`", clip(self.text(t))),
        }
    }

    /// An error at the next token: `message`, then what was found there.
    fn found(&self, message: &str) -> LogqlError {
        let t = self.peek();
        LogqlError {
            offset: t.start,
            message: format!("{message}, found {}", self.describe(t)),
        }
    }

    fn expect_sym(&mut self, s: &str, message: &str) -> Res<Tok> {
        if self.at(s) {
            Ok(self.bump())
        } else {
            Err(self.found(message))
        }
    }

    fn expect(&mut self, kind: K, message: &str) -> Res<Tok> {
        if self.peek().kind == kind {
            Ok(self.bump())
        } else {
            Err(self.found(message))
        }
    }

    fn close(&mut self, open: Tok, opener: &str) -> Res<()> {
        let msg = format!(
            "expected `)` to close `{opener}` opened at offset {}",
            open.start
        );
        self.expect_sym(")", &msg).map(drop)
    }

    fn enter(&mut self) -> Res<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            bail!(
                self.peek().start,
                "the query nests deeper than {MAX_DEPTH} levels"
            );
        }
        Ok(())
    }

    /// `operand (binop [bool] [on|ignoring (...) [group_left|group_right [(...)]]] operand)*`
    fn expr(&mut self) -> Res<Kind> {
        self.enter()?;
        let mut kind = self.operand()?;
        while self.at_any(&["+", "-", "*", "/", "%", "^"])
            || self.at_any(COMPARISONS)
            || ["and", "or", "unless"].iter().any(|k| self.at_kw(k))
        {
            let op = self.bump();
            let name = self.lower(op);
            let left = self.metric_side(kind, op.start, &name, "left")?;
            if self.at_kw("bool") {
                if !COMPARISONS.contains(&name.as_str()) {
                    bail!(
                        self.peek().start,
                        "`bool` only applies to comparison operators"
                    );
                }
                self.bump();
            }
            let t = self.peek();
            if self.kw(t, "on") || self.kw(t, "ignoring") {
                self.bump();
                self.label_list(t)?;
                let g = self.peek();
                if self.kw(g, "group_left") || self.kw(g, "group_right") {
                    self.bump();
                    if self.at("(") {
                        self.label_list(g)?;
                    }
                }
            } else if self.kw(t, "group_left") || self.kw(t, "group_right") {
                bail!(
                    t.start,
                    "`{}` must follow `on(...)` or `ignoring(...)`",
                    self.lower(t)
                );
            }
            let rhs_at = self.peek().start;
            let rhs = self.operand()?;
            let right = self.metric_side(rhs, rhs_at, &name, "right")?;
            if ["and", "or", "unless"].contains(&name.as_str()) && (left || right) {
                bail!(op.start, "`{name}` works on vectors, not on plain numbers");
            }
            kind = Kind::Metric {
                literal: left && right,
            };
        }
        self.depth -= 1;
        Ok(kind)
    }

    /// Checks one side of a binary operator is a metric; returns whether it is a literal.
    fn metric_side(&self, kind: Kind, at: usize, op: &str, side: &str) -> Res<bool> {
        match kind {
            Kind::Metric { literal } => Ok(literal),
            Kind::Log { .. } => bail!(
                at,
                "`{op}` needs metric queries on both sides, but the {side} side is a log query; \
                 turn it into a metric with e.g. `count_over_time({{...}}[5m])`"
            ),
            Kind::LogRange { .. } => bail!(at, "`{op}` needs metric queries: {RANGE_ALONE}"),
        }
    }

    /// `( [label (, label)*] )` after `keyword` (`by`, `on`, `group_left`, ...).
    fn label_list(&mut self, keyword: Tok) -> Res<()> {
        let kw = self.lower(keyword);
        let open = self.expect_sym("(", &format!("expected `(` after `{kw}`"))?;
        if self.eat(")") {
            return Ok(());
        }
        loop {
            self.expect(K::Ident, &format!("expected a label name in `{kw} (...)`"))?;
            if self.eat(")") {
                return Ok(());
            }
            let msg = format!(
                "expected `,` or `)` to close `{kw} (` opened at offset {}",
                open.start
            );
            self.expect_sym(",", &msg)?;
        }
    }

    /// An optional `by (...)` / `without (...)`; returns its keyword token.
    fn grouping(&mut self) -> Res<Option<Tok>> {
        let t = self.peek();
        if !(self.kw(t, "by") || self.kw(t, "without")) {
            return Ok(None);
        }
        self.bump();
        self.label_list(t)?;
        Ok(Some(t))
    }

    fn operand(&mut self) -> Res<Kind> {
        let t = self.peek();
        if self.sym(t, "{") {
            return self.log_expr();
        }
        if self.eat("(") {
            let inner = self.expr()?;
            self.close(t, "(")?;
            // `({...} | json)[5m]`: a parenthesised log query may take a range.
            if let Kind::Log { unwrap } = inner
                && self.range()?
            {
                return Ok(Kind::LogRange {
                    unwrap: unwrap.is_some(),
                });
            }
            return Ok(inner);
        }
        if self.at_any(&["+", "-"]) && self.peek_at(1).kind == K::Num {
            self.bump();
        }
        match self.peek().kind {
            K::Num => {
                self.bump();
                Ok(Kind::Metric { literal: true })
            }
            K::Ident => self.call(),
            _ => Err(self.found(
                "expected a stream selector `{...}`, a function such as `rate(...)`, or a number",
            )),
        }
    }

    /// A function call: `rate(`, `sum by (x) (`, `label_replace(`, `vector(`.
    fn call(&mut self) -> Res<Kind> {
        let t = self.peek();
        let name = self.lower(t);
        let next = self.peek_at(1);
        let called = self.sym(next, "(")
            || ((self.kw(next, "by") || self.kw(next, "without"))
                && self.sym(self.peek_at(2), "("));
        let all: Vec<&str> = RANGE_OPS
            .iter()
            .chain(VECTOR_OPS)
            .chain(&["label_replace", "vector"])
            .copied()
            .collect();
        let known = all.contains(&name.as_str());
        if !called && known {
            bail!(next.start, "expected `(` after `{name}`");
        } else if !called {
            bail!(t.start, "{NEEDS_SELECTOR}, found `{}`", clip(self.text(t)));
        } else if !known {
            let range_like = name.ends_with("_over_time") || name.starts_with("rate");
            let what = if range_like {
                "range function"
            } else {
                "function"
            };
            bail!(
                t.start,
                "unknown {what} `{}`{}",
                clip(self.text(t)),
                suggest(&name, &all)
            );
        }
        self.bump();
        if RANGE_OPS.contains(&name.as_str()) {
            return self.range_aggregation(t, &name);
        } else if VECTOR_OPS.contains(&name.as_str()) {
            return self.vector_aggregation(&name);
        }
        let open = self.expect_sym("(", &format!("expected `(` after `{name}`"))?;
        if name == "vector" {
            self.expect(K::Num, "`vector` takes a number, e.g. `vector(0)`")?;
        } else {
            self.metric_argument(&name)?;
            let usage = "`label_replace` takes \
                         `(<metric query>, \"dst\", \"replacement\", \"src\", \"regex\")`";
            for _ in 0..4 {
                self.expect_sym(",", usage)?;
                self.expect(K::Str, usage)?;
            }
        }
        self.close(open, &format!("{name}("))?;
        Ok(Kind::Metric { literal: false })
    }

    /// `rate( [param ,] <log range> ) [by (...)]` and friends; `fn_tok` is the name.
    fn range_aggregation(&mut self, fn_tok: Tok, name: &str) -> Res<Kind> {
        if self.at_kw("by") || self.at_kw("without") {
            let g = self.lower(self.peek());
            bail!(
                self.peek().start,
                "`{g}` goes after the closing parenthesis: `{name}(...) {g} (...)`"
            );
        }
        let open = self.expect_sym("(", &format!("expected `(` after `{name}`"))?;
        let t = self.peek();
        let quantile = name == "quantile_over_time";
        if t.kind == K::Num && self.sym(self.peek_at(1), ",") {
            if !quantile {
                bail!(
                    t.start,
                    "`{name}` takes no parameter (only `quantile_over_time` does)"
                );
            }
            self.bump();
            self.bump();
        } else if quantile {
            bail!(
                t.start,
                "`quantile_over_time` needs the quantile first, \
                 e.g. `quantile_over_time(0.99, {{app=\"x\"}} | unwrap latency [5m])`"
            );
        }
        let inner_at = self.peek().start;
        let unwrap = match self.expr()? {
            Kind::LogRange { unwrap } => unwrap,
            Kind::Log { .. } => bail!(
                self.peek().start,
                "`{name}` needs a log range: add a range such as `[5m]` after the selector or \
                 pipeline"
            ),
            Kind::Metric { .. } => bail!(
                inner_at,
                "`{name}` takes a log range such as `{{app=\"x\"}}[5m]`, not a metric expression"
            ),
        };
        self.close(open, &format!("{name}("))?;
        let grouping = self.grouping()?;
        // Loki's RangeAggregationExpr.validate().
        if unwrap && NEVER_UNWRAP.contains(&name) {
            bail!(
                fn_tok.start,
                "`{name}` counts log lines or bytes and cannot use `unwrap`"
            );
        } else if !unwrap && !COUNTING_OPS.contains(&name) {
            bail!(
                fn_tok.start,
                "`{name}` needs a numeric value: add `| unwrap <label>` before the range, \
                 e.g. `{name}({{app=\"x\"}} | logfmt | unwrap latency [5m])`"
            );
        } else if let Some(g) = grouping
            && !GROUPABLE.contains(&name)
        {
            let kw = self.lower(g);
            bail!(
                g.start,
                "`{kw}` is not allowed on `{name}`; aggregate instead, \
                 e.g. `sum {kw} (label) ({name}(...))`"
            );
        }
        Ok(Kind::Metric { literal: false })
    }

    /// `sum [by (...)] ( [k ,] <metric> ) [by (...)]` and friends (name already consumed).
    fn vector_aggregation(&mut self, name: &str) -> Res<Kind> {
        let before = self.grouping()?;
        let open = self.expect_sym("(", &format!("expected `(` after `{name}`"))?;
        let needs_k = matches!(name, "topk" | "bottomk" | "approx_topk");
        let t = self.peek();
        if t.kind == K::Num && self.sym(self.peek_at(1), ",") {
            let k = self.text(t);
            if !needs_k {
                bail!(
                    t.start,
                    "`{name}` takes no parameter (only `topk` and `bottomk` do)"
                );
            } else if !k.bytes().all(|c| c.is_ascii_digit()) || k.bytes().all(|c| c == b'0') {
                bail!(
                    t.start,
                    "`{name}` needs a positive integer, e.g. `{name}(10, ...)`"
                );
            }
            self.bump();
            self.bump();
        } else if needs_k {
            bail!(
                t.start,
                "`{name}` needs a parameter first: `{name}(10, <metric query>)`"
            );
        }
        self.metric_argument(name)?;
        self.close(open, &format!("{name}("))?;
        let after = self.grouping()?;
        if let (Some(_), Some(g)) = (before, after) {
            bail!(
                g.start,
                "a grouping is given both before and after the aggregation"
            );
        } else if let Some(g) = before.or(after)
            && matches!(name, "sort" | "sort_desc" | "approx_topk")
        {
            bail!(g.start, "`{name}` does not take `by`/`without`");
        }
        Ok(Kind::Metric { literal: false })
    }

    /// An argument that must be a metric query (of `sum(...)`, `label_replace(...)`).
    fn metric_argument(&mut self, name: &str) -> Res<()> {
        let at = self.peek().start;
        match self.expr()? {
            Kind::Metric { .. } => Ok(()),
            Kind::Log { .. } => bail!(
                at,
                "`{name}` takes a metric query, but this is a log query; count lines with e.g. \
                 `{name}(count_over_time({{...}}[5m]))`"
            ),
            Kind::LogRange { .. } => bail!(at, "`{name}` takes a metric query: {RANGE_ALONE}"),
        }
    }

    /// An optional `[range]` with an optional `offset [-]5m`; returns whether there was one.
    fn range(&mut self) -> Res<bool> {
        if self.peek().kind != K::Range {
            return Ok(false);
        }
        self.bump();
        if self.at_kw("offset") {
            self.bump();
            self.eat("-");
            self.expect(K::Dur, "`offset` needs a duration such as `offset 5m`")?;
        }
        Ok(true)
    }

    /// `selector [range] pipeline [range]` (at most one range).
    fn log_expr(&mut self) -> Res<Kind> {
        self.selector()?;
        let mut range = self.range()?;
        let mut unwrap = None;
        loop {
            let t = self.peek();
            if self.at_any(LINE_FILTERS) {
                if unwrap.is_some() {
                    bail!(t.start, "only label filters may follow `unwrap`");
                }
                self.line_filter()?;
            } else if self.sym(t, "|") {
                self.stage(&mut unwrap)?;
            } else {
                break;
            }
        }
        range = range || self.range()?;
        if range && self.peek().kind == K::Range {
            bail!(
                self.peek().start,
                "this log query already has a range `[...]`"
            );
        }
        Ok(if range {
            Kind::LogRange {
                unwrap: unwrap.is_some(),
            }
        } else {
            Kind::Log { unwrap }
        })
    }

    /// `{name op "value", ...}` with at least one matcher that cannot match "".
    fn selector(&mut self) -> Res<()> {
        let open = self.bump();
        if self.at("}") {
            bail!(
                open.start,
                "empty stream selector `{{}}`: add a matcher, e.g. `{{app=\"api\"}}`"
            );
        }
        let mut anchored = false;
        loop {
            let name = self.expect(K::Ident, "expected a label name in the stream selector")?;
            let label = clip(self.text(name));
            let op = self.peek();
            if self.at("==") {
                bail!(
                    op.start,
                    "use `=` (not `==`) to match a label in a stream selector"
                );
            } else if !self.at_any(&["=", "!=", "=~", "!~"]) {
                return Err(
                    self.found(&format!("expected `=`, `!=`, `=~` or `!~` after `{label}`"))
                );
            }
            self.bump();
            let msg = format!("selector values must be quoted strings, e.g. `{label}=\"value\"`");
            let value = self.expect(K::Str, &msg)?;
            let text = self.text(value);
            let inner = text.get(1..text.len().saturating_sub(1)).unwrap_or("");
            anchored |= (self.sym(op, "=") && !inner.is_empty())
                || (self.sym(op, "=~") && !EMPTY_REGEXES.contains(&inner));
            if self.eat("}") {
                break;
            }
            let msg = format!(
                "expected `,` or `}}` to close the stream selector opened at offset {}",
                open.start
            );
            self.expect_sym(",", &msg)?;
        }
        if !anchored {
            bail!(
                open.start,
                "a stream selector needs a matcher that cannot match an empty value, such as \
                 `app=\"api\"` or `app=~\".+\"` (`!=`, `!~`, `=\"\"` or `=~\".*\"` alone would \
                 select every stream)"
            );
        }
        Ok(())
    }

    /// `|= "a" or "b"`, `!~ "re"`, `|= ip("10.0.0.0/8")`...
    fn line_filter(&mut self) -> Res<()> {
        let mut op = self.lower(self.peek());
        self.bump();
        loop {
            if self.peek().kind == K::Str {
                self.bump();
            } else if self.at_kw("ip") && self.sym(self.peek_at(1), "(") {
                self.ip_call()?;
            } else {
                let msg = format!(
                    "a line filter needs a quoted string after `{op}`, e.g. `{op} \"error\"`"
                );
                return Err(self.found(&msg));
            }
            if !self.at_kw("or") {
                return Ok(());
            }
            op = self.lower(self.peek());
            self.bump();
        }
    }

    /// `ip("...")`
    fn ip_call(&mut self) -> Res<()> {
        self.bump();
        let open = self.bump();
        self.expect(K::Str, "`ip(...)` takes a quoted address, range or CIDR")?;
        self.close(open, "ip(")
    }

    /// One `| stage`.
    fn stage(&mut self, unwrap: &mut Option<usize>) -> Res<()> {
        self.bump();
        let t = self.peek();
        let name = if t.kind == K::Ident {
            self.lower(t)
        } else {
            String::new()
        };
        if unwrap.is_some() && STAGES.contains(&name.as_str()) {
            bail!(
                t.start,
                "only label filters (e.g. `| __error__=\"\"`) may follow `unwrap`"
            );
        }
        let string_arg = |p: &mut Self, what: &str| -> Res<()> {
            p.bump();
            p.expect(K::Str, &format!("`{name}` needs a quoted {what}"))
                .map(drop)
        };
        match name.as_str() {
            "json" | "logfmt" => {
                self.bump();
                while name == "logfmt" && self.peek().kind == K::Flag {
                    self.bump();
                }
                if self.peek().kind == K::Ident {
                    self.extractions(&name)?;
                }
            }
            "regexp" => string_arg(self, "regular expression, e.g. `regexp \"(?P<x>\\\\w+)\"`")?,
            "pattern" => string_arg(self, "pattern, e.g. `pattern \"<ip> - <_>\"`")?,
            "line_format" => string_arg(self, "template, e.g. `line_format \"{{.msg}}\"`")?,
            "unpack" | "decolorize" => {
                self.bump();
            }
            "label_format" => {
                self.bump();
                self.assignments()?;
            }
            "drop" | "keep" => {
                self.bump();
                self.named_matchers(&name)?;
            }
            "unwrap" => {
                self.bump();
                self.unwrap_target()?;
                *unwrap = Some(t.start);
            }
            _ if self.sym(t, "(") || (t.kind == K::Ident && self.is_label_op(self.peek_at(1))) => {
                self.label_filter_or()?;
            }
            _ if t.kind == K::Ident => bail!(
                t.start,
                "unknown pipeline stage `{}`{}: expected a parser (`json`, `logfmt`, `regexp`, \
                 `pattern`, `unpack`), `line_format`, `label_format`, `drop`, `keep`, \
                 `decolorize`, `unwrap`, or a label filter such as `level=\"error\"`",
                clip(self.text(t)),
                suggest(&name, STAGES)
            ),
            _ => return Err(self.found("expected a pipeline stage after `|`")),
        }
        Ok(())
    }

    fn is_label_op(&self, t: Tok) -> bool {
        LABEL_OPS.iter().any(|s| self.sym(t, s))
    }

    /// `json a, b="x.y"` / `logfmt a, b="c"`.
    fn extractions(&mut self, parser: &str) -> Res<()> {
        loop {
            let label =
                self.expect(K::Ident, &format!("expected a label name after `{parser}`"))?;
            if self.eat("=") {
                let label = clip(self.text(label));
                let msg =
                    format!("`{parser}` extractions take a quoted expression: `{label}=\"path\"`");
                self.expect(K::Str, &msg)?;
            }
            if !self.eat(",") {
                return Ok(());
            }
        }
    }

    /// `label_format dst=src, dst="{{template}}"`.
    fn assignments(&mut self) -> Res<()> {
        loop {
            self.expect(K::Ident, "`label_format` needs `label=...` assignments")?;
            self.expect_sym(
                "=",
                "expected `=` in `label_format` (e.g. `new=old`, `msg=\"{{.x}}\"`)",
            )?;
            if !matches!(self.peek().kind, K::Ident | K::Str) {
                return Err(self.found("`label_format` assigns a label name or a quoted template"));
            }
            self.bump();
            if !self.eat(",") {
                return Ok(());
            }
        }
    }

    /// `drop a, b="v"` / `keep a, b=~"v"`.
    fn named_matchers(&mut self, kw: &str) -> Res<()> {
        let usage =
            format!("`{kw}` takes label names or matchers, e.g. `{kw} tmp, level=\"debug\"`");
        loop {
            self.expect(K::Ident, &usage)?;
            if self.at_any(&["=", "!=", "=~", "!~"]) {
                self.bump();
                self.expect(K::Str, &usage)?;
            }
            if !self.eat(",") {
                return Ok(());
            }
        }
    }

    /// `unwrap label` / `unwrap duration(label)` / `bytes(label)` / `duration_seconds(label)`.
    fn unwrap_target(&mut self) -> Res<()> {
        let t = self.expect(
            K::Ident,
            "`unwrap` needs a label name, e.g. `unwrap latency`",
        )?;
        if !self.at("(") {
            return Ok(());
        }
        let conv = self.lower(t);
        if !matches!(conv.as_str(), "bytes" | "duration" | "duration_seconds") {
            bail!(
                t.start,
                "unknown conversion `{}`: `unwrap` accepts `bytes(label)`, `duration(label)` or \
                 `duration_seconds(label)`",
                clip(self.text(t))
            );
        }
        let open = self.bump();
        self.expect(
            K::Ident,
            &format!("expected a label name inside `{conv}(...)`"),
        )?;
        self.close(open, &format!("{conv}("))
    }

    /// Label filters joined by `or` (lowest precedence).
    fn label_filter_or(&mut self) -> Res<()> {
        self.label_filter_and()?;
        while self.at_kw("or") {
            self.bump();
            self.label_filter_and()?;
        }
        Ok(())
    }

    /// Label filters joined by `and`, `,` or juxtaposition (`a="1" b="2"`).
    fn label_filter_and(&mut self) -> Res<()> {
        self.label_filter_primary()?;
        loop {
            let t = self.peek();
            if self.kw(t, "and") || self.sym(t, ",") {
                self.bump();
            } else if !(self.sym(t, "(") || (t.kind == K::Ident && !self.kw(t, "or"))) {
                return Ok(());
            }
            self.label_filter_primary()?;
        }
    }

    /// `( filters )` or `label op value`.
    fn label_filter_primary(&mut self) -> Res<()> {
        let t = self.peek();
        if self.sym(t, "(") {
            self.enter()?;
            self.bump();
            self.label_filter_or()?;
            self.close(t, "(")?;
            self.depth -= 1;
            return Ok(());
        } else if t.kind != K::Ident || self.kw(t, "and") || self.kw(t, "or") {
            return Err(self.found("expected a label filter such as `level=\"error\"`"));
        }
        let label = clip(self.text(t));
        self.bump();
        if !self.is_label_op(self.peek()) {
            return Err(self.found(&format!(
                "expected a comparison operator (`=`, `!=`, `=~`, `!~`, `==`, `>`, `>=`, `<`, \
                 `<=`) after label `{label}`"
            )));
        }
        let op = self.text(self.peek()).to_string();
        self.bump();
        if op == "=~" || op == "!~" {
            let msg =
                format!("`{op}` needs a quoted regular expression, e.g. `{label}{op}\"err.*\"`");
            return self.expect(K::Str, &msg).map(drop);
        }
        let strings = op == "=" || op == "!=";
        if self.at_any(&["+", "-"]) && matches!(self.peek_at(1).kind, K::Num | K::Dur | K::Bytes) {
            self.bump();
        }
        let v = self.peek();
        match v.kind {
            K::Str if strings => {
                self.bump();
            }
            K::Str => bail!(
                v.start,
                "`{op}` compares numbers, durations or byte sizes: remove the quotes, or use `=` \
                 to compare strings"
            ),
            K::Ident if strings && self.kw(v, "ip") && self.sym(self.peek_at(1), "(") => {
                self.ip_call()?;
            }
            K::Dur | K::Bytes => {
                self.bump();
            }
            K::Num => {
                self.bump();
                // `5 mins`: a number followed by a stray word that does not start a filter.
                let n = self.peek();
                if n.kind == K::Ident
                    && !self.kw(n, "and")
                    && !self.kw(n, "or")
                    && !self.is_label_op(self.peek_at(1))
                {
                    bail!(
                        n.start,
                        "`{} {}` is not a valid value: write durations without a space and with \
                         a unit (ns, us, ms, s, m, h, d, w, y), e.g. `5m`; byte sizes like `20MB`",
                        self.text(v),
                        clip(self.text(n))
                    );
                }
            }
            _ => {
                let s = if strings { "a quoted string, " } else { "" };
                return Err(self.found(&format!(
                    "expected a value after `{op}`: {s}a number, a duration such as `5m` or a \
                     byte size such as `20MB`"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACCEPTED: &[&str] = &[
        r#"{service="gateway"} | json | correlation_id="req-1" | code!="""#,
        r#"{service="gateway"} | json | correlation_id="x" | level=~"warn|error" or status=~"[45]..""#,
        r#"{node="n1"} | json | level=~"warn|error""#,
        r#"{service=~"gateway|aggregate|projection|runner"} |= "x" | json | resource_name="x""#,
        r#"sum by (code) (count_over_time({service=~"x"} | json level="level", code="code" | level="error" [5m])) unless on (code) sum by (code) (count_over_time({service=~"x"} | json level="level", code="code" | level="error" [1h] offset 5m))"#,
        r#"sum by (level) (rate({env="x", service=~"x"} | json level="level", tenant_id="tenant_id" | tenant_id=~"x" [1m]))"#,
        r#"topk(10, sum by (tenant_id) (count_over_time({env="x", service=~"x"} | json level="level", tenant_id="tenant_id" | level=~"error|fatal" | tenant_id!="" [15m])))"#,
        r#"{env="x", service=~".+"} |= "x" | json | correlation_id=~"x.*""#,
        r#"quantile_over_time(0.99, {app="api"} | logfmt | unwrap duration(latency) | __error__="" [5m]) by (route)"#,
        r#"sum(rate({app="api"} |~ "timeout|deadline" [5m])) / sum(rate({app="api"}[5m])) > 0.05"#,
        r#"{app="api"} | logfmt | duration > 1s and status >= 500 | line_format "{{.method}} {{.path}}""#,
        r#"{app="api"} | pattern "<ip> - - <_> \"<method> <uri> <_>\" <status>" | status = 500"#,
        r#"{app="api"} | label_format svc=service, msg="{{.level}}: {{.msg}}" | drop __error__, __error_details__"#,
    ];

    /// Own coverage of each construct.
    const OWN: &[&str] = &[
        r#"{a="b", c!="d", e=~"f.+", g!~"h"}"#,
        "{a=`raw \\d+ string`}",
        "{a=\"b\"} # trailing comment\n |= \"x\" # another",
        r#"{a="\u00e9\x41\101\t"}"#,
        r#"{a="b"} |= "x" != "y" |~ "z.*" !~ "w" |> "<_> error <_>" !> "<_> debug""#,
        r#"{a="b"} |= "x" or "y" or ip("10.0.0.1") != ip("192.168.0.0/16")"#,
        r#"{a="b"} | logfmt --strict --keep-empty level, msg="message" | unpack | decolorize"#,
        r#"{a="b"} | json | regexp "(?P<method>\\w+)" | keep level, app=~"api.*""#,
        r#"{a="b"} | drop level="debug", tmp | label_format new=old"#,
        r#"{a="b"} | JSON | Level="x""#,
        r#"{a="b"} | latency >= 250ms, size < 20MB or (x="1" y!="2") | n == -1"#,
        r#"{a="b"} | size > 1KiB and took <= 1h30m and code != 200 and addr = ip("10.0.0.0/8")"#,
        r#"{a="b"} | ((x="1") or y > 0.5e3)"#,
        r#"count_over_time({a="b"}[5m] | json)"#,
        r#"count_over_time({a="b"}[5m] offset -1h | json)"#,
        r#"rate(({a="b"} | json)[5m])"#,
        r#"sum_over_time({a="b"} | unwrap bytes(size) [5m])"#,
        r#"max_over_time({a="b"} | unwrap duration_seconds(t) | __error__="" [5m] offset 1d) without (pod)"#,
        r#"avg_over_time({a="b"} | logfmt | unwrap latency [1m]) by (x)"#,
        r#"rate_counter({a="b"} | unwrap n [5m])"#,
        r#"bytes_rate({a="b"}[5m]) + bytes_over_time({a="b"}[5m]) - absent_over_time({a="b"}[5m])"#,
        r#"first_over_time({a="b"} | unwrap n [5m]) * last_over_time({a="b"} | unwrap n [5m])"#,
        r#"stddev_over_time({a="b"} | unwrap n [5m]) % stdvar_over_time({a="b"} | unwrap n [5m]) ^ 2"#,
        r#"min_over_time({a="b"} | unwrap n [5m])"#,
        r#"bottomk(3, avg without (x) (rate({a="b"}[5m])))"#,
        r#"sort_desc(sum(rate({a="b"}[5m])) by (x)) or vector(0)"#,
        r#"sort(count(rate({a="b"}[5m]))) > bool 1"#,
        r#"min(rate({a="b"}[5m])) / ignoring (x) group_left (y) max(rate({a="b"}[5m]))"#,
        r#"stddev(rate({a="b"}[5m])) == on () group_right stdvar(rate({a="b"}[5m]))"#,
        r#"label_replace(rate({a="b"}[5m]), "dst", "$1", "src", "(.*)")"#,
        r#"SUM(rate({a="b"}[5m])) and vector(1)"#,
        "1 + -2 * (3 / 4)",
        r#"({a="b"} | json)"#,
    ];

    const REJECTED: &[(&str, usize, &str)] = &[
        (r#"{service="gateway" | json"#, 19, "expected `,` or `}`"),
        ("service=gateway", 0, "needs a stream selector"),
        ("{}", 0, "empty stream selector"),
        (r#"{service="x"} | jsn"#, 16, "did you mean `json`"),
        (
            r#"rates({app="a"}[5m])"#,
            0,
            "unknown range function `rates`",
        ),
        (r#"rate({app="a"})"#, 14, "needs a log range"),
        (r#"sum by (a ({app="a"})"#, 10, "to close `by (`"),
        (r#"{app="a"} |= error"#, 13, "needs a quoted string"),
        (r#"{app="a"} | status > 5 mins"#, 23, "not a valid value"),
        (r#"{app="a"} | json | level="x"#, 25, "unterminated string"),
        (r#"topk({app="a"}[5m])"#, 5, "needs a parameter"),
        ("", 0, "empty query"),
        (
            r#"sum(rate({a="b"}[5m])"#,
            21,
            "to close `sum(` opened at offset 3",
        ),
        (r#"sum_over_time({a="b"}[5m])"#, 0, "needs a numeric value"),
        (
            r#"count_over_time({a="b"} | unwrap x [5m])"#,
            0,
            "cannot use `unwrap`",
        ),
        (r#"rate({a="b"}[5m]) by (x)"#, 18, "not allowed on `rate`"),
        (r#"sort by (x) (rate({a="b"}[5m]))"#, 5, "does not take"),
        (r#"topk(1.5, rate({a="b"}[5m]))"#, 5, "positive integer"),
        (r#"sum(1, rate({a="b"}[5m]))"#, 4, "takes no parameter"),
        (r#"sum({a="b"})"#, 4, "this is a log query"),
        (
            r#"{a="b"} | unwrap x"#,
            10,
            "only valid inside a range aggregation",
        ),
        (r#"{a="b"}[5m]"#, 0, "not a query by itself"),
        (r#"{a="b"} + 1"#, 8, "log query"),
        ("1 and 2", 2, "not on plain numbers"),
        (r#"{a="\d+"}"#, 4, "invalid escape"),
        (r#"{a=~".*"}"#, 0, "cannot match an empty value"),
        (r#"{a="b"} | x == "y""#, 15, "remove the quotes"),
        (r#"{a="b"}[5m:1m]"#, 8, "no subqueries"),
        (r#"{a="b"} | status > 5mins"#, 19, "not a valid number"),
        (
            r#"rate({a="b"} [5m]) + on (x) group_left"#,
            38,
            "found the end of the query",
        ),
        (
            r#"rate({a="b"}[5m]) + group_left rate({a="b"}[5m])"#,
            20,
            "must follow `on",
        ),
        (
            r#"count_over_time({a="b"} | unwrap x | json [5m])"#,
            37,
            "only label filters",
        ),
        (r#"{a="b"} | logfmt --loose"#, 17, "unknown parser flag"),
        (r#"rate({a="b"}[5m]))"#, 17, "unmatched `)`"),
        (r#"{a="b"} | json [5m] [5m]"#, 20, "already has a range"),
        (r#"{a="b"}[5m] | json [5m]"#, 19, "already has a range"),
        (r#"{a="b"} | line_format 'x'"#, 22, "single quotes"),
        (
            r#"quantile_over_time({a="b"} | unwrap x [5m])"#,
            19,
            "needs the quantile",
        ),
    ];

    #[test]
    fn accepts_valid_queries() {
        for q in ACCEPTED.iter().chain(OWN) {
            assert_eq!(check(q), Ok(()), "{q}");
        }
    }

    #[test]
    fn rejects_invalid_queries_with_offsets() {
        for (q, offset, needle) in REJECTED {
            let e = check(q).expect_err(q);
            assert!(e.message.contains(needle), "{q:?}: {e}");
            assert_eq!(e.offset, *offset, "{q:?}: {e}");
        }
    }

    #[test]
    fn display_format() {
        let e = check("{}").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("at offset 0: empty stream selector")
        );
    }

    #[test]
    fn prefixes_and_deletions_never_panic() {
        for q in ACCEPTED.iter().chain(OWN) {
            for (i, c) in q.char_indices().chain([(q.len(), ' ')]) {
                let prefix = &q[..i];
                let deleted = format!("{prefix}{}", q.get(i + c.len_utf8()..).unwrap_or(""));
                for input in [prefix, deleted.as_str()] {
                    if let Err(e) = check(input) {
                        assert!(input.is_char_boundary(e.offset), "{input:?}: {e}");
                    }
                }
            }
        }
        for odd in [
            "é",
            "{a=\"é\"} | é",
            "\"",
            "`",
            "[",
            "{a=\"b\"} |= \"\\",
            "µ5µs",
            "5µs",
        ] {
            assert!(check(odd).is_err(), "{odd}");
        }
    }

    #[test]
    fn deep_nesting_is_rejected_quickly() {
        let start = std::time::Instant::now();
        for q in [
            "(".repeat(10_000),
            format!("{}1{}", "(".repeat(10_000), ")".repeat(10_000)),
            format!("{}{}", "sum(".repeat(5_000), ")".repeat(5_000)),
            format!("{{a=\"b\"}} | {}x=\"1\"", "(".repeat(10_000)),
        ] {
            assert!(check(&q).unwrap_err().message.contains("nests deeper"));
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
        let shallow = format!("{}1{}", "(".repeat(100), ")".repeat(100));
        assert_eq!(check(&shallow), Ok(()));
    }

    #[test]
    fn durations_and_bytes() {
        for d in [
            "5m", "1h30m", "250ms", "1.5s", "10us", "3µs", "2d", "1w", "1y", "0",
        ] {
            assert!(is_duration(d), "{d}");
        }
        for d in ["", "m", "5", "5mins", "5 m", "1h-", "00"] {
            assert!(!is_duration(d), "{d}");
        }
        for b in ["20MB", "1KiB", "5kB", "10B", "3M", "1.5GiB"] {
            assert!(is_bytes(b), "{b}");
        }
        for b in ["20mb", "MB", "5XB"] {
            assert!(!is_bytes(b), "{b}");
        }
    }
}

//! Facts read from a PromQL expression's syntax tree: metric names, selectors with their label
//! matchers, number literals and durations. Shared by the trigger, label and site rules.

use std::sync::Arc;
use std::time::Duration;

use promql_parser::label::MatchOp;
use promql_parser::parser::{Expr, Offset, VectorSelector};

use super::memo::Memo;

/// One label matcher on a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelMatch {
    pub label: String,
    /// `=`, `!=`, `=~` or `!~`.
    pub op: &'static str,
    pub value: String,
}

/// One selector: its metric name (when it has one) and its label matchers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    pub metric: Option<String>,
    pub matchers: Vec<LabelMatch>,
}

/// What an expression contains.
#[derive(Debug, Clone, Default)]
pub struct ExprFacts {
    pub selectors: Vec<Selector>,
    pub numbers: Vec<f64>,
    pub durations: Vec<Duration>,
    /// The number a top-level comparison compares against (`expr > 1000` gives 1000).
    pub threshold: Option<(String, f64)>,
}

impl ExprFacts {
    /// Every metric name the expression selects.
    pub fn metrics(&self) -> impl Iterator<Item = &str> {
        self.selectors.iter().filter_map(|s| s.metric.as_deref())
    }
}

/// Expressions remembered by [`parse`]; the memo is emptied when it reaches this many.
const MEMO_ENTRIES: usize = 8192;
/// Longer expressions are parsed every time rather than remembered.
const MEMO_MAX_LEN: usize = 4096;

type Parsed = Result<Arc<Expr>, String>;

/// Parses a PromQL expression, remembering the outcome for the life of the process.
///
/// One validation reads the same expression in several rules (syntax, triggers, labels,
/// provenance), and the daemon validates every commit it applies, where nearly all expressions
/// are the ones of the last pass; parsing a selector's `=~` matcher also compiles its regex.
/// The outcome is a pure function of the text, so remembering it can never be stale.
pub fn parse(expr: &str) -> Parsed {
    static MEMO: Memo<Parsed> = Memo::new(MEMO_ENTRIES, MEMO_MAX_LEN);
    MEMO.get_or(expr, |e| {
        durations_in_range(e)?;
        promql_parser::parser::parse(e).map(Arc::new)
    })
}

/// Longest duration written as a bare number of seconds (about 31.7 million years).
const MAX_NUMBER_DURATION_SECS: f64 = 1e15;

/// Refuses a bare number in a duration position (`[N]`, `[5m:N]`, `offset N`) that is not a
/// finite number of seconds a `Duration` can hold: the parser converts it with
/// `Duration::from_secs_f64`, which panics on infinity, NaN and overflow (found by the
/// `promql` fuzz target: `x[33333333333333333E3333333333333]`). Quoted strings are skipped.
fn durations_in_range(e: &str) -> Result<(), String> {
    let b = e.as_bytes();
    let (mut i, mut depth) = (0usize, 0usize);
    // Whether the next token is in a duration position.
    let mut duration_next = false;
    while i < b.len() {
        let c = b[i];
        match c {
            b'"' | b'\'' | b'`' => {
                // A string literal: skip to its closing quote (backslash escapes, not in `).
                i += 1;
                while i < b.len() && b[i] != c {
                    if b[i] == b'\\' && c != b'`' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
                duration_next = false;
                continue;
            }
            b'[' => {
                depth += 1;
                duration_next = true;
            }
            b']' => {
                depth = depth.saturating_sub(1);
                duration_next = false;
            }
            b':' if depth > 0 => duration_next = true,
            c if c.is_ascii_whitespace() => {}
            c if c.is_ascii_alphanumeric() || c == b'.' || c == b'_' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b".+-_".contains(&b[i])) {
                    // a sign belongs to the token only right after an exponent mark
                    if (b[i] == b'+' || b[i] == b'-')
                        && !(i > start
                            && matches!(b[i - 1], b'e' | b'E')
                            && !b[start..].starts_with(b"0x"))
                    {
                        break;
                    }
                    i += 1;
                }
                let word = &e[start..i];
                if duration_next
                    && let Some(n) = number_of(word)
                    && !(n.is_finite() && (0.0..=MAX_NUMBER_DURATION_SECS).contains(&n))
                {
                    return Err(format!(
                        "duration `{word}` is not a number of seconds a duration can hold"
                    ));
                }
                duration_next = word.eq_ignore_ascii_case("offset");
                continue;
            }
            _ => duration_next = false,
        }
        i += 1;
    }
    Ok(())
}

/// The value of a PromQL number literal (decimal, exponent, hex, `Inf`, `NaN`), if `w` is one.
fn number_of(w: &str) -> Option<f64> {
    let t = w.replace('_', "");
    if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        return u64::from_str_radix(h, 16).ok().map(|v| v as f64);
    }
    if t.eq_ignore_ascii_case("inf") {
        return Some(f64::INFINITY);
    }
    if t.eq_ignore_ascii_case("nan") {
        return Some(f64::NAN);
    }
    if !t.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
        return None;
    }
    t.parse::<f64>().ok()
}

/// Parses `expr` and collects its facts; `None` when it is not PromQL.
pub fn facts(expr: &str) -> Option<ExprFacts> {
    let e = parse(expr).ok()?;
    let mut f = ExprFacts::default();
    walk(&e, &mut f, 0);
    f.threshold = threshold(&e);
    Some(f)
}

/// Whether the expression compares something (has a comparison operator anywhere).
pub fn has_comparison(expr: &str) -> bool {
    fn any(e: &Expr, depth: usize) -> bool {
        if depth > 64 {
            return false;
        }
        match e {
            Expr::Binary(b) => {
                b.op.is_comparison_operator() || any(&b.lhs, depth + 1) || any(&b.rhs, depth + 1)
            }
            Expr::Aggregate(a) => any(&a.expr, depth + 1),
            Expr::Unary(u) => any(&u.expr, depth + 1),
            Expr::Paren(p) => any(&p.expr, depth + 1),
            Expr::Subquery(s) => any(&s.expr, depth + 1),
            Expr::Call(c) => c.args.args.iter().any(|a| any(a, depth + 1)),
            _ => false,
        }
    }
    parse(expr).is_ok_and(|e| any(&e, 0))
}

fn threshold(e: &Expr) -> Option<(String, f64)> {
    match e {
        Expr::Paren(p) => threshold(&p.expr),
        Expr::Binary(b) if b.op.is_comparison_operator() => {
            let op = b.op.to_string();
            constant(&b.rhs, 0)
                .or_else(|| constant(&b.lhs, 0))
                .map(|n| (op, n))
        }
        // `a > 1 and b > 2`: the left side's threshold.
        Expr::Binary(b) => threshold(&b.lhs),
        _ => None,
    }
}

/// The value of a constant expression (`14 * 86400`, `(6 * 0.005)`), if it is one.
fn constant(e: &Expr, depth: usize) -> Option<f64> {
    if depth > 16 {
        return None;
    }
    match e {
        Expr::NumberLiteral(n) => Some(n.val),
        Expr::Paren(p) => constant(&p.expr, depth + 1),
        Expr::Binary(b) => {
            let (l, r) = (constant(&b.lhs, depth + 1)?, constant(&b.rhs, depth + 1)?);
            match b.op.to_string().as_str() {
                "+" => Some(l + r),
                "-" => Some(l - r),
                "*" => Some(l * r),
                "/" => Some(l / r),
                _ => None,
            }
        }
        _ => None,
    }
}

fn selector(vs: &VectorSelector, f: &mut ExprFacts) {
    let mut matchers = Vec::new();
    let mut name = vs.name.clone();
    for m in &vs.matchers.matchers {
        let op = match m.op {
            MatchOp::Equal => "=",
            MatchOp::NotEqual => "!=",
            MatchOp::Re(_) => "=~",
            MatchOp::NotRe(_) => "!~",
        };
        if m.name == "__name__" && op == "=" && name.is_none() {
            name = Some(m.value.clone());
            continue;
        }
        matchers.push(LabelMatch {
            label: m.name.clone(),
            op,
            value: m.value.clone(),
        });
    }
    if let Some(Offset::Pos(d) | Offset::Neg(d)) = &vs.offset {
        f.durations.push(*d);
    }
    f.selectors.push(Selector {
        metric: name,
        matchers,
    });
}

fn walk(e: &Expr, f: &mut ExprFacts, depth: usize) {
    if depth > 64 {
        return;
    }
    match e {
        Expr::Aggregate(a) => {
            walk(&a.expr, f, depth + 1);
            if let Some(p) = &a.param {
                walk(p, f, depth + 1);
            }
        }
        Expr::Unary(u) => walk(&u.expr, f, depth + 1),
        Expr::Binary(b) => {
            walk(&b.lhs, f, depth + 1);
            walk(&b.rhs, f, depth + 1);
        }
        Expr::Paren(p) => walk(&p.expr, f, depth + 1),
        Expr::Subquery(s) => {
            f.durations.push(s.range);
            if let Some(Offset::Pos(d) | Offset::Neg(d)) = &s.offset {
                f.durations.push(*d);
            }
            walk(&s.expr, f, depth + 1);
        }
        Expr::VectorSelector(vs) => selector(vs, f),
        Expr::MatrixSelector(ms) => {
            f.durations.push(ms.range);
            selector(&ms.vs, f);
        }
        Expr::Call(c) => {
            for a in &c.args.args {
                walk(a, f, depth + 1);
            }
        }
        Expr::NumberLiteral(n) => f.numbers.push(n.val),
        Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

/// Parses a Prometheus duration (`90s`, `10m`, `1h30m`, `2d`); `None` when malformed.
pub fn duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.len() > 32 {
        return None;
    }
    crate::model::parse_prometheus(s)
}

/// `600s` → `10m`: the shortest way Prometheus would write a duration (in milliseconds when
/// it has a fraction of a second, so that it reads back the same).
pub fn show_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s == 0 || d.subsec_nanos() != 0 {
        return format!("{}ms", d.as_millis());
    }
    for (unit, secs) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if s.is_multiple_of(secs) {
            return format!("{}{unit}", s / secs);
        }
    }
    format!("{s}s")
}

#[cfg(test)]
mod tests {
    /// Found by the `promql` fuzz target: a duration with milliseconds was shown without them.
    #[test]
    fn shown_durations_read_back_the_same() {
        for q in [
            "3s3ms",
            "33m3ms",
            "3d3ms",
            "3w3ms",
            "39y9y3y3ms",
            "3333ms",
            "600s",
            "90m",
            "250ms",
            "3333333333333333333ms",
        ] {
            let d = super::duration(q).unwrap_or_else(|| panic!("{q} is a duration"));
            let shown = super::show_duration(d);
            assert_eq!(super::duration(&shown), Some(d), "{q} shown as {shown}");
        }
        assert_eq!(
            super::show_duration(std::time::Duration::from_secs(600)),
            "10m"
        );
        assert_eq!(
            super::show_duration(std::time::Duration::from_millis(3003)),
            "3003ms"
        );
    }

    #[test]
    fn number_durations_out_of_range_are_refused_not_panicked_on() {
        // The fuzz target's reproducer, then the same hole written plainly.
        let crash = "100 * (1 - avg by (knstance) (rate(node_cpu_seconds_total{mode=\"idle\", instance=\"$node\"}[33333333333333333E3333333333333$__rate_intervvesal])))";
        assert!(super::parse(crash).is_err());
        for e in [
            "x[1e400]",
            "x[5m:1e400]",
            "rate(x[1e999])",
            "x offset 1e400",
            "x[Inf]",
            "x[NaN]",
            "x[0xFFFFFFFFFFFFFFFF]",
        ] {
            let r = super::parse(e);
            assert!(r.is_err(), "{e}: {r:?}");
        }
        // Numbers elsewhere, and in range, still parse.
        for e in [
            "x > 1e400",
            "x[300]",
            "x[5m:30]",
            "x offset 60",
            "rate(x[5m]) > 0.5",
            "x{a=\"[1e400\"}",
        ] {
            let r = super::parse(e);
            assert!(r.is_ok(), "{e}: {r:?}");
        }
    }

    use super::*;

    #[test]
    fn parse_remembers_outcomes_and_agrees_with_the_parser() {
        let e = r#"rate(http_requests_total{job=~"api|web"}[5m]) > 3"#;
        let a = parse(e).unwrap();
        let b = parse(e).unwrap();
        assert!(
            Arc::ptr_eq(&a, &b),
            "the second parse is the remembered one"
        );
        assert_eq!(*a, promql_parser::parser::parse(e).unwrap());
        let bad = "sum(rate(x[5m])";
        assert_eq!(
            parse(bad).unwrap_err(),
            promql_parser::parser::parse(bad).unwrap_err()
        );
        assert_eq!(parse(bad).unwrap_err(), parse(bad).unwrap_err());
        let long = format!("up{{job=\"{}\"}}", "j".repeat(MEMO_MAX_LEN));
        assert!(!Arc::ptr_eq(&parse(&long).unwrap(), &parse(&long).unwrap()));
    }

    #[test]
    fn facts_of_an_alert_expression() {
        let f = facts(
            r#"max by (tenant_id) (runner_outbox_depth{site="osl1"}) > 1000 and rate(x[5m] offset 1d) > 0"#,
        )
        .unwrap();
        assert_eq!(
            f.metrics().collect::<Vec<_>>(),
            ["runner_outbox_depth", "x"]
        );
        assert_eq!(f.numbers, [1000.0, 0.0]);
        assert_eq!(
            f.durations,
            [Duration::from_secs(300), Duration::from_secs(86_400)]
        );
        assert_eq!(f.threshold, Some((">".into(), 1000.0)));
        assert_eq!(f.selectors[0].matchers[0].value, "osl1");
        let f = facts("(min by (instance) (x) - time()) < 14 * 86400").unwrap();
        assert_eq!(f.threshold, Some(("<".into(), 1_209_600.0)));
    }

    #[test]
    fn durations() {
        assert_eq!(duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(duration("10"), None);
        assert_eq!(duration("x"), None);
        assert_eq!(show_duration(Duration::from_secs(600)), "10m");
        assert_eq!(show_duration(Duration::from_secs(93_600)), "26h");
    }
}

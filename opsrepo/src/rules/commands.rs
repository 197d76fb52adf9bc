//! Runnable runbook commands: every `vakt …` command in a runbook's code blocks or inline code
//! must parse against the real CLI definition.
//!
//! `opsrepo` sits below the `vakt` binary and cannot see its argument definitions, so the caller
//! hands in a [`CommandChecker`] (the binary implements it with clap). Extraction lives here, so
//! the checker and the tests see the same command lines.

use pulldown_cmark::{CodeBlockKind, Event, Parser, Tag, TagEnd};

use crate::diag::{Finding, Pos};
use crate::parse::LineIndex;

/// At most this many commands are checked per runbook (a bound on hostile input).
pub const MAX_COMMANDS_PER_RUNBOOK: usize = 500;
/// A command line longer than this is reported, not parsed.
pub const MAX_COMMAND_LEN: usize = 4096;

/// Checks one `vakt` command line against the CLI definition.
pub trait CommandChecker {
    /// `args` excludes the program name. `Err` says what is wrong, in one line.
    fn check(&self, args: &[String]) -> Result<(), String>;
}

/// One `vakt` command found in a runbook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunbookCommand {
    /// Where the command starts.
    pub pos: Pos,
    /// The command as written (one logical line, continuations joined).
    pub text: String,
    /// The arguments after `vakt`, or why the line cannot be split into words.
    pub args: Result<Vec<String>, String>,
}

/// Every `vakt …` command in a runbook's fenced or indented code blocks (shell-like lines,
/// `$ ` prompts and `\` continuations allowed, pipes and redirections cut off) and in inline
/// code spans that start with `vakt `.
pub fn extract(text: &str) -> Vec<RunbookCommand> {
    let idx = LineIndex::new(text);
    let mut out = Vec::new();
    let mut block: Option<(usize, bool)> = None; // (start offset of the content, is shell)
    let mut block_text = String::new();
    for (ev, range) in Parser::new_ext(text, pulldown_cmark::Options::all()).into_offset_iter() {
        if out.len() >= MAX_COMMANDS_PER_RUNBOOK {
            break;
        }
        match ev {
            Event::Start(Tag::CodeBlock(kind)) => {
                let shell = match &kind {
                    CodeBlockKind::Fenced(lang) => {
                        let l = lang.split_whitespace().next().unwrap_or("");
                        matches!(l, "" | "sh" | "bash" | "shell" | "console" | "zsh" | "text")
                    }
                    CodeBlockKind::Indented => true,
                };
                block = Some((range.start, shell));
                block_text.clear();
            }
            Event::Text(t) if block.is_some() => block_text.push_str(&t),
            Event::End(TagEnd::CodeBlock) => {
                if let Some((start, true)) = block.take() {
                    // Locate the block content: the first line after the fence (or the start of
                    // an indented block).
                    let content_start = text[start..]
                        .find('\n')
                        .map(|i| start + i + 1)
                        .filter(|_| {
                            text[start..].starts_with("```") || text[start..].starts_with("~~~")
                        })
                        .unwrap_or(start);
                    block_commands(&block_text, content_start, text, &idx, &mut out);
                }
                block = None;
            }
            Event::Code(c) => {
                let c = c.trim();
                if c.starts_with("vakt ") || c == "vakt" {
                    // Inline code: the span starts at the backtick(s).
                    let off = text[range.clone()]
                        .find(|ch: char| ch != '`')
                        .map_or(range.start, |i| range.start + i);
                    out.push(command(c, idx.pos(off)));
                }
            }
            _ => {}
        }
    }
    out.truncate(MAX_COMMANDS_PER_RUNBOOK);
    out
}

fn block_commands(
    block: &str,
    content_start: usize,
    text: &str,
    idx: &LineIndex,
    out: &mut Vec<RunbookCommand>,
) {
    // Line numbers: find each logical line's first physical line in the original text, searching
    // forward from the block start (indentation in lists shifts columns, not lines).
    let mut search_from = content_start;
    let lines: Vec<&str> = block.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let first = lines[i];
        let mut logical = first.trim_end().to_string();
        while logical.ends_with('\\') && i + 1 < lines.len() {
            logical.pop();
            i += 1;
            logical.push(' ');
            logical.push_str(lines[i].trim());
        }
        i += 1;
        let trimmed = first.trim_start();
        let at = text
            .get(search_from..)
            .and_then(|rest| rest.find(first.trim()))
            .map(|o| search_from + o);
        if let Some(a) = at {
            search_from = a + first.trim().len();
        }
        let mut cmd = logical.trim();
        if trimmed.starts_with('#') {
            continue;
        }
        if let Some(rest) = cmd.strip_prefix("$ ") {
            cmd = rest.trim_start();
        }
        // `VAKT_X=1 vakt …`: environment assignments before the program.
        let mut rest = cmd;
        loop {
            let word_end = rest.find(' ').unwrap_or(rest.len());
            let word = &rest[..word_end];
            if word.contains('=') && !word.starts_with('-') && word != rest {
                rest = rest[word_end..].trim_start();
            } else {
                break;
            }
        }
        if rest.starts_with("vakt ") || rest == "vakt" {
            let pos = at.map_or(idx.pos(content_start), |a| {
                let first_line_end = text[a..].find('\n').map_or(text.len(), |n| a + n);
                idx.pos(text[a..first_line_end].find("vakt").map_or(a, |o| a + o))
            });
            out.push(command(rest, pos));
            if out.len() >= MAX_COMMANDS_PER_RUNBOOK {
                return;
            }
        }
    }
}

fn command(line: &str, pos: Pos) -> RunbookCommand {
    let text: String = line.chars().take(200).collect();
    if line.len() > MAX_COMMAND_LEN {
        return RunbookCommand {
            pos,
            text,
            args: Err(format!(
                "the command is longer than {MAX_COMMAND_LEN} bytes"
            )),
        };
    }
    let args = split_words(line).map(|mut w| {
        w.remove(0); // `vakt`
        w
    });
    RunbookCommand { pos, text, args }
}

/// Splits a shell-like line into words: single and double quotes, backslash escapes, and a cut
/// at the first unquoted `|`, `;`, `&`, `>`, `<` or ` #` (pipes, lists, redirections,
/// comments). `<word>` is a placeholder, not a redirection.
pub fn split_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(ch) => cur.push(ch),
                        None => return Err("unterminated single quote".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(ch @ ('"' | '\\' | '$' | '`')) => cur.push(ch),
                            Some(ch) => {
                                cur.push('\\');
                                cur.push(ch);
                            }
                            None => return Err("unterminated double quote".into()),
                        },
                        Some(ch) => cur.push(ch),
                        None => return Err("unterminated double quote".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(ch) = chars.next() {
                    cur.push(ch);
                }
            }
            '<' => {
                // A placeholder like `<env>` or `<plan-id>`.
                let rest: String = chars.clone().take_while(|&ch| ch != '>').collect();
                let is_placeholder = !rest.is_empty()
                    && rest.len() < 64
                    && chars.clone().nth(rest.chars().count()) == Some('>')
                    && rest
                        .chars()
                        .all(|ch| ch.is_alphanumeric() || matches!(ch, '-' | '_' | '.' | ' '));
                if is_placeholder {
                    in_word = true;
                    cur.push('<');
                    cur.push_str(&rest);
                    cur.push('>');
                    for _ in 0..=rest.chars().count() {
                        chars.next();
                    }
                } else {
                    break;
                }
            }
            '|' | ';' | '&' | '>' => break,
            '#' if !in_word => break,
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    // A trailing `2` from `2>&1` belongs to the redirection.
    if words.last().is_some_and(|w| w == "2") && line.contains("2>") {
        words.pop();
    }
    if words.is_empty() {
        return Err("empty command".into());
    }
    Ok(words)
}

/// Checks every `vakt` command of one runbook with `checker`.
pub fn check(path: &str, text: &str, checker: &dyn CommandChecker, out: &mut Vec<Finding>) {
    for c in extract(text) {
        let err = match &c.args {
            Ok(args) => checker.check(args).err(),
            Err(e) => Some(e.clone()),
        };
        if let Some(e) = err {
            out.push(
                Finding::new(
                    "runbook.command",
                    path,
                    c.pos,
                    format!("`{}` is not a valid vakt command: {e}", c.text),
                )
                .help(
                    "fix the command so it runs as written (see `vakt <command> --help`); \
                     placeholders like PLAN or <env> are fine",
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_inline_and_block_commands() {
        let md = "# T\n\nRun `vakt status` then:\n\n```sh\n$ vakt plan --env prod \\\n    --live | jq .\n# vakt ignored\nnats kv ls\nVAKT_LOG=debug vakt drift --env <env> 2>&1\n```\n";
        let c = extract(md);
        let args: Vec<_> = c.iter().map(|c| c.args.clone().unwrap()).collect();
        assert_eq!(
            args,
            vec![
                vec!["status".to_string()],
                vec![
                    "plan".into(),
                    "--env".into(),
                    "prod".into(),
                    "--live".into()
                ],
                vec!["drift".into(), "--env".into(), "<env>".into()],
            ]
        );
        assert_eq!(c[0].pos.line, 3);
        assert_eq!(c[1].pos.line, 6);
        assert_eq!(c[2].pos.line, 10);
    }

    #[test]
    fn malformed_lines_are_errors_not_panics() {
        assert!(split_words("vakt approve 'x").is_err());
        assert!(split_words("vakt approve \"x").is_err());
        assert_eq!(
            split_words("vakt approve P --reason \"a b\"").unwrap(),
            vec!["vakt", "approve", "P", "--reason", "a b"]
        );
        for s in ["\\", "<", "<<>", "\"\\", "vakt <é", "`vakt`"] {
            let _ = split_words(s);
            let _ = extract(s);
        }
    }
}

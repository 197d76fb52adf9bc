//! The sanitiser's fast path: HTML written straight from the markdown events, for documents
//! that carry no markup of their own, in exactly the form ammonia would have returned.
//!
//! pulldown-cmark escapes every text and attribute value it writes, so the only ways unsafe
//! markup reaches its output are raw HTML (`Event::Html`, `Event::InlineHtml`) and link or
//! image destinations with a scheme the sanitiser does not allow (`javascript:` and the like,
//! also when entity-encoded or written as an autolink: the parser decodes those into the
//! destination it reports). [`write`] therefore renders a document itself only when its events
//! are all of a small, known set (no raw HTML, no footnotes, task lists, heading classes or
//! attributes, which ammonia would strip or rewrite) and every destination passes the same
//! test ammonia applies (`url::Url::parse`: a scheme in [`URL_SCHEMES`], or a relative URL);
//! anything else returns `None` and the caller sends pulldown-cmark's HTML through ammonia as
//! before. The markdown renderer also keeps documents holding CR or NUL on ammonia's path (an HTML
//! parser rewrites both, so the direct output could not be the same).
//!
//! The output reproduces ammonia's serialisation (html5ever's): text escapes `&`, `<`, `>`
//! and U+00A0; attribute values also `"`; void elements have no ` /`; fenced code loses its
//! `class`, table cells their `style`; links get `rel="noopener noreferrer"` after their
//! other attributes; heading ids get [`ID_PREFIX`] unless they already start
//! with it. The unit tests and `tests/fast_path.rs` compare both paths byte for byte.

use pulldown_cmark::{CowStr, Event, LinkType, Tag, TagEnd};

/// Prefix of every heading id, so markdown can never clobber a page global (`id="foo"` would
/// make `window.foo` an element).
pub const ID_PREFIX: &str = "h-";

/// ammonia's default URL scheme allow-list (`ammonia::Builder::default`), which sitegen's
/// sanitiser does not change. A unit test checks it against `Builder::clone_url_schemes`.
pub const URL_SCHEMES: &[&str] = &[
    "bitcoin",
    "ftp",
    "ftps",
    "geo",
    "http",
    "https",
    "im",
    "irc",
    "ircs",
    "magnet",
    "mailto",
    "mms",
    "mx",
    "news",
    "nntp",
    "openpgp4fpr",
    "sip",
    "sms",
    "smsto",
    "ssh",
    "tel",
    "url",
    "webcal",
    "wtai",
    "xmpp",
];

/// The `rel` ammonia adds to every link (its default `link_rel`).
const LINK_REL: &str = "noopener noreferrer";

/// Whether ammonia keeps an `href`/`src` attribute whose (decoded) value is `v`: the same
/// test as its `clean_child`.
fn url_allowed(v: &str) -> bool {
    match url::Url::parse(v) {
        Ok(u) => URL_SCHEMES.contains(&u.scheme()),
        Err(url::ParseError::RelativeUrlWithoutBase) => true,
        Err(_) => false,
    }
}

/// Appends `s` escaped as html5ever escapes text: `&`, `<`, `>`, U+00A0.
fn text(out: &mut String, s: &str) {
    escape(out, s, false);
}

/// Appends `s` escaped as html5ever escapes an attribute value: also `"`.
fn attr(out: &mut String, s: &str) {
    escape(out, s, true);
}

fn escape(out: &mut String, s: &str, attr_mode: bool) {
    let mut mark = 0;
    for (i, c) in s.char_indices() {
        let rep = match c {
            '&' => "&amp;",
            '<' => "&lt;",
            '>' => "&gt;",
            '\u{a0}' => "&nbsp;",
            '"' if attr_mode => "&quot;",
            _ => continue,
        };
        out.push_str(&s[mark..i]);
        out.push_str(rep);
        mark = i + c.len_utf8();
    }
    out.push_str(&s[mark..]);
}

/// The value an `href`/`src` attribute holds once pulldown-cmark's `escape_href` output is
/// parsed as HTML: unsafe bytes percent-encoded, `&` and `'` literal. `None` when ammonia
/// would drop it.
fn url_value(dest: &str, buf: &mut String) -> Option<()> {
    buf.clear();
    pulldown_cmark_escape::escape_href(&mut *buf, dest).ok()?;
    if buf.contains('&') {
        *buf = buf.replace("&#x27;", "'").replace("&amp;", "&");
    }
    url_allowed(buf).then_some(())
}

/// Appends the alt text of an image (its inner events as plain text, as pulldown-cmark's
/// `raw_text` writes it) and returns the index of the image's end event, or `None` for an
/// event the fast path does not take.
fn alt_text(events: &[Event<'_>], start: usize, out: &mut String) -> Option<usize> {
    let mut nest = 0usize;
    let mut i = start;
    while i < events.len() {
        match &events[i] {
            Event::Start(_) => nest += 1,
            Event::End(_) => {
                if nest == 0 {
                    return Some(i);
                }
                nest -= 1;
            }
            Event::Text(t) | Event::Code(t) => out.push_str(t),
            Event::SoftBreak | Event::HardBreak | Event::Rule => out.push(' '),
            _ => return None,
        }
        i += 1;
    }
    Some(i)
}

/// Renders `events` (front matter already removed, heading ids set) as ammonia would return
/// pulldown-cmark's HTML for them, or `None` when the document needs the sanitiser.
pub fn write(events: &[Event<'_>], size_hint: usize) -> Option<String> {
    let mut out = String::with_capacity(size_hint);
    let mut end_newline = true;
    let mut in_head = false;
    let mut links = 0usize;
    let mut url = String::new();
    let mut alt = String::new();
    // `end_newline` follows pulldown-cmark's writer: whether the last write ended a line
    let nl = |out: &mut String, end_newline: bool| {
        if !end_newline {
            out.push('\n');
        }
    };
    let mut i = 0;
    while i < events.len() {
        let ev = &events[i];
        i += 1;
        match ev {
            Event::Start(tag) => match tag {
                Tag::Paragraph => {
                    nl(&mut out, end_newline);
                    out.push_str("<p>");
                    end_newline = false;
                }
                Tag::Heading {
                    level,
                    id,
                    classes,
                    attrs,
                } => {
                    if !classes.is_empty() || !attrs.is_empty() {
                        return None;
                    }
                    nl(&mut out, end_newline);
                    out.push('<');
                    out.push_str(&level.to_string());
                    if let Some(id) = id {
                        out.push_str(" id=\"");
                        if !id.starts_with(ID_PREFIX) {
                            out.push_str(ID_PREFIX);
                        }
                        attr(&mut out, id);
                        out.push('"');
                    }
                    out.push('>');
                    end_newline = false;
                }
                Tag::Table(_) => {
                    out.push_str("<table>");
                    end_newline = false;
                }
                Tag::TableHead => {
                    in_head = true;
                    out.push_str("<thead><tr>");
                    end_newline = false;
                }
                Tag::TableRow => {
                    out.push_str("<tr>");
                    end_newline = false;
                }
                Tag::TableCell => {
                    out.push_str(if in_head { "<th>" } else { "<td>" });
                    end_newline = false;
                }
                Tag::BlockQuote(None) => {
                    nl(&mut out, end_newline);
                    out.push_str("<blockquote>\n");
                    end_newline = true;
                }
                // ammonia drops the `class="language-…"` of a fenced block
                Tag::CodeBlock(_) => {
                    nl(&mut out, end_newline);
                    out.push_str("<pre><code>");
                    end_newline = false;
                }
                Tag::List(start) => {
                    nl(&mut out, end_newline);
                    match start {
                        Some(1) => out.push_str("<ol>\n"),
                        Some(n) => {
                            out.push_str("<ol start=\"");
                            out.push_str(&n.to_string());
                            out.push_str("\">\n");
                        }
                        None => out.push_str("<ul>\n"),
                    }
                    end_newline = true;
                }
                Tag::Item => {
                    nl(&mut out, end_newline);
                    out.push_str("<li>");
                    end_newline = false;
                }
                Tag::Emphasis => {
                    out.push_str("<em>");
                    end_newline = false;
                }
                Tag::Strong => {
                    out.push_str("<strong>");
                    end_newline = false;
                }
                Tag::Strikethrough => {
                    out.push_str("<del>");
                    end_newline = false;
                }
                Tag::Link {
                    link_type,
                    dest_url,
                    title,
                    ..
                } => {
                    // a link inside a link is re-nested by an HTML parser: leave it to ammonia
                    if links > 0 || matches!(link_type, LinkType::WikiLink { .. }) {
                        return None;
                    }
                    links += 1;
                    let dest: CowStr<'_> = if *link_type == LinkType::Email {
                        format!("mailto:{dest_url}").into()
                    } else {
                        dest_url.clone()
                    };
                    url_value(&dest, &mut url)?;
                    out.push_str("<a href=\"");
                    attr(&mut out, &url);
                    out.push('"');
                    if !title.is_empty() {
                        out.push_str(" title=\"");
                        attr(&mut out, title);
                        out.push('"');
                    }
                    out.push_str(" rel=\"");
                    out.push_str(LINK_REL);
                    out.push_str("\">");
                    end_newline = false;
                }
                Tag::Image {
                    link_type,
                    dest_url,
                    title,
                    ..
                } => {
                    if matches!(link_type, LinkType::WikiLink { .. }) {
                        return None;
                    }
                    url_value(dest_url, &mut url)?;
                    alt.clear();
                    i = alt_text(events, i, &mut alt)? + 1;
                    out.push_str("<img src=\"");
                    attr(&mut out, &url);
                    out.push_str("\" alt=\"");
                    attr(&mut out, &alt);
                    out.push('"');
                    if !title.is_empty() {
                        out.push_str(" title=\"");
                        attr(&mut out, title);
                        out.push('"');
                    }
                    out.push('>');
                    end_newline = false;
                }
                _ => return None,
            },
            Event::End(tag) => {
                let s = match tag {
                    TagEnd::Paragraph => "</p>\n",
                    TagEnd::Heading(level) => {
                        out.push_str("</");
                        out.push_str(&level.to_string());
                        ">\n"
                    }
                    TagEnd::Table => "</tbody></table>\n",
                    TagEnd::TableHead => {
                        in_head = false;
                        "</tr></thead><tbody>\n"
                    }
                    TagEnd::TableRow => "</tr>\n",
                    TagEnd::TableCell => {
                        if in_head {
                            "</th>"
                        } else {
                            "</td>"
                        }
                    }
                    TagEnd::BlockQuote(None) => "</blockquote>\n",
                    TagEnd::CodeBlock => "</code></pre>\n",
                    TagEnd::List(true) => "</ol>\n",
                    TagEnd::List(false) => "</ul>\n",
                    TagEnd::Item => "</li>\n",
                    TagEnd::Emphasis => "</em>",
                    TagEnd::Strong => "</strong>",
                    TagEnd::Strikethrough => "</del>",
                    TagEnd::Link => {
                        links = links.saturating_sub(1);
                        "</a>"
                    }
                    _ => return None,
                };
                out.push_str(s);
                end_newline = s.ends_with('\n');
            }
            Event::Text(t) => {
                text(&mut out, t);
                end_newline = t.ends_with('\n');
            }
            Event::Code(t) => {
                out.push_str("<code>");
                text(&mut out, t);
                out.push_str("</code>");
                end_newline = false;
            }
            Event::SoftBreak => {
                out.push('\n');
                end_newline = true;
            }
            Event::HardBreak => {
                out.push_str("<br>\n");
                end_newline = true;
            }
            Event::Rule => {
                nl(&mut out, end_newline);
                out.push_str("<hr>\n");
                end_newline = true;
            }
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheme_list_is_ammonias() {
        let b = ammonia::Builder::default();
        let mut theirs: Vec<&str> = b.clone_url_schemes().into_iter().collect();
        theirs.sort_unstable();
        assert_eq!(theirs, URL_SCHEMES);
    }

    #[test]
    fn url_test_matches_ammonia() {
        for (v, ok) in [
            ("https://example.org/a?b=1&c=2", true),
            ("../x/y.md#h-top", true),
            ("#anchor", true),
            ("mailto:a@b.example", true),
            ("javascript:alert(1)", false),
            ("JaVaScRiPt:alert(1)", false),
            ("data:text/html;base64,AAAA", false),
            ("vbscript:msgbox", false),
            ("http://[::1", false),
        ] {
            assert_eq!(url_allowed(v), ok, "{v}");
        }
    }

    #[test]
    fn escaping_is_html5evers() {
        let mut s = String::new();
        text(&mut s, "a&b<c>d\"e'f\u{a0}g");
        assert_eq!(s, "a&amp;b&lt;c&gt;d\"e'f&nbsp;g");
        s.clear();
        attr(&mut s, "a&b<c>d\"e'f\u{a0}g");
        assert_eq!(s, "a&amp;b&lt;c&gt;d&quot;e'f&nbsp;g");
    }
}

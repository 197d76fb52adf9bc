//! Runbook markdown to sanitised HTML: CommonMark + tables, heading anchors from generated slugs,
//! front matter dropped, raw HTML and unsafe URLs removed by ammonia.

use std::collections::HashMap;
use std::sync::OnceLock;

use pulldown_cmark::{CowStr, Event, Options, Parser, Tag, TagEnd};
use serde::Serialize;

/// Prefix of every heading id, so markdown can never clobber a page global (`id="foo"` would
/// make `window.foo` an element).
pub const ID_PREFIX: &str = "h-";

/// A rendered runbook.
#[derive(Debug, Clone, Serialize)]
pub struct Rendered {
    /// Sanitised HTML.
    pub html: String,
    /// Headings (level 2 and 3) for a table of contents; `anchor` includes [`ID_PREFIX`].
    pub toc: Vec<TocEntry>,
    /// Plain text, for the search index.
    #[serde(skip)]
    pub text: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct TocEntry {
    pub level: u8,
    pub text: String,
    pub anchor: String,
}

fn options() -> Options {
    Options::ENABLE_TABLES
        | Options::ENABLE_HEADING_ATTRIBUTES
        | Options::ENABLE_YAML_STYLE_METADATA_BLOCKS
        | Options::ENABLE_TASKLISTS
        | Options::ENABLE_FOOTNOTES
        | Options::ENABLE_STRIKETHROUGH
}

/// URL-safe slug of a heading: lowercase alphanumerics joined by `-`.
pub fn slug(text: &str) -> String {
    let mut out = String::new();
    let mut dash = false;
    for c in text.chars().flat_map(char::to_lowercase) {
        if c.is_alphanumeric() {
            if dash && !out.is_empty() {
                out.push('-');
            }
            dash = false;
            out.push(c);
        } else {
            dash = true;
        }
    }
    if out.is_empty() {
        out.push_str("section");
    }
    out
}

fn sanitizer() -> &'static ammonia::Builder<'static> {
    static B: OnceLock<ammonia::Builder<'static>> = OnceLock::new();
    B.get_or_init(|| {
        let mut b = ammonia::Builder::default();
        for h in ["h1", "h2", "h3", "h4", "h5", "h6"] {
            b.add_tag_attributes(h, &["id"]);
        }
        b.id_prefix(Some(ID_PREFIX));
        b
    })
}

/// Renders markdown to sanitised HTML.
pub fn render(md: &str) -> Rendered {
    let mut events: Vec<Event<'_>> = Vec::new();
    let mut in_meta = false;
    for ev in Parser::new_ext(md, options()) {
        match ev {
            Event::Start(Tag::MetadataBlock(_)) => in_meta = true,
            Event::End(TagEnd::MetadataBlock(_)) => in_meta = false,
            _ if in_meta => {}
            ev => events.push(ev),
        }
    }

    // The page shows the catalog title as its <h1>; a leading `# Title` would repeat it.
    let mut text = String::with_capacity(md.len());
    if let Some(Event::Start(Tag::Heading {
        level: pulldown_cmark::HeadingLevel::H1,
        ..
    })) = events.first()
        && let Some(end) = events
            .iter()
            .position(|e| matches!(e, Event::End(TagEnd::Heading(_))))
    {
        for e in events.drain(..=end) {
            if let Event::Text(t) | Event::Code(t) = e {
                text.push_str(&t);
                text.push(' ');
            }
        }
    }
    let mut toc = Vec::new();
    let mut used: HashMap<String, usize> = HashMap::new();
    let mut i = 0;
    while i < events.len() {
        match &events[i] {
            Event::Text(t) | Event::Code(t) => {
                text.push_str(t);
                text.push(' ');
            }
            Event::SoftBreak | Event::HardBreak => text.push(' '),
            _ => {}
        }
        if let Event::Start(Tag::Heading { level, id, .. }) = &events[i] {
            let level = *level as u8;
            let mut heading = String::new();
            let mut j = i + 1;
            while j < events.len() && !matches!(events[j], Event::End(TagEnd::Heading(_))) {
                if let Event::Text(t) | Event::Code(t) = &events[j] {
                    heading.push_str(t);
                }
                j += 1;
            }
            let base = match id {
                Some(id) => slug(id),
                None => slug(&heading),
            };
            let n = used.entry(base.clone()).or_insert(0);
            let unique = if *n == 0 {
                base.clone()
            } else {
                format!("{base}-{n}")
            };
            *n += 1;
            if (2..=3).contains(&level) {
                toc.push(TocEntry {
                    level,
                    text: heading,
                    anchor: format!("{ID_PREFIX}{unique}"),
                });
            }
            if let Event::Start(Tag::Heading { id, .. }) = &mut events[i] {
                *id = Some(CowStr::from(unique));
            }
        }
        i += 1;
    }

    let mut raw = String::with_capacity(md.len() * 3 / 2);
    pulldown_cmark::html::push_html(&mut raw, events.into_iter());
    Rendered {
        html: sanitizer().clean(&raw).to_string(),
        toc,
        text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headings_get_unique_prefixed_anchors() {
        let r =
            render("# T\n\n## Evidence to review\n\n## Evidence to review\n\n### `vakt drift`\n");
        assert!(
            r.html.contains(r#"<h2 id="h-evidence-to-review">"#),
            "{}",
            r.html
        );
        assert!(
            r.html.contains(r#"<h2 id="h-evidence-to-review-1">"#),
            "{}",
            r.html
        );
        assert_eq!(r.toc.len(), 3);
        assert_eq!(r.toc[2].anchor, "h-vakt-drift");
    }

    #[test]
    fn tables_are_kept() {
        let r = render("| a | b |\n|---|---|\n| 1 | 2 |\n");
        assert!(r.html.contains("<table>"), "{}", r.html);
        assert!(r.html.contains("<td>1</td>"), "{}", r.html);
    }

    #[test]
    fn dangerous_markup_is_removed() {
        let md = "# x\n\n<script>window.__x=1</script>\n\n[a](javascript:alert(1))\n\n\
                  <img src=x onerror=\"window.__x=1\">\n\n<iframe src=\"https://e.invalid\"></iframe>\n\n\
                  <p style=\"background:url(javascript:1)\">s</p>\n\n## H {#__proto__}\n";
        let r = render(md);
        for bad in [
            "<script",
            "javascript:",
            "onerror",
            "<iframe",
            "style=",
            "id=\"__proto__\"",
        ] {
            assert!(!r.html.contains(bad), "{bad} in {}", r.html);
        }
    }

    #[test]
    fn front_matter_is_dropped_and_text_collected() {
        let r = render("---\nowner: x\n---\n# Title\n\nBody *word* here.\n");
        assert!(!r.html.contains("owner"), "{}", r.html);
        assert!(!r.html.contains("<h1"), "leading h1 dropped: {}", r.html);
        assert!(r.text.contains("word"));
        assert!(r.text.contains("Title"));
    }
}

//! Runbook markdown to sanitised HTML: CommonMark + tables, heading anchors from generated slugs,
//! front matter dropped, raw HTML and unsafe URLs removed by ammonia (documents without raw HTML
//! or unsafe URLs are written directly, in ammonia's exact output form: [`crate::safe_html`]).

use std::collections::HashMap;
use std::sync::OnceLock;

use pulldown_cmark::{CowStr, Event, Options, Parser, Tag, TagEnd};
use serde::Serialize;

pub use crate::safe_html::ID_PREFIX;

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
    /// Whether the HTML went through ammonia (the document has raw HTML, a URL ammonia would
    /// drop, or markup it would rewrite) rather than [`crate::safe_html`]'s direct writer.
    #[serde(skip)]
    pub via_ammonia: bool,
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

/// Renders markdown to sanitised HTML: documents without raw HTML (or anything else ammonia
/// would rewrite) are written directly by [`crate::safe_html`], the others go through ammonia.
pub fn render(md: &str) -> Rendered {
    render_with(md, false)
}

/// Renders markdown with every document going through ammonia: the reference the fast path
/// must equal byte for byte (tests and the fuzz target compare the two).
pub fn render_with_ammonia(md: &str) -> Rendered {
    render_with(md, true)
}

fn render_with(md: &str, always_ammonia: bool) -> Rendered {
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

    // An HTML parser turns CR into LF and drops NUL: text with either is left to ammonia.
    let fast = if always_ammonia || md.contains(['\r', '\0']) {
        None
    } else {
        crate::safe_html::write(&events, md.len() * 3 / 2)
    };
    let via_ammonia = fast.is_none();
    let html = fast.unwrap_or_else(|| sanitize(events));
    Rendered {
        html,
        toc,
        text,
        via_ammonia,
    }
}

/// pulldown-cmark's HTML for `events`, cleaned by ammonia: the path for documents with raw
/// HTML or anything else [`crate::safe_html::write`] leaves to the sanitiser.
fn sanitize(events: Vec<Event<'_>>) -> String {
    let mut raw = String::new();
    pulldown_cmark::html::push_html(&mut raw, events.into_iter());
    sanitizer().clean(&raw).to_string()
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

    /// Every tag and attribute in `html` is one the sanitiser allows, and no `href`/`src`
    /// holds a script-capable URL. `html` is serialised HTML: text never holds a raw `<`.
    fn assert_harmless(md: &str, html: &str) {
        const TAGS: &[&str] = &[
            "p",
            "h1",
            "h2",
            "h3",
            "h4",
            "h5",
            "h6",
            "blockquote",
            "pre",
            "code",
            "ol",
            "ul",
            "li",
            "table",
            "thead",
            "tbody",
            "tr",
            "th",
            "td",
            "em",
            "strong",
            "del",
            "a",
            "img",
            "br",
            "hr",
            "sup",
            "div",
            "span",
            "b",
            "i",
            "s",
            "kbd",
            "dl",
            "dt",
            "dd",
        ];
        const ATTRS: &[&str] = &["id", "href", "title", "rel", "src", "alt", "start", "lang"];
        let mut rest = html;
        while let Some(open) = rest.find('<') {
            let close = rest[open..].find('>').expect("unterminated tag") + open;
            let tag = &rest[open + 1..close];
            rest = &rest[close + 1..];
            let tag = tag.strip_prefix('/').unwrap_or(tag);
            let (name, mut attrs) = tag.split_once(' ').unwrap_or((tag, ""));
            assert!(TAGS.contains(&name), "tag <{name}> from {md:?}: {html}");
            while !attrs.is_empty() {
                let (a, after) = attrs.split_once("=\"").expect("attribute without value");
                let (v, after) = after.split_once('"').expect("unterminated attribute");
                attrs = after.trim_start();
                assert!(ATTRS.contains(&a), "attribute {a} from {md:?}: {html}");
                if a == "href" || a == "src" {
                    let v: String = v
                        .replace("&amp;", "&")
                        .chars()
                        .filter(|c| !c.is_whitespace() && !c.is_control())
                        .collect::<String>()
                        .to_ascii_lowercase();
                    for bad in ["javascript:", "vbscript:", "data:", "&#", "&colon;"] {
                        assert!(
                            !v.starts_with(bad) && !v.contains(bad),
                            "{a}={v:?} from {md:?}"
                        );
                    }
                }
            }
        }
        // text and attribute values may mention `onerror=` only escaped; tags cannot appear
        for bad in ["<script", "<iframe", "<style", "<svg", "<object", "<input"] {
            assert!(!html.contains(bad), "{bad} from {md:?}: {html}");
        }
    }

    const HOSTILE: &[&str] = &[
        "<script>alert(1)</script>",
        "x <script>alert(1)</script> y",
        "<img src=x onerror=\"alert(1)\">",
        "a <img src=x onerror=alert(1)> b",
        "[x](javascript:alert(1))",
        "[x](JaVaScRiPt:alert(1))",
        "[x](jav&#x61;script:alert(1))",
        "[x](&#106;avascript:alert(1))",
        "[x](javascript&colon;alert(1))",
        "[x](<javascript:alert(1)>)",
        "[x]( javascript:alert(1) )",
        "[x](\tjavascript:alert(1))",
        "<javascript:alert(1)>",
        "<JAVASCRIPT:alert(1)>",
        "<vbscript:msgbox(1)>",
        "[x][r]\n\n[r]: javascript:alert(1)",
        "[x]\n\n[x]: jav&#x61;script:alert(1) \"t\"",
        "![x](data:image/svg+xml;base64,PHN2ZyBvbmxvYWQ9YWxlcnQoMSk+)",
        "![x](data:text/html,<script>alert(1)</script>)",
        "![x][d]\n\n[d]: data:text/html;base64,PHNjcmlwdD4=",
        "[x](vbscript:msgbox(1))",
        "[x](data:text/html,alert)",
        "[![i](javascript:alert(1))](https://ok.example)",
        "[x](https://ok.example \"a&quot; onmouseover=&quot;alert(1)\")",
        "[x](https://ok.example \"a\\\" onclick=\\\"alert(1)\")",
        "![a\" onerror=\"alert(1)](x.png)",
        "![a <b onclick=x>](x.png \"t\\\" onerror=\\\"y\")",
        "`<script>alert(1)</script>` and ``<img onerror=x>``",
        "    <script>alert(1)</script>",
        "```html\n<script>alert(1)</script>\n```",
        "## H {#x onclick=alert(1)}",
        "## H {.c onclick=\"alert(1)\"}",
        "## H {#\"><script>alert(1)</script>}",
        "<a href=\"javascript:alert(1)\">x</a>",
        "<iframe src=\"https://e.invalid\"></iframe>",
        "<p style=\"background:url(javascript:1)\">s</p>",
        "<svg><script>alert(1)</script></svg>",
        "<!-- <script>alert(1)</script> -->",
        "- [ ] <input onfocus=alert(1) autofocus>",
        "x[^1]\n\n[^1]: <script>alert(1)</script>",
        "| a | b |\n|---|---|\n| [x](javascript:alert(1)) | <script>y</script> |",
        "> [x](javascript:alert(1))\n> > ![y](data:,z)",
        "<http://a.example/\"onmouseover=\"alert(1)>",
        "[x](http://a.example/\"onmouseover=\"alert(1))",
        "[x](<http://a.example/' onclick='alert(1)>)",
        "&lt;script&gt;alert(1)&lt;/script&gt;",
        "\u{0}<script>alert(1)</script>",
        "a\r\n<script>alert(1)</script>\r\n",
    ];

    #[test]
    fn hostile_markdown_is_harmless_on_both_paths() {
        let mut fast = 0;
        for md in HOSTILE {
            for doc in [md.to_string(), format!("# T\n\n## S\n\ntext\n\n{md}\n")] {
                let r = render(&doc);
                let a = render_with_ammonia(&doc);
                assert!(a.via_ammonia);
                assert_harmless(&doc, &r.html);
                assert_harmless(&doc, &a.html);
                if r.via_ammonia {
                    assert_eq!(r.html, a.html);
                } else {
                    fast += 1;
                    // the fast path is only taken where it writes what ammonia writes
                    assert_eq!(r.html, a.html, "fast path differs for {doc:?}");
                }
            }
        }
        // escaped text, code and safe links stay on the fast path
        assert!(
            fast >= 8,
            "only {fast} hostile documents took the fast path"
        );
    }

    #[test]
    fn raw_html_and_unsafe_urls_take_ammonias_path() {
        for md in [
            "<b>x</b>",
            "a <span>b</span>",
            "[x](javascript:alert(1))",
            "<javascript:alert(1)>",
            "![x](data:,y)",
            "## H {.cls}",
            "- [ ] task",
            "x[^1]\n\n[^1]: note",
        ] {
            assert!(render(md).via_ammonia, "{md}");
        }
        for md in [
            "plain *text*",
            "[x](https://a.example)",
            "| a |\n|---|\n| 1 |",
        ] {
            assert!(!render(md).via_ammonia, "{md}");
        }
    }

    /// Fragments of markdown without raw HTML, combined at random below.
    const PIECES: &[&str] = &[
        "# Title",
        "## Evidence to review",
        "### `vakt drift` output",
        "## Über Größe ünïcödé",
        "## h-already prefixed",
        "## Custom {#h-custom}",
        "## Custom id {#my-id}",
        "#### Deep heading",
        "Setext\n======",
        "Setext two\n----------",
        "Plain text with &amp; & < > \" ' and &nbsp;non-breaking\u{a0}space.",
        "Entities: &copy; &#169; &#x1F600; &quot;quoted&quot; &lt;tag&gt;",
        "*em* **strong** ***both*** ~~struck~~ _under_ __dunder__",
        "A hard break  \nnext line\\\nand more",
        "soft\nbreak\nlines",
        "`code & <span>` and ``double `tick` code``",
        "- one\n- two\n  - nested\n  - more\n- three",
        "1. one\n2. two\n3. three",
        "3. start at three\n4. four",
        "0. zero start",
        "- loose\n\n- list\n\n  with paragraph",
        "> quote\n> > nested quote\n>\n> - list in quote",
        "```\nplain fence & <x>\n```",
        "```sh\nvakt drift --env prod && echo \"ok\" > /dev/null\n```",
        "~~~rust ignore\nfn main() {}\n~~~",
        "    indented code\n    with <tags> & stuff",
        "| a | b | c |\n|:--|:-:|--:|\n| 1 | `2` | **3** |\n| x | [l](https://a.example/x?y=1&z=2) | |",
        "| only head |\n|---|",
        "[inline](https://example.org/path \"A title & 'quote' \\\"dq\\\"\")",
        "[relative](../runbooks/ops.api.latency.md#h-trigger)",
        "[anchor](#h-evidence-to-review)",
        "[spaces](<a b c.md>)",
        "[empty]()",
        "[unicode](https://例え.テスト/パス?q=ü)",
        "[quote'url](https://a.example/it's)",
        "[pct](https://a.example/%20x%zz)",
        "[ref link][ref] and [collapsed][] and [shortcut]\n\n[ref]: https://a.example/ref \"Ref title\"\n[collapsed]: mailto:ops@example.org\n[shortcut]: /abs/path",
        "<https://auto.example/x?a=1&b=2>",
        "<ops@example.org>",
        "<mailto:ops@example.org>",
        "<irc://irc.example/chan>",
        "<ssh://host.example>",
        "![alt *with* `code`](img/a.png \"img title\")",
        "![](empty-alt.png)",
        "[![nested image](i.png)](https://a.example)",
        "***",
        "- - -",
        "Text right before\n***\nafter",
        "para one\n\npara two",
        "\\*escaped\\* \\[not a link\\]",
        "trailing spaces   ",
        "tab\tseparated\ttext",
        "http://not.autolinked.example",
        "[x](http://[::1]/)",
        "[broken](http://[::1)",
        "[port](http://a.example:99999/)",
        "> ```\n> code in quote\n> ```",
        "- item with code:\n\n  ```\n  x\n  ```",
        "1. a\n   1. b\n      - c",
    ];

    /// A tiny deterministic generator (xorshift), so the test needs no crate and fails the
    /// same way every run.
    fn documents(n: usize) -> Vec<String> {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let seps = ["\n\n", "\n", " ", "\n\n- ", "\n> ", "\n\n1. ", "\n    "];
        (0..n)
            .map(|_| {
                let k = 1 + (next() % 8) as usize;
                let mut d = String::new();
                for _ in 0..k {
                    d.push_str(PIECES[(next() % PIECES.len() as u64) as usize]);
                    d.push_str(seps[(next() % seps.len() as u64) as usize]);
                }
                d
            })
            .collect()
    }

    #[test]
    fn fast_path_equals_ammonia_on_generated_documents() {
        let mut fast = 0;
        for piece in PIECES {
            let (r, a) = (render(piece), render_with_ammonia(piece));
            assert_eq!(r.html, a.html, "piece {piece:?}");
            fast += usize::from(!r.via_ammonia);
        }
        assert!(
            fast >= PIECES.len() - 3,
            "{fast} of {} pieces fast",
            PIECES.len()
        );
        for d in documents(3000) {
            let (r, a) = (render(&d), render_with_ammonia(&d));
            assert_eq!(r.html, a.html, "document {d:?}");
            assert_eq!(r.text, a.text);
        }
    }

    #[test]
    fn fast_path_equals_ammonia_on_bundled_runbooks() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../runbooks");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).expect("bundled runbooks") {
            let p = e.expect("entry").path();
            if p.extension().is_some_and(|x| x == "md") {
                let md = std::fs::read_to_string(&p).expect("runbook");
                let (r, a) = (render(&md), render_with_ammonia(&md));
                assert_eq!(r.html, a.html, "{}", p.display());
                assert!(!r.via_ammonia, "{} has no raw HTML", p.display());
                n += 1;
            }
        }
        assert!(n >= 30, "{n} runbooks");
    }
}

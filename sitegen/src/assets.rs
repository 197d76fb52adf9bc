//! Static assets: hand-written CSS and JavaScript, embedded in the binary (no CDN, works offline).

/// `(path, content)` of every asset.
pub fn files() -> Vec<(String, String)> {
    vec![
        (
            "assets/site.css".into(),
            include_str!("../assets/site.css").into(),
        ),
        (
            "assets/site.js".into(),
            include_str!("../assets/site.js").into(),
        ),
    ]
}

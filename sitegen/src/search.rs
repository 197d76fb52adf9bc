//! The client-side full-text search index: a tiny `meta.json` (the only file loaded up front),
//! term shards chosen by a hash of the term (fetched on demand, one per query word) and document
//! chunks (fetched for the hits shown). The first download stays a few hundred bytes however many
//! runbooks there are; one query loads one shard per word and the chunks of its hits.
//!
//! Posting lists are ascending document numbers, delta-encoded in base 36 and joined by `,`.
//! `site.js` implements the same tokenizer and FNV-1a hash; keep both in step.

use std::collections::BTreeMap;

use serde_json::json;

/// Documents per chunk file.
pub const CHUNK: usize = 200;
/// Target size of one term shard, in bytes.
const SHARD_TARGET: usize = 48 * 1024;

const STOPWORDS: &[&str] = &[
    "a", "an", "and", "are", "as", "at", "be", "by", "for", "from", "if", "in", "is", "it", "its",
    "of", "on", "or", "that", "the", "then", "this", "to", "was", "with", "when", "no", "not",
];

/// One searchable document.
pub struct SearchDoc<'a> {
    pub id: &'a str,
    pub title: &'a str,
    pub group: &'a str,
    pub text: &'a str,
}

/// Index files, relative to the site root, and sizes.
pub struct SearchIndex {
    pub files: Vec<(String, String)>,
    /// Bytes fetched when the search page loads (meta.json).
    pub first_download: usize,
    /// Bytes of the largest query cost for one word: meta + largest shard + largest chunk.
    pub worst_single_word_query: usize,
    pub total: usize,
}

/// 32-bit FNV-1a over UTF-8 bytes (the same function is in site.js).
pub fn fnv1a(s: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in s.as_bytes() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// Lowercase words of 2–24 characters, stopwords removed.
pub fn tokens(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| {
            let n = w.chars().count();
            (2..=24).contains(&n)
        })
        .map(str::to_lowercase)
        .filter(|w| !STOPWORDS.contains(&w.as_str()))
}

fn base36(mut n: usize) -> String {
    const D: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    if n == 0 {
        return "0".into();
    }
    let mut v = Vec::new();
    while n > 0 {
        v.push(D[n % 36]);
        n /= 36;
    }
    v.reverse();
    String::from_utf8(v).unwrap_or_default()
}

/// Builds the index. Document numbers follow the order of `docs`.
pub fn build(docs: &[SearchDoc<'_>]) -> SearchIndex {
    let mut postings: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (n, d) in docs.iter().enumerate() {
        let words = tokens(d.title)
            .chain(tokens(d.id))
            .chain(tokens(d.group))
            .chain(tokens(d.text));
        for w in words {
            let list = postings.entry(w).or_default();
            if list.last() != Some(&n) {
                list.push(n);
            }
        }
    }
    let encoded: Vec<(String, String)> = postings
        .into_iter()
        .map(|(term, list)| {
            let mut prev = 0;
            let parts: Vec<String> = list
                .iter()
                .map(|&d| {
                    let s = base36(d - prev);
                    prev = d;
                    s
                })
                .collect();
            (term, parts.join(","))
        })
        .collect();
    let total_terms: usize = encoded.iter().map(|(t, p)| t.len() + p.len() + 6).sum();
    let shards = (total_terms / SHARD_TARGET + 1)
        .next_power_of_two()
        .clamp(1, 4096);
    let mut shard_maps: Vec<serde_json::Map<String, serde_json::Value>> =
        vec![serde_json::Map::new(); shards];
    for (term, p) in encoded {
        let s = (fnv1a(&term) as usize) & (shards - 1);
        shard_maps[s].insert(term, serde_json::Value::String(p));
    }

    let mut files = Vec::new();
    let meta = json!({
        "version": 1,
        "docs": docs.len(),
        "shards": shards,
        "chunk": CHUNK,
    })
    .to_string();
    let first_download = meta.len();
    files.push(("search/meta.json".to_owned(), meta));
    let mut max_shard = 0;
    for (i, m) in shard_maps.into_iter().enumerate() {
        let s = serde_json::Value::Object(m).to_string();
        max_shard = max_shard.max(s.len());
        files.push((format!("search/t-{i}.json"), s));
    }
    let mut max_chunk = 0;
    for (i, chunk) in docs.chunks(CHUNK).enumerate() {
        let rows: Vec<_> = chunk
            .iter()
            .map(|d| json!([d.id, d.title, d.group]))
            .collect();
        let s = serde_json::Value::Array(rows).to_string();
        max_chunk = max_chunk.max(s.len());
        files.push((format!("search/d-{i}.json"), s));
    }
    let total = files.iter().map(|(_, s)| s.len()).sum();
    SearchIndex {
        files,
        first_download,
        worst_single_word_query: first_download + max_shard + max_chunk,
        total,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_matches_reference_values() {
        assert_eq!(fnv1a(""), 0x811c_9dc5);
        assert_eq!(fnv1a("a"), 0xe40c_292c);
        assert_eq!(fnv1a("foobar"), 0xbf9c_f968);
    }

    #[test]
    fn postings_are_delta_encoded_in_their_shard() {
        let docs: Vec<SearchDoc> = (0..40)
            .map(|i| SearchDoc {
                id: "x.y",
                title: "t",
                group: "g",
                text: if i % 10 == 0 { "quorum lost" } else { "fine" },
            })
            .collect();
        let idx = build(&docs);
        let meta: serde_json::Value = serde_json::from_str(&idx.files[0].1).unwrap();
        let shards = meta["shards"].as_u64().unwrap() as usize;
        let s = (fnv1a("quorum") as usize) & (shards - 1);
        let shard = &idx
            .files
            .iter()
            .find(|f| f.0 == format!("search/t-{s}.json"))
            .unwrap()
            .1;
        let v: serde_json::Value = serde_json::from_str(shard).unwrap();
        assert_eq!(v["quorum"], "0,a,a,a");
        assert!(tokens("The Quorum, is-lost").eq(["quorum", "lost"].map(String::from)));
    }
}

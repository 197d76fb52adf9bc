//! The client-side full-text search index: a tiny `meta.json` (the only file loaded up front),
//! term shards chosen by a hash of the term (fetched on demand, one per query word) and document
//! chunks (fetched for the hits shown). The first download stays a few hundred bytes however many
//! runbooks there are; one query loads one shard per word and the chunks of its hits.
//!
//! Posting lists are ascending document numbers, delta-encoded in base 36 and joined by `,`.
//! `site.js` implements the same tokenizer and FNV-1a hash; keep both in step.

// foldhash rather than std's SipHash: the postings map takes a lookup per word of every runbook
// (about 2 million at 5,000 runbooks); the term order in the files comes from sorting, not hashing.
use foldhash::HashMap;

use rayon::prelude::*;

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

/// Calls `f` with every token of `text`, as [`tokens`] yields them, without allocating a
/// string per word (ASCII words are lowercased into one reused buffer).
fn for_each_token(text: &str, buf: &mut String, mut f: impl FnMut(&str)) {
    for w in text.split(|c: char| !c.is_alphanumeric()) {
        let n = if w.is_ascii() {
            w.len()
        } else {
            w.chars().count()
        };
        if !(2..=24).contains(&n) {
            continue;
        }
        let lower: &str = if w.is_ascii() {
            buf.clear();
            buf.extend(w.bytes().map(|b| char::from(b.to_ascii_lowercase())));
            buf
        } else {
            *buf = w.to_lowercase();
            buf
        };
        if !STOPWORDS.contains(&lower) {
            f(lower);
        }
    }
}

/// Appends `n` in base 36.
fn push_base36(out: &mut String, mut n: usize) {
    const D: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = D[n % 36];
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.extend(digits[i..].iter().map(|&b| char::from(b)));
}

/// Documents whose postings one task collects.
const BLOCK: usize = 256;

/// A JSON object of string values, serialised in the order given.
struct Shard<'a>(Vec<(&'a str, &'a str)>);

impl serde::Serialize for Shard<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().copied())
    }
}

/// Builds the index. Document numbers follow the order of `docs`.
///
/// Postings are collected per block of documents in parallel (a hash map per block, no string
/// allocated for a word already seen) and appended block after block, which keeps every list
/// ascending; terms are then sorted, so the files are the same whatever the thread count.
pub fn build(docs: &[SearchDoc<'_>]) -> SearchIndex {
    let blocks: Vec<HashMap<String, Vec<usize>>> = docs
        .par_chunks(BLOCK)
        .enumerate()
        .map(|(b, chunk)| {
            let mut map: HashMap<String, Vec<usize>> = HashMap::default();
            let mut buf = String::new();
            for (k, d) in chunk.iter().enumerate() {
                let n = b * BLOCK + k;
                for text in [d.title, d.id, d.group, d.text] {
                    for_each_token(text, &mut buf, |w| match map.get_mut(w) {
                        Some(list) => {
                            if list.last() != Some(&n) {
                                list.push(n);
                            }
                        }
                        None => {
                            map.insert(w.to_owned(), vec![n]);
                        }
                    });
                }
            }
            map
        })
        .collect();
    let mut blocks = blocks.into_iter();
    let mut postings = blocks.next().unwrap_or_default();
    for block in blocks {
        for (term, list) in block {
            postings.entry(term).or_default().extend(list);
        }
    }
    let mut encoded: Vec<(String, String)> = postings
        .into_par_iter()
        .map(|(term, list)| {
            let mut out = String::with_capacity(list.len() * 3);
            let mut prev = 0;
            for (i, &d) in list.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_base36(&mut out, d - prev);
                prev = d;
            }
            (term, out)
        })
        .collect();
    encoded.par_sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let total_terms: usize = encoded.iter().map(|(t, p)| t.len() + p.len() + 6).sum();
    let shards = (total_terms / SHARD_TARGET + 1)
        .next_power_of_two()
        .clamp(1, 4096);
    let mut shard_terms: Vec<Shard<'_>> = (0..shards).map(|_| Shard(Vec::new())).collect();
    for (term, p) in &encoded {
        let s = (fnv1a(term) as usize) & (shards - 1);
        shard_terms[s].0.push((term, p));
    }
    let shard_files: Vec<String> = shard_terms
        .par_iter()
        .map(|m| serde_json::to_string(m).unwrap_or_default())
        .collect();

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
    for (i, s) in shard_files.into_iter().enumerate() {
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
    fn tokens_without_allocation_match_tokens() {
        let text = "The Quorum, is-lost: ΣΊΣΥΦΟΣ Straße ÅRE x y2 AB ab \
                    averyveryverylongwordthatisskipped ünïcödé-wörds etcd3 OF";
        let mut got = Vec::new();
        let mut buf = String::new();
        for_each_token(text, &mut buf, |w| got.push(w.to_owned()));
        assert_eq!(got, tokens(text).collect::<Vec<_>>());
        let mut b = String::new();
        for n in [0, 9, 10, 35, 36, 1295, 1296, 5000] {
            push_base36(&mut b, n);
            b.push(' ');
        }
        assert_eq!(b, "0 9 a z 10 zz 100 3uw ");
    }

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

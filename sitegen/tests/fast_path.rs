//! The sanitiser's fast path against ammonia over the benchmark generator's runbooks
//! (`bench/gen_runbooks.py`, the markdown B5 builds): every one of them has no raw HTML, so
//! every one must take the direct writer and come out byte for byte as ammonia writes it.

use std::path::Path;
use std::process::Command;

#[test]
fn generated_runbooks_take_the_fast_path_with_ammonias_output() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("b5");
    let status = Command::new("python3")
        .arg(root.join("bench/gen_runbooks.py"))
        .arg(&out)
        .arg("400")
        .status()
        .expect("python3 is needed to run bench/gen_runbooks.py");
    assert!(status.success(), "gen_runbooks.py failed: {status}");
    let mut n = 0;
    for e in std::fs::read_dir(out.join("repo/runbooks")).expect("generated runbooks") {
        let p = e.expect("entry").path();
        if p.extension().is_none_or(|x| x != "md") {
            continue;
        }
        let md = std::fs::read_to_string(&p).expect("runbook");
        let fast = sitegen::markdown::render(&md);
        let reference = sitegen::markdown::render_with_ammonia(&md);
        assert!(!fast.via_ammonia, "{} went through ammonia", p.display());
        assert_eq!(fast.html, reference.html, "{}", p.display());
        assert_eq!(fast.toc.len(), reference.toc.len());
        n += 1;
    }
    assert!(n >= 400, "only {n} runbooks generated");
}

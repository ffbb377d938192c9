//! The checked-in shell completions (`completions/`) and man pages (`man/`)
//! are what the binaries' clap definitions generate today.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::path::Path;

fn binaries() -> Vec<String> {
    let toml =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap();
    toml.lines()
        .filter_map(|l| l.strip_prefix("name = \"zcow-"))
        .map(|rest| format!("zcow-{}", rest.trim_end_matches('"')))
        // zcow-ublk exists only with `--features ublk` (.ci/run builds it).
        .filter(|b| b != "zcow-ublk" || cfg!(feature = "ublk"))
        .collect()
}

/// The checked-in files of the binaries built in this configuration.
fn of_built(files: BTreeMap<String, Vec<u8>>, bins: &[String]) -> BTreeMap<String, Vec<u8>> {
    let stem = |f: &str| {
        let f = f.trim_start_matches('_');
        f.split('.').next().unwrap_or("").to_string()
    };
    files
        .into_iter()
        .filter(|(f, _)| {
            let st = stem(f);
            bins.iter().any(|b| {
                st == *b
                    || st
                        .strip_prefix(b.as_str())
                        .is_some_and(|r| r.starts_with('-'))
            })
        })
        .collect()
}

fn files_in(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

const STALE: &str = "stale: run scripts/gen-cli-docs.sh and commit completions/ and man/";

#[test]
fn completions_and_man_pages_are_current() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bins = binaries();
    assert!(bins.len() >= 3, "{bins:?}");
    let mut want_completions = BTreeMap::new();
    let man = tmp();
    for b in &bins {
        for (kind, file) in [
            ("bash", format!("{b}.bash")),
            ("zsh", format!("_{b}")),
            ("fish", format!("{b}.fish")),
        ] {
            let o = run(s(&bin(b)), &["--generate", kind]);
            assert!(o.status.success(), "{b} --generate {kind}");
            assert!(!o.stdout.is_empty());
            want_completions.insert(file, o.stdout);
        }
        let o = run(s(&bin(b)), &["--generate", "man", s(man.path())]);
        assert!(o.status.success(), "{b} --generate man");
    }
    let have = of_built(files_in(&root.join("completions")), &bins);
    assert_eq!(
        have.keys().collect::<Vec<_>>(),
        want_completions.keys().collect::<Vec<_>>(),
        "{STALE}"
    );
    for (name, bytes) in &want_completions {
        assert!(have[name] == *bytes, "completions/{name} {STALE}");
    }
    let want_man = files_in(man.path());
    let have_man = of_built(files_in(&root.join("man")), &bins);
    assert_eq!(
        have_man.keys().collect::<Vec<_>>(),
        want_man.keys().collect::<Vec<_>>(),
        "{STALE}"
    );
    for (name, bytes) in &want_man {
        assert!(have_man[name] == *bytes, "man/{name} {STALE}");
    }
    // Every binary has a page that names it.
    for b in &bins {
        let page = String::from_utf8_lossy(&have_man[&format!("{b}.1")]).into_owned();
        assert!(page.contains(&format!(".TH {b} 1")), "{page}");
    }
}

#[test]
fn generate_rejects_unknown_kinds() {
    let o = run(s(&bin("zcow-img")), &["--generate", "tcsh"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--generate takes one of bash, zsh, fish, man")
    );
}

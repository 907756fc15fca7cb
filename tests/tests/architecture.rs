//! The "Architecture invariant:" lines of ARCHITECTURE.md, enforced.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}

fn read(p: &str) -> String {
    std::fs::read_to_string(root().join(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
}

fn sources(dir: &str) -> Vec<(PathBuf, String)> {
    fn walk(d: &Path, out: &mut Vec<(PathBuf, String)>) {
        for e in std::fs::read_dir(d).expect("dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push((p.clone(), std::fs::read_to_string(&p).expect("read")));
            }
        }
    }
    let mut out = Vec::new();
    walk(&root().join(dir), &mut out);
    out
}

fn dependencies(manifest: &str) -> String {
    // The [dependencies] table only (dev-dependencies may use anything).
    let text = read(manifest);
    let start = text.find("[dependencies]").expect("[dependencies]");
    let rest = &text[start + 1..];
    let end = rest.find("\n[").map(|i| i + 1).unwrap_or(rest.len());
    rest[..end].to_owned()
}

#[test]
fn common_does_no_io() {
    let deps = dependencies("common/Cargo.toml");
    for forbidden in ["tokio", "reqwest", "sled", "axum", "rumqttc", "tract"] {
        assert!(
            !deps.contains(forbidden),
            "common must not depend on {forbidden}"
        );
    }
    for (path, text) in sources("common/src") {
        for forbidden in [
            "std::fs",
            "std::net",
            "SystemTime::now",
            "std::env",
            "std::process",
        ] {
            assert!(
                !text.contains(forbidden),
                "{} uses {forbidden}: common does no I/O",
                path.display()
            );
        }
    }
}

#[test]
fn hub_never_depends_on_agent_and_agent_never_on_hub() {
    assert!(!dependencies("hub/Cargo.toml").contains("edgefleet-agent"));
    assert!(
        !read("hub/Cargo.toml").contains("edgefleet-agent"),
        "not even as a dev-dependency"
    );
    assert!(!dependencies("agent/Cargo.toml").contains("edgefleet-hub"));
}

#[test]
fn every_crate_forbids_unsafe_code() {
    for lib in [
        "common/src/lib.rs",
        "agent/src/lib.rs",
        "hub/src/lib.rs",
        "tests/src/lib.rs",
    ] {
        assert!(read(lib).contains("#![forbid(unsafe_code)]"), "{lib}");
    }
}

#[test]
fn binaries_are_thin() {
    for (bin, max_lines) in [
        ("agent/src/main.rs", 120),
        ("hub/src/bin/edgefleet-hub.rs", 120),
        ("hub/src/bin/edgefleet.rs", 40),
    ] {
        let n = read(bin).lines().count();
        assert!(
            n <= max_lines,
            "{bin} has {n} lines: move logic into the library"
        );
    }
}

/// `cargo tree`'s answer to "does `package` depend on `krate`" over normal edges (what ships).
fn depends_on(package: &str, krate: &str) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO"))
        .current_dir(root())
        .args([
            "tree",
            "--offline",
            "-e",
            "normal",
            "-p",
            package,
            "-i",
            krate,
        ])
        .output()
        .expect("cargo tree");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let absent = !out.status.success() && text.contains("did not match any packages");
    (!absent, text)
}

/// Native onnxruntime is the benchmark's yardstick (tests/benches/onnx_ort.rs), never part of
/// what ships.
#[test]
fn shipped_binaries_do_not_link_onnxruntime() {
    for package in ["edgefleet-agent", "edgefleet-hub", "edgefleet-common"] {
        for krate in ["ort", "ort-sys"] {
            let (found, text) = depends_on(package, krate);
            assert!(!found, "{package} depends on {krate}:\n{text}");
        }
    }
}

/// The shipped binaries carry one TLS crypto provider, rustls' `ring`: nothing in the agent's or
/// the hub's normal dependency graph may bring aws-lc-rs back (it cost the agent ~0.7 MiB).
#[test]
fn shipped_binaries_carry_no_aws_lc() {
    for package in ["edgefleet-agent", "edgefleet-hub"] {
        let (found, text) = depends_on(package, "aws-lc-rs");
        assert!(!found, "{package} depends on aws-lc-rs:\n{text}");
        let (found, text) = depends_on(package, "ring");
        assert!(found, "{package} has no ring provider:\n{text}");
    }
}

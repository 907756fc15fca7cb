//! The "Architecture invariant:" lines of ARCHITECTURE.md, enforced.

use std::path::{Path, PathBuf};

#[path = "architecture/modgraph.rs"]
mod modgraph;

use modgraph::{Crate, Root, SourceFile};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}

fn read(p: &str) -> String {
    std::fs::read_to_string(root().join(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// A crate's `src/`, parsed.
fn load(krate: &str) -> Crate {
    Crate::load(&root().join(krate).join("src"), &format!("{krate}/src"))
}

fn dependencies(manifest: &str) -> String {
    // The [dependencies] table only (dev-dependencies may use anything).
    let text = read(manifest);
    let start = text.find("[dependencies]").expect("[dependencies]");
    let rest = &text[start + 1..];
    let end = rest.find("\n[").map(|i| i + 1).unwrap_or(rest.len());
    rest[..end].to_owned()
}

/// The workspace crates (`edgefleet-*`) among a manifest's dependencies.
fn our_dependencies(manifest: &str) -> Vec<String> {
    dependencies(manifest)
        .lines()
        .filter_map(|l| l.trim().split(['.', ' ', '=']).next())
        .filter(|name| name.starts_with("edgefleet-"))
        .map(str::to_owned)
        .collect()
}

/// Paths that do I/O or read a clock: what `common` never names.
const IO_PATHS: [&[&str]; 6] = [
    &["std", "fs"],
    &["std", "net"],
    &["std", "env"],
    &["std", "process"],
    &["std", "time", "SystemTime", "now"],
    &["std", "time", "Instant", "now"],
];

/// Crates that do I/O (or pull a runtime or an inference engine in).
const IO_CRATES: [&str; 8] = [
    "tokio", "reqwest", "sled", "axum", "hyper", "rumqttc", "rumqttd", "tract",
];

/// What a file names that does I/O: `file: path (= resolved)`.
fn io_uses(file: &SourceFile) -> Vec<String> {
    file.refs
        .iter()
        .filter(|r| {
            IO_PATHS.iter().any(|p| r.starts_with(p))
                || r.path.first().is_some_and(|c| {
                    IO_CRATES
                        .iter()
                        .any(|k| c == k || (*k == "tract" && c.starts_with("tract_")))
                })
        })
        .map(|r| format!("{}: {r}", file.file.display()))
        .collect()
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
    let common = load("common");
    assert!(
        common.files.len() > 10,
        "common's sources were not found: {:?}",
        common.files.iter().map(|f| &f.file).collect::<Vec<_>>()
    );
    let found: Vec<String> = common.files.iter().flat_map(io_uses).collect();
    assert!(
        found.is_empty(),
        "common does no I/O and reads no clock (the caller passes `now`), but:\n{}",
        found.join("\n")
    );
}

/// No two top-level modules of the hub, the agent or the simulator reach each other through
/// `crate::` paths (re-exports followed; the crate roots, binaries and test-only code aside).
#[test]
fn no_import_cycles_between_modules() {
    let mut found = Vec::new();
    for krate in ["hub", "agent", "sim"] {
        let c = load(krate);
        let graph = c.top_level_graph();
        assert!(graph.len() > 3, "{krate}: no modules found: {graph:?}");
        for cycle in modgraph::cycles(&graph) {
            found.push(format!("{krate}: {cycle}"));
        }
    }
    assert!(
        found.is_empty(),
        "import cycles between top-level modules (each edge with a reference that makes it):\n{}",
        found.join("\n")
    );
}

/// The hub's layers; every top-level module is in one. Transports (`http`, `mqtt`) and
/// `drivers` never reference each other; the domain (`hub`, `error`, `store`, `registry`,
/// `devices`, `desired`, `telemetry`, `rollout`) names no HTTP or MQTT crate and references no
/// transport, driver or the CLI; the base (`config`, `keyfile`, `reference`, `lifecycle`)
/// references nothing but the base; nothing references the CLI (`cli`) but itself, and only
/// test-only code references the test support (`testkit`). Test-only code aside.
#[test]
fn hub_layers() {
    const TRANSPORTS: [&str; 3] = ["http", "mqtt", "drivers"];
    const DOMAIN: [&str; 9] = [
        "hub",
        "error",
        "store",
        "registry",
        "devices",
        "desired",
        "telemetry",
        "rollout",
        "retrain",
    ];
    /// What every layer may use: configuration, key files, reference profiles, process
    /// plumbing.
    const BASE: [&str; 4] = ["config", "keyfile", "reference", "lifecycle"];
    /// The admin CLI: a client of the HTTP API, plus offline commands.
    const CLI: [&str; 1] = ["cli"];
    /// `#[cfg(test)]` helpers of the domain's unit tests.
    const TEST_SUPPORT: [&str; 1] = ["testkit"];
    const LAYERS: [(&str, &[&str]); 5] = [
        ("domain", &DOMAIN),
        ("transports and drivers", &TRANSPORTS),
        ("base", &BASE),
        ("cli", &CLI),
        ("test support", &TEST_SUPPORT),
    ];
    const WIRE_CRATES: [&str; 3] = ["axum", "rumqttc", "rumqttd"];
    let hub = load("hub");
    let tops = hub.declared_top_modules();
    let mut problems = Problems::default();
    for m in LAYERS
        .iter()
        .flat_map(|(_, ms)| ms.iter())
        .filter(|m| !tops.contains(**m))
    {
        problems.missing(format!("hub/src/{m}.rs or hub/src/{m}/mod.rs"));
    }
    for m in tops
        .iter()
        .filter(|m| !LAYERS.iter().any(|(_, ms)| ms.contains(&m.as_str())))
    {
        problems.missing(format!(
            "a layer for hub/src/{m} (a top-level module in none: add it to one in hub_layers)"
        ));
    }
    for f in hub.lib_modules() {
        let Some(top) = f.top() else { continue };
        for r in f.refs.iter().filter(|r| !r.test) {
            let to = r.crate_top();
            if let Some(to) = to.filter(|t| *t != top && TEST_SUPPORT.contains(t)) {
                problems.add(f, format!("`{top}` references `{to}` outside tests"), r);
            }
            if let Some(to) = to.filter(|t| *t != top && CLI.contains(t)) {
                problems.add(f, format!("`{top}` references the CLI `{to}`"), r);
            }
            if BASE.contains(&top)
                && let Some(to) = to.filter(|t| tops.contains(*t) && !BASE.contains(t))
            {
                problems.add(f, format!("base module `{top}` references `{to}`"), r);
            }
            if TRANSPORTS.contains(&top)
                && let Some(to) = to.filter(|t| *t != top && TRANSPORTS.contains(t))
            {
                problems.add(
                    f,
                    format!("`{top}` references `{to}` (transports and drivers stay apart)"),
                    r,
                );
            }
            if DOMAIN.contains(&top) {
                if let Some(c) = r.path.first().filter(|c| WIRE_CRATES.contains(&c.as_str())) {
                    problems.add(f, format!("domain module `{top}` names {c}"), r);
                }
                if let Some(to) = to.filter(|t| TRANSPORTS.contains(t)) {
                    problems.add(f, format!("domain module `{top}` references `{to}`"), r);
                }
            }
        }
    }
    problems.check("hub layering");
}

/// The agent's layers: the active-model set knows nothing of serving, telemetry or updates (a
/// loaded model, in the engine crate, knows nothing of the agent at all). Test-only code aside.
#[test]
fn agent_layers() {
    const RULES: [(&str, &[&str]); 1] = [("active", &["serve", "telemetry", "update"])];
    let agent = load("agent");
    let tops = agent.top_modules();
    let mut problems = Problems::default();
    for (m, _) in RULES.iter().filter(|(m, _)| !tops.contains(*m)) {
        problems.missing(format!("agent/src/{m}.rs or agent/src/{m}/mod.rs"));
    }
    for f in agent.lib_modules() {
        let Some((top, banned)) = RULES.iter().find(|(m, _)| f.top() == Some(*m)) else {
            continue;
        };
        for r in f.refs.iter().filter(|r| !r.test) {
            if let Some(to) = r.crate_top().filter(|t| banned.contains(t)) {
                problems.add(f, format!("`{top}` references `{to}`"), r);
            }
        }
    }
    problems.check("agent layering");
}

/// Rule violations, grouped by file and rule (a file naming `StatusCode::X` ten times is one
/// line, with its first few paths).
#[derive(Default)]
struct Problems {
    missing: Vec<String>,
    found: std::collections::BTreeMap<(String, String), Vec<String>>,
}

impl Problems {
    fn missing(&mut self, what: String) {
        self.missing.push(format!("missing module: {what}"));
    }

    fn add(&mut self, f: &SourceFile, rule: String, r: &modgraph::Ref) {
        let paths = self
            .found
            .entry((f.file.display().to_string(), rule))
            .or_default();
        let r = r.to_string();
        if !paths.contains(&r) {
            paths.push(r);
        }
    }

    fn check(self, what: &str) {
        let mut lines = self.missing;
        for ((file, rule), paths) in self.found {
            let more = match paths.len() {
                n if n > 3 => format!(" (and {} more)", n - 3),
                _ => String::new(),
            };
            let shown: Vec<&str> = paths.iter().take(3).map(String::as_str).collect();
            lines.push(format!("{file}: {rule}: {}{more}", shown.join(", ")));
        }
        assert!(lines.is_empty(), "{what}:\n{}", lines.join("\n"));
    }
}

/// The engine knows a model and nothing of who runs it: of our crates it depends on `common`
/// alone, so the agent (serving) and the hub (scoring candidates) judge a model by the same
/// code and neither drags the other in.
#[test]
fn the_engine_depends_on_common_only() {
    let ours = our_dependencies("engine/Cargo.toml");
    assert_eq!(
        ours,
        ["edgefleet-common"],
        "the engine's workspace dependencies"
    );
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

/// The simulator runs the agent's code against a real hub: it may depend on the agent and
/// common, never on the hub (not in its manifest, not in a path its sources name), or it would
/// test the hub against the hub's own idea of a device.
#[test]
fn sim_depends_on_agent_and_common_never_on_hub() {
    const ALLOWED: [&str; 2] = ["edgefleet-agent", "edgefleet-common"];
    let ours = our_dependencies("sim/Cargo.toml");
    assert!(
        ours.iter().any(|c| c == "edgefleet-agent")
            && ours.iter().all(|c| ALLOWED.contains(&c.as_str())),
        "the sim's workspace dependencies: {ours:?}"
    );
    assert!(
        !read("sim/Cargo.toml").contains("edgefleet-hub"),
        "not even as a dev-dependency"
    );
    // Its binary names its own library.
    let allowed: Vec<String> = ALLOWED
        .iter()
        .chain(&["edgefleet-sim"])
        .map(|c| c.replace('-', "_"))
        .collect();
    let sim = load("sim");
    let found: Vec<String> = sim
        .files
        .iter()
        .flat_map(|f| {
            f.refs
                .iter()
                .filter(|r| {
                    r.path
                        .first()
                        .is_some_and(|c| c.starts_with("edgefleet_") && !allowed.contains(c))
                })
                .map(move |r| format!("{}: {r}", f.file.display()))
        })
        .collect();
    assert!(
        found.is_empty(),
        "the sim names a workspace crate other than the agent and common:\n{}",
        found.join("\n")
    );
    assert!(
        sim.files
            .iter()
            .flat_map(|f| &f.refs)
            .any(|r| r.starts_with(&["edgefleet_agent", "update"])),
        "the sim's sources were not parsed"
    );
}

#[test]
fn every_crate_forbids_unsafe_code() {
    for lib in [
        "common/src/lib.rs",
        "engine/src/lib.rs",
        "agent/src/lib.rs",
        "hub/src/lib.rs",
        "sim/src/lib.rs",
        "tests/src/lib.rs",
        "trainer/src/lib.rs",
        "demo/src/lib.rs",
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
        ("sim/src/main.rs", 40),
        ("trainer/src/main.rs", 60),
        ("demo/src/main.rs", 40),
    ] {
        let n = read(bin).lines().count();
        assert!(
            n <= max_lines,
            "{bin} has {n} lines: move logic into the library"
        );
    }
}

/// The demo drives the hub, agents and simulator through their public entry points and APIs,
/// as a user would; nothing we ship depends on it, so it can never become a back door into either.
#[test]
fn nothing_shipped_depends_on_the_demo() {
    for package in [
        "edgefleet-agent",
        "edgefleet-hub",
        "edgefleet-common",
        "edgefleet-sim",
    ] {
        let (found, text) = depends_on(package, "edgefleet-demo");
        assert!(!found, "{package} depends on the demo:\n{text}");
    }
    let ours = our_dependencies("demo/Cargo.toml");
    assert_eq!(
        ours,
        [
            "edgefleet-agent",
            "edgefleet-common",
            "edgefleet-hub",
            "edgefleet-sim"
        ],
        "the demo's workspace dependencies"
    );
}

/// The reference trainer is a separate program the hub runs through the trainer contract
/// (docs/trainers.md): it shares the wire contract's types and nothing else of ours, so it can
/// be swapped for any other trainer, and the agent never carries a training library.
#[test]
fn the_trainer_depends_on_common_only_and_nothing_ships_it() {
    let ours = our_dependencies("trainer/Cargo.toml");
    assert_eq!(
        ours,
        ["edgefleet-common"],
        "the trainer's workspace dependencies"
    );
    for package in ["edgefleet-agent", "edgefleet-hub"] {
        let (found, text) = depends_on(package, "forust-ml");
        assert!(!found, "{package} depends on forust-ml:\n{text}");
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
    // Not in the graph at all, or only over other edges (a dev-dependency: "nothing to print").
    let absent = (!out.status.success() && text.contains("did not match any packages"))
        || text.contains("nothing to print");
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

/// The extractor itself, on sources written here.
mod extractor {
    use super::*;

    fn file(module: &[&str], text: &str) -> SourceFile {
        modgraph::parse(
            Path::new("x.rs"),
            Root::Lib,
            module.iter().map(|m| (*m).to_owned()).collect(),
            text,
        )
    }

    fn resolved(f: &SourceFile) -> Vec<String> {
        f.refs.iter().map(|r| r.resolved()).collect()
    }

    #[test]
    fn module_paths_come_from_file_paths() {
        for (path, root, module) in [
            ("lib.rs", Root::Lib, vec![]),
            ("main.rs", Root::Bin("main".into()), vec![]),
            ("store.rs", Root::Lib, vec!["store"]),
            ("store/mod.rs", Root::Lib, vec!["store"]),
            ("store/keys.rs", Root::Lib, vec!["store", "keys"]),
            ("bin/edgefleet.rs", Root::Bin("edgefleet".into()), vec![]),
            ("bin/tool/main.rs", Root::Bin("tool".into()), vec![]),
            ("bin/tool/x.rs", Root::Bin("tool".into()), vec!["x"]),
        ] {
            let module: Vec<String> = module.into_iter().map(str::to_owned).collect();
            assert_eq!(
                modgraph::module_of(Path::new(path)),
                (root, module),
                "{path}"
            );
        }
    }

    #[test]
    fn uses_aliases_super_self_and_macros_are_resolved() {
        let f = file(
            &["a", "b"],
            r#"
            use std::{fs};
            use std::time::Instant;
            use crate::{c, d::e as f};
            use super::g::{self, H};
            use edgefleet_common::telemetry;
            use telemetry::topic;
            mod m {
                pub fn x() { super::super::g::go() }
            }
            fn run() {
                let _ = fs::read("x");
                let _t = Instant::now();
                tracing::info!(elapsed = ?Instant::now(), "{}", crate::k::now());
                f::go(); g::go(); H::new(); self::m::x(); super::super::z::y(); m::x();
                let _: Vec<::tokio::fs::File> = vec![];
                topic::ack("d");
                format!("{}", Vec::<u8>::new().len());
            }
            #[cfg(test)]
            mod tests {
                use super::*;
                fn t() { axum::serve(); }
            }
            "#,
        );
        let got = resolved(&f);
        for want in [
            "std::fs",
            "std::fs::read",
            "std::time::Instant",
            "std::time::Instant::now",
            "tracing::info",
            "crate::k::now",
            "crate::c",
            "crate::d::e",
            "crate::d::e::go",
            "crate::a::g",
            "crate::a::g::go",
            "crate::a::g::H::new",
            "crate::a::b::m::x",
            "crate::z::y",
            "tokio::fs::File",
            "edgefleet_common::telemetry::topic::ack",
        ] {
            assert!(got.iter().any(|g| g == want), "{want} not in {got:#?}");
        }
        // Instant::now twice: in code and inside the macro's tokens.
        assert_eq!(
            got.iter()
                .filter(|g| *g == "std::time::Instant::now")
                .count(),
            2,
            "{got:#?}"
        );
        // `Vec::<u8>::new` inside a macro is not a crate called `new`.
        assert!(!got.iter().any(|g| g == "new"), "{got:#?}");
        let axum: Vec<&modgraph::Ref> =
            f.refs.iter().filter(|r| r.starts_with(&["axum"])).collect();
        assert!(
            axum.len() == 1 && axum[0].test,
            "test-only code is marked: {axum:?}"
        );
        assert!(
            f.refs
                .iter()
                .filter(|r| !r.test)
                .all(|r| !r.written.starts_with("axum")),
            "{got:#?}"
        );
    }

    #[test]
    fn the_io_check_sees_grouped_imports_aliases_and_macros() {
        let f = file(
            &["sketch"],
            r#"
            use std::{fs};
            use std::time::{Duration, Instant, SystemTime as Clock};
            fn a() -> Duration { let t = Instant::now(); t.elapsed() }
            fn b() { tracing::debug!(at = ?Clock::now()); }
            fn c() { let _ = std::env::var("X"); }
            fn d(i: Instant) -> Instant { i }
            "#,
        );
        let found = io_uses(&f);
        for want in [
            "x.rs: std::fs",
            "x.rs: Instant::now (= std::time::Instant::now)",
            "x.rs: Clock::now (= std::time::SystemTime::now)",
            "x.rs: std::env::var",
        ] {
            assert!(found.iter().any(|g| g == want), "{want} not in {found:#?}");
        }
        // An `Instant` passed in is no clock reading; `Duration` is no I/O.
        assert_eq!(found.len(), 4, "{found:#?}");
        let clean = file(
            &["x"],
            "fn now(at: u64) -> u64 { at }\nuse core::time::Duration;",
        );
        assert!(io_uses(&clean).is_empty(), "{:#?}", io_uses(&clean));
    }

    #[test]
    fn crate_paths_follow_reexports_to_the_defining_module() {
        let lib = modgraph::parse(
            Path::new("lib.rs"),
            Root::Lib,
            vec![],
            "pub mod config; pub mod api; pub mod mqtt; pub use config::HubConfig; use mqtt::Rejected as R;",
        );
        let api = file(
            &["api"],
            "fn f() { crate::HubConfig::default(); crate::R::ALL; crate::now(); }",
        );
        let c = Crate::from_files(vec![lib, api, file(&["config"], ""), file(&["mqtt"], "")]);
        let api = &c.files[1];
        let got = resolved(api);
        for want in [
            "crate::config::HubConfig::default",
            "crate::mqtt::Rejected::ALL",
            "crate::now",
        ] {
            assert!(got.iter().any(|g| g == want), "{want} not in {got:#?}");
        }
        let graph = c.top_level_graph();
        assert_eq!(
            graph["api"].keys().collect::<Vec<_>>(),
            ["config", "mqtt"],
            "{graph:#?}"
        );
    }

    #[test]
    fn cycles_are_found_and_named() {
        let lib = modgraph::parse(
            Path::new("lib.rs"),
            Root::Lib,
            vec![],
            "mod a; mod b; mod c; mod d;",
        );
        let files = vec![
            lib,
            file(&["a"], "use crate::b::X;"),
            file(&["b"], "fn f() { super::a::g(); }"),
            file(&["c"], "use crate::a;"),
            file(&["d"], "#[cfg(test)] mod tests { use crate::c::Y; }"),
            file(&["c", "inner"], "fn f() { crate::d::z(); }"),
        ];
        let c = Crate::from_files(files);
        let cycles = modgraph::cycles(&c.top_level_graph());
        assert_eq!(cycles.len(), 1, "{cycles:#?}");
        assert!(
            cycles[0].starts_with("a -> b -> a\n    a -> b: x.rs: crate::b::X\n    b -> a: x.rs: super::a::g (= crate::a::g)"),
            "{}",
            cycles[0]
        );
    }
}

//! Writes the demo/test models: `model.onnx` and `spec.json` (with smoke tests whose expected
//! outputs are computed in plain Rust) for `edgefleet sign`.

use std::path::PathBuf;

use anyhow::Context;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: edgefleet-testmodel OUT_DIR [--name NAME] [--version N] [--seed S] [--broken-smoke-test]\n\
                 Writes OUT_DIR/model.onnx (an 8-feature demand MLP) and OUT_DIR/spec.json for `edgefleet sign`.";
    let mut out: Option<PathBuf> = None;
    let (mut name, mut version, mut seed, mut broken) = ("demand".to_owned(), 1u64, 1u64, false);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--name" => name = args.next().context(usage)?,
            "--version" => {
                version = args
                    .next()
                    .context(usage)?
                    .parse()
                    .context("--version: a positive integer")?
            }
            "--seed" => {
                seed = args
                    .next()
                    .context(usage)?
                    .parse()
                    .context("--seed: an integer")?
            }
            "--broken-smoke-test" => broken = true,
            "-h" | "--help" => {
                println!("{usage}");
                return Ok(());
            }
            other if out.is_none() && !other.starts_with('-') => out = Some(other.into()),
            other => anyhow::bail!("unexpected argument {other:?}\n{usage}"),
        }
    }
    let out = out.context(usage)?;
    std::fs::create_dir_all(&out)?;
    let mlp = edgefleet_tests::Mlp::new(seed);
    std::fs::write(out.join("model.onnx"), mlp.to_onnx())?;
    let spec = edgefleet_tests::spec_json(&name, version, &mlp, broken);
    std::fs::write(out.join("spec.json"), serde_json::to_vec_pretty(&spec)?)?;
    println!(
        "wrote {}/model.onnx and spec.json ({name} v{version}, seed {seed})",
        out.display()
    );
    Ok(())
}

//! `plugin keygen`, `plugin sign` and `plugin inspect`: the author's and the
//! shop's side of signed plugins (`connectors::trust`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::connectors::trust::{self, ManifestFields, TrustedKey};

#[derive(Debug, Args)]
pub struct SignArgs {
    /// The plugin (`.wasm` component). Writes `<stem>.manifest.toml` and
    /// `<stem>.manifest.toml.minisig` beside it, replacing earlier ones.
    pub wasm: PathBuf,
    /// The unencrypted minisign secret key (`plugin keygen`, or `minisign -G -W`).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// The plugin's name [default: the wasm's file stem].
    #[arg(long)]
    pub name: Option<String>,
    /// The plugin's version, e.g. 1.2.0.
    #[arg(long)]
    pub version: String,
    /// Who publishes it, as the shop's status page shows it.
    #[arg(long)]
    pub publisher: String,
    /// A host the plugin calls (repeatable), as in `allowed_hosts`:
    /// `host`, `*.suffix`, either with `:port`.
    #[arg(long = "host", value_name = "HOST")]
    pub hosts: Vec<String>,
    /// The plugin uses its KV store.
    #[arg(long)]
    pub kv: bool,
    /// The most linear memory the plugin needs, in MiB.
    #[arg(long, value_name = "MB", default_value_t = 32)]
    pub memory_mb: u64,
}

/// Writes `<out>.key` and `<out>.pub` (e.g. `keys/acme`) and prints the
/// public key line a shop puts in its config.
pub fn keygen(out: &Path) -> anyhow::Result<()> {
    let name = out
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{}: expected a path like keys/acme", out.display()))?;
    let dir = match out.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let keys = trust::keygen(dir, name)?;
    println!(
        "secret key  {} (keep it private)",
        keys.secret_key.display()
    );
    println!("public key  {}", keys.public_key.display());
    println!("key id      {}", keys.key_id);
    println!(
        "Shops that trust this publisher add this public key to their config:\n  {}",
        keys.public_key_line
    );
    Ok(())
}

pub fn sign(args: &SignArgs) -> anyhow::Result<()> {
    let name = match &args.name {
        Some(name) => name.clone(),
        None => args
            .wasm
            .file_stem()
            .and_then(|s| s.to_str())
            .map(str::to_string)
            .with_context(|| {
                format!(
                    "{}: cannot take a name from the file name, give --name",
                    args.wasm.display()
                )
            })?,
    };
    let fields = ManifestFields {
        name,
        version: args.version.clone(),
        publisher: args.publisher.clone(),
        allowed_hosts: args.hosts.clone(),
        kv: args.kv,
        memory_mb: args.memory_mb,
    };
    let signed = trust::sign(&args.wasm, &args.key, &fields)?;
    println!("signed      {}", args.wasm.display());
    println!("sha256      {}", signed.wasm_sha256);
    println!("manifest    {}", signed.manifest.display());
    println!("signature   {}", signed.signature.display());
    println!("key id      {}", signed.key_id);
    Ok(())
}

/// Prints what the plugin's manifest says and whether it is signed by one
/// of `trusted` (each a public key line or a `.pub` path). Exits 1 unless
/// the gateway would accept it as signed by one of them, so a script can
/// check a file before installing it.
pub fn inspect(wasm: &Path, trusted: &[String]) -> anyhow::Result<ExitCode> {
    let keys = trusted
        .iter()
        .map(|k| TrustedKey::parse(k))
        .collect::<Result<Vec<_>, _>>()?;
    print!("{}", trust::inspect(wasm, &keys));
    let bytes = std::fs::read(wasm).with_context(|| format!("cannot read {}", wasm.display()))?;
    Ok(if trust::verify(wasm, &bytes, &keys).is_signed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        sign: SignArgs,
    }

    #[test]
    fn sign_args_parse_with_defaults() {
        let cli = Cli::try_parse_from([
            "sign",
            "x.wasm",
            "--key",
            "acme.key",
            "--version",
            "1.0.0",
            "--publisher",
            "Acme",
            "--host",
            "api.acme.example",
            "--host",
            "*.bank.example",
        ])
        .expect("parse");
        assert_eq!(cli.sign.wasm, Path::new("x.wasm"));
        assert_eq!(cli.sign.version, "1.0.0");
        assert_eq!(cli.sign.hosts, ["api.acme.example", "*.bank.example"]);
        assert_eq!(cli.sign.memory_mb, 32);
        assert!(!cli.sign.kv);
        assert_eq!(cli.sign.name, None);
    }

    #[test]
    fn keygen_sign_inspect() {
        let dir = tempfile::tempdir().expect("tempdir");
        keygen(&dir.path().join("acme")).expect("keygen");
        let wasm = dir.path().join("hello.wasm");
        std::fs::write(&wasm, b"\0asm").expect("wasm");
        let args = SignArgs {
            wasm: wasm.clone(),
            key: dir.path().join("acme.key"),
            name: None,
            version: "1.0.0".into(),
            publisher: "Acme".into(),
            hosts: vec![],
            kv: false,
            memory_mb: 8,
        };
        sign(&args).expect("sign");
        let public = dir.path().join("acme.pub").display().to_string();
        assert_eq!(
            inspect(&wasm, std::slice::from_ref(&public)).expect("inspect"),
            ExitCode::SUCCESS
        );
        assert_eq!(inspect(&wasm, &[]).expect("inspect"), ExitCode::FAILURE);
        assert!(inspect(&wasm, &["nonsense".into()]).is_err());
    }
}

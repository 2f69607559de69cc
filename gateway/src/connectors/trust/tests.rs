use super::*;

/// Not a real component: verification never looks inside the wasm.
const WASM: &[u8] = b"\0asm\x0d\0\x01\0 not really a component";

fn fields() -> ManifestFields {
    ManifestFields {
        name: "hello".into(),
        version: "1.2.0".into(),
        publisher: "Acme Payments".into(),
        allowed_hosts: vec!["API.Acme.example".into(), "*.bank.example:8443".into()],
        kv: true,
        memory_mb: 16,
    }
}

/// A folder with `hello.wasm` signed by a new key `acme`.
struct Signed {
    dir: tempfile::TempDir,
    wasm: PathBuf,
    keys: KeyFiles,
}

fn signed() -> Signed {
    let dir = tempfile::tempdir().expect("tempdir");
    let wasm = dir.path().join("hello.wasm");
    std::fs::write(&wasm, WASM).expect("write wasm");
    let keys = keygen(dir.path(), "acme").expect("keygen");
    sign(&wasm, &keys.secret_key, &fields()).expect("sign");
    Signed { dir, wasm, keys }
}

fn trusted(keys: &KeyFiles) -> Vec<TrustedKey> {
    vec![TrustedKey::parse(&keys.public_key_line).expect("public key line")]
}

fn verify_file(wasm: &Path, trusted: &[TrustedKey]) -> Verdict {
    let bytes = std::fs::read(wasm).expect("read wasm");
    verify(wasm, &bytes, trusted)
}

fn flip_byte(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).expect("read");
    bytes[at] ^= 0x01;
    std::fs::write(path, bytes).expect("write");
}

#[test]
fn sidecar_paths() {
    let wasm = Path::new("/p/hello.wasm");
    assert_eq!(manifest_path(wasm), Path::new("/p/hello.manifest.toml"));
    assert_eq!(
        signature_path(wasm),
        Path::new("/p/hello.manifest.toml.minisig")
    );
}

#[test]
fn keygen_sign_verify_is_signed() {
    let s = signed();
    let verdict = verify_file(&s.wasm, &trusted(&s.keys));
    let Verdict::Signed { manifest, key_id } = &verdict else {
        panic!("expected Signed, got {verdict:?}");
    };
    assert_eq!(key_id, &s.keys.key_id);
    assert_eq!(manifest.name, "hello");
    assert_eq!(manifest.version, "1.2.0");
    assert_eq!(manifest.publisher, "Acme Payments");
    assert_eq!(manifest.wasm_sha256, sha256_hex(WASM));
    // Hosts are written normalised.
    assert_eq!(
        manifest.needs.allowed_hosts,
        ["api.acme.example", "*.bank.example:8443"]
    );
    assert!(manifest.needs.kv);
    assert_eq!(manifest.needs.memory_mb, 16);
    assert_eq!(
        verdict.signature(),
        Signature::Signed {
            publisher: "Acme Payments".into(),
            key_id: s.keys.key_id.clone()
        }
    );
    assert_eq!(
        verdict.signature().to_string(),
        format!("signed by Acme Payments (key {})", s.keys.key_id)
    );

    let text = std::fs::read_to_string(manifest_path(&s.wasm)).expect("manifest");
    assert!(
        text.starts_with("# Written by `soundbox-gateway plugin sign`"),
        "{text}"
    );
}

#[test]
fn key_files_are_minisign_and_secret_is_private() {
    let s = signed();
    // The .pub file works as a trusted key too, and names the same key.
    let from_file = TrustedKey::parse(&s.keys.public_key.display().to_string()).expect("pub");
    assert_eq!(from_file.key_id(), s.keys.key_id);
    let text = std::fs::read_to_string(&s.keys.public_key).expect("pub");
    assert!(
        text.starts_with(&format!(
            "untrusted comment: minisign public key: {}\n",
            s.keys.key_id
        )),
        "{text}"
    );
    assert_eq!(s.keys.key_id.len(), 16);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&s.keys.secret_key)
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // Never overwritten.
    let again = keygen(s.dir.path(), "acme").expect_err("exists");
    assert!(
        matches!(again, TrustError::Exists { .. }),
        "{again}: {again:?}"
    );
}

#[test]
fn one_byte_flipped_in_the_wasm_is_modified() {
    let s = signed();
    flip_byte(&s.wasm, 10);
    let verdict = verify_file(&s.wasm, &trusted(&s.keys));
    let Verdict::Modified { reason } = &verdict else {
        panic!("expected Modified, got {verdict:?}");
    };
    assert!(reason.contains("hello.wasm"), "{reason}");
    assert!(reason.contains("SHA-256"), "{reason}");
    assert_eq!(verdict.signature(), Signature::Modified);
    assert_eq!(verdict.signature().to_string(), "modified");
}

#[test]
fn one_byte_flipped_in_the_manifest_is_modified() {
    let s = signed();
    let man = manifest_path(&s.wasm);
    let len = std::fs::metadata(&man).expect("manifest").len() as usize;
    // Anywhere: in the comment, a key, a value, the last newline.
    for at in [0, len / 3, len / 2, len - 1] {
        let original = std::fs::read(&man).expect("read");
        flip_byte(&man, at);
        let verdict = verify_file(&s.wasm, &trusted(&s.keys));
        let Verdict::Modified { reason } = &verdict else {
            panic!("byte {at}: expected Modified, got {verdict:?}");
        };
        assert!(reason.contains("hello.manifest.toml"), "{reason}");
        std::fs::write(&man, original).expect("restore");
    }
    assert!(verify_file(&s.wasm, &trusted(&s.keys)).is_signed());
}

#[test]
fn signed_by_another_key_is_unknown_key() {
    let s = signed();
    let other = keygen(s.dir.path(), "other").expect("keygen");
    let verdict = verify_file(&s.wasm, &trusted(&other));
    let Verdict::UnknownKey { key_id, reason } = &verdict else {
        panic!("expected UnknownKey, got {verdict:?}");
    };
    assert_eq!(key_id, &s.keys.key_id);
    assert!(reason.contains(&s.keys.key_id), "{reason}");
    assert!(reason.contains("hello.manifest.toml"), "{reason}");
    assert_eq!(
        verdict.signature().to_string(),
        format!("signed by an unknown key ({})", s.keys.key_id)
    );
    // No trusted keys at all: the same.
    assert!(matches!(
        verify_file(&s.wasm, &[]),
        Verdict::UnknownKey { .. }
    ));
    // Re-signed by the other key: signed by it.
    sign(&s.wasm, &other.secret_key, &fields()).expect("sign");
    assert!(verify_file(&s.wasm, &trusted(&other)).is_signed());
}

#[test]
fn no_manifest_or_no_signature_is_unsigned() {
    let s = signed();
    std::fs::remove_file(signature_path(&s.wasm)).expect("rm sig");
    let verdict = verify_file(&s.wasm, &trusted(&s.keys));
    let Verdict::Unsigned { reason } = &verdict else {
        panic!("expected Unsigned, got {verdict:?}");
    };
    assert!(reason.contains("hello.manifest.toml.minisig"), "{reason}");

    std::fs::remove_file(manifest_path(&s.wasm)).expect("rm manifest");
    let verdict = verify_file(&s.wasm, &trusted(&s.keys));
    let Verdict::Unsigned { reason } = &verdict else {
        panic!("expected Unsigned, got {verdict:?}");
    };
    assert!(reason.contains("hello.manifest.toml"), "{reason}");
    assert_eq!(verdict.signature().to_string(), "unsigned");
}

#[test]
fn garbage_signature_is_invalid() {
    let s = signed();
    let sig = signature_path(&s.wasm);
    for garbage in [
        &b"not a signature"[..],
        b"untrusted comment: x\n!!!!\ntrusted comment: y\n!!!!\n",
        b"\xff\xfe\x00",
        b"",
    ] {
        std::fs::write(&sig, garbage).expect("write");
        let verdict = verify_file(&s.wasm, &trusted(&s.keys));
        let Verdict::Invalid { reason } = &verdict else {
            panic!("expected Invalid, got {verdict:?}");
        };
        assert!(reason.contains("hello.manifest.toml.minisig"), "{reason}");
        assert_eq!(verdict.signature(), Signature::Invalid);
    }
}

#[test]
fn signed_manifest_must_still_be_valid() {
    // A manifest signed with the stock tool but not one the gateway reads.
    let s = signed();
    let man = manifest_path(&s.wasm);
    let text = "name = \"hello\"\nsurprise = true\n";
    let secret = secret_key(&s.keys.secret_key).expect("secret key");
    let signature = minisign::sign(None, &secret, Cursor::new(text.as_bytes()), None, None)
        .expect("sign")
        .into_string();
    std::fs::write(&man, text).expect("manifest");
    std::fs::write(signature_path(&s.wasm), signature).expect("sig");
    let verdict = verify_file(&s.wasm, &trusted(&s.keys));
    let Verdict::Invalid { reason } = &verdict else {
        panic!("expected Invalid, got {verdict:?}");
    };
    assert!(reason.contains("hello.manifest.toml"), "{reason}");
}

#[test]
fn manifest_parse_refuses_bad_fields() {
    let good = "name = \"a\"\nversion = \"1\"\npublisher = \"P\"\nwasm_sha256 = \"".to_string()
        + &"ab".repeat(32)
        + "\"\n[needs]\nallowed_hosts = [\"api.example.vn\"]\nkv = false\nmemory_mb = 8\n";
    assert!(
        Manifest::parse(&good).is_ok(),
        "{:?}",
        Manifest::parse(&good)
    );
    for (bad, why) in [
        (good.replace("kv = false", "kv = false\nfs = true"), "fs"),
        (good.replace("kv = false\n", ""), "kv"),
        (
            good.replace(&"ab".repeat(32), &"AB".repeat(32)),
            "wasm_sha256",
        ),
        (good.replace("memory_mb = 8", "memory_mb = 0"), "memory_mb"),
        (
            good.replace("api.example.vn", "https://api.example.vn/"),
            "allowed_hosts",
        ),
        (good.replace("\"P\"", "\"\""), "publisher"),
    ] {
        let err = Manifest::parse(&bad).expect_err(why);
        assert!(err.contains(why), "{why}: {err}");
    }
}

#[test]
fn trusted_key_parse_errors_are_clear() {
    let err = TrustedKey::parse("RWshort").expect_err("short");
    assert!(err.to_string().contains("56"), "{err}");
    let err = TrustedKey::parse("/no/such/key.pub").expect_err("missing");
    assert!(err.to_string().contains("/no/such/key.pub"), "{err}");
    assert!(err.to_string().contains("minisign public key"), "{err}");

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("junk.pub");
    std::fs::write(&file, "untrusted comment: x\nnot a key\n").expect("write");
    let err = TrustedKey::parse(&file.display().to_string()).expect_err("junk");
    assert!(err.to_string().contains("junk.pub"), "{err}");
}

#[test]
fn sign_refuses_an_encrypted_or_garbage_key() {
    let s = signed();
    let garbage = s.dir.path().join("garbage.key");
    std::fs::write(&garbage, "untrusted comment: x\nAAAA\n").expect("write");
    let err = sign(&s.wasm, &garbage, &fields()).expect_err("garbage");
    assert!(err.to_string().contains("garbage.key"), "{err}");

    let pair = minisign::KeyPair::generate_encrypted_keypair(Some("pw".into())).expect("pair");
    let encrypted = s.dir.path().join("encrypted.key");
    let text = pair.sk.to_box(None).expect("box").into_string();
    std::fs::write(&encrypted, text).expect("write");
    let err = sign(&s.wasm, &encrypted, &fields()).expect_err("encrypted");
    assert!(err.to_string().contains("password-protected"), "{err}");
}

#[test]
fn sign_refuses_a_bad_host() {
    let s = signed();
    let mut f = fields();
    f.allowed_hosts = vec!["https://api.acme.example/".into()];
    let err = sign(&s.wasm, &s.keys.secret_key, &f).expect_err("bad host");
    assert!(err.to_string().contains("hello.wasm"), "{err}");
}

#[test]
fn inspect_tells_what_and_whether() {
    let s = signed();
    let text = inspect(&s.wasm, &trusted(&s.keys));
    for expected in [
        "name        hello",
        "version     1.2.0",
        "publisher   Acme Payments",
        "wasm sha256 matches the wasm",
        "hosts       api.acme.example, *.bank.example:8443",
        "kv          yes",
        "memory      16 MB",
        "(verified)",
        "signature   signed by Acme Payments",
    ] {
        assert!(text.contains(expected), "{expected:?} in\n{text}");
    }
    flip_byte(&s.wasm, 0);
    let text = inspect(&s.wasm, &trusted(&s.keys));
    assert!(text.contains("NOT verified"), "{text}");
    assert!(text.contains("DIFFERS"), "{text}");
    assert!(text.contains("signature   modified"), "{text}");
    assert!(text.contains("refused     "), "{text}");
}

fn needs(hosts: &[&str], kv: bool, memory_mb: u64) -> Needs {
    Needs {
        allowed_hosts: hosts.iter().map(|h| h.to_string()).collect(),
        kv,
        memory_mb,
    }
}

fn config_hosts(hosts: &[&str]) -> Vec<String> {
    hosts.iter().map(|h| h.to_string()).collect()
}

#[test]
fn grant_is_the_intersection() {
    let granted = grant(
        &needs(&["api.acme.example"], false, 16),
        &config_hosts(&["api.acme.example", "other.example", "*.more.example"]),
        32 << 20,
    )
    .expect("granted");
    // What the config grants beyond the manifest is not passed on.
    assert_eq!(granted.allowed_hosts, ["api.acme.example"]);
    // No hosts asked: none given, whatever the config says.
    let granted = grant(
        &needs(&[], false, 16),
        &config_hosts(&["api.acme.example"]),
        32 << 20,
    )
    .expect("granted");
    assert!(granted.allowed_hosts.is_empty());
}

#[test]
fn grant_compares_normalised_hosts() {
    let granted = grant(
        &needs(&["API.Acme.Example.", "127.0.0.1:8080"], false, 16),
        &config_hosts(&["api.acme.example", "127.0.0.1:8080"]),
        32 << 20,
    )
    .expect("granted");
    assert_eq!(
        granted.allowed_hosts,
        ["api.acme.example", "127.0.0.1:8080"]
    );
}

#[test]
fn grant_refuses_a_host_the_config_does_not_grant() {
    let err = grant(
        &needs(
            &[
                "api.acme.example",
                "new.acme.example",
                "api.acme.example:444",
            ],
            false,
            16,
        ),
        &config_hosts(&["api.acme.example"]),
        32 << 20,
    )
    .expect_err("not granted");
    assert_eq!(err.hosts, ["new.acme.example", "api.acme.example:444"]);
    let text = err.to_string();
    assert!(
        text.contains("new.acme.example, api.acme.example:444"),
        "{text}"
    );
    // A narrower config does not grant a wildcard.
    let err = grant(
        &needs(&["*.acme.example"], false, 16),
        &config_hosts(&["api.acme.example"]),
        32 << 20,
    )
    .expect_err("wildcard not granted");
    assert_eq!(err.hosts, ["*.acme.example"]);
}

#[test]
fn grant_config_wildcard_covers_hosts_under_it() {
    let granted = grant(
        &needs(
            &["api.acme.example", "*.eu.acme.example", "*.acme.example"],
            false,
            16,
        ),
        &config_hosts(&["*.acme.example"]),
        32 << 20,
    )
    .expect("granted");
    assert_eq!(
        granted.allowed_hosts,
        ["api.acme.example", "*.eu.acme.example", "*.acme.example"]
    );
    // Not the suffix itself, nor a name that merely ends the same way,
    // nor another port.
    for host in ["acme.example", "evilacme.example", "api.acme.example:8443"] {
        let err = grant(
            &needs(&[host], false, 16),
            &config_hosts(&["*.acme.example"]),
            32 << 20,
        )
        .expect_err(host);
        assert_eq!(err.hosts, [host]);
    }
}

#[test]
fn grant_memory_is_the_smaller_and_kv_only_if_declared() {
    let config = config_hosts(&[]);
    let g = grant(&needs(&[], false, 16), &config, 32 << 20).expect("granted");
    assert_eq!(g.memory_bytes, 16 << 20);
    assert!(!g.kv);
    let g = grant(&needs(&[], true, 64), &config, 32 << 20).expect("granted");
    assert_eq!(g.memory_bytes, 32 << 20);
    assert!(g.kv);
}

#[test]
fn signature_status_serialises_for_the_status_page() {
    let json = serde_json::to_value(Signature::Signed {
        publisher: "Acme".into(),
        key_id: "1A2B".into(),
    })
    .expect("json");
    assert_eq!(
        json,
        serde_json::json!({"state": "signed", "publisher": "Acme", "key_id": "1A2B"})
    );
    assert_eq!(
        serde_json::to_value(Signature::Unsigned).expect("json"),
        serde_json::json!({"state": "unsigned"})
    );
    assert_eq!(
        serde_json::to_value(Signature::UnknownKey {
            key_id: "1A".into()
        })
        .expect("json"),
        serde_json::json!({"state": "unknown-key", "key_id": "1A"})
    );
}

#[test]
fn signs_with_a_stock_minisign_unencrypted_key() {
    use base64::Engine;
    let s = signed();
    // `minisign -G -W` (0.11) leaves the checksum zero.
    let text = std::fs::read_to_string(&s.keys.secret_key).expect("key");
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut bytes = b64.decode(text.lines().nth(1).expect("line")).expect("b64");
    bytes[126..].fill(0);
    let stock = s.dir.path().join("stock.key");
    let stock_text = format!(
        "untrusted comment: minisign encrypted secret key\n{}\n",
        b64.encode(&bytes)
    );
    std::fs::write(&stock, stock_text).expect("write");
    let signed_files = sign(&s.wasm, &stock, &fields()).expect("sign with stock key");
    assert_eq!(signed_files.key_id, s.keys.key_id);
    assert!(verify_file(&s.wasm, &trusted(&s.keys)).is_signed());

    // A damaged secret half is still refused.
    bytes[70] ^= 1;
    let damaged = s.dir.path().join("damaged.key");
    std::fs::write(
        &damaged,
        format!("untrusted comment: x\n{}\n", b64.encode(&bytes)),
    )
    .expect("write");
    let err = sign(&s.wasm, &damaged, &fields()).expect_err("damaged");
    assert!(err.to_string().contains("damaged.key"), "{err}");
}

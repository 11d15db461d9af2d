//! Authenticode signatures checked by sbsigntool's `sbverify --cert` (Debian package
//! `sbsigntool`), the PE CheckSum by python3-pefile's `generate_checksum()`; keys and
//! certificates made by `openssl req` (package `openssl`).

use mdi_pe::authenticode::{sign, Signer};
use mdi_pe::uki::Uki;
use std::path::Path;
use std::process::Command;

const STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";
const BOOT: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";

use mdi_testkit::skip;

fn have(tool: &str, arg: &str, package: &str) -> bool {
    let ok = Command::new(tool).arg(arg).output().is_ok();
    if !ok {
        skip(format_args!("{tool} not found (apt-get install {package})"));
    }
    ok
}

/// A fresh RSA-2048 key and self-signed certificate in `dir`: (key PEM, cert PEM, cert path).
fn keypair(dir: &Path, bits: u32) -> (String, String, std::path::PathBuf) {
    let (k, c) = (dir.join(format!("db{bits}.key")), dir.join(format!("db{bits}.crt")));
    let o = Command::new("openssl")
        .args(["req", "-new", "-x509", "-nodes", "-sha256", "-days", "3650", "-subj", "/CN=mdi test db/"])
        .arg("-newkey")
        .arg(format!("rsa:{bits}"))
        .arg("-keyout")
        .arg(&k)
        .arg("-out")
        .arg(&c)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    (std::fs::read_to_string(&k).unwrap(), std::fs::read_to_string(&c).unwrap(), c)
}

fn sbverify(cert: &Path, file: &Path) -> (bool, String) {
    let o = Command::new("sbverify").arg("--cert").arg(cert).arg(file).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    (o.status.success(), text)
}

fn pefile_checksum_ok(file: &Path) -> Option<bool> {
    let py = "import pefile,sys\np=pefile.PE(sys.argv[1])\nprint(p.OPTIONAL_HEADER.CheckSum==p.generate_checksum())";
    let o = Command::new("python3").args(["-c", py]).arg(file).output().ok()?;
    if !o.status.success() {
        skip("python3-pefile not importable (apt-get install python3-pefile): CheckSum not cross-checked");
        return None;
    }
    Some(String::from_utf8_lossy(&o.stdout).trim() == "True")
}

#[test]
fn sbverify_accepts_signed_boot_loader_and_uki() {
    if !(have("sbverify", "--help", "sbsigntool") && have("openssl", "version", "openssl")) {
        return;
    }
    let (Ok(stub), Ok(boot)) = (std::fs::read(STUB), std::fs::read(BOOT)) else {
        return skip("systemd-boot-efi not installed");
    };
    let dir = tempfile::tempdir().unwrap();
    let initrd = vec![7u8; 10_001];
    let uki = Uki {
        stub: &stub,
        linux: &boot,
        initrds: vec![&initrd],
        cmdline: Some(b"quiet"),
        os_release: Some(b"ID=nixos\n"),
        uname: Some(b"6.6.6"),
        ..Uki::default()
    }
    .build()
    .unwrap();
    for bits in [2048, 4096] {
        let (key, cert, cert_path) = keypair(dir.path(), bits);
        let other_dir = dir.path().join("other");
        std::fs::create_dir_all(&other_dir).unwrap();
        let other = keypair(&other_dir, 2048).2;
        let signer = Signer::from_pem(&key, &cert).unwrap();
        for (name, image) in [("systemd-boot", &boot), ("uki", &uki), ("stub", &stub)] {
            let signed = sign(image, &signer).unwrap();
            // Deterministic: the same bytes when signed again.
            assert!(sign(image, &signer).unwrap() == signed, "{name}: signing twice differs");
            let p = dir.path().join(format!("{name}-{bits}.efi"));
            std::fs::write(&p, &signed).unwrap();
            let (ok, text) = sbverify(&cert_path, &p);
            assert!(ok, "sbverify refused {name} (RSA-{bits}): {text}");
            // Another certificate does not verify it.
            let (ok, text) = sbverify(&other, &p);
            assert!(!ok, "sbverify accepted {name} with the wrong certificate: {text}");
            if let Some(ok) = pefile_checksum_ok(&p) {
                assert!(ok, "{name}: CheckSum differs from pefile's");
            }
            // One byte changed in the signed part: refused.
            let mut bad = signed.clone();
            bad[0x400 + 100] ^= 1;
            std::fs::write(&p, &bad).unwrap();
            let (ok, _) = sbverify(&cert_path, &p);
            assert!(!ok, "sbverify accepted a modified {name}");
        }
        // A signed image is not signed again.
        assert!(sign(&sign(&boot, &signer).unwrap(), &signer).is_err());
    }
}

/// The PKCS#1 key form (`BEGIN RSA PRIVATE KEY`) works as well as PKCS#8.
#[test]
fn pkcs1_keys() {
    if !(have("sbverify", "--help", "sbsigntool") && have("openssl", "version", "openssl")) {
        return;
    }
    let Ok(boot) = std::fs::read(BOOT) else { return skip("systemd-boot-efi not installed") };
    let dir = tempfile::tempdir().unwrap();
    let (_, cert, cert_path) = keypair(dir.path(), 2048);
    let o = Command::new("openssl")
        .args(["rsa", "-traditional", "-in"])
        .arg(dir.path().join("db2048.key"))
        .output()
        .unwrap();
    assert!(o.status.success());
    let pkcs1 = String::from_utf8(o.stdout).unwrap();
    assert!(pkcs1.contains("BEGIN RSA PRIVATE KEY"));
    let signed = sign(&boot, &Signer::from_pem(&pkcs1, &cert).unwrap()).unwrap();
    let p = dir.path().join("b.efi");
    std::fs::write(&p, signed).unwrap();
    let (ok, text) = sbverify(&cert_path, &p);
    assert!(ok, "{text}");
}

//! Issue 8: nix/make-disk-image.nix, the drop-in for nixpkgs' make-disk-image.nix,
//! evaluated and built by real Nix (Debian's nix-bin) against the stand-in pkgs, lib and
//! config of tests/nix/stand-in.nix (there is no nixpkgs here), with the sandbox off, in a
//! throw-away store. The images it makes are checked by e2fsck, debugfs and, as root, by
//! real Nix on the mounted image (`nix-store --verify --check-contents`); those with a boot
//! loader (systemd-boot, GRUB; Debian's binaries in stand-in packages) by mtools, sfdisk,
//! blkid, virt-fw-vars and GRUB's own boot.img and diskboot.img.

mod common;
use common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Debian's boot loader files the stand-in packages of tests/nix/stand-in.nix copy
/// (systemd-boot-efi, ovmf, grub-pc-bin, grub-efi-amd64-bin, grub-common).
const SD_BOOT: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const GRUB_PC: &str = "/usr/lib/grub/i386-pc";
const GRUB_EFI: &str = "/usr/lib/grub/x86_64-efi";
const GRUB_MKIMAGE: &str = "/usr/bin/grub-mkimage";

/// Whether the host has these files and tools; says why not (the test part is skipped).
fn host_has(what: &str, files: &[&str], tools: &[&str]) -> bool {
    if let Some(f) = files.iter().find(|f| !Path::new(f).exists()) {
        skip(format_args!("{what}: no {f} (apt-get install systemd-boot-efi ovmf grub-pc-bin grub-efi-amd64-bin grub-common); CI has it"
        ));
        return false;
    }
    if let Some(t) = tools.iter().find(|t| !tool_exists(t)) {
        skip(format_args!("{what}: '{t}' not found (apt-get install mtools fdisk); CI has it"));
        return false;
    }
    true
}

/// A throw-away Nix store at the real store path /nix/store, seen only by the commands run
/// through it: each runs in a fresh mount namespace where a temporary folder is
/// bind-mounted over /nix. (A "chroot store", `--store DIR`, would force Nix's sandbox on;
/// another store directory would give store paths outside /nix/store.) Root needs only the
/// mount namespace; other users get a user namespace as well.
struct NixStore {
    dir: tempfile::TempDir,
}

impl NixStore {
    fn new(test: &str) -> Option<NixStore> {
        for t in ["nix-build", "nix-instantiate", "nix-store", "jq", "unshare", "debugfs", "e2fsck"] {
            if !tool_exists(t) {
                skip(format_args!(
                    "{test}: '{t}' not found (apt-get install nix-bin jq e2fsprogs util-linux); CI has them"
                ));
                return None;
            }
        }
        if !Path::new("/nix").is_dir() {
            skip(format_args!(
                "{test}: no /nix folder to mount the throw-away store on (apt-get install nix-bin makes it)"
            ));
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        for d in ["nix", "conf", "home"] {
            fs::create_dir(dir.path().join(d)).unwrap();
        }
        // Only our settings: no daemon, no sandbox, no substituters, no build users.
        fs::write(
            dir.path().join("conf/nix.conf"),
            "build-users-group =\nsandbox = false\nsubstitute = false\nsubstituters =\nrequire-sigs = false\n\
             experimental-features = nix-command\nwarn-dirty = false\nmax-jobs = 2\ncores = 1\n",
        )
        .unwrap();
        let store = NixStore { dir };
        let probe = store.run::<&str>("true", &[]);
        if !probe.status.success() {
            skip(format_args!(
                "{test}: cannot mount a throw-away store over /nix in a new namespace (user namespaces disabled?): {}",
                String::from_utf8_lossy(&probe.stderr)
            ));
            return None;
        }
        Some(store)
    }

    fn run<S: AsRef<OsStr>>(&self, prog: &str, args: &[S]) -> Output {
        let d = self.dir.path();
        let mut c = Command::new("unshare");
        if !is_root() {
            c.args(["--user", "--map-root-user"]);
        }
        c.args(["--mount", "--propagation", "private", "--", "sh", "-c", "mount --bind \"$0\" /nix && exec \"$@\""])
            .arg(d.join("nix"))
            .arg(prog)
            .args(args)
            .env("NIX_CONF_DIR", d.join("conf"))
            .env("NIX_USER_CONF_FILES", d.join("conf/nix.conf"))
            .env("HOME", d.join("home"))
            .env("XDG_CACHE_HOME", d.join("home/.cache"));
        for v in ["NIX_REMOTE", "NIX_PATH", "NIX_STORE_DIR", "NIX_STATE_DIR", "NIX_LOG_DIR", "NIX_STORE"] {
            c.env_remove(v);
        }
        c.output().unwrap_or_else(|e| panic!("run unshare: {e}"))
    }

    /// Runs a Nix command that must succeed; its stdout.
    fn ok<S: AsRef<OsStr>>(&self, prog: &str, args: &[S]) -> String {
        let o = self.run(prog, args);
        let shown: Vec<_> = args.iter().map(|a| a.as_ref().to_string_lossy()).collect();
        assert!(o.status.success(), "{prog} {shown:?} failed:\n{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// The arguments that select the test cases (tests/nix/cases.nix) for the binary under test.
    fn cases() -> Vec<String> {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/nix/cases.nix");
        vec![file.to_string_lossy().into_owned(), "--argstr".into(), "mdiBin".into(), bin().into()]
    }

    /// `nix-build -A attr`: the output path (/nix/store/...).
    fn build(&self, attr: &str) -> String {
        let mut args = Self::cases();
        args.extend(["--no-out-link".into(), "-A".into(), attr.into()]);
        let out = self.ok("nix-build", &args);
        out.lines().last().unwrap_or_default().to_string()
    }

    /// `nix-instantiate --eval --strict --json -A attr`.
    fn eval(&self, attr: &str) -> Value {
        let out = self.ok("nix-instantiate", &self.eval_args(attr));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{attr}: {e}: {out}"))
    }

    fn eval_args(&self, attr: &str) -> Vec<String> {
        let mut args = Self::cases();
        args.extend(["--eval".into(), "--strict".into(), "--json".into(), "-A".into(), attr.into()]);
        args
    }

    /// Where a store path of the throw-away store is on the host.
    fn host(&self, store_path: &str) -> PathBuf {
        self.dir.path().join("nix").join(store_path.strip_prefix("/nix/").expect("a /nix/store path"))
    }
}

impl Drop for NixStore {
    fn drop(&mut self) {
        // Nix leaves store folders read-only; a user other than root could not delete them.
        let _ = Command::new("chmod").arg("-R").arg("u+w").arg(self.dir.path()).status();
    }
}

fn debugfs(img: &Path, request: &str) -> String {
    let o = Command::new("debugfs").args(["-R", request]).arg(img).output().expect("debugfs");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Names in a folder of the image (debugfs `ls -p`: /inode/mode/uid/gid/name/size/).
fn ls(img: &Path, dir: &str) -> BTreeSet<String> {
    debugfs(img, &format!("ls -p {dir}"))
        .lines()
        .filter_map(|l| l.split('/').nth(5).map(str::to_string))
        .filter(|n| !n.is_empty() && n != "." && n != "..")
        .collect()
}

/// (permission bits, uid, gid) of a path in the image, from debugfs `stat`.
fn stat(img: &Path, path: &str) -> (u32, u32, u32) {
    let out = debugfs(img, &format!("stat {path}"));
    let words: Vec<&str> = out.split_whitespace().collect();
    let after = |key: &str| {
        let i = words.iter().position(|w| *w == key).unwrap_or_else(|| panic!("no '{key}' for {path}: {out}"));
        words[i + 1]
    };
    (
        u32::from_str_radix(after("Mode:"), 8).unwrap() & 0o7777,
        after("User:").parse().unwrap(),
        after("Group:").parse().unwrap(),
    )
}

/// Copies `size` bytes at `off` of `img` (a partition) to `dest`.
fn cut(img: &Path, off: u64, size: u64, dest: &Path) {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = fs::File::open(img).unwrap();
    f.seek(SeekFrom::Start(off)).unwrap();
    let mut w = fs::File::create(dest).unwrap();
    assert_eq!(std::io::copy(&mut f.take(size), &mut w).unwrap(), size);
}

fn lines(p: &Path) -> Vec<String> {
    fs::read_to_string(p).unwrap().lines().map(str::to_string).collect()
}

fn basename(p: &str) -> String {
    p.trim_start_matches("/nix/store/").to_string()
}

/// `$out` holds exactly these names; hydra-build-products is nixpkgs' line; manifest.json
/// parses. Returns the manifest.
fn check_out(store: &NixStore, out: &str, file: &str, extra: &[&str]) -> Value {
    let dir = store.host(out);
    let mut names: Vec<String> =
        fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    let mut want: Vec<String> =
        [file, "manifest.json", "nix-support"].iter().chain(extra).map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(names, want, "$out of {out}");
    assert_eq!(
        fs::read_to_string(dir.join("nix-support/hydra-build-products")).unwrap(),
        format!("file raw-image {out}/{file}\n"),
        "hydra-build-products as nixpkgs writes it"
    );
    let manifest: Value = serde_json::from_slice(&fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["image"]["file"], file);
    manifest
}

/// Real Nix on the mounted image (root only): `root` is a Nix root (root/nix/store and
/// root/nix/var/nix/db) under a writable overlay, since Nix writes locks and .links.
fn with_overlay<T>(lower: &Path, at: &Path, f: impl FnOnce(&Path) -> T) -> T {
    let t = tempfile::tempdir().unwrap();
    let (upper, work) = (t.path().join("upper"), t.path().join("work"));
    for d in [&upper, &work, &at.to_path_buf()] {
        fs::create_dir_all(d).unwrap();
    }
    let opts = format!("lowerdir={},upperdir={},workdir={}", lower.display(), upper.display(), work.display());
    assert!(Command::new("mount").args(["-t", "overlay", "overlay", "-o", &opts]).arg(at).status().unwrap().success());
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(at)));
    Command::new("umount").arg(at).status().unwrap();
    r.unwrap_or_else(|e| std::panic::resume_unwind(e))
}

fn nix_on(root: &Path, args: &[&str]) -> Output {
    Command::new("nix-store").arg("--store").arg(format!("local?root={}", root.display())).args(args).output().unwrap()
}

fn verify_ok(root: &Path) {
    let v = nix_on(root, &["--verify", "--check-contents"]);
    let err = String::from_utf8_lossy(&v.stderr);
    assert!(v.status.success() && !err.contains("error") && !err.contains("modified"), "nix-store --verify: {err}");
}

#[test]
fn store_only_image() {
    let Some(store) = NixStore::new("store_only_image") else { return };
    let out = store.build("storeOnly");
    let ci = store.build("storeOnly.closureInfo");
    let manifest = check_out(&store, &out, "store.img", &[]);
    assert_eq!(manifest["spec"]["onlyNixStore"], true);
    assert_eq!(manifest["filesystems"][0]["label"], "nix-store");
    // Unlike a full image, a store image does not take the root's default UUID.
    assert_ne!(manifest["filesystems"][0]["uuid"], "f222513b-ded1-49fa-b591-20ce86a2fe7f");

    // The closure: the system, its packages, the additional path; no channel (copyChannel = false).
    let paths = lines(&store.host(&ci).join("store-paths"));
    let expect = store.eval("expect");
    let mut closure: Vec<String> = ["toplevel", "greeter", "hello", "kernel", "initrd", "extra"]
        .iter()
        .map(|p| expect[p].as_str().unwrap().to_string())
        .collect();
    closure.sort();
    assert_eq!(paths, closure, "closureInfo lists the store paths sorted");

    let img = store.host(&out).join("store.img");
    e2fsck_clean(&img);
    let mut want: BTreeSet<String> = paths.iter().map(|p| basename(p)).collect();
    want.insert("lost+found".into());
    assert_eq!(ls(&img, "/"), want, "the filesystem root is the store");

    if skip_unless_root("store_only_image: nix-store --verify on the mounted image") {
        return;
    }
    let m = Mount::new(&img);
    let nixroot = tempfile::tempdir().unwrap();
    with_overlay(m.path(), &nixroot.path().join("nix/store"), |_| {
        let load = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "nix-store --store 'local?root={}' --load-db < '{}'",
                nixroot.path().display(),
                store.host(&ci).join("registration").display()
            ))
            .output()
            .unwrap();
        assert!(load.status.success(), "load-db: {}", String::from_utf8_lossy(&load.stderr));
        verify_ok(nixroot.path());
    });
}

#[test]
fn full_image_of_a_stand_in_system() {
    let Some(store) = NixStore::new("full_image_of_a_stand_in_system") else { return };
    let out = store.build("full");
    let ci = store.build("full.closureInfo");
    let expect = store.eval("expect");
    let toplevel = expect["toplevel"].as_str().unwrap();
    let manifest = check_out(&store, &out, "nixos.img", &["post-vm"]);

    // postVM ran once, in the builder, after the image, with nixpkgs' variables and helpers,
    // and the tools of nixpkgs' VM that pkgs has (here the stand-in util-linux and parted).
    let (util_linux, parted) = (expect["utilLinux"].as_str().unwrap(), expect["parted"].as_str().unwrap());
    assert_eq!(
        fs::read_to_string(store.host(&out).join("post-vm")).unwrap(),
        format!(
            "{out}/nixos.img 268435456 256MiB 1536\n{parted}/bin/parted\n{util_linux}/bin/partx\n{util_linux}/bin/sfdisk\n"
        )
    );
    assert!(manifest["spec"]["postVM"].is_null(), "postVM runs in the builder, not in the program");
    // Nix rebuilds it and finds the same bytes (`nix-build --check` fails on any difference).
    let mut check = NixStore::cases();
    check.extend(["--no-out-link".into(), "--check".into(), "-A".into(), "full".into()]);
    store.ok("nix-build", &check);
    // An ordinary derivation: no system feature (kvm) asked for.
    let drv = store.ok("nix-store", &["-q", "--deriver", &out]);
    let o = store.run("nix-store", &["-q", "--binding", "requiredSystemFeatures", drv.trim()]);
    assert!(!o.status.success(), "requiredSystemFeatures is set: {}", String::from_utf8_lossy(&o.stdout));

    // closureInfo: toplevel + channel + additionalPaths (the toplevel given again counts once).
    let paths = lines(&store.host(&ci).join("store-paths"));
    let channel = manifest["spec"]["channel"].as_str().unwrap().to_string();
    assert!(channel.ends_with("-nixos-25.05.standin"), "{channel}");
    for p in [toplevel, expect["extra"].as_str().unwrap(), &channel] {
        assert!(paths.iter().any(|q| q == p), "{p} in the closure");
    }
    assert_eq!(manifest["spec"]["additionalPaths"], serde_json::json!([expect["extra"]]));
    let chan = store.host(&channel).join("nixos");
    assert_eq!(fs::read_to_string(chan.join(".version-suffix")).unwrap(), ".standin");
    assert_eq!(fs::read_link(chan.join("nixpkgs")).unwrap(), Path::new("."));
    assert!(chan.join("lib/README").is_file());

    // The root filesystem (legacy layout: partition 1), cut out for e2fsck and debugfs.
    let fs_m = &manifest["filesystems"][0];
    let (off, size) = (fs_m["offset"].as_u64().unwrap(), fs_m["size"].as_u64().unwrap());
    assert_eq!((manifest["partitionTableType"].as_str(), off), (Some("legacy"), 1 << 20));
    let t = tempfile::tempdir().unwrap();
    let root_fs = t.path().join("root.ext4");
    cut(&store.host(&out).join("nixos.img"), off, size, &root_fs);
    e2fsck_clean(&root_fs);
    let in_store = ls(&root_fs, "/nix/store");
    for p in &paths {
        assert!(in_store.contains(&basename(p)), "{p} in the image's store");
    }

    // contents: user/group names resolved from config.users, modes, globs, path sources.
    assert_eq!(stat(&root_fs, "/etc/motd"), (0o640, 1000, 50));
    assert_eq!(debugfs(&root_fs, "cat /etc/motd"), "hello, the documentation\n");
    assert_eq!(stat(&root_fs, "/opt/greeter/bin/greet").1, 0);
    assert_eq!(ls(&root_fs, "/opt/greeter/bin"), BTreeSet::from(["greet".to_string()]));
    assert_eq!(ls(&root_fs, "/usr/share/doc/hello"), BTreeSet::from(["NOTES".to_string(), "README".to_string()]));
    // The glob goes to the program as it is (nothing of the build folder in the manifest, so
    // concurrent builds cannot change it); its target folder is made as `mkdir -p` would.
    let hello = expect["hello"].as_str().unwrap();
    assert_eq!(manifest["spec"]["contents"][2]["source"], format!("{hello}/share/doc/*"));
    assert_eq!(stat(&root_fs, "/usr/share/doc/hello"), (0o755, 0, 0));
    assert_eq!(debugfs(&root_fs, "cat /usr/share/doc/hello/NOTES"), "hello, the notes\n");
    assert_eq!(stat(&root_fs, "/etc/fixture.nix").0, 0o600);
    let config_nix =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/nix/configuration.nix")).unwrap();
    assert_eq!(debugfs(&root_fs, "cat /etc/fixture.nix"), config_nix);
    assert_eq!(debugfs(&root_fs, "cat /etc/nixos/configuration.nix"), config_nix, "configFile");

    if skip_unless_root("full_image_of_a_stand_in_system: nix-store --verify on the mounted image") {
        return;
    }
    let m = Mount::new(&root_fs);
    let root = t.path().join("root");
    with_overlay(m.path(), &root, |root| {
        verify_ok(root);
        // The image's Nix database says what the build's Nix says, for the system's closure.
        let q = |r: Option<&Path>, args: &[&str]| -> Vec<String> {
            let s = match r {
                Some(r) => {
                    let o = nix_on(r, args);
                    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
                    String::from_utf8_lossy(&o.stdout).into_owned()
                }
                None => store.ok("nix-store", args),
            };
            let mut v: Vec<String> = s.lines().map(str::to_string).collect();
            v.sort();
            v
        };
        let req = q(Some(root), &["-q", "--requisites", toplevel]);
        assert_eq!(req, q(None, &["-q", "--requisites", toplevel]), "requisites of the system");
        for p in &req {
            assert_eq!(q(Some(root), &["-q", "--hash", p]), q(None, &["-q", "--hash", p]), "{p}: hash");
            assert_eq!(q(Some(root), &["-q", "--references", p]), q(None, &["-q", "--references", p]), "{p}: refs");
        }
        assert_eq!(fs::read_link(root.join("nix/var/nix/profiles/system-1-link")).unwrap(), Path::new(toplevel));
        assert!(root.join("etc/NIXOS").exists());
    });
}

#[test]
fn spec_keys_for_each_boot_loader_and_user() {
    let Some(store) = NixStore::new("spec_keys_for_each_boot_loader_and_user") else { return };
    let specs = store.eval("specs");
    let expect = store.eval("expect");
    let s = |k: &str| &specs[k];
    let keys = |k: &str| -> BTreeSet<String> { s(k).as_object().unwrap().keys().cloned().collect() };

    // systemd-boot: its EFI binary from config.systemd.package; the EFI variable template.
    let sd = s("systemdBoot");
    assert_eq!(sd["bootLoader"], "systemd-boot");
    assert_eq!(sd["installBootLoader"], true);
    assert_eq!(sd["systemdBoot"], expect["systemdBoot"]);
    assert_eq!(sd["bootTimeout"], 3, "boot.loader.timeout");
    assert_eq!((&sd["touchEFIVars"], &sd["efiVariables"]), (&Value::Bool(true), &expect["ovmfVars"]));
    // pkgs.OVMF.fd.variables, as nixpkgs names it: a file of the fd output.
    assert_eq!(sd["efiVariables"], format!("{}/FV/OVMF_VARS.fd", expect["ovmf"].as_str().unwrap()));
    assert_eq!((&sd["format"], &sd["formatOptions"]["compression"]), (&"qcow2-compressed".into(), &"zstd".into()));
    assert!(sd.get("grub").is_none());

    // GRUB: BIOS modules from config.system.build.grub, EFI ones from pkgs.grub2.override { efiSupport = true; }.
    let grub = expect["grub"].as_str().unwrap();
    let grub_efi = expect["grubEfi"].as_str().unwrap();
    let gl = s("grubLegacy");
    assert_eq!((gl["bootLoader"].as_str(), gl["installBootLoader"].as_bool()), (Some("grub"), Some(true)));
    assert_eq!(gl["grub"], format!("{grub}/lib/grub"));
    assert_eq!(gl["grubMkimage"], format!("{grub}/bin/grub-mkimage"));
    assert_eq!(s("grubEfi")["grub"], format!("{grub_efi}/lib/grub"));
    assert_eq!(s("grubEfi")["grubMkimage"], format!("{grub_efi}/bin/grub-mkimage"));
    let hybrid = s("grubHybrid")["grub"].as_str().unwrap();
    assert!(hybrid.ends_with("-grub-modules"), "{hybrid}");
    // That one folder holds both module folders (the stand-in packages copy Debian's).
    let (boot_img, normal_mod) = (format!("{GRUB_PC}/boot.img"), format!("{GRUB_EFI}/normal.mod"));
    if host_has(
        "spec_keys_for_each_boot_loader_and_user: the hybrid GRUB module folder",
        &[&boot_img, &normal_mod],
        &[],
    ) {
        let both = store.build("grubHybridModules");
        let want = [fs::read(&boot_img).unwrap(), fs::read(&normal_mod).unwrap()].concat();
        assert!(fs::read(store.host(&both)).unwrap() == want, "i386-pc/boot.img + x86_64-efi/normal.mod");
    }
    assert_eq!(gl["bootTimeout"], 7, "boot.loader.timeout");

    // No loader enabled, or installBootLoader = false: none installed.
    for k in ["noLoader", "noInstall"] {
        assert_eq!(s(k)["installBootLoader"], false, "{k}");
        assert!(s(k).get("bootLoader").is_none(), "{k}");
    }
    // The default: nixpkgs' values, the system, the channel; nothing the program would not know.
    assert_eq!(gl["system"], expect["toplevel"]);
    assert_eq!(gl["copyChannel"], true);
    assert_eq!(gl["rootFSUID"], "F222513B-DED1-49FA-B591-20CE86A2FE7F");
    assert_eq!(gl["label"], "nixos");
    assert_eq!(
        (&gl["diskSize"], &gl["additionalSpace"], &gl["bootSize"]),
        (&"auto".into(), &"512M".into(), &"256M".into())
    );
    let known: BTreeSet<String> = [
        "format",
        "formatOptions",
        "partitionTableType",
        "diskSize",
        "additionalSpace",
        "bootSize",
        "fsType",
        "label",
        "onlyNixStore",
        "closureInfo",
        "system",
        "contents",
        "additionalPaths",
        "installBootLoader",
        "bootLoader",
        "systemdBoot",
        "grub",
        "grubMkimage",
        "grubForceI686",
        "targetSystem",
        "touchEFIVars",
        "efiVariables",
        "bootTimeout",
        "canTouchEfiVariables",
        "grubOptions",
        "systemdBootOptions",
        "extlinuxOptions",
        "configFile",
        "copyChannel",
        "channel",
        "deterministic",
        "rootGPUID",
        "rootFSUID",
        "seed",
        "sourceDateEpoch",
        "baseName",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for k in specs.as_object().unwrap().keys() {
        let extra: Vec<_> = keys(k).difference(&known).cloned().collect();
        assert!(extra.is_empty(), "{k}: keys {extra:?}");
    }

    // Store-only: no system, channel, rootFSUID (seed-derived) or boot loader.
    let so = keys("storeOnly");
    for k in ["system", "copyChannel", "channel", "rootFSUID", "bootLoader"] {
        assert!(!so.contains(k), "storeOnly has {k}");
    }

    // contents: names with an id in config.users become numbers, others stay names.
    let c = &s("contents")["contents"];
    let owner = |i: usize| (c[i]["user"].clone(), c[i]["group"].clone());
    assert_eq!(owner(0), (1000.into(), 50.into()));
    assert_eq!(owner(1), ("bob".into(), "wheel".into()));
    assert_eq!(owner(2), ("carol".into(), 0.into()));
    assert_eq!(owner(3), (Value::Null, Value::Null));
    assert_eq!(c[0]["source"], expect["hello"]);

    // memSize (and efiFirmware) change nothing; the flake's lib.makeDiskImage is this
    // function; package.nix evaluates.
    assert_eq!(store.eval("memSizeIgnored"), true);
    assert_eq!(store.eval("flakeLib"), true);
    let pkg = store.eval("package");
    assert_eq!(
        (pkg["pname"].as_str(), pkg["mainProgram"].as_str()),
        (Some("make-disk-image"), Some("make-disk-image"))
    );
    assert!(pkg["lockFile"].as_str().unwrap().ends_with("/Cargo.lock"));
    for f in ["flake.nix", "package.nix", "nix/make-disk-image.nix"] {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(f);
        store.ok("nix-instantiate", &["--parse", p.to_str().unwrap()]);
    }
}

#[test]
fn nixpkgs_assertions_fire_with_nixpkgs_messages() {
    let Some(store) = NixStore::new("nixpkgs_assertions_fire_with_nixpkgs_messages") else { return };
    let cases = [
        ("bad.partitionTableType", "partitionTableType must be one of [\n"),
        (
            "bad.rootFSUID",
            "In deterministic mode with a ext4 partition, rootFSUID must be non-null, by default, it is equal to rootGPUID.",
        ),
        (
            "bad.fsType",
            "to produce a partition table, we need to use -E offset flag which is support only for fsType = ext4",
        ),
        (
            "bad.touchEFIVars",
            "EFI variables can be used only with a partition table of type: hybrid, efi, efixbootldr, or legacy+gpt.",
        ),
        (
            "bad.onlyNixStoreContents",
            "In a only Nix store image, the contents must be empty, no configuration must be provided and no bootloader should be installed.",
        ),
        (
            "bad.onlyNixStoreBootLoader",
            "In a only Nix store image, the contents must be empty, no configuration must be provided and no bootloader should be installed.",
        ),
        ("bad.userWithoutGroup", "Contents of the disk image should set none of {user, group} or both at the same time."),
        ("limine", "make-disk-image: boot.loader.limine cannot be installed without a VM; use systemd-boot, GRUB or generic-extlinux-compatible"),
    ];
    for (attr, msg) in cases {
        let o = store.run("nix-instantiate", &store.eval_args(attr));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{attr} evaluated: {}", String::from_utf8_lossy(&o.stdout));
        assert!(err.contains(&format!("error: {msg}")), "{attr}: {err}");
    }
    assert!(String::from_utf8_lossy(&store.run("nix-instantiate", &store.eval_args("bad.partitionTableType")).stderr)
        .contains("], but is: \"gpt\""));
    // What nixpkgs allows still evaluates.
    let good = store.eval("good");
    assert_eq!(good.as_object().unwrap().len(), 3);
}

/// The filesystem of the manifest with this label.
fn fs_labelled<'a>(manifest: &'a Value, label: &str) -> &'a Value {
    manifest["filesystems"].as_array().unwrap().iter().find(|f| f["label"] == label).expect(label)
}

/// A file of the FAT filesystem at byte `off` of `img`, read by mtools.
fn mtype(img: &Path, off: u64, path: &str) -> Vec<u8> {
    let o = Command::new("mtype").arg("-i").arg(format!("{}@@{off}", img.display())).arg(format!("::{path}")).output();
    let o = o.expect("run mtype");
    assert!(o.status.success(), "mtype {path}: {}", String::from_utf8_lossy(&o.stderr));
    o.stdout
}

/// Sector 0 carries GRUB's boot.img code as grub-bios-setup leaves it: boot.img's bytes
/// apart from the BPB area (0x03..0x5A, all zero in both), core.img's LBA at 0x5C, the boot
/// drive (0xFF: the one booted from) at 0x64 and the drive check at 0x66 turned into two
/// NOPs; the sector at that LBA is GRUB's diskboot.img, its blocklist (the last 12 bytes:
/// start LBA, sectors, segment) pointing at the sectors after it (GRUB's boot.h, diskboot.S).
fn check_grub_bios_code(img: &Path, core_lba: u64) {
    let disk = fs::read(img).unwrap();
    let boot_img = fs::read(format!("{GRUB_PC}/boot.img")).unwrap();
    let mbr = &disk[..440];
    let mut want = boot_img[..440].to_vec();
    want[0x5C..0x64].copy_from_slice(&core_lba.to_le_bytes());
    want[0x64] = 0xFF;
    want[0x66..0x68].copy_from_slice(&[0x90, 0x90]);
    let differ: Vec<String> = (0..440).filter(|&i| mbr[i] != want[i]).map(|i| format!("{i:#x}")).collect();
    assert!(differ.is_empty(), "MBR boot code differs from GRUB's boot.img at {differ:?}");
    assert_eq!(boot_img[0x66], 0xEB, "boot.img's drive check is a short jump, which the MBR does not keep");
    assert_eq!(&disk[510..512], &[0x55, 0xAA]);

    let diskboot = fs::read(format!("{GRUB_PC}/diskboot.img")).unwrap();
    let at = (core_lba * 512) as usize;
    let core = &disk[at..at + 512];
    assert!(core[..500] == diskboot[..500], "core.img's first sector is not GRUB's diskboot.img");
    let start = u64::from_le_bytes(core[500..508].try_into().unwrap());
    let sectors = u16::from_le_bytes([core[508], core[509]]);
    let segment = u16::from_le_bytes([core[510], core[511]]);
    assert_eq!((start, segment), (core_lba + 1, 0x820), "blocklist");
    assert!(sectors > 10, "core.img of {sectors} more sectors");
    // Those sectors hold the rest of core.img (grub-mkimage's output, not zeros).
    assert!(disk[at + 512..at + 512 * (1 + sectors as usize)].iter().any(|&b| b != 0));
}

/// Issue 6/7 through the function: systemd-boot from config.systemd.package, the EFI
/// variable store from pkgs.OVMF.fd.variables, the timeout from boot.loader.timeout; the
/// ESP read by mtools, the variable store by virt-fw-vars.
#[test]
fn systemd_boot_image_through_the_function() {
    let test = "systemd_boot_image_through_the_function";
    let Some(store) = NixStore::new(test) else { return };
    if !host_has(test, &[SD_BOOT, OVMF_VARS, OVMF_CODE], &["mtype"]) {
        return;
    }
    let out = store.build("fullSystemdBoot");
    let expect = store.eval("expect");
    let toplevel = expect["toplevel"].as_str().unwrap();
    let manifest = check_out(&store, &out, "nixos.img", &["efi-vars.fd"]);
    assert_eq!(manifest["partitionTableType"], "efi");
    assert_eq!(
        (manifest["bootLoader"].as_str(), manifest["efiVars"].as_str()),
        (Some("systemd-boot"), Some("efi-vars.fd"))
    );
    assert_eq!(manifest["spec"]["systemdBoot"], expect["systemdBoot"]);
    assert_eq!(manifest["spec"]["efiVariables"], expect["ovmfVars"]);
    let img = store.host(&out).join("nixos.img");
    let debian_sd = fs::read(SD_BOOT).unwrap();

    // efi-vars.fd: Debian's template (by way of the stand-in OVMF.fd) with our entry.
    let template = fs::read(OVMF_VARS).unwrap();
    assert!(fs::read(store.host(expect["ovmfVars"].as_str().unwrap())).unwrap() == template);
    let vars_path = store.host(&out).join("efi-vars.fd");
    let vars = fs::read(&vars_path).unwrap();
    assert_eq!(vars.len(), template.len());
    assert!(vars != template, "efi-vars.fd is the template unchanged");
    if tool_exists("virt-fw-vars") {
        let o = Command::new("virt-fw-vars").arg("-i").arg(&vars_path).arg("--print").output().unwrap();
        let text = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{text}");
        for want in ["Boot0001", "Linux Boot Manager", "\\EFI\\systemd\\systemd-bootx64.efi", "boot order: 0001"] {
            assert!(text.contains(want), "no '{want}' in virt-fw-vars --print:\n{text}");
        }
    } else {
        skip(format_args!("{test}: virt-fw-vars check: not installed (pip install virt-firmware)"));
    }

    // The ESP, as bootctl and NixOS' systemd-boot builder would have left it.
    let esp = fs_labelled(&manifest, "ESP")["offset"].as_u64().unwrap();
    assert!(mtype(&img, esp, "/EFI/systemd/systemd-bootx64.efi") == debian_sd, "EFI/systemd/systemd-bootx64.efi");
    assert!(mtype(&img, esp, "/EFI/BOOT/BOOTX64.EFI") == debian_sd, "EFI/BOOT/BOOTX64.EFI");
    let conf = String::from_utf8(mtype(&img, esp, "/loader/loader.conf")).unwrap();
    assert_eq!(conf, "timeout 3\ndefault nixos-generation-1.conf\nconsole-mode keep\n", "boot.loader.timeout = 3");
    let entry = String::from_utf8(mtype(&img, esp, "/loader/entries/nixos-generation-1.conf")).unwrap();
    assert!(entry.contains(&format!("\noptions init={toplevel}/init console=ttyS0\n")), "{entry}");
    // The bootspec's kernel and initrd, copied to the ESP.
    for (key, file, stand_in) in [("linux", "bzImage", "kernel"), ("initrd", "initrd", "initrd")] {
        let line = entry.lines().find_map(|l| l.strip_prefix(&format!("{key} "))).unwrap_or_else(|| panic!("{entry}"));
        let want = fs::read(store.host(expect[stand_in].as_str().unwrap()).join(file)).unwrap();
        assert!(mtype(&img, esp, line) == want, "{line} is the bootspec's {file}");
    }
}

/// GRUB, NixOS' default loader, on the default (legacy) layout: the modules and
/// grub-mkimage from config.system.build.grub (Debian's, in a stand-in package). The MBR and
/// core.img are compared with GRUB's own boot.img and diskboot.img; grub.cfg read by debugfs.
#[test]
fn grub_bios_image_through_the_function() {
    let test = "grub_bios_image_through_the_function";
    let Some(store) = NixStore::new(test) else { return };
    if !host_has(test, &[GRUB_PC, GRUB_MKIMAGE], &[]) {
        return;
    }
    let out = store.build("fullGrub");
    let expect = store.eval("expect");
    let toplevel = expect["toplevel"].as_str().unwrap();
    let manifest = check_out(&store, &out, "nixos.img", &[]);
    assert_eq!(
        (manifest["partitionTableType"].as_str(), manifest["bootLoader"].as_str()),
        (Some("legacy"), Some("grub"))
    );
    let grub = expect["grub"].as_str().unwrap();
    assert_eq!(manifest["spec"]["grub"], format!("{grub}/lib/grub"));
    let img = store.host(&out).join("nixos.img");
    // legacy: core.img right after the MBR.
    check_grub_bios_code(&img, 1);

    let root = fs_labelled(&manifest, "nixos");
    let t = tempfile::tempdir().unwrap();
    let root_fs = t.path().join("root.ext4");
    cut(&img, root["offset"].as_u64().unwrap(), root["size"].as_u64().unwrap(), &root_fs);
    e2fsck_clean(&root_fs);
    let cfg = debugfs(&root_fs, "cat /boot/grub/grub.cfg");
    let (kernel, initrd) = (expect["kernel"].as_str().unwrap(), expect["initrd"].as_str().unwrap());
    let uuid = root["uuid"].as_str().unwrap();
    for want in [
        "set timeout=7\n".to_string(),
        format!("search --set=drive1 --fs-uuid {uuid}\n"),
        format!("  linux ($drive1){kernel}/bzImage init={toplevel}/init console=ttyS0\n"),
        format!("  initrd ($drive1){initrd}/initrd\n"),
    ] {
        assert!(cfg.contains(&want), "no '{want}' in grub.cfg:\n{cfg}");
    }
    // The kernel it names is in the image's store (the root filesystem is the one searched).
    assert_eq!(debugfs(&root_fs, &format!("cat {kernel}/bzImage")).len(), 70000);
}

/// GRUB on the hybrid layout: BIOS modules from config.system.build.grub and EFI ones from
/// pkgs.grub2.override { efiSupport = true; }, in the one folder the function makes; core.img
/// in the BIOS boot partition (found by sfdisk), BOOTX64.EFI and /boot on the ESP (mtools).
#[test]
fn grub_hybrid_image_through_the_function() {
    let test = "grub_hybrid_image_through_the_function";
    let Some(store) = NixStore::new(test) else { return };
    if !host_has(test, &[GRUB_PC, GRUB_EFI, GRUB_MKIMAGE], &["mtype", "sfdisk", "blkid"]) {
        return;
    }
    let out = store.build("fullGrubHybrid");
    let expect = store.eval("expect");
    let toplevel = expect["toplevel"].as_str().unwrap();
    let manifest = check_out(&store, &out, "nixos.img", &[]);
    assert_eq!(
        (manifest["partitionTableType"].as_str(), manifest["bootLoader"].as_str()),
        (Some("hybrid"), Some("grub"))
    );
    let modules = store.host(manifest["spec"]["grub"].as_str().unwrap());
    for (platform, pkg) in [("i386-pc", "grub"), ("x86_64-efi", "grubEfi")] {
        let to = format!("{}/lib/grub/{platform}", expect[pkg].as_str().unwrap());
        assert_eq!(fs::read_link(modules.join(platform)).unwrap(), Path::new(&to));
    }
    let img = store.host(&out).join("nixos.img");

    let o = Command::new("sfdisk").arg("-J").arg(&img).output().unwrap();
    assert!(o.status.success(), "sfdisk -J: {}", String::from_utf8_lossy(&o.stderr));
    let table: Value = serde_json::from_slice(&o.stdout).unwrap();
    let parts = table["partitiontable"]["partitions"].as_array().unwrap();
    let start_of = |ty: &str| parts.iter().find(|p| p["type"] == ty).expect(ty)["start"].as_u64().unwrap();
    check_grub_bios_code(&img, start_of("21686148-6449-6E6F-744E-656564454649"));

    // The ESP is /boot: grub.cfg and the kernels there (install-grub.pl's copies), the
    // filesystem found by its FAT serial as blkid reads it.
    let esp = start_of("C12A7328-F81F-11D2-BA4B-00A0C93EC93B") * 512;
    let o =
        Command::new("blkid").args(["-p", "-o", "value", "-s", "UUID", "-O"]).arg(esp.to_string()).arg(&img).output();
    let serial = String::from_utf8(o.unwrap().stdout).unwrap().trim().to_string();
    assert_eq!(serial.len(), 9, "FAT serial '{serial}'");
    let cfg = String::from_utf8(mtype(&img, esp, "/grub/grub.cfg")).unwrap();
    assert!(cfg.contains(&format!("search --set=drive1 --fs-uuid {serial}\n")), "{cfg}");
    let linux = cfg.lines().find_map(|l| l.trim().strip_prefix("linux ($drive1)")).unwrap_or_else(|| panic!("{cfg}"));
    let (kernel_path, params) = linux.split_once(' ').unwrap();
    assert_eq!(params, format!("init={toplevel}/init console=ttyS0"));
    let kernel = fs::read(store.host(expect["kernel"].as_str().unwrap()).join("bzImage")).unwrap();
    assert!(kernel_path.starts_with("/kernels/") && mtype(&img, esp, kernel_path) == kernel, "{kernel_path}");

    // The removable EFI path: an x86-64 PE image (PE/COFF: "MZ", e_lfanew at 0x3C, "PE\0\0",
    // machine 0x8664) made by grub-mkimage with its early config finding the ESP.
    let efi = mtype(&img, esp, "/EFI/BOOT/BOOTX64.EFI");
    assert_eq!(&efi[..2], b"MZ");
    let pe = u32::from_le_bytes(efi[0x3C..0x40].try_into().unwrap()) as usize;
    assert_eq!((&efi[pe..pe + 4], u16::from_le_bytes([efi[pe + 4], efi[pe + 5]])), (&b"PE\0\0"[..], 0x8664));
    let early = format!("search --no-floppy --fs-uuid --set=root {serial}");
    assert!(efi.windows(early.len()).any(|w| w == early.as_bytes()), "no '{early}' in BOOTX64.EFI");
}

/// An aarch64 configuration through the function on this x86_64 machine (a cross build,
/// stand-in pkgs whose hostPlatform is aarch64): the spec names the target's loader files,
/// GRUB's arm64-efi modules with the build machine's grub-mkimage, and extlinux for
/// generic-extlinux-compatible; the extlinux image builds and holds NixOS' extlinux.conf.
#[test]
fn aarch64_configuration_cross_built() {
    let test = "aarch64_configuration_cross_built";
    let Some(store) = NixStore::new(test) else { return };
    let specs = store.eval("specs");
    let expect = store.eval("expect");
    let sd = &specs["aarch64SystemdBoot"];
    assert_eq!((sd["bootLoader"].as_str(), sd["targetSystem"].as_str()), (Some("systemd-boot"), Some("aarch64-linux")));
    assert_eq!(sd["systemdBoot"], expect["systemdBootAarch64"]);
    let g = &specs["aarch64Grub"];
    assert_eq!(g["grub"], format!("{}/lib/grub", expect["grubAarch64"].as_str().unwrap()));
    // grub-mkimage runs on the build machine: buildPackages' GRUB, not the target's.
    assert_eq!(g["grubMkimage"], format!("{}/bin/grub-mkimage", expect["grub"].as_str().unwrap()));
    let e = &specs["aarch64Extlinux"];
    assert_eq!((e["bootLoader"].as_str(), e["bootTimeout"].as_u64()), (Some("extlinux"), Some(2)));

    let out = store.build("fullAarch64Extlinux");
    let manifest = check_out(&store, &out, "nixos.img", &[]);
    assert_eq!(
        (manifest["system"].as_str(), manifest["bootLoader"].as_str()),
        (Some("aarch64-linux"), Some("extlinux"))
    );
    let img = store.host(&out).join("nixos.img");
    let esp = fs_labelled(&manifest, "ESP")["offset"].as_u64().unwrap();
    let conf = String::from_utf8(mtype(&img, esp, "/extlinux/extlinux.conf")).unwrap();
    let top = expect["toplevelAarch64"].as_str().unwrap();
    let kernel = expect["kernelAarch64"].as_str().unwrap().trim_start_matches("/nix/store/").to_string() + "-Image";
    assert!(conf.contains("DEFAULT nixos-default\n") && conf.contains("TIMEOUT 20\n"), "{conf}");
    assert!(conf.contains(&format!("  LINUX ../nixos/{kernel}\n")), "{conf}");
    assert!(conf.contains(&format!("  APPEND init={top}/init console=ttyAMA0\n")), "{conf}");
    assert!(mtype(&img, esp, &format!("/nixos/{kernel}")).len() == 70000, "the kernel copied to /boot/nixos");
}

/// Whether the FAT filesystem at byte `off` of `img` has `path` (mtools).
fn fat_has(img: &Path, off: u64, path: &str) -> bool {
    let o = Command::new("mtype").arg("-i").arg(format!("{}@@{off}", img.display())).arg(format!("::{path}")).output();
    o.expect("run mtype").status.success()
}

/// The root filesystem of a built image (by its label "nixos"), cut out for debugfs.
fn root_fs_of(store: &NixStore, out: &str, manifest: &Value, dir: &Path) -> (PathBuf, String) {
    let root = fs_labelled(manifest, "nixos");
    let root_fs = dir.join("root.ext4");
    cut(&store.host(out).join("nixos.img"), root["offset"].as_u64().unwrap(), root["size"].as_u64().unwrap(), &root_fs);
    (root_fs, root["uuid"].as_str().unwrap().to_string())
}

/// Issue 16: GRUB's options as install-grub.pl reads them, through the function, on the
/// default legacy layout: extraConfig after the header, extraEntries after NixOS' entry
/// with @bootRoot@ as GRUB's path of /boot ("($drive1)/boot": /boot is a folder of the
/// root), `default` = 1 (the extra entry), timeout null = -1 (grub.nix), timeoutStyle,
/// extraPerEntryConfig in each NixOS entry, the "All configurations" submenu named by
/// configurationName (the toplevel's configuration-name), extraFiles copied to /boot by
/// `install -Dp` (mode 0755).
#[test]
fn grub_options_through_the_function() {
    let test = "grub_options_through_the_function";
    let Some(store) = NixStore::new(test) else { return };
    if !host_has(test, &[GRUB_PC, GRUB_MKIMAGE], &[]) {
        return;
    }
    let out = store.build("fullGrubOptions");
    let expect = store.eval("expect");
    let manifest = check_out(&store, &out, "nixos.img", &[]);
    let t = tempfile::tempdir().unwrap();
    let (root_fs, uuid) = root_fs_of(&store, &out, &manifest, t.path());
    e2fsck_clean(&root_fs);
    let cfg = debugfs(&root_fs, "cat /boot/grub/grub.cfg");
    let top = expect["toplevelNamed"].as_str().unwrap();
    let (kernel, initrd) = (expect["kernel"].as_str().unwrap(), expect["initrd"].as_str().unwrap());
    let search = format!("search --set=drive1 --fs-uuid {uuid}");
    let entry = |title: &str, options: &str| {
        format!(
            "menuentry \"{title}\" {options} {{\n{search}\n  insmod part_msdos\n  linux ($drive1){kernel}/bzImage init={top}/init console=ttyS0\n  initrd ($drive1){initrd}/initrd\n}}\n\n"
        )
    };
    let want = format!(
        "# Automatically generated.  DO NOT EDIT THIS FILE!\n{search}\nset default=1\nset timeout=-1\nset timeout_style=countdown\n\
         serial --unit=0 --speed=115200\nterminal_output --append serial\n\n{}\
         menuentry \"Memtest86+\" {{\n  linux ($drive1)/boot/memtest.bin\n}}\n\n\
         submenu \"NixOS - All configurations\" --class submenu {{\n{}}}\n",
        entry("NixOS - Default", "--class nixos --unrestricted"),
        entry("NixOS - Stable 6.6", "--class nixos"),
    );
    assert_eq!(cfg, want);
    // extraFiles: the file, with install's mode.
    let readme = fs::read_to_string(store.host(expect["hello"].as_str().unwrap()).join("share/doc/README")).unwrap();
    assert_eq!(debugfs(&root_fs, "cat /boot/memtest.bin"), readme);
    assert_eq!(stat(&root_fs, "/boot/memtest.bin"), (0o755, 0, 0));
    // The BIOS boot code as before.
    check_grub_bios_code(&store.host(&out).join("nixos.img"), 1);
}

/// GRUB's platforms follow the configuration as install-grub.pl's do: without
/// efiInstallAsRemovable, EFI GRUB at EFI/<bootloaderId>/grubx64.efi (bootloaderId
/// "NixOS-boot": distroName + efiSysMountPoint) with the Boot#### entry there
/// (canTouchEfiVariables); hybrid without efiSupport: BIOS GRUB only; linode's
/// partitionTableType none with devices = [ "nodev" ]: the menu only, no GRUB build.
#[test]
fn grub_platforms_follow_the_configuration() {
    let test = "grub_platforms_follow_the_configuration";
    let Some(store) = NixStore::new(test) else { return };
    if !host_has(test, &[GRUB_PC, GRUB_EFI, GRUB_MKIMAGE, OVMF_VARS], &["mtype"]) {
        return;
    }
    let specs = store.eval("specs");
    let expect = store.eval("expect");

    // EFI, not removable, with its NVRAM entry.
    let out = store.build("fullGrubEfiNvram");
    let manifest = check_out(&store, &out, "nixos.img", &["efi-vars.fd"]);
    let img = store.host(&out).join("nixos.img");
    let esp = fs_labelled(&manifest, "ESP")["offset"].as_u64().unwrap();
    let efi = mtype(&img, esp, "/EFI/NixOS-boot/grubx64.efi");
    assert_eq!(&efi[..2], b"MZ");
    assert!(!fat_has(&img, esp, "/EFI/BOOT/BOOTX64.EFI"), "no removable path without efiInstallAsRemovable");
    assert!(fat_has(&img, esp, "/grub/grub.cfg"));
    assert_eq!(manifest["efiLoader"], "\\EFI\\NixOS-boot\\grubx64.efi");
    let vars = fs::read(store.host(&out).join("efi-vars.fd")).unwrap();
    assert!(vars != fs::read(OVMF_VARS).unwrap(), "canTouchEfiVariables: the entry is written");
    if tool_exists("virt-fw-vars") {
        let o =
            Command::new("virt-fw-vars").arg("-i").arg(store.host(&out).join("efi-vars.fd")).arg("--print").output();
        let o = o.unwrap();
        let text = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
        for want in ["Boot0001", "NixOS-boot", "\\EFI\\NixOS-boot\\grubx64.efi"] {
            assert!(text.contains(want), "no '{want}' in virt-fw-vars --print:\n{text}");
        }
    }

    // hybrid without efiSupport: the BIOS build only, no EFI GRUB on the ESP.
    let bios_only = &specs["grubHybridBiosOnly"];
    assert_eq!(bios_only["grub"], format!("{}/lib/grub", expect["grub"].as_str().unwrap()));
    assert_eq!(bios_only["grubOptions"]["efiSupport"], false);
    let out = store.build("fullGrubHybridBiosOnly");
    let manifest = check_out(&store, &out, "nixos.img", &[]);
    let img = store.host(&out).join("nixos.img");
    let esp = fs_labelled(&manifest, "ESP")["offset"].as_u64().unwrap();
    assert!(fat_has(&img, esp, "/grub/grub.cfg"));
    assert!(!fat_has(&img, esp, "/EFI/BOOT/BOOTX64.EFI"), "hybrid with efiSupport = false installed EFI GRUB");
    let o = Command::new("sfdisk").arg("-J").arg(&img).output().unwrap();
    let table: Value = serde_json::from_slice(&o.stdout).unwrap();
    let parts = table["partitiontable"]["partitions"].as_array().unwrap();
    let bios = parts.iter().find(|p| p["type"] == "21686148-6449-6E6F-744E-656564454649").unwrap();
    check_grub_bios_code(&img, bios["start"].as_u64().unwrap());

    // linode: no GRUB package in the spec, grub.cfg on the unpartitioned root.
    let linode = &specs["linode"];
    assert!(linode.get("grub").is_none() && linode.get("grubMkimage").is_none(), "{linode}");
    assert_eq!((linode["bootLoader"].as_str(), linode["grubOptions"]["nodev"].as_bool()), (Some("grub"), Some(true)));
    let out = store.build("fullLinode");
    let manifest = check_out(&store, &out, "nixos.img", &[]);
    assert_eq!(manifest["partitionTableType"], "none");
    let cfg = debugfs(&store.host(&out).join("nixos.img"), "cat /boot/grub/grub.cfg");
    assert!(cfg.contains("menuentry \"NixOS - Default\""), "{cfg}");
}

/// systemd-boot's options through the function, as systemd-boot-builder.py and the
/// copy-extra-files script of systemd-boot.nix write them: loader.conf with `timeout
/// menu-force` (timeout null), `editor 0`, the console mode; extraEntries in
/// loader/entries, extraFiles on $BOOT, each with its empty marker under
/// EFI/nixos/.extra-files; no Boot#### entry without touchEFIVars.
#[test]
fn systemd_boot_options_through_the_function() {
    let test = "systemd_boot_options_through_the_function";
    let Some(store) = NixStore::new(test) else { return };
    if !host_has(test, &[SD_BOOT], &["mtype"]) {
        return;
    }
    let out = store.build("fullSystemdBootOptions");
    let expect = store.eval("expect");
    let manifest = check_out(&store, &out, "nixos.img", &[]);
    let img = store.host(&out).join("nixos.img");
    let esp = fs_labelled(&manifest, "ESP")["offset"].as_u64().unwrap();
    let conf = String::from_utf8(mtype(&img, esp, "/loader/loader.conf")).unwrap();
    assert_eq!(conf, "timeout menu-force\ndefault nixos-generation-1.conf\neditor 0\nconsole-mode max\n");
    let entry = String::from_utf8(mtype(&img, esp, "/loader/entries/memtest86.conf")).unwrap();
    assert_eq!(entry, "title Memtest86+\nefi /efi/memtest86/memtest.efi\nsort-key z_memtest\n");
    let notes = fs::read(store.host(expect["hello"].as_str().unwrap()).join("share/doc/NOTES")).unwrap();
    assert!(mtype(&img, esp, "/efi/memtest86/memtest.efi") == notes, "extraFiles");
    for marker in
        ["/EFI/nixos/.extra-files/efi/memtest86/memtest.efi", "/EFI/nixos/.extra-files/loader/entries/memtest86.conf"]
    {
        assert!(mtype(&img, esp, marker).is_empty(), "{marker}");
    }
    // The generation's own entry is still there.
    assert!(fat_has(&img, esp, "/loader/entries/nixos-generation-1.conf"));
}

/// generic-extlinux-compatible's options through the function (an aarch64 system, built
/// here): timeout null → TIMEOUT 0 (the builder's -t -1), configurationLimit 0 → only the
/// default entry, useGenerationDeviceTree false → no FDTDIR.
#[test]
fn extlinux_options_through_the_function() {
    let Some(store) = NixStore::new("extlinux_options_through_the_function") else { return };
    let out = store.build("fullAarch64ExtlinuxOptions");
    let manifest = check_out(&store, &out, "nixos.img", &[]);
    let img = store.host(&out).join("nixos.img");
    let esp = fs_labelled(&manifest, "ESP")["offset"].as_u64().unwrap();
    let conf = String::from_utf8(mtype(&img, esp, "/extlinux/extlinux.conf")).unwrap();
    assert!(conf.contains("\nTIMEOUT 0\n"), "{conf}");
    assert!(conf.contains("LABEL nixos-default\n") && !conf.contains("LABEL nixos-1"), "{conf}");
    assert!(!conf.contains("FDT"), "{conf}");
}

/// Every boot.loader option that changes the disk and is not honoured fails the
/// evaluation naming the option; loaders with their own installer (lanzaboote's
/// boot.loader.external, initScript) too, even next to GRUB.
#[test]
fn refused_boot_loader_options_are_named() {
    let Some(store) = NixStore::new("refused_boot_loader_options_are_named") else { return };
    let names = [
        "grub.users",
        "grub.theme",
        "grub.splashImage",
        "grub.font",
        "grub.gfxmodeEfi",
        "grub.useOSProber",
        "grub.mirroredBoots",
        "grub.extraPrepareConfig",
        "grub.extraInstallCommands",
        "grub.extraGrubInstallArgs",
        "grub.enableCryptodisk",
        "grub.fsIdentifier",
        "grub.default",
        "grub.efiSupport",
        "grub.devices",
        "efi.efiSysMountPoint",
        "systemd-boot.extraInstallCommands",
        "systemd-boot.extraEfiDrivers",
        "systemd-boot.installDeviceTree",
        "systemd-boot.xbootldrMountPoint",
    ];
    let attrs: Vec<String> = names
        .iter()
        .map(|n| format!("refused.\"{n}\""))
        .chain(["refusedLoaders.external".into(), "refusedLoaders.initScript".into()])
        .collect();
    let wants: Vec<String> = names
        .iter()
        .map(|n| format!("error: make-disk-image: boot.loader.{n} "))
        .chain([
            "error: make-disk-image: boot.loader.external cannot be installed without a VM".into(),
            "error: make-disk-image: boot.loader.initScript cannot be installed without a VM".into(),
        ])
        .collect();
    for (attr, want) in attrs.iter().zip(&wants) {
        let o = store.run("nix-instantiate", &store.eval_args(attr));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{attr} evaluated: {}", String::from_utf8_lossy(&o.stdout));
        assert!(err.contains(want.as_str()), "{attr}: want '{want}' in:\n{err}");
    }
    // The names listed here are all the cases.
    let mut listed: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    listed.sort();
    assert_eq!(store.eval("refusedNames"), serde_json::json!(listed));
}

/// The file at home in nixpkgs as nixos/lib/make-disk-image.nix (a copy in a
/// nixpkgs-shaped folder, no ../package.nix beside it): the program is pkgs' (or
/// pkgs.buildPackages') make-disk-image; without one, an error that says what to do.
#[test]
fn the_file_works_inside_nixpkgs() {
    let Some(store) = NixStore::new("the_file_works_inside_nixpkgs") else { return };
    let tree = tempfile::tempdir().unwrap();
    let lib = tree.path().join("nixos/lib");
    fs::create_dir_all(&lib).unwrap();
    let file = lib.join("make-disk-image.nix");
    fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../nix/make-disk-image.nix"), &file).unwrap();
    let args = |attr: &str| {
        let mut a = store.eval_args(attr);
        a.extend(["--argstr".into(), "nixpkgsTreeFile".into(), file.to_string_lossy().into_owned()]);
        a
    };
    for attr in ["inNixpkgs.found", "inNixpkgs.foundInBuildPackages"] {
        assert_eq!(store.ok("nix-instantiate", &args(attr)).trim(), "true", "{attr}");
    }
    let o = store.run("nix-instantiate", &args("inNixpkgs.missing"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("error: make-disk-image: the make-disk-image program is not found")
            && err.contains("pass makeDiskImage"),
        "{err}"
    );
}

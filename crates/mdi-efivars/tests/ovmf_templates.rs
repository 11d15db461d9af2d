//! Debian's OVMF variable-store templates (package `ovmf`): byte-exact round trips, and
//! boot entries checked by virt-firmware (PyPI `virt-firmware`: `virt-fw-vars` and its
//! Python library), an independent reader and encoder of edk2 variable stores.

use mdi_efivars::{add_boot_entry, BootEntry, VarStore};
use std::path::{Path, PathBuf};
use std::process::Command;

const OVMF: &str = "/usr/share/OVMF";

use mdi_testkit::skip;

/// The templates that exist here; a SKIP line for each missing one.
fn templates(names: &[&str]) -> Vec<PathBuf> {
    names
        .iter()
        .map(|n| Path::new(OVMF).join(n))
        .filter(|p| {
            let ok = p.exists();
            if !ok {
                skip(format_args!("{}: not installed (apt-get install ovmf)", p.display()));
            }
            ok
        })
        .collect()
}

fn entry() -> BootEntry {
    BootEntry {
        number: 1,
        description: "NixOS".into(),
        partition_number: 1,
        partition_start_lba: 2048,
        partition_size_lba: 524_288,
        // f222513b-ded1-49fa-b591-20ce86a2fe7f in RFC 4122 order.
        partition_guid: [
            0xf2, 0x22, 0x51, 0x3b, 0xde, 0xd1, 0x49, 0xfa, 0xb5, 0x91, 0x20, 0xce, 0x86, 0xa2, 0xfe, 0x7f,
        ],
        loader_path: r"\EFI\systemd\systemd-bootx64.efi".into(),
    }
}

#[test]
fn templates_round_trip_byte_for_byte() {
    let all = ["OVMF_VARS_4M.fd", "OVMF_VARS.fd", "OVMF_VARS_4M.ms.fd", "OVMF_VARS.ms.fd", "OVMF_VARS_4M.snakeoil.fd"];
    for path in templates(&all) {
        let bytes = std::fs::read(&path).unwrap();
        let store = VarStore::parse(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(store.encode().unwrap(), bytes, "{}", path.display());
        // Compacting a store with deleted records keeps its live variables.
        let mut compact = store.clone();
        compact.compact();
        let again = VarStore::parse(&compact.encode().unwrap()).unwrap();
        assert_eq!(again.variables(), store.variables(), "{}", path.display());
    }
}

#[test]
fn boot_entry_output_keeps_size_and_the_bytes_after_the_store() {
    for path in templates(&["OVMF_VARS_4M.fd", "OVMF_VARS.fd"]) {
        let t = std::fs::read(&path).unwrap();
        let out = add_boot_entry(&t, &entry()).unwrap();
        assert_eq!(out.len(), t.len());
        // The store ends at 0x40000 (4M) or 0xe000 (128 KiB); the FTW areas follow.
        let store_end = if t.len() == 540_672 { 0x40000 } else { 0xe000 };
        assert_eq!(out[store_end..], t[store_end..], "{}", path.display());
        assert_eq!(out[..0x64], t[..0x64], "{}: headers unchanged", path.display());
    }
}

fn run(cmd: &str, args: &[&str]) -> (String, String) {
    let o = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    let (out, err) = (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned());
    assert!(o.status.success(), "{cmd} {args:?} failed: {}\n{out}\n{err}", o.status);
    (out, err)
}

fn have_virt_fw_vars() -> bool {
    let ok = Command::new("virt-fw-vars").arg("--help").output().is_ok_and(|o| o.status.success());
    if !ok {
        skip(format_args!("virt-fw-vars checks: virt-fw-vars not found (pip3 install virt-firmware)"));
    }
    ok
}

/// Decodes Boot0001 with virt-firmware's library and re-encodes the expected entry with
/// its own encoders (DevicePathElem.set_gpt / set_filepath, BootEntry).
const PY_CHECK: &str = r#"
import sys, json, struct
from virt.firmware.varstore.edk2 import Edk2VarStore
from virt.firmware.efi import bootentry, devpath, ucs16
path, pnr, start, size, guid, title, loader = sys.argv[1:8]
vl = Edk2VarStore(path).get_varlist()
var = vl['Boot0001']
e = bootentry.BootEntry(data=var.data)
hd, fp = e.devicepath[0], e.devicepath[1]
(got_pnr, got_start, got_size) = struct.unpack_from('<LQQ', hd.data)
ref_hd = devpath.DevicePathElem(); ref_hd.set_gpt(int(pnr), int(start), int(size), guid)
ref_fp = devpath.DevicePathElem(); ref_fp.set_filepath(loader)
ref_path = devpath.DevicePath(); ref_path.append(ref_hd); ref_path.append(ref_fp)
ref = bootentry.BootEntry(attr=bootentry.LOAD_OPTION_ACTIVE, title=ucs16.from_string(title), devicepath=ref_path)
print(json.dumps({
  'attr': var.attr, 'option_attr': e.attr, 'title': str(e.title), 'nodes': len(e.devicepath),
  'hd_type': [hd.devtype, hd.subtype], 'pnr': got_pnr, 'start': got_start, 'size': got_size,
  'guid': str(hd.get_partuuid()), 'format': list(hd.data[36:38]),
  'file_type': [fp.devtype, fp.subtype], 'file': str(fp.get_filepath()),
  'optdata': e.optdata is not None, 'same_as_virt_firmware': bytes(ref) == var.data,
  'boot_order': vl['BootOrder'].data.hex(), 'names': sorted(vl.keys()),
}))
"#;

fn json_vars(path: &Path, dir: &Path) -> serde_json::Map<String, serde_json::Value> {
    let j = dir.join(format!("{}.json", path.file_name().unwrap().to_string_lossy()));
    run("virt-fw-vars", &["-i", path.to_str().unwrap(), "--output-json", j.to_str().unwrap()]);
    read_json_vars(&j)
}

fn read_json_vars(j: &Path) -> serde_json::Map<String, serde_json::Value> {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(j).unwrap()).unwrap();
    v["variables"].as_array().unwrap().iter().map(|x| (x["name"].as_str().unwrap().to_string(), x.clone())).collect()
}

#[test]
fn virt_fw_vars_reads_the_boot_entry() {
    if !have_virt_fw_vars() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let e = entry();
    for path in templates(&["OVMF_VARS_4M.fd", "OVMF_VARS.fd", "OVMF_VARS_4M.ms.fd"]) {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let out_path = dir.path().join(format!("out-{name}"));
        std::fs::write(&out_path, add_boot_entry(&std::fs::read(&path).unwrap(), &e).unwrap()).unwrap();
        let out = out_path.to_str().unwrap();

        // 1. The printed listing; one run also writes the JSON dump and a rewrite (by
        //    virt-firmware's own encoder) of the file, checked in 3. and 4.
        let json = dir.path().join(format!("out-{name}.json"));
        let rewritten = dir.path().join(format!("rewritten-{name}"));
        let (listing, log) = run(
            "virt-fw-vars",
            &[
                "-i",
                out,
                "--print",
                "--verbose",
                "--output-json",
                json.to_str().unwrap(),
                "-o",
                rewritten.to_str().unwrap(),
            ],
        );
        assert!(!log.contains("ERROR") && !log.contains("WARNING"), "{name}: {log}");
        // Each variable prints as "name=... guid=...EfiGlobalVariable size=N" and a value line.
        let value_of = |var: &str| {
            let mut lines = listing.lines();
            let head = lines.find(|l| l.starts_with(&format!("name={var} ")));
            let head = head.unwrap_or_else(|| panic!("{name}: virt-fw-vars --print lacks {var}:\n{listing}"));
            assert!(head.contains("EfiGlobalVariable"), "{name}: {head}");
            lines.next().unwrap_or_default().trim().to_string()
        };
        assert_eq!(
            value_of("Boot0001"),
            r#"boot entry: title="NixOS" devpath=Partition(nr=1)/FilePath(\EFI\systemd\systemd-bootx64.efi)"#,
            "{name}"
        );
        assert_eq!(value_of("BootOrder"), "boot order: 0001", "{name}");

        // 2. The partition fields through virt-firmware's decoder, and its own encoding.
        let check = Command::new("python3")
            .args(["-c", PY_CHECK, out, "1", "2048", "524288", "f222513b-ded1-49fa-b591-20ce86a2fe7f", "NixOS"])
            .arg(&e.loader_path)
            .output();
        match check {
            Ok(o) if o.status.success() => {
                let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
                assert_eq!(v["attr"], 7, "{name}");
                assert_eq!(v["option_attr"], 1, "{name}");
                assert_eq!(v["title"], "NixOS", "{name}");
                assert_eq!(v["nodes"], 2, "{name}");
                assert_eq!(v["hd_type"], serde_json::json!([4, 1]), "{name}");
                assert_eq!((&v["pnr"], &v["start"], &v["size"]), (&1.into(), &2048.into(), &524_288.into()), "{name}");
                assert_eq!(v["guid"], "f222513b-ded1-49fa-b591-20ce86a2fe7f", "{name}");
                assert_eq!(v["format"], serde_json::json!([2, 2]), "{name}: GPT, GUID signature");
                assert_eq!(v["file_type"], serde_json::json!([4, 4]), "{name}");
                assert_eq!(v["file"], r"\EFI\systemd\systemd-bootx64.efi", "{name}");
                assert_eq!(v["optdata"], false, "{name}");
                assert_eq!(v["same_as_virt_firmware"], true, "{name}: virt-firmware encodes the entry differently");
                assert_eq!(v["boot_order"], "0100", "{name}");
            }
            Ok(o) => panic!("{name}: python check failed:\n{}", String::from_utf8_lossy(&o.stderr)),
            Err(err) => skip(format_args!("virt-firmware library check: python3: {err}")),
        }

        // 3. Every other variable is unchanged.
        let before = json_vars(&path, dir.path());
        let after = read_json_vars(&json);
        for (k, v) in &before {
            if k != "Boot0001" && k != "BootOrder" {
                assert_eq!(after.get(k), Some(v), "{name}: {k} changed");
            }
        }
        let extra: Vec<&String> =
            after.keys().filter(|k| !before.contains_key(*k) && *k != "Boot0001" && *k != "BootOrder").collect();
        assert!(extra.is_empty(), "{name}: unexpected {extra:?}");
        assert_eq!(after["Boot0001"]["attr"], 7);
        assert_eq!(after["Boot0001"]["data"].as_str().unwrap(), hex(&e.load_option().unwrap()));

        // 4. virt-fw-vars rewrote it without complaint (checked in 1.), and we read its
        //    rewrite back to the same variables.
        let ours = VarStore::parse(&std::fs::read(&out_path).unwrap()).unwrap();
        let theirs = VarStore::parse(&std::fs::read(&rewritten).unwrap()).unwrap();
        let key = |s: &VarStore| {
            let mut v: Vec<_> = s.variables().into_iter().map(|v| (v.name, v.vendor, v.attributes, v.data)).collect();
            v.sort();
            v
        };
        assert_eq!(key(&theirs), key(&ours), "{name}");
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

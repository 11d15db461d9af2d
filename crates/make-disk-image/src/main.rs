//! The `make-disk-image` command: parses arguments, reports; the work is in mdi-build.

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use mdi_build::spec::{self, key_for_flag, nearest, KEYS};
use serde_json::{Map, Value};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "make-disk-image",
    version,
    about = "Build NixOS disk images without a VM, without root, reproducibly"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build an image: `build [SPEC.json] [--<spec-key> VALUE ...] -o OUTDIR`.
    ///
    /// Every spec key is also a flag in kebab-case (--partition-table-type none,
    /// --disk-size auto, --closure-info DIR, --only-nix-store true); flags override the
    /// file. With no spec and no inputs, builds a demo image from an embedded tree.
    Build {
        /// Spec file, then --key value pairs, -o OUTDIR, --json.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "ARGS")]
        args: Vec<String>,
    },
    /// Convert an image (raw, qcow2, vdi, vpc, vmdk, vhdx; ours or qemu-img's) into
    /// another format, reproducibly.
    Convert {
        /// The image to read.
        input: PathBuf,
        /// The image to write (replaced atomically).
        output: PathBuf,
        /// Output format: raw, qcow2, qcow2-compressed, vdi, vpc, vmdk, vhdx.
        #[arg(long)]
        format: String,
        /// Format options as JSON, e.g. '{"subformat":"fixed"}'.
        #[arg(long, default_value = "{}")]
        format_options: String,
        /// Seed for the identity fields of the output (UUIDs, CID).
        #[arg(long)]
        seed: Option<String>,
        /// Read the input as this format instead of detecting it: "raw" reads any file
        /// as a raw disk (a file that starts with no partition table or filesystem this
        /// tool knows is otherwise refused as unrecognised).
        #[arg(long, value_name = "FORMAT", value_parser = parse_input_format)]
        input_format: Option<mdi_inspect::Format>,
    },
    /// Show what an image holds: format and header, partition table, filesystems (any
    /// format convert reads).
    Inspect {
        /// The image.
        image: PathBuf,
        /// Print JSON (the schema is documented in the mdi-inspect crate).
        #[arg(long)]
        json: bool,
        /// List a folder: [PART:]PATH, PART a partition number, GPT name or label
        /// (default: the root filesystem).
        #[arg(long, value_name = "[PART:]PATH")]
        ls: Option<String>,
        /// Write a file's content to standard output: [PART:]PATH.
        #[arg(long, value_name = "[PART:]PATH", conflicts_with_all = ["ls", "json"])]
        cat: Option<String>,
        /// Read the input as this format instead of detecting it: "raw" reads any file
        /// as a raw disk (a file that starts with no partition table or filesystem this
        /// tool knows is otherwise refused as unrecognised).
        #[arg(long, value_name = "FORMAT", value_parser = parse_input_format)]
        input_format: Option<mdi_inspect::Format>,
    },
    /// Say where two images differ, from the outside in: format header, partition table,
    /// filesystem metadata, files, then blocks no file explains. Exit 0 when identical,
    /// 1 when different, 2 on error.
    Diff {
        /// First image.
        a: PathBuf,
        /// Second image.
        b: PathBuf,
        /// Print the differences as JSON.
        #[arg(long)]
        json: bool,
        /// Read both inputs as this format instead of detecting it: "raw" reads any file
        /// as a raw disk (a file that starts with no partition table or filesystem this
        /// tool knows is otherwise refused as unrecognised).
        #[arg(long, value_name = "FORMAT", value_parser = parse_input_format)]
        input_format: Option<mdi_inspect::Format>,
    },
}

/// `--input-format`: one of the formats the readers know.
fn parse_input_format(s: &str) -> Result<mdi_inspect::Format, String> {
    mdi_inspect::Format::parse(s).ok_or_else(|| {
        let names: Vec<&str> = mdi_inspect::Format::ALL.iter().map(|f| f.name()).collect();
        format!("'{s}' is not a format this tool reads; use one of {}", names.join(", "))
    })
}

struct BuildArgs {
    spec: Map<String, Value>,
    out: PathBuf,
    json: bool,
}

/// A flag value as JSON: numbers, booleans, arrays and objects as such, else a string.
fn flag_value(key: &str, v: &str) -> Value {
    let stringy = [
        "label",
        "baseName",
        "seed",
        "rootGPUID",
        "rootFSUID",
        "system",
        "channel",
        "name",
        "postVM",
        "passwdFile",
        "groupFile",
    ];
    if stringy.contains(&key) {
        return Value::String(v.to_string());
    }
    match serde_json::from_str::<Value>(v) {
        Ok(j) if !j.is_string() => j,
        _ => Value::String(v.to_string()),
    }
}

fn parse_build_args(args: &[String]) -> Result<BuildArgs> {
    let mut spec_file: Option<PathBuf> = None;
    let mut flags: Vec<(String, Value)> = Vec::new();
    let mut out = None;
    let mut json = false;
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if a == "-o" || a == "--out" || a == "--out-dir" {
            out = Some(PathBuf::from(args.get(i + 1).ok_or_else(|| anyhow!("{a} needs an output folder"))?));
            i += 2;
            continue;
        }
        if a == "--json" {
            json = true;
            i += 1;
            continue;
        }
        if let Some(flag) = a.strip_prefix("--") {
            let (name, inline) = match flag.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (flag, None),
            };
            let key = key_for_flag(name).ok_or_else(|| {
                let kebabs: Vec<String> = KEYS.iter().map(|k| spec::kebab(k)).collect();
                let refs: Vec<&str> = kebabs.iter().map(String::as_str).collect();
                anyhow!(spec::SpecError::UnknownFlag {
                    flag: name.to_string(),
                    nearest: nearest(name, &refs).and_then(|n| key_for_flag(&n).map(str::to_string))
                })
            })?;
            let value = match inline {
                Some(v) => v,
                None => {
                    i += 1;
                    args.get(i).cloned().ok_or_else(|| anyhow!("--{name} needs a value"))?
                }
            };
            flags.push((key.to_string(), flag_value(key, &value)));
            i += 1;
            continue;
        }
        if a.starts_with('-') {
            bail!("unknown option '{a}'; see make-disk-image build --help");
        }
        if spec_file.is_some() {
            bail!("more than one spec file given ('{a}'); pass one SPEC.json and use --key value flags for the rest");
        }
        spec_file = Some(PathBuf::from(a));
        i += 1;
    }
    let mut spec = match &spec_file {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).map_err(|source| spec::SpecError::Read { path: p.clone(), source })?;
            match serde_json::from_str::<Value>(&text)
                .map_err(|source| spec::SpecError::Json { path: p.clone(), source })?
            {
                Value::Object(m) => m,
                _ => bail!("spec '{}' must be a JSON object of spec keys", p.display()),
            }
        }
        None => Map::new(),
    };
    // Relative paths in a spec file are relative to the file.
    if let Some(dir) = spec_file.as_ref().and_then(|p| p.parent()).filter(|d| !d.as_os_str().is_empty()) {
        let rel = |v: &mut Value| {
            if let Value::String(s) = v {
                if !s.starts_with('/') {
                    *s = dir.join(&*s).to_string_lossy().into_owned();
                }
            }
        };
        for key in [
            "closureInfo",
            "storeRoot",
            "rootDir",
            "configFile",
            "systemdBoot",
            "grub",
            "efiVariables",
            "passwdFile",
            "groupFile",
        ] {
            if let Some(v) = spec.get_mut(key) {
                rel(v);
            }
        }
        if let Some(Value::Array(entries)) = spec.get_mut("contents") {
            for e in entries {
                if let Some(src) = e.get_mut("source") {
                    rel(src);
                }
            }
        }
        for key in ["grubOptions", "systemdBootOptions"] {
            if let Some(Value::Object(files)) = spec.get_mut(key).and_then(|o| o.get_mut("extraFiles")) {
                files.values_mut().for_each(rel);
            }
        }
    }
    for (k, v) in flags {
        spec.insert(k, v);
    }
    Ok(BuildArgs { spec, out: out.unwrap_or_else(|| PathBuf::from("result")), json })
}

/// Standard output for everything the commands print. A reader that goes away early
/// (`| head`, `| true`) is not an error: the rest is dropped and the command ends as it
/// would have, as other Unix tools do, instead of a panic (Rust ignores SIGPIPE, so the
/// write fails with EPIPE).
struct Stdout {
    inner: std::io::Stdout,
    gone: bool,
}

impl Stdout {
    fn new() -> Stdout {
        Stdout { inner: std::io::stdout(), gone: false }
    }
}

impl std::io::Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.gone {
            return Ok(buf.len());
        }
        match self.inner.write(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                self.gone = true;
                Ok(buf.len())
            }
            r => r,
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self.inner.flush() {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            r => r,
        }
    }
}

/// Prints `text` on standard output (see [`Stdout`]).
fn emit(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = Stdout::new();
    out.write_all(text.as_bytes()).and_then(|()| out.flush()).context("writing to standard output")
}

/// `inspect`: the report, a listing or a file's bytes.
fn inspect(
    image: &std::path::Path,
    json: bool,
    ls: Option<String>,
    cat: Option<String>,
    format: Option<mdi_inspect::Format>,
) -> Result<()> {
    use std::io::Write;
    let disk = mdi_inspect::Disk::open_as(image, format)
        .with_context(|| format!("cannot read image '{}'", image.display()))?;
    let open = |spec: &str| -> Result<(mdi_inspect::Part, Vec<u8>)> {
        mdi_inspect::select(&disk, spec).map_err(|e| anyhow!("{}: {e}", image.display()))
    };
    if let Some(spec) = cat {
        let (part, path) = open(&spec)?;
        let w = part.window(&disk);
        let fs = mdi_inspect::fs::open(&w).map_err(|e| anyhow!(e))?.ok_or_else(|| anyhow!("no filesystem"))?;
        let mut out = std::io::BufWriter::new(Stdout::new());
        fs.cat(&path, &mut out).map_err(|e| anyhow!("{spec}: {e}"))?;
        out.flush()?;
        return Ok(());
    }
    let mut report = mdi_inspect::inspect(&disk).with_context(|| format!("reading '{}'", image.display()))?;
    let mut listing = None;
    if let Some(spec) = ls {
        let (part, path) = open(&spec)?;
        let w = part.window(&disk);
        let fs = mdi_inspect::fs::open(&w).map_err(|e| anyhow!(e))?.ok_or_else(|| anyhow!("no filesystem"))?;
        let nodes = fs.list(&path).map_err(|e| anyhow!("{spec}: {e}"))?;
        report["ls"] = serde_json::json!({
            "partition": part.number,
            "path": String::from_utf8_lossy(&path),
            "entries": mdi_inspect::nodes_json(&nodes),
        });
        listing = Some(mdi_inspect::render_nodes(&nodes));
    }
    if json {
        emit(&format!("{}\n", serde_json::to_string_pretty(&report)?))
    } else if let Some(l) = listing {
        emit(&l)
    } else {
        emit(&mdi_inspect::render(&report))
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Inspect { image, json, ls, cat, input_format } => inspect(&image, json, ls, cat, input_format),
        Cmd::Diff { a, b, json, input_format } => {
            let (code, text, errors) = mdi_inspect::diff::run(&a, &b, json, input_format);
            // The exit code says identical / different / error, whether or not anyone read it.
            let _ = emit(&text);
            // Errors go to stderr, so that stdout holds only the comparison.
            eprint!("{errors}");
            std::process::exit(code)
        }
        Cmd::Convert { input, output, format, format_options, seed, input_format } => {
            let opts = match serde_json::from_str::<Value>(&format_options) {
                Ok(Value::Object(m)) => m,
                _ => bail!("--format-options must be a JSON object, e.g. '{{\"subformat\":\"fixed\"}}'"),
            };
            for note in mdi_build::convert(&input, &output, &format, &opts, seed.as_deref(), input_format)? {
                eprintln!("note: {note}");
            }
            Ok(())
        }
        Cmd::Build { args } => {
            let a = parse_build_args(&args)?;
            let spec = spec::from_map(a.spec)?;
            let cancel = Arc::new(AtomicBool::new(false));
            {
                let c = cancel.clone();
                // SIGINT, SIGTERM and SIGHUP (ctrlc's "termination" feature) stop the build;
                // the output folder is left as it was (see the waiting loop below).
                let _ = ctrlc::set_handler(move || c.store(true, Ordering::SeqCst));
            }
            let progress = Arc::new(AtomicU64::new(0));
            let tty = std::io::stderr().is_terminal() && !a.json;
            let done = Arc::new(AtomicBool::new(false));
            let reporter = tty.then(|| {
                let (p, d) = (progress.clone(), done.clone());
                std::thread::spawn(move || {
                    let start = std::time::Instant::now();
                    while !d.load(Ordering::Relaxed) {
                        std::thread::sleep(std::time::Duration::from_millis(200));
                        let b = p.load(Ordering::Relaxed) as f64;
                        let s = start.elapsed().as_secs_f64().max(0.001);
                        eprint!("\r{:.1} MiB of file data written, {:.0} MiB/s   ", b / 1048576.0, b / 1048576.0 / s);
                    }
                    eprint!("\r\x1b[K");
                })
            });
            let scratch = mdi_build::Scratch::new();
            let ctx = mdi_build::RunContext {
                cancel: Some(cancel.clone()),
                progress: Some(progress),
                scratch: Some(scratch.clone()),
            };
            // The build runs on its own thread so that this one can act on an interrupt
            // within a second whatever the build is doing (scanning, flushing, hashing,
            // waiting for postVM), none of which polls the flag often enough.
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            let out = a.out.clone();
            let worker = std::thread::spawn(move || {
                let r = mdi_build::build(&spec, &out, &ctx);
                let _ = tx.send(());
                r
            });
            loop {
                use std::sync::mpsc::RecvTimeoutError;
                match rx.recv_timeout(std::time::Duration::from_millis(50)) {
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
                    Err(RecvTimeoutError::Timeout) if cancel.load(Ordering::SeqCst) => {
                        // The writer stops by itself at its next check; give it that chance
                        // to clean up, then clean up here and leave.
                        if rx.recv_timeout(std::time::Duration::from_millis(300)).is_ok() {
                            break;
                        }
                        if !scratch.abandon() {
                            done.store(true, Ordering::Relaxed);
                            eprintln!("error: make-disk-image: interrupted; the output folder was left as it was");
                            std::process::exit(130);
                        }
                        // Committed just now: the build is complete; let it report.
                        let _ = rx.recv();
                        break;
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                }
            }
            let result = worker.join().map_err(|_| anyhow!("the build thread panicked"))?;
            done.store(true, Ordering::Relaxed);
            if result.is_err() && cancel.load(Ordering::SeqCst) {
                eprintln!("error: make-disk-image: interrupted; the output folder was left as it was");
                std::process::exit(130);
            }
            if let Some(r) = reporter {
                let _ = r.join();
            }
            let outcome = result?;
            if a.json {
                emit(&format!("{}\n", serde_json::to_string_pretty(&outcome.manifest)?))?;
            } else {
                let m = &outcome.manifest;
                let mut text = format!(
                    "{}: {} bytes, {}\n",
                    outcome.image.display(),
                    m["image"]["virtualSize"],
                    m["partitionTableType"].as_str().unwrap_or("")
                );
                for fs in m["filesystems"].as_array().into_iter().flatten() {
                    let id = fs["uuid"].as_str().or(fs["volumeId"].as_str()).unwrap_or("");
                    text += &format!(
                        "  {} {} '{}' {} at byte {}, {} bytes\n",
                        fs["role"].as_str().unwrap_or(""),
                        fs["type"].as_str().unwrap_or(""),
                        fs["label"].as_str().unwrap_or(""),
                        id,
                        fs["offset"],
                        fs["size"]
                    );
                }
                emit(&text)?;
            }
            Ok(())
        }
    }
}

fn main() {
    if let Err(e) = run().context("make-disk-image") {
        eprintln!("error: {}", e.chain().skip(1).map(|c| c.to_string()).collect::<Vec<_>>().join(": "));
        std::process::exit(1);
    }
}

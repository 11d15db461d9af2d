//! The output folder's invariant: after a failed or interrupted build it holds exactly
//! what it held before (the previous build intact), and a successful build replaces its
//! own files there in one short step.
//!
//! Everything a build makes (the image, manifest.json, nix-support/, efi-vars.fd) goes
//! into a staging folder `OUT/.mdi-build.XXXXXX.partial`, which is the only thing a build
//! adds to OUT until the end. The commit then moves the previous build's files of the
//! same names into the staging folder (`.old`) and the new ones into OUT, by renames
//! (undone in reverse order if one fails). postVM runs after that, on OUT itself (its
//! `$out` and `$diskImage` are the final paths, as scripts that write them into files
//! expect), while the previous files are still kept: if it fails, the rollback moves the
//! new files back out, removes what the script added, and puts the previous files back.
//! Only then is the commit final. Any failure before removes the staging folder (and OUT,
//! if the build made it). A process killed outright (SIGKILL) cannot clean up: its
//! staging folder holds a lock file the process kept locked, so the next build into OUT
//! recognises it as stale and removes it.
//!
//! Signals: the command line thread that catches SIGINT/SIGTERM/SIGHUP calls
//! [`Scratch::abandon`] when the build does not stop by itself within a moment (it may be
//! deep in a scan, a flush or a child process); `abandon` and the commit exclude each
//! other, so the folder ends either as before or with the finished build, never between.

use anyhow::{anyhow, bail, Context, Result};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// Prefix and suffix of staging folders; nothing else in OUT is ever touched by cleanup.
const STAGE_PREFIX: &str = ".mdi-build.";
const STAGE_SUFFIX: &str = ".partial";
/// The lock file inside a staging folder (locked for the life of its build).
const LOCK: &str = ".lock";
/// Where the commit parks the previous build's files (inside the staging folder, so a
/// stale one goes with it).
const OLD: &str = ".old";

/// What a running build has made that must not outlive a failure, shared with whoever
/// may abandon the build (a signal handler's thread).
#[derive(Default)]
pub struct Scratch {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    stage: Option<PathBuf>,
    made_out_dir: Option<PathBuf>,
    child: Option<i32>,
    /// Files moved, postVM not yet done.
    pending: Option<Pending>,
    committed: bool,
    abandoned: bool,
}

/// How to undo a commit whose postVM has not finished.
struct Pending {
    out_dir: PathBuf,
    stage: PathBuf,
    made_out_dir: bool,
    /// OUT's names before the commit (besides the staging folder).
    before: std::collections::BTreeSet<std::ffi::OsString>,
    /// Previous files moved to `stage/.old`.
    parked: Vec<std::ffi::OsString>,
    /// New files moved into OUT.
    placed: Vec<std::ffi::OsString>,
}

impl Pending {
    /// Puts OUT back as it was: the new files go, whatever postVM added goes, the previous
    /// files return; then the staging folder goes.
    fn rollback(&self) {
        for n in self.placed.iter().rev() {
            let _ = std::fs::rename(self.out_dir.join(n), self.stage.join(n));
        }
        let stage_name = self.stage.file_name().map(|n| n.to_os_string());
        if let Ok(rd) = std::fs::read_dir(&self.out_dir) {
            for e in rd.filter_map(|e| e.ok()) {
                let n = e.file_name();
                if self.before.contains(&n) || Some(&n) == stage_name.as_ref() || self.parked.contains(&n) {
                    continue;
                }
                let p = e.path();
                let _ = match std::fs::symlink_metadata(&p) {
                    Ok(m) if m.is_dir() => std::fs::remove_dir_all(&p),
                    _ => std::fs::remove_file(&p),
                };
            }
        }
        for n in self.parked.iter().rev() {
            let at = self.out_dir.join(n);
            // postVM may have made a file of that name again.
            let _ = std::fs::remove_dir_all(&at).or_else(|_| std::fs::remove_file(&at));
            let _ = std::fs::rename(self.stage.join(OLD).join(n), at);
        }
        let _ = std::fs::remove_dir_all(&self.stage);
        if self.made_out_dir {
            let _ = std::fs::remove_dir(&self.out_dir);
        }
    }
}

impl Scratch {
    /// A new, empty record.
    pub fn new() -> Arc<Self> {
        Arc::new(Scratch::default())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere must not stop the cleanup: the state is plain data.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Gives up on the build: kills a running postVM, removes the staging folder (and the
    /// output folder when the build made it) unless the build has already committed, and
    /// makes a later commit fail. Returns whether the build had committed (then its
    /// output is complete and stays).
    pub fn abandon(&self) -> bool {
        let mut s = self.lock();
        s.abandoned = true;
        if let Some(pid) = s.child.take() {
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
        if s.committed {
            return true;
        }
        if let Some(p) = s.pending.take() {
            p.rollback();
            return false;
        }
        if let Some(stage) = s.stage.take() {
            let _ = std::fs::remove_dir_all(&stage);
        }
        if let Some(out) = s.made_out_dir.take() {
            // Only if empty: another build may have put something there meanwhile.
            let _ = std::fs::remove_dir(&out);
        }
        false
    }

    pub(crate) fn set_child(&self, pid: Option<i32>) -> Result<()> {
        let mut s = self.lock();
        if s.abandoned {
            bail!("interrupted");
        }
        s.child = pid;
        Ok(())
    }
}

/// The staging folder of one build. Dropped without [`Stage::commit`], it removes itself.
pub(crate) struct Stage {
    dir: PathBuf,
    out_dir: PathBuf,
    made_out_dir: bool,
    _lock: File,
    scratch: Arc<Scratch>,
    done: bool,
}

impl Stage {
    /// Makes OUT (if missing) and a fresh staging folder in it, after removing stale ones.
    pub(crate) fn create(out_dir: &Path, scratch: Arc<Scratch>) -> Result<Stage> {
        let made_out_dir = !out_dir.exists();
        std::fs::create_dir_all(out_dir).with_context(|| {
            format!("cannot create output folder '{}'; choose a writable folder with -o", out_dir.display())
        })?;
        let out_dir = out_dir.canonicalize().with_context(|| format!("output folder '{}'", out_dir.display()))?;
        remove_stale(&out_dir);
        let dir = tempfile::Builder::new()
            .prefix(STAGE_PREFIX)
            .suffix(STAGE_SUFFIX)
            .tempdir_in(&out_dir)
            .with_context(|| format!("output folder '{}' is not writable; choose another with -o", out_dir.display()))?
            .keep();
        let lock = File::create(dir.join(LOCK)).context("staging folder lock")?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive)
            .context("cannot lock the staging folder")?;
        {
            let mut s = scratch.lock();
            if s.abandoned {
                drop(s);
                let _ = std::fs::remove_dir_all(&dir);
                bail!("interrupted");
            }
            s.stage = Some(dir.clone());
            s.made_out_dir = made_out_dir.then(|| out_dir.clone());
        }
        Ok(Stage { dir, out_dir, made_out_dir, _lock: lock, scratch, done: false })
    }

    /// The staging folder.
    pub(crate) fn path(&self) -> &Path {
        &self.dir
    }

    /// The (canonical) output folder.
    pub(crate) fn out_dir(&self) -> &Path {
        &self.out_dir
    }

    /// Moves the staged files into OUT. `ours` are the names a build owns: their previous
    /// versions go even when this build did not make them (postVM removed them).
    pub(crate) fn commit(mut self, ours: &[&str], fail_after: Option<usize>) -> Result<Commit> {
        let scratch = self.scratch.clone();
        let mut s = scratch.lock();
        if s.abandoned {
            bail!("interrupted");
        }
        let stage_name = self.dir.file_name().map(|n| n.to_os_string());
        let before = std::fs::read_dir(&self.out_dir)
            .context("output folder")?
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .filter(|n| Some(n) != stage_name.as_ref())
            .collect();
        let old = self.dir.join(OLD);
        std::fs::create_dir(&old).context("staging folder")?;
        let mut new: Vec<std::ffi::OsString> = std::fs::read_dir(&self.dir)
            .context("staging folder")?
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .filter(|n| n != LOCK && n != OLD)
            .collect();
        new.sort();
        let mut names = new.clone();
        names.extend(ours.iter().map(std::ffi::OsString::from));
        names.sort();
        names.dedup();
        let mut parked = Vec::new();
        let mut placed = Vec::new();
        let mut step = || -> std::io::Result<()> {
            for n in &names {
                let at = self.out_dir.join(n);
                if std::fs::symlink_metadata(&at).is_ok() {
                    std::fs::rename(&at, old.join(n))?;
                    parked.push(n.clone());
                }
            }
            for n in &new {
                if fail_after == Some(placed.len()) {
                    return Err(std::io::Error::other("injected rename fault (MDI_FAIL_AT=rename)"));
                }
                std::fs::rename(self.dir.join(n), self.out_dir.join(n))?;
                placed.push(n.clone());
            }
            Ok(())
        };
        if let Err(e) = step() {
            for n in placed.iter().rev() {
                let _ = std::fs::rename(self.out_dir.join(n), self.dir.join(n));
            }
            for n in parked.iter().rev() {
                let _ = std::fs::rename(old.join(n), self.out_dir.join(n));
            }
            return Err(anyhow!(
                "cannot move the new files into '{}': {e}; the folder was left as it was",
                self.out_dir.display()
            ));
        }
        s.pending = Some(Pending {
            out_dir: self.out_dir.clone(),
            stage: self.dir.clone(),
            made_out_dir: self.made_out_dir,
            before,
            parked,
            placed,
        });
        s.stage = None;
        s.made_out_dir = None;
        drop(s);
        self.done = true;
        Ok(Commit { scratch: scratch.clone(), done: false })
    }
}

/// A commit whose files are in place; [`Commit::finish`] makes it final, dropping it
/// (a failed postVM, an error) undoes it.
pub(crate) struct Commit {
    scratch: Arc<Scratch>,
    done: bool,
}

impl Commit {
    /// Makes the commit final: the previous files and the staging folder go.
    pub(crate) fn finish(mut self) -> Result<()> {
        let mut s = self.scratch.lock();
        let Some(p) = s.pending.take() else {
            // Abandoned meanwhile: already rolled back.
            bail!("interrupted");
        };
        s.committed = true;
        self.done = true;
        // Under the lock, so that an interrupt cannot end the process half way.
        let _ = std::fs::remove_dir_all(&p.stage);
        drop(s);
        Ok(())
    }
}

impl Drop for Commit {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Under the lock, as in Stage's drop.
        let mut s = self.scratch.lock();
        if let Some(p) = s.pending.take() {
            p.rollback();
        }
        drop(s);
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Under the lock: an interrupt's abandon() must not exit the process while this
        // removal is half done, nor race it over the same files.
        let mut s = self.scratch.lock();
        s.stage = None;
        s.made_out_dir = None;
        let _ = std::fs::remove_dir_all(&self.dir);
        if self.made_out_dir {
            let _ = std::fs::remove_dir(&self.out_dir);
        }
        drop(s);
    }
}

/// Removes staging folders of builds that died without cleaning up (their lock is free),
/// and image partials `.NAME.XXXXXX.partial` that versions before the staging folder left.
fn remove_stale(out_dir: &Path) {
    let Ok(rd) = std::fs::read_dir(out_dir) else {
        return;
    };
    for e in rd.filter_map(|e| e.ok()) {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if !name.starts_with('.') || !name.ends_with(STAGE_SUFFIX) {
            continue;
        }
        let p = e.path();
        if name.starts_with(STAGE_PREFIX) {
            let stale = match File::open(p.join(LOCK)) {
                // Locked by a live build: leave it alone.
                Ok(f) => rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_ok(),
                // No lock file yet: a build that is just starting, or one that died then;
                // only the latter is old.
                Err(_) => e
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age.as_secs() > 60),
            };
            if stale {
                let _ = std::fs::remove_dir_all(&p);
            }
        } else if e.file_type().is_ok_and(|t| t.is_file()) && name.matches('.').count() >= 3 {
            let _ = std::fs::remove_file(&p);
        }
    }
}

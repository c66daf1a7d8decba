//! Running the measurements: the criterion benches through `cargo bench`, the Python scripts
//! with `python3` and with uvloop's virtualenv. Every child is waited for (with a time limit
//! for the Python ones), so nothing is left running when the report is written.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where things are: the workspace, its target directory and this tool's results under it.
pub(crate) struct Paths {
    /// The workspace root (where `Cargo.toml`, `benches/` and `BENCHMARKS.md` are).
    pub(crate) root: PathBuf,
    /// `<target>/braid-benchmarks`: every result of the last run, and uvloop's virtualenv.
    pub(crate) results: PathBuf,
}

impl Paths {
    /// The workspace this binary was built from, and its target directory (`CARGO_TARGET_DIR`
    /// if set, else `target/` in the workspace).
    pub(crate) fn discover() -> Paths {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("benchmarks/ has a parent")
            .to_path_buf();
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .map(|t| if t.is_absolute() { t } else { root.join(t) })
            .unwrap_or_else(|| root.join("target"));
        Paths {
            root,
            results: target.join("braid-benchmarks"),
        }
    }

    /// `CRITERION_HOME` of the benches.
    pub(crate) fn criterion(&self) -> PathBuf {
        self.results.join("criterion")
    }

    /// `BRAID_BENCH_SUMMARY_DIR` of the benches.
    pub(crate) fn summary(&self) -> PathBuf {
        self.results.join("summary")
    }

    /// The Python scripts' JSON outputs, `<script>.<loop>.json`.
    pub(crate) fn python(&self) -> PathBuf {
        self.results.join("python")
    }

    /// The virtualenv uvloop is installed in.
    fn venv(&self) -> PathBuf {
        self.results.join("venv")
    }

    /// Which bench produced which criterion group: `groups.<bench>.txt`, one group a line.
    pub(crate) fn groups_of(&self, bench: &str) -> PathBuf {
        self.results.join(format!("groups.{bench}.txt"))
    }

    /// The mode a half of the run was measured in: `mode.<half>.txt` holds `quick` or `full`,
    /// then the date it finished.
    pub(crate) fn mode_file(&self, half: &str) -> PathBuf {
        self.results.join(format!("mode.{half}.txt"))
    }
}

/// The benches that come first in the report, in this order; any other `benches/*.rs` follows.
pub(crate) const KNOWN_BENCHES: [&str; 5] = ["scheduler", "bridge", "sync", "process_pool", "echo"];

/// The bench targets present: `benches/*.rs`, the known ones first.
pub(crate) fn bench_names(root: &Path) -> Vec<String> {
    let mut found: Vec<String> = std::fs::read_dir(root.join("benches"))
        .map(|dir| {
            dir.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "rs"))
                .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
                .collect()
        })
        .unwrap_or_default();
    found.sort_by_key(|name| {
        (
            KNOWN_BENCHES
                .iter()
                .position(|k| k == name)
                .unwrap_or(KNOWN_BENCHES.len()),
            name.clone(),
        )
    });
    found
}

/// Whether `name` (a bench or script file stem) is selected by `--only` (`only` empty: all).
fn selected(only: &[String], name: &str) -> bool {
    only.is_empty() || only.iter().any(|o| o == name)
}

/// Empties `dir` (creating it if needed).
fn fresh_dir(dir: &Path) -> Result<(), String> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| format!("clear {}: {e}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))
}

/// Waits for `child` up to `limit` (forever if `None`); kills it past the limit.
fn wait_limited(
    mut child: Child,
    limit: Option<Duration>,
) -> Result<std::process::ExitStatus, String> {
    let deadline = limit.map(|l| Instant::now() + l);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) => {}
            Err(e) => return Err(format!("waiting: {e}")),
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "killed after {} s",
                limit.unwrap_or_default().as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The criterion group directories under `criterion_home` (those with a `benchmark.json`
/// below them), by group id.
fn group_dirs(criterion_home: &Path) -> Vec<String> {
    crate::results::criterion_entries(criterion_home)
        .into_iter()
        .map(|e| e.group)
        .collect()
}

/// Runs every bench with `cargo bench`; returns the problems met (a bench that failed to
/// build or run is reported and skipped).
pub(crate) fn run_rust_benches(paths: &Paths, quick: bool, only: &[String]) -> Vec<String> {
    let mut problems = Vec::new();
    for dir in [paths.criterion(), paths.summary()] {
        if let Err(e) = fresh_dir(&dir) {
            return vec![e];
        }
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    for bench in bench_names(&paths.root) {
        let _ = std::fs::remove_file(paths.groups_of(&bench));
        if !selected(only, &bench) {
            continue;
        }
        let before = group_dirs(&paths.criterion());
        eprintln!(
            "\n=== cargo bench --bench {bench}{} ===",
            if quick { " (quick)" } else { "" }
        );
        let mut cmd = Command::new(&cargo);
        cmd.current_dir(&paths.root)
            .args(["bench", "-p", "braid", "--bench", &bench, "--"])
            .env("CRITERION_HOME", paths.criterion())
            .env("BRAID_BENCH_SUMMARY_DIR", paths.summary())
            .stdin(Stdio::null());
        if quick {
            cmd.env("BRAID_BENCH_QUICK", "1");
            // Criterion's own defaults for benches that do not read BRAID_BENCH_QUICK (a group's
            // own settings still win over these).
            if bench != "scheduler" && bench != "bridge" {
                cmd.args(["--warm-up-time", "0.5", "--measurement-time", "1.5"]);
            }
        }
        let outcome = cmd
            .spawn()
            .map_err(|e| format!("start {cargo}: {e}"))
            .and_then(|child| wait_limited(child, None));
        match outcome {
            Ok(status) if status.success() => {}
            Ok(status) => problems.push(format!("cargo bench --bench {bench} failed ({status})")),
            Err(e) => problems.push(format!("cargo bench --bench {bench}: {e}")),
        }
        let new: Vec<String> = group_dirs(&paths.criterion())
            .into_iter()
            .filter(|g| !before.contains(g))
            .collect();
        if let Err(e) = std::fs::write(paths.groups_of(&bench), new.join("\n")) {
            problems.push(format!("record the groups of {bench}: {e}"));
        }
    }
    write_mode(paths, "rust", quick, &mut problems);
    problems
}

/// Records the mode of a half that just ran, and when it ran.
fn write_mode(paths: &Paths, half: &str, quick: bool, problems: &mut Vec<String>) {
    let mode = if quick { "quick" } else { "full" };
    let text = format!("{mode}\n{}\n", crate::machine::utc_now());
    if let Err(e) = std::fs::write(paths.mode_file(half), text) {
        problems.push(format!("record the mode: {e}"));
    }
}

/// The Python scripts: `benches/python/*.py` whose names do not start with `_`, sorted.
fn python_scripts(root: &Path) -> Vec<PathBuf> {
    let mut scripts: Vec<PathBuf> = std::fs::read_dir(root.join("benches").join("python"))
        .map(|dir| {
            dir.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "py"))
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| !n.to_string_lossy().starts_with('_'))
                })
                .collect()
        })
        .unwrap_or_default();
    scripts.sort();
    scripts
}

/// Sets up (or reuses) the virtualenv with uvloop; its python, or why there is none.
fn uvloop_python(paths: &Paths, python: &str) -> Result<PathBuf, String> {
    let venv = paths.venv();
    let venv_python = venv.join("bin").join("python");
    let has_uvloop = |py: &Path| {
        Command::new(py)
            .args(["-c", "import uvloop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if venv_python.exists() && has_uvloop(&venv_python) {
        return Ok(venv_python);
    }
    eprintln!("\n=== setting up uvloop in {} ===", venv.display());
    let status = Command::new(python)
        .args(["-m", "venv"])
        .arg(&venv)
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("{python} -m venv: {e}"))?;
    if !status.success() {
        return Err(format!("`{python} -m venv` failed ({status})"));
    }
    let child = Command::new(&venv_python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "uvloop",
        ])
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("pip: {e}"))?;
    let status = wait_limited(child, Some(Duration::from_secs(300)))?;
    if !status.success() || !has_uvloop(&venv_python) {
        return Err(format!("`pip install uvloop` failed ({status})"));
    }
    Ok(venv_python)
}

/// Runs every Python script with the asyncio loop and, if uvloop installs, with uvloop;
/// returns the problems met.
pub(crate) fn run_python(
    paths: &Paths,
    python: &str,
    quick: bool,
    try_uvloop: bool,
    only: &[String],
) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(e) = fresh_dir(&paths.python()) {
        return vec![e];
    }
    let mut loops = vec![("asyncio", PathBuf::from(python))];
    let uvloop_note = paths.python().join("uvloop-unavailable.txt");
    if try_uvloop {
        match uvloop_python(paths, python) {
            Ok(py) => loops.push(("uvloop", py)),
            Err(why) => {
                eprintln!("uvloop unavailable: {why}");
                let _ = std::fs::write(&uvloop_note, &why);
            }
        }
    } else {
        let _ = std::fs::write(&uvloop_note, "not tried (--no-uvloop)");
    }
    // A script has this long, per loop, before it is killed.
    let limit = Duration::from_secs(if quick { 240 } else { 1_200 });
    let echo_load = echo_load_generator(paths);
    for script in python_scripts(&paths.root) {
        let stem = script
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !selected(only, &stem) {
            continue;
        }
        for (loop_name, py) in &loops {
            eprintln!(
                "\n=== {} {} --loop {loop_name} ===",
                py.display(),
                script.display()
            );
            let mut cmd = Command::new(py);
            cmd.arg(&script)
                .args(["--loop", loop_name])
                .current_dir(paths.root.join("benches").join("python"))
                .stdin(Stdio::null())
                .stdout(Stdio::piped());
            if quick {
                cmd.arg("--quick");
            }
            if let Some(exe) = &echo_load {
                cmd.env("BRAID_ECHO_LOAD_GENERATOR", exe);
            }
            match run_capturing(cmd, limit) {
                Ok(stdout) => {
                    let json = stdout
                        .lines()
                        .rev()
                        .find(|l| !l.trim().is_empty())
                        .unwrap_or("");
                    if serde_json::from_str::<serde_json::Value>(json).is_ok() {
                        let path = paths.python().join(format!("{stem}.{loop_name}.json"));
                        if let Err(e) = std::fs::write(&path, json) {
                            problems.push(format!("write {}: {e}", path.display()));
                        }
                    } else {
                        problems.push(format!(
                            "{stem}.py --loop {loop_name} printed no JSON summary"
                        ));
                    }
                }
                Err(e) => problems.push(format!("{stem}.py --loop {loop_name}: {e}")),
            }
        }
    }
    write_mode(paths, "python", quick, &mut problems);
    problems
}

/// The echo bench's executable, which `benches/python/echo.py` starts as its load generator:
/// the path the bench recorded in `summary/echo.json` when it ran, if it is still there
/// (otherwise the script asks cargo for it).
fn echo_load_generator(paths: &Paths) -> Option<PathBuf> {
    let text = std::fs::read_to_string(paths.summary().join("echo.json")).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    let exe = PathBuf::from(json["load_generator"].as_str()?);
    exe.is_file().then_some(exe)
}

/// Runs `cmd` (stdout piped) to completion within `limit`; its stdout if it succeeded.
fn run_capturing(mut cmd: Command, limit: Duration) -> Result<String, String> {
    let mut child = cmd.spawn().map_err(|e| format!("start: {e}"))?;
    let mut stdout = child.stdout.take().expect("stdout is piped");
    // Read on a thread so that a chatty child never blocks on a full pipe while we wait.
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut text);
        text
    });
    let status = wait_limited(child, Some(limit));
    let text = reader.join().unwrap_or_default();
    match status {
        Ok(s) if s.success() => Ok(text),
        Ok(s) => Err(format!("failed ({s})")),
        Err(e) => Err(e),
    }
}

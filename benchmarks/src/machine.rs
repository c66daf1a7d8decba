//! The machine and software a run measured on, and the date: the report's header.

use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

/// What the report says about where and when it was measured.
#[derive(Debug)]
pub(crate) struct Machine {
    /// Logical CPUs in /proc/cpuinfo (falling back to `available_parallelism`).
    pub(crate) cores: usize,
    /// "model name" from /proc/cpuinfo.
    pub(crate) cpu_model: String,
    /// MemTotal from /proc/meminfo, in GiB.
    pub(crate) memory_gib: Option<f64>,
    pub(crate) kernel: String,
    /// The load averages from /proc/loadavg when the report was written.
    pub(crate) load: String,
    pub(crate) rustc: String,
    pub(crate) python: String,
    /// tokio's version, from Cargo.lock.
    pub(crate) tokio: String,
    /// The braid/tokio worker count the benches used (`BRAID_BENCH_WORKERS`, default 2).
    pub(crate) workers: String,
    /// The commit measured, with `-dirty` if the tree had changes.
    pub(crate) commit: String,
    /// UTC date and time, `YYYY-MM-DD HH:MM UTC`.
    pub(crate) date: String,
}

impl Machine {
    /// Looks at the running machine; anything it cannot find reads "unknown".
    pub(crate) fn describe(root: &Path, python: &str) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |line: &str, key: &str| {
            let (k, v) = line.split_once(':')?;
            (k.trim() == key).then(|| v.trim().to_owned())
        };
        let cores = cpuinfo
            .lines()
            .filter(|l| field(l, "processor").is_some())
            .count();
        let cores = if cores > 0 {
            cores
        } else {
            std::thread::available_parallelism().map_or(0, |n| n.get())
        };
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| field(l, "model name"))
            .unwrap_or_else(|| "unknown".to_owned());
        let memory_gib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            })
            .map(|kib| kib / (1024.0 * 1024.0));
        let first_line = |path: &str| {
            std::fs::read_to_string(path)
                .ok()
                .and_then(|s| s.lines().next().map(str::to_owned))
                .unwrap_or_else(|| "unknown".to_owned())
        };
        let load = first_line("/proc/loadavg")
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ");
        let rustc = command_line(
            &std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned()),
            &["--version"],
        );
        // In the workspace, not the current directory: started from elsewhere (another
        // checkout, /tmp), git would name that directory's commit, or none.
        let git_commit = command_line_in(root, "git", &["rev-parse", "--short=12", "HEAD"]);
        let dirty = Command::new("git")
            .current_dir(root)
            .args(["status", "--porcelain", "--untracked-files=no"])
            .output()
            .is_ok_and(|o| o.status.success() && !o.stdout.is_empty());
        Machine {
            cores,
            cpu_model,
            memory_gib,
            kernel: first_line("/proc/sys/kernel/osrelease"),
            load,
            rustc,
            python: command_line(python, &["--version"]),
            tokio: locked_version(root, "tokio").unwrap_or_else(|| "unknown".to_owned()),
            workers: std::env::var("BRAID_BENCH_WORKERS").unwrap_or_else(|_| "2".to_owned()),
            commit: if dirty {
                format!("{git_commit}-dirty")
            } else {
                git_commit
            },
            date: utc_now(),
        }
    }

    /// Ties the report to the run that measured its numbers. After a run that measured
    /// (`measured_now`), records this description's commit and date in `record`; when only
    /// the report is rewritten (both measurements skipped, e.g. after editing NOTES.md), takes
    /// them back from there, so that the report names the commit its numbers came from rather
    /// than the one it was rewritten at. Returns a problem to report, if any.
    pub(crate) fn tie_to_measuring_run(
        &mut self,
        record: &Path,
        measured_now: bool,
    ) -> Option<String> {
        if measured_now {
            let text = format!("{}\n{}\n", self.commit, self.date);
            return std::fs::write(record, text)
                .err()
                .map(|e| format!("could not write {}: {e}", record.display()));
        }
        let text = std::fs::read_to_string(record).ok()?;
        let mut lines = text.lines();
        if let (Some(commit), Some(date)) = (lines.next(), lines.next()) {
            self.commit = commit.to_owned();
            self.date = date.to_owned();
        }
        None
    }
}

/// The version of `package` in the workspace's Cargo.lock.
fn locked_version(root: &Path, package: &str) -> Option<String> {
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).ok()?;
    let name_line = format!("name = \"{package}\"");
    let mut lines = lock.lines();
    lines.find(|l| l.trim() == name_line)?;
    let version = lines.next()?.trim().strip_prefix("version = ")?;
    Some(version.trim_matches('"').to_owned())
}

/// The first line `program args` prints (stdout, else stderr), or "unknown".
fn command_line(program: &str, args: &[&str]) -> String {
    output_line(Command::new(program).args(args))
}

/// [`command_line`] run in `dir`.
fn command_line_in(dir: &Path, program: &str, args: &[&str]) -> String {
    output_line(Command::new(program).current_dir(dir).args(args))
}

/// The first line `command` prints (stdout, else stderr), or "unknown".
fn output_line(command: &mut Command) -> String {
    command
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .map(|l| l.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Now, as `YYYY-MM-DD HH:MM UTC`.
pub(crate) fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// The proleptic Gregorian date of `days` since 1970-01-01 (Howard Hinnant's `civil_from_days`
/// algorithm, from his "chrono-Compatible Low-Level Date Algorithms").
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::{civil_from_days, Machine};

    #[test]
    fn a_rewritten_report_names_the_commit_and_date_of_the_run_that_measured() {
        let dir = std::env::temp_dir().join(format!("braid-machine-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let record = dir.join("measured-by");
        let _ = std::fs::remove_file(&record);
        let mut measuring = Machine::describe(&dir, "python3");
        measuring.commit = "aaaaaaaaaaaa".to_owned();
        measuring.date = "2026-01-02 03:04 UTC".to_owned();
        assert_eq!(measuring.tie_to_measuring_run(&record, true), None);

        let mut rewriting = Machine::describe(&dir, "python3");
        rewriting.commit = "bbbbbbbbbbbb-dirty".to_owned();
        rewriting.date = "2026-01-03 00:00 UTC".to_owned();
        assert_eq!(rewriting.tie_to_measuring_run(&record, false), None);
        assert_eq!(rewriting.commit, "aaaaaaaaaaaa");
        assert_eq!(rewriting.date, "2026-01-02 03:04 UTC");

        // No record (nothing measured yet): the report keeps what it describes now.
        std::fs::remove_file(&record).unwrap();
        let mut fresh = Machine::describe(&dir, "python3");
        fresh.commit = "cccccccccccc".to_owned();
        assert_eq!(fresh.tie_to_measuring_run(&record, false), None);
        assert_eq!(fresh.commit, "cccccccccccc");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_commit_is_the_one_of_the_root_given_not_of_the_current_directory() {
        // A repository of its own, outside the workspace (the tests run in `benchmarks/`,
        // inside it): describing it names its commit, not the workspace's.
        let dir = std::env::temp_dir().join(format!("braid-machine-git-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let git = |args: &[&str]| {
            std::process::Command::new("git")
                .current_dir(&dir)
                .args(["-c", "user.name=t", "-c", "user.email=t@t"])
                .args(["-c", "commit.gpgsign=false"])
                .args(args)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        };
        std::fs::write(dir.join("f"), "1").unwrap();
        let head = git(&["init", "-q"])
            .and(git(&["add", "f"]))
            .and(git(&["commit", "-q", "-m", "one"]))
            .and(git(&["rev-parse", "--short=12", "HEAD"]));
        // The report needs git; so does this test (CI clones the repository with it).
        let head = head.expect("git makes a repository in the temporary directory");
        assert_eq!(Machine::describe(&dir, "python3").commit, head);
        std::fs::write(dir.join("f"), "2").unwrap();
        assert_eq!(
            Machine::describe(&dir, "python3").commit,
            format!("{head}-dirty")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn civil_from_days_known_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(59), (1970, 3, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }
}

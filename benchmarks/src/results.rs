//! Reading what a run measured: criterion's `estimates.json` files, the benches' summary files
//! and the Python scripts' JSON outputs, all under [`Paths::results`](crate::runner::Paths).

use crate::runner::{bench_names, Paths};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// One criterion benchmark: `group/function[/value]` and its median time per iteration.
#[derive(Debug, Clone)]
pub(crate) struct CriterionEntry {
    pub(crate) group: String,
    pub(crate) function: String,
    /// The parameter of a parameterised benchmark (criterion's `value_str`).
    pub(crate) value: Option<String>,
    pub(crate) median_s: f64,
}

/// Every benchmark criterion recorded under `criterion_home`, in directory order.
pub(crate) fn criterion_entries(criterion_home: &Path) -> Vec<CriterionEntry> {
    let mut found = Vec::new();
    visit(criterion_home, &mut found);
    found.sort_by(|a, b| (&a.group, &a.function, &a.value).cmp(&(&b.group, &b.function, &b.value)));
    found
}

fn visit(dir: &Path, found: &mut Vec<CriterionEntry>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        if path.file_name().is_some_and(|n| n == "new") {
            if let Some(e) = read_entry(&path) {
                found.push(e);
            }
        } else if path
            .file_name()
            .is_none_or(|n| n != "base" && n != "change")
        {
            visit(&path, found);
        }
    }
}

fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

fn read_entry(new_dir: &Path) -> Option<CriterionEntry> {
    let bench = read_json(&new_dir.join("benchmark.json"))?;
    let estimates = read_json(&new_dir.join("estimates.json"))?;
    Some(CriterionEntry {
        group: bench["group_id"].as_str()?.to_owned(),
        function: bench["function_id"].as_str().unwrap_or("").to_owned(),
        value: bench["value_str"].as_str().map(str::to_owned),
        median_s: estimates["median"]["point_estimate"].as_f64()? / 1e9,
    })
}

/// One Python workload's result.
#[derive(Debug, Clone, Default)]
pub(crate) struct PythonResult {
    pub(crate) median_s: Option<f64>,
    pub(crate) p50_s: Option<f64>,
    pub(crate) p99_s: Option<f64>,
}

/// What one loop kind (asyncio or uvloop) measured, over every script.
#[derive(Debug, Clone, Default)]
pub(crate) struct PythonRun {
    /// Workload name -> result.
    pub(crate) results: BTreeMap<String, PythonResult>,
    /// Workload (or script) name -> why it has no result.
    pub(crate) errors: BTreeMap<String, String>,
    /// The interpreter's version, as the scripts reported it.
    pub(crate) python: Option<String>,
    /// The loop's version (uvloop's own; CPython's for asyncio).
    pub(crate) loop_version: Option<String>,
}

/// The round-trip percentiles the bridge bench writes (seconds).
#[derive(Debug, Clone, Default)]
pub(crate) struct Latency {
    pub(crate) braid_p50: Option<f64>,
    pub(crate) braid_p99: Option<f64>,
    pub(crate) tokio_p50: Option<f64>,
    pub(crate) tokio_p99: Option<f64>,
    pub(crate) round_trips: Option<u64>,
}

/// What the echo bench writes beside criterion's medians (`summary/echo.json`).
#[derive(Debug, Clone, Default)]
pub(crate) struct EchoSummary {
    /// Round trips in one iteration of `echo`, for messages per second.
    pub(crate) messages_per_iteration: Option<u64>,
}

/// Everything a run measured.
#[derive(Debug)]
pub(crate) struct Measured {
    pub(crate) criterion: Vec<CriterionEntry>,
    /// Group -> the bench (file stem in `benches/`) that defined it.
    pub(crate) bench_of_group: BTreeMap<String, String>,
    pub(crate) latency: Latency,
    pub(crate) echo: EchoSummary,
    pub(crate) asyncio: PythonRun,
    /// `Err(why)` when uvloop could not be installed or was not tried.
    pub(crate) uvloop: Result<PythonRun, String>,
    /// The mode each half was measured in (`quick` or `full`), if it ran.
    pub(crate) rust_mode: Option<String>,
    pub(crate) python_mode: Option<String>,
    /// When the measurements finished (the later half's date).
    pub(crate) measured_at: Option<String>,
}

impl Measured {
    /// Whether any half of the results was measured in quick mode.
    pub(crate) fn quick(&self) -> bool {
        [&self.rust_mode, &self.python_mode]
            .iter()
            .any(|m| m.as_deref() == Some("quick"))
    }
}

/// Reads every result of the last run.
pub(crate) fn collect(paths: &Paths) -> Measured {
    let mut bench_of_group = BTreeMap::new();
    for bench in bench_names(&paths.root) {
        if let Ok(text) = std::fs::read_to_string(paths.groups_of(&bench)) {
            for group in text.lines().filter(|l| !l.is_empty()) {
                bench_of_group.insert(group.to_owned(), bench.clone());
            }
        }
    }
    let latency = read_json(
        &paths
            .summary()
            .join("run_coroutine_threadsafe_latency.json"),
    )
    .map(|v| Latency {
        braid_p50: v["braid"]["p50_s"].as_f64(),
        braid_p99: v["braid"]["p99_s"].as_f64(),
        tokio_p50: v["tokio"]["p50_s"].as_f64(),
        tokio_p99: v["tokio"]["p99_s"].as_f64(),
        round_trips: v["round_trips"].as_u64(),
    })
    .unwrap_or_default();
    let echo = EchoSummary {
        messages_per_iteration: read_json(&paths.summary().join("echo.json"))
            .and_then(|v| v["messages_per_iteration"].as_u64()),
    };
    let uvloop = match std::fs::read_to_string(paths.python().join("uvloop-unavailable.txt")) {
        Ok(why) => Err(why.trim().to_owned()),
        Err(_) => Ok(python_run(&paths.python(), "uvloop")),
    };
    let mode_file = |half: &str| std::fs::read_to_string(paths.mode_file(half)).ok();
    let mode =
        |half: &str| mode_file(half).and_then(|s| s.lines().next().map(|l| l.trim().to_owned()));
    // The dates sort as text: the later one is when the measurements finished.
    let measured_at = ["rust", "python"]
        .iter()
        .filter_map(|half| mode_file(half).and_then(|s| s.lines().nth(1).map(str::to_owned)))
        .max();
    Measured {
        criterion: criterion_entries(&paths.criterion()),
        bench_of_group,
        latency,
        echo,
        asyncio: python_run(&paths.python(), "asyncio"),
        uvloop,
        rust_mode: mode("rust"),
        python_mode: mode("python"),
        measured_at,
    }
}

/// Merges the `<script>.<loop_name>.json` files in `dir`.
fn python_run(dir: &Path, loop_name: &str) -> PythonRun {
    let mut run = PythonRun::default();
    let suffix = format!(".{loop_name}.json");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return run;
    };
    let mut files: Vec<_> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().ends_with(&suffix))
        })
        .collect();
    files.sort();
    for file in files {
        let Some(v) = read_json(&file) else {
            continue;
        };
        if let Some(version) = v["python"].as_str() {
            run.python = Some(version.to_owned());
        }
        if let Some(version) = v["loop_version"].as_str() {
            run.loop_version = Some(version.to_owned());
        }
        if let Some(results) = v["results"].as_object() {
            for (name, r) in results {
                run.results.insert(
                    name.clone(),
                    PythonResult {
                        median_s: r["median_s"].as_f64(),
                        p50_s: r["p50_s"].as_f64(),
                        p99_s: r["p99_s"].as_f64(),
                    },
                );
            }
        }
        if let Some(errors) = v["errors"].as_object() {
            for (name, e) in errors {
                run.errors
                    .insert(name.clone(), e.as_str().unwrap_or("failed").to_owned());
            }
        }
    }
    run
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn criterion_entries_read_each_benchmarks_median_and_skip_baselines() {
        let home =
            std::env::temp_dir().join(format!("braid-benchmarks-test-{}", std::process::id()));
        let write = |dir: &str, bench: &str, median_ns: f64| {
            let dir = home.join(dir);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("benchmark.json"), bench).unwrap();
            std::fs::write(
                dir.join("estimates.json"),
                format!("{{\"mean\": {{\"point_estimate\": 1.0}}, \"median\": {{\"point_estimate\": {median_ns}}}}}"),
            )
            .unwrap();
        };
        write(
            "timers/braid/new",
            r#"{"group_id":"timers","function_id":"braid","value_str":null}"#,
            2.5e6,
        );
        write(
            "timers/braid/base",
            r#"{"group_id":"timers","function_id":"braid","value_str":null}"#,
            9.0e9,
        );
        write(
            "queue/tokio/100/new",
            r#"{"group_id":"queue","function_id":"tokio","value_str":"100"}"#,
            1.0e3,
        );
        let found = criterion_entries(&home);
        std::fs::remove_dir_all(&home).unwrap();
        let found: Vec<(String, String, Option<String>, f64)> = found
            .into_iter()
            .map(|e| (e.group, e.function, e.value, e.median_s))
            .collect();
        assert_eq!(
            found,
            [
                (
                    "queue".to_owned(),
                    "tokio".to_owned(),
                    Some("100".to_owned()),
                    1.0e-6
                ),
                ("timers".to_owned(), "braid".to_owned(), None, 2.5e-3),
            ]
        );
    }
}

//! Turning the measurements into the report's rows and into `BENCHMARKS.md`.

use crate::machine::Machine;
use crate::results::{CriterionEntry, Measured, PythonRun};
use crate::runner::KNOWN_BENCHES;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The workloads of braid's own benches, in report order, with what one iteration is.
const KNOWN_WORKLOADS: [(&str, &str); 10] = [
    ("spawn_many_local", "10 000 tasks spawned from a task"),
    (
        "spawn_many_remote",
        "10 000 tasks spawned from a foreign thread",
    ),
    ("ping_pong", "1 000 task pairs, two one-shot messages each"),
    ("yield_many", "200 tasks × 1 000 yields"),
    ("chained_spawn", "a chain of 1 000 spawns"),
    ("timers", "100 000 concurrent sleeps of 0–10 ms"),
    (
        "call_soon_threadsafe",
        "100 000 callbacks from 4 foreign threads (tokio: `Handle::spawn`)",
    ),
    (
        "run_coroutine_threadsafe",
        "one round trip from a foreign thread, median (tokio: spawn + block on the `JoinHandle`)",
    ),
    (
        "to_thread",
        "10 000 blocking jobs (tokio: `spawn_blocking`)",
    ),
    (
        "echo",
        "TCP echo server: 10 000 round trips of 100 bytes over 50 connections from a load \
         generator process (braid: streams; tokio: `TcpStream`)",
    ),
];

/// The workloads the issue's target of "at least 50× faster than CPython asyncio" covers.
const FIFTY_X_WORKLOADS: [&str; 3] = [
    "spawn_many_local",
    "spawn_many_remote",
    "call_soon_threadsafe",
];

/// The workloads with no tokio twin by design: tokio has no process pool, so
/// `benches/process_pool.rs` measures braid's against CPython's `ProcessPoolExecutor` only.
/// Their rows lack a tokio median without that being a gap in the comparison with tokio.
const BRAID_ONLY_WORKLOADS: [&str; 2] = ["process_pool_tiny", "process_pool_cpu"];

/// Whether the row named `name` (a group, or `group/value`) measures `workload`.
fn is_workload(name: &str, workload: &str) -> bool {
    name.strip_prefix(workload)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// One line of the table: a workload's median time on each runtime (seconds).
#[derive(Debug, Clone, Default)]
pub(crate) struct Row {
    pub(crate) name: String,
    /// What one iteration is.
    pub(crate) what: String,
    pub(crate) braid: Option<f64>,
    pub(crate) tokio: Option<f64>,
    pub(crate) asyncio: Option<f64>,
    pub(crate) uvloop: Option<f64>,
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

impl Row {
    pub(crate) fn braid_over_tokio(&self) -> Option<f64> {
        ratio(self.braid, self.tokio)
    }

    pub(crate) fn braid_over_asyncio(&self) -> Option<f64> {
        ratio(self.braid, self.asyncio)
    }

    pub(crate) fn braid_over_uvloop(&self) -> Option<f64> {
        ratio(self.braid, self.uvloop)
    }
}

fn python_median(run: &PythonRun, workload: &str) -> Option<f64> {
    run.results.get(workload).and_then(|r| r.median_s)
}

/// The table's rows: every criterion group with a `braid*` or `tokio*` function (one row per
/// parameter value), in bench order, with the round-trip percentiles after
/// `run_coroutine_threadsafe`.
pub(crate) fn rows(m: &Measured) -> Vec<Row> {
    let uvloop = m.uvloop.as_ref().ok();
    let (paired, _) = pair(&m.criterion);
    let mut groups: Vec<&String> = paired.keys().map(|(g, _)| g).collect();
    groups.dedup();
    let order = |group: &str| {
        let bench = m.bench_of_group.get(group).map(String::as_str);
        let bench_rank = bench
            .and_then(|b| KNOWN_BENCHES.iter().position(|k| *k == b))
            .unwrap_or(KNOWN_BENCHES.len());
        let workload_rank = KNOWN_WORKLOADS
            .iter()
            .position(|(w, _)| *w == group)
            .unwrap_or(KNOWN_WORKLOADS.len());
        (bench_rank, bench.map(str::to_owned), workload_rank)
    };
    groups.sort_by_key(|g| order(g));
    let mut rows = Vec::new();
    for group in groups {
        for ((g, value), (braid, tokio)) in paired.range((group.clone(), None)..) {
            if g != group {
                break;
            }
            let name = match value {
                Some(v) => format!("{group}/{v}"),
                None => group.clone(),
            };
            let what = KNOWN_WORKLOADS
                .iter()
                .find(|(w, _)| w == group)
                .map(|(_, what)| (*what).to_owned())
                .unwrap_or_else(|| {
                    let mut what = m
                        .bench_of_group
                        .get(group)
                        .map(|b| format!("see `benches/{b}.rs`"))
                        .unwrap_or_default();
                    if let Some(t) = tokio.as_ref().filter(|t| t.function != "tokio") {
                        let _ = write!(what, " (tokio: `{}`)", t.function);
                    }
                    what
                });
            rows.push(Row {
                what,
                braid: braid.as_ref().map(|e| e.median_s),
                tokio: tokio.as_ref().map(|e| e.median_s),
                asyncio: python_median(&m.asyncio, &name)
                    .or_else(|| python_median(&m.asyncio, group)),
                uvloop: uvloop
                    .and_then(|u| python_median(u, &name).or_else(|| python_median(u, group))),
                name,
            });
            if group == "run_coroutine_threadsafe" {
                rows.extend(latency_rows(m));
            }
        }
    }
    rows
}

/// The p50 and p99 rows of the run_coroutine_threadsafe round trip.
fn latency_rows(m: &Measured) -> Vec<Row> {
    let l = &m.latency;
    if l.braid_p50.is_none() && l.tokio_p50.is_none() {
        return Vec::new();
    }
    let n = l
        .round_trips
        .map(|n| format!(" of {n}"))
        .unwrap_or_default();
    let py = |run: Option<&PythonRun>, p99: bool| {
        run.and_then(|r| r.results.get("run_coroutine_threadsafe"))
            .and_then(|r| if p99 { r.p99_s } else { r.p50_s })
    };
    let uvloop = m.uvloop.as_ref().ok();
    vec![
        Row {
            name: "run_coroutine_threadsafe p50".to_owned(),
            what: format!("median round trip{n} (HDR histogram)"),
            braid: l.braid_p50,
            tokio: l.tokio_p50,
            asyncio: py(Some(&m.asyncio), false),
            uvloop: py(uvloop, false),
        },
        Row {
            name: "run_coroutine_threadsafe p99".to_owned(),
            what: format!("99th percentile round trip{n} (HDR histogram)"),
            braid: l.braid_p99,
            tokio: l.tokio_p99,
            asyncio: py(Some(&m.asyncio), true),
            uvloop: py(uvloop, true),
        },
    ]
}

/// Criterion entries as (group, value) -> (braid's, tokio's), plus the entries that are
/// neither (or a second braid or tokio function for the same parameter).
type Paired = BTreeMap<(String, Option<String>), (Option<CriterionEntry>, Option<CriterionEntry>)>;

fn pair(entries: &[CriterionEntry]) -> (Paired, Vec<CriterionEntry>) {
    let mut paired = Paired::new();
    let mut others = Vec::new();
    for e in entries {
        let slot = paired
            .entry((e.group.clone(), e.value.clone()))
            .or_default();
        if e.function.starts_with("braid") && slot.0.is_none() {
            slot.0 = Some(e.clone());
        } else if e.function.starts_with("tokio") && slot.1.is_none() {
            slot.1 = Some(e.clone());
        } else {
            others.push(e.clone());
        }
    }
    paired.retain(|_, (b, t)| b.is_some() || t.is_some());
    (paired, others)
}

/// A time with a unit that keeps it readable.
pub(crate) fn fmt_time(secs: Option<f64>) -> String {
    match secs {
        None => "–".to_owned(),
        Some(s) if s >= 1.0 => format!("{s:.2} s"),
        Some(s) if s >= 1e-3 => format!("{:.2} ms", s * 1e3),
        Some(s) => format!("{:.2} µs", s * 1e6),
    }
}

/// A speedup (the other runtime's time over braid's) as "N×": rounded down, to one decimal
/// below 10 and to a whole number above. Down, because a figure rounded up can cross a target
/// the unrounded value misses (49.9 printed as "50×" beside "not met"); the report, its
/// targets and the chart all print speedups through this, so they never disagree.
pub(crate) fn fmt_speedup(x: f64) -> String {
    if x < 10.0 {
        format!("{:.1}×", (x * 10.0).floor() / 10.0)
    } else {
        format!("{:.0}×", x.floor())
    }
}

/// A braid/other ratio; below 0.5 also as "N× faster".
fn fmt_ratio(r: Option<f64>) -> String {
    match r {
        None => "–".to_owned(),
        Some(r) if r < 0.5 => format!("{r:.3} ({} faster)", fmt_speedup(1.0 / r)),
        Some(r) if r > 1.0 => format!("**{r:.2}**"),
        Some(r) => format!("{r:.2}"),
    }
}

/// Everything the report is made of.
pub(crate) struct Inputs<'a> {
    pub(crate) measured: &'a Measured,
    pub(crate) rows: &'a [Row],
    pub(crate) machine: &'a Machine,
    /// The chart's path relative to the report.
    pub(crate) chart_link: &'a str,
    /// `benchmarks/NOTES.md`: what profiling found and what was changed, kept by hand.
    pub(crate) notes: Option<&'a str>,
    /// What went wrong during this run.
    pub(crate) problems: &'a [String],
    /// Where the raw results are, as the reader should type it.
    pub(crate) results_dir: &'a str,
}

/// The text of `BENCHMARKS.md`.
pub(crate) fn markdown(i: &Inputs<'_>) -> String {
    let m = i.measured;
    let mc = i.machine;
    let mut s = String::new();
    let _ = writeln!(s, "# braid benchmarks\n");
    let _ = writeln!(
        s,
        "<!-- Generated by `cargo run --release -p braid-benchmarks`; do not edit by hand \
         (write findings in benchmarks/NOTES.md, which is copied in below). -->\n"
    );
    if m.quick() {
        let _ = writeln!(
            s,
            "> **Quick run** (`--quick`): fewer and shorter samples than a full run. The numbers \
             are indicative; rerun without `--quick` on an otherwise idle machine to publish.\n"
        );
    }
    let _ = writeln!(
        s,
        "Measured until {} at commit `{}`. Every number is the median time of one iteration of the \
         workload (lower is better). A ratio is braid's time divided by the other runtime's: \
         below 1, braid is faster; **bold**, braid is slower. braid and tokio run in the same \
         bench binary with the same number of worker threads; CPython runs one event loop.\n",
        m.measured_at.as_deref().unwrap_or(&mc.date),
        mc.commit
    );

    let _ = writeln!(s, "## Machine\n");
    let memory = mc
        .memory_gib
        .map(|g| format!(", {g:.0} GiB of memory"))
        .unwrap_or_default();
    let _ = writeln!(
        s,
        "- CPU: {}, {} logical cores{memory}; Linux {}",
        mc.cpu_model, mc.cores, mc.kernel
    );
    let _ = writeln!(
        s,
        "- load average when the report was written: {} (other work on the machine skews the \
         numbers)",
        mc.load
    );
    let _ = writeln!(
        s,
        "- braid and tokio {}: {} worker threads each (`BRAID_BENCH_WORKERS`); {}",
        mc.tokio, mc.workers, mc.rustc
    );
    let uvloop = match &m.uvloop {
        Ok(run) => format!(
            "uvloop {}",
            run.loop_version.as_deref().unwrap_or("(no results)")
        ),
        Err(why) => format!("uvloop unavailable: {why}"),
    };
    let _ = writeln!(
        s,
        "- CPython {}; {uvloop}\n",
        m.asyncio
            .python
            .clone()
            .unwrap_or_else(|| mc.python.trim_start_matches("Python ").to_owned())
    );

    let _ = writeln!(s, "## Results\n");
    let _ = writeln!(
        s,
        "![braid's time as a fraction of tokio's, CPython asyncio's and uvloop's, per workload]({})\n",
        i.chart_link
    );
    let _ = writeln!(
        s,
        "| workload | one iteration | braid | tokio | asyncio | uvloop | braid/tokio | braid/asyncio | braid/uvloop |"
    );
    let _ = writeln!(s, "|---|---|--:|--:|--:|--:|--:|--:|--:|");
    for r in i.rows {
        let _ = writeln!(
            s,
            "| `{}` | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.name,
            r.what,
            fmt_time(r.braid),
            fmt_time(r.tokio),
            fmt_time(r.asyncio),
            fmt_time(r.uvloop),
            fmt_ratio(r.braid_over_tokio()),
            fmt_ratio(r.braid_over_asyncio()),
            fmt_ratio(r.braid_over_uvloop()),
        );
    }
    if i.rows.is_empty() {
        let _ = writeln!(s, "\n(No results: the benches did not run.)");
    }
    let _ = writeln!(s);

    echo_throughput(&mut s, m, i.rows);
    targets(&mut s, i.rows);
    others(&mut s, m);
    python_errors(&mut s, m);

    if !i.problems.is_empty() {
        let _ = writeln!(s, "## Problems during this run\n");
        for p in i.problems {
            let _ = writeln!(s, "- {p}");
        }
        let _ = writeln!(s);
    }
    if let Some(notes) = i.notes {
        let _ = writeln!(s, "## Findings and changes\n");
        let _ = writeln!(s, "{}\n", notes.trim());
    }
    let _ = writeln!(s, "## Reproducing\n");
    let _ = writeln!(
        s,
        "```sh\ncargo run --release -p braid-benchmarks            # full run\n\
         cargo run --release -p braid-benchmarks -- --quick # under 5 minutes\n```\n"
    );
    let _ = writeln!(
        s,
        "The command runs every criterion bench in `benches/` (braid beside tokio), every \
         `benches/python/*.py` with `python3` and, in a virtualenv under the target directory \
         where `pip install uvloop` works, with uvloop, then rewrites this file and \
         `{}`. Each bench file's header says what it measures and against what. Raw results \
         stay in `{}`.",
        i.chart_link, i.results_dir
    );
    s
}

/// The workloads that should be compared with tokio but are not, each with why: a row
/// without braid's median, a row without tokio's (unless the workload has no tokio twin by
/// design), and a workload of braid's benches with no row at all.
fn not_compared(rows: &[Row]) -> Vec<String> {
    let mut missing = Vec::new();
    for r in rows.iter().filter(|r| r.braid_over_tokio().is_none()) {
        if BRAID_ONLY_WORKLOADS.iter().any(|w| is_workload(&r.name, w)) {
            // Never compared with tokio, whatever it measured.
            continue;
        }
        let why = if r.braid.is_none() {
            "no braid median"
        } else {
            "no tokio median"
        };
        missing.push(format!("`{}` ({why})", r.name));
    }
    for (w, _) in KNOWN_WORKLOADS {
        if !rows.iter().any(|r| is_workload(&r.name, w)) {
            missing.push(format!("`{w}` (not measured)"));
        }
    }
    missing
}

fn targets(s: &mut String, rows: &[Row]) {
    let _ = writeln!(s, "## Targets\n");
    let compared: Vec<&Row> = rows
        .iter()
        .filter(|r| r.braid_over_tokio().is_some())
        .collect();
    let slower: Vec<String> = compared
        .iter()
        .filter_map(|r| {
            let x = r.braid_over_tokio()?;
            (x > 1.0).then(|| format!("`{}` ({x:.2})", r.name))
        })
        .collect();
    // Named in every verdict: a workload that was not compared can neither meet the target
    // nor be left out of "every workload" silently.
    let missing = not_compared(rows);
    let not_compared = if missing.is_empty() {
        String::new()
    } else {
        format!("; not compared: {}", missing.join(", "))
    };
    if compared.is_empty() {
        let _ = writeln!(
            s,
            "- braid at or below tokio's time: no comparison ran{not_compared}."
        );
    } else if !slower.is_empty() {
        let _ = writeln!(
            s,
            "- braid at or below tokio's time on every workload: **not met** on {} of {}: \
             {}{not_compared}.",
            slower.len(),
            compared.len(),
            slower.join(", ")
        );
    } else if missing.is_empty() {
        let _ = writeln!(
            s,
            "- braid at or below tokio's time on every workload: **met** ({} workloads).",
            compared.len()
        );
    } else {
        let _ = writeln!(
            s,
            "- braid at or below tokio's time on every workload: **unknown**: at or below on \
             the {} compared{not_compared}.",
            compared.len()
        );
    }
    for w in FIFTY_X_WORKLOADS {
        match rows
            .iter()
            .find(|r| r.name == w)
            .and_then(Row::braid_over_asyncio)
        {
            Some(x) => {
                let speedup = 1.0 / x;
                let verdict = if speedup >= 50.0 { "met" } else { "not met" };
                let _ = writeln!(
                    s,
                    "- at least 50× faster than CPython asyncio on `{w}`: **{verdict}** ({}).",
                    fmt_speedup(speedup)
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    "- at least 50× faster than CPython asyncio on `{w}`: not measured."
                );
            }
        }
    }
    let _ = writeln!(s);
}

/// Messages per second of an `echo` iteration of `messages` round trips taking `secs`.
fn rate(messages: u64, secs: Option<f64>) -> Option<f64> {
    secs.filter(|&t| t > 0.0).map(|t| messages as f64 / t)
}

fn fmt_rate(rate: Option<f64>) -> String {
    match rate {
        None => "–".to_owned(),
        Some(r) => {
            // Thousands separated by a thin space, as the workload descriptions write them.
            let digits = format!("{:.0}", r);
            let mut out = String::new();
            for (i, c) in digits.chars().enumerate() {
                if i > 0 && (digits.len() - i) % 3 == 0 {
                    out.push(' ');
                }
                out.push(c);
            }
            out
        }
    }
}

/// The `echo` row as messages per second, with braid's raw-socket server beside its streams.
fn echo_throughput(s: &mut String, m: &Measured, rows: &[Row]) {
    let (Some(row), Some(messages)) = (
        rows.iter().find(|r| r.name == "echo"),
        m.echo.messages_per_iteration,
    ) else {
        return;
    };
    let braid_tcp = m
        .criterion
        .iter()
        .find(|e| e.group == "echo" && e.function == "braid_tcp" && e.value.is_none())
        .map(|e| e.median_s);
    let tokio = rate(messages, row.tokio);
    let _ = writeln!(
        s,
        "### Echo throughput
"
    );
    let _ = writeln!(
        s,
        "`echo` as messages per second ({} round trips per iteration divided by the median \
         time; higher is better). Each server is measured on its own, driven by the same load \
         generator (a separate process with 2 threads); braid and tokio with the same worker \
         count, CPython with one loop.\n",
        fmt_rate(Some(messages as f64))
    );
    let _ = writeln!(s, "| server | messages/s | ÷ tokio's |");
    let _ = writeln!(s, "|---|--:|--:|");
    for (server, secs) in [
        ("braid, streams (`start_server`)", row.braid),
        ("braid, `TcpListener`/`TcpStream`", braid_tcp),
        ("tokio, `TcpListener`/`TcpStream`", row.tokio),
        ("CPython asyncio, streams", row.asyncio),
        ("uvloop, streams", row.uvloop),
    ] {
        let r = rate(messages, secs);
        let vs = match (r, tokio) {
            (Some(r), Some(t)) if t > 0.0 => format!("{:.2}", r / t),
            _ => "–".to_owned(),
        };
        let _ = writeln!(s, "| {server} | {} | {vs} |", fmt_rate(r));
    }
    let _ = writeln!(s);
}

fn others(s: &mut String, m: &Measured) {
    let (_, others) = pair(&m.criterion);
    if others.is_empty() {
        return;
    }
    let _ = writeln!(s, "## Other measurements\n");
    let _ = writeln!(
        s,
        "Criterion functions named neither `braid…` nor `tokio…` (or a second one of either in \
         the same group):\n"
    );
    let _ = writeln!(s, "| group | function | median |");
    let _ = writeln!(s, "|---|---|--:|");
    for e in others {
        let function = match &e.value {
            Some(v) => format!("{}/{v}", e.function),
            None => e.function.clone(),
        };
        let _ = writeln!(
            s,
            "| `{}` | `{function}` | {} |",
            e.group,
            fmt_time(Some(e.median_s))
        );
    }
    let _ = writeln!(s);
}

fn python_errors(s: &mut String, m: &Measured) {
    let mut lines = Vec::new();
    for (loop_name, run) in [
        ("asyncio", Some(&m.asyncio)),
        ("uvloop", m.uvloop.as_ref().ok()),
    ] {
        if let Some(run) = run {
            for (workload, why) in &run.errors {
                lines.push(format!("- {loop_name} `{workload}`: {why}"));
            }
        }
    }
    if !lines.is_empty() {
        let _ = writeln!(s, "## Python workloads that failed\n");
        for l in lines {
            let _ = writeln!(s, "{l}");
        }
        let _ = writeln!(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::{EchoSummary, Latency, PythonResult};

    fn entry(group: &str, function: &str, median_s: f64) -> CriterionEntry {
        CriterionEntry {
            group: group.to_owned(),
            function: function.to_owned(),
            value: None,
            median_s,
        }
    }

    fn python(results: &[(&str, f64)]) -> PythonRun {
        PythonRun {
            results: results
                .iter()
                .map(|&(name, median)| {
                    let r = PythonResult {
                        median_s: Some(median),
                        ..PythonResult::default()
                    };
                    (name.to_owned(), r)
                })
                .collect(),
            ..PythonRun::default()
        }
    }

    fn measured(criterion: Vec<CriterionEntry>, asyncio: PythonRun) -> Measured {
        Measured {
            criterion,
            bench_of_group: [("timers", "scheduler"), ("spawn_many_local", "scheduler")]
                .into_iter()
                .map(|(g, b)| (g.to_owned(), b.to_owned()))
                .collect(),
            latency: Latency::default(),
            echo: EchoSummary::default(),
            asyncio,
            uvloop: Err("not tried".to_owned()),
            rust_mode: Some("quick".to_owned()),
            python_mode: Some("full".to_owned()),
            measured_at: Some("2026-01-02 03:04 UTC".to_owned()),
        }
    }

    #[test]
    fn rows_pair_braid_with_tokio_in_workload_order_and_take_the_python_medians() {
        let m = measured(
            vec![
                entry("timers", "braid", 0.003),
                entry("timers", "tokio", 0.002),
                entry("spawn_many_local", "tokio_spawn", 0.004),
                entry("spawn_many_local", "braid", 0.002),
            ],
            python(&[("spawn_many_local", 0.2)]),
        );
        let rows = rows(&m);
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["spawn_many_local", "timers"]);
        assert_eq!(rows[0].braid_over_tokio(), Some(0.5));
        assert_eq!(rows[0].braid_over_asyncio(), Some(0.01));
        assert_eq!(rows[0].braid_over_uvloop(), None);
        assert_eq!(rows[1].braid_over_tokio(), Some(1.5));
        assert_eq!(rows[1].asyncio, None);
        assert!(m.quick(), "one half measured quick makes the report quick");
    }

    #[test]
    fn functions_of_neither_runtime_are_listed_apart_not_as_rows() {
        let m = measured(
            vec![
                entry("queue", "std_mpsc", 0.001),
                entry("lock", "braid", 0.002),
                entry("lock", "tokio_mutex", 0.004),
                entry("lock", "parking_lot", 0.001),
            ],
            PythonRun::default(),
        );
        let rows = rows(&m);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].name, "lock");
        assert!(
            rows[0].what.contains("tokio: `tokio_mutex`"),
            "{}",
            rows[0].what
        );
        let (_, others) = pair(&m.criterion);
        let others: Vec<&str> = others.iter().map(|e| e.function.as_str()).collect();
        assert_eq!(others, ["std_mpsc", "parking_lot"]);
    }

    #[test]
    fn the_report_names_the_workloads_where_braid_is_slower_and_says_quick() {
        let m = measured(
            vec![
                entry("timers", "braid", 0.003),
                entry("timers", "tokio", 0.002),
                entry("spawn_many_local", "braid", 0.002),
                entry("spawn_many_local", "tokio", 0.004),
            ],
            python(&[("spawn_many_local", 0.2)]),
        );
        let rows = rows(&m);
        let machine = Machine::describe(std::path::Path::new("."), "python3");
        let text = markdown(&Inputs {
            measured: &m,
            rows: &rows,
            machine: &machine,
            chart_link: "docs/benchmarks.svg",
            notes: Some("We changed the timer wheel."),
            problems: &["cargo bench --bench sync failed".to_owned()],
            results_dir: "target/braid-benchmarks",
        });
        assert!(text.contains("**Quick run**"), "{text}");
        assert!(
            text.contains("Measured until 2026-01-02 03:04 UTC"),
            "{text}"
        );
        assert!(
            text.contains("**not met** on 1 of 2: `timers` (1.50)"),
            "{text}"
        );
        assert!(
            text.contains("`spawn_many_local`: **met** (100×)"),
            "{text}"
        );
        assert!(
            text.contains("`call_soon_threadsafe`: not measured"),
            "{text}"
        );
        assert!(text.contains("| `timers` | 100 000 concurrent sleeps of 0–10 ms | 3.00 ms | 2.00 ms | – | – | **1.50** |"), "{text}");
        assert!(text.contains("uvloop unavailable: not tried"), "{text}");
        assert!(text.contains("We changed the timer wheel."), "{text}");
        assert!(text.contains("- cargo bench --bench sync failed"), "{text}");
        assert!(text.contains("![braid's time"), "{text}");
    }

    /// A row of `name` with braid's and tokio's medians and CPython asyncio's.
    fn row(name: &str, braid: Option<f64>, tokio: Option<f64>, asyncio: Option<f64>) -> Row {
        Row {
            name: name.to_owned(),
            braid,
            tokio,
            asyncio,
            ..Row::default()
        }
    }

    #[test]
    fn speedups_are_rounded_down_so_that_they_never_cross_the_fifty_times_target() {
        // 49.9× is not met; printed as "50×" (rounded to nearest), it read as met.
        let rows = [
            row("spawn_many_local", Some(0.001), Some(0.002), Some(0.0499)),
            row("spawn_many_remote", Some(0.001), Some(0.002), Some(0.0501)),
        ];
        let mut s = String::new();
        targets(&mut s, &rows);
        assert!(s.contains("`spawn_many_local`: **not met** (49×)."), "{s}");
        assert!(s.contains("`spawn_many_remote`: **met** (50×)."), "{s}");
        // The table's ratios follow the same rule: one decimal below 10, never up.
        assert_eq!(fmt_ratio(Some(0.001 / 0.0499)), "0.020 (49× faster)");
        assert_eq!(fmt_ratio(Some(1.0 / 2.79)), "0.358 (2.7× faster)");
        assert_eq!(fmt_ratio(Some(0.01)), "0.010 (100× faster)");
        assert_eq!(fmt_ratio(Some(0.6)), "0.60");
    }

    #[test]
    fn workloads_without_a_braid_or_tokio_median_are_named_and_not_counted_as_met() {
        // Every workload braid's benches run, braid faster, and the process pool ones,
        // which have no tokio twin.
        let mut rows: Vec<Row> = KNOWN_WORKLOADS
            .iter()
            .map(|(w, _)| row(w, Some(1.0), Some(2.0), None))
            .collect();
        rows.push(row("process_pool_cpu", Some(0.5), None, Some(0.5)));
        // Its braid median missing too: still nothing to compare with tokio.
        rows.push(row("process_pool_tiny", None, None, Some(1.4)));
        let mut s = String::new();
        targets(&mut s, &rows);
        assert!(
            s.contains("on every workload: **met** (10 workloads)."),
            "{s}"
        );
        assert!(!s.contains("not compared"), "{s}");

        // tokio's timers missing, braid's ping_pong missing, chained_spawn not run at all.
        rows[5].tokio = None;
        rows[2].braid = None;
        rows.remove(4);
        let mut s = String::new();
        targets(&mut s, &rows);
        assert!(!s.contains("**met**"), "{s}");
        assert!(
            s.contains(
                "on every workload: **unknown**: at or below on the 7 compared; not compared: \
                 `ping_pong` (no braid median), `timers` (no tokio median), \
                 `chained_spawn` (not measured)."
            ),
            "{s}"
        );

        // Slower somewhere: not met, and the gaps still named.
        rows[0].braid = Some(3.0);
        let mut s = String::new();
        targets(&mut s, &rows);
        assert!(
            s.contains(
                "**not met** on 1 of 7: `spawn_many_local` (1.50); not compared: `ping_pong`"
            ),
            "{s}"
        );
    }

    #[test]
    fn echo_throughput_turns_the_echo_medians_into_messages_per_second() {
        let mut m = measured(
            vec![
                entry("echo", "braid", 0.2),
                entry("echo", "braid_tcp", 0.1),
                entry("echo", "tokio", 0.1),
            ],
            python(&[("echo", 0.5)]),
        );
        m.echo.messages_per_iteration = Some(10_000);
        let rows = rows(&m);
        assert_eq!(rows[0].name, "echo");
        assert!(
            rows[0].what.starts_with("TCP echo server"),
            "{}",
            rows[0].what
        );
        let mut s = String::new();
        echo_throughput(&mut s, &m, &rows);
        assert!(s.contains("(10 000 round trips per iteration"), "{s}");
        assert!(
            s.contains("| braid, streams (`start_server`) | 50 000 | 0.50 |"),
            "{s}"
        );
        assert!(
            s.contains("| braid, `TcpListener`/`TcpStream` | 100 000 | 1.00 |"),
            "{s}"
        );
        assert!(
            s.contains("| CPython asyncio, streams | 20 000 | 0.20 |"),
            "{s}"
        );
        assert!(s.contains("| uvloop, streams | – | – |"), "{s}");

        m.echo.messages_per_iteration = None;
        let mut s = String::new();
        echo_throughput(&mut s, &m, &rows);
        assert!(s.is_empty(), "no count, no section: {s}");
    }
}

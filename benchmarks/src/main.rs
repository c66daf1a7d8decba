//! `braid-benchmarks`: one command that measures braid beside tokio, CPython asyncio and uvloop
//! on the same machine in one run, and writes `BENCHMARKS.md` with an SVG chart of the ratios.
//!
//! ```text
//! cargo run --release -p braid-benchmarks            # full run, about 10 minutes on 2 cores
//! cargo run --release -p braid-benchmarks -- --quick # under 5 minutes, labelled quick
//! ```
//!
//! What it does, in order:
//!
//! 1. Runs every criterion bench in `benches/*.rs` (`cargo bench --bench NAME`) with
//!    `CRITERION_HOME` pointed at a fresh directory under the target directory, and reads each
//!    benchmark's median from criterion's `estimates.json`. In every group, the function whose
//!    name starts with `braid` is braid's and the one starting with `tokio` is tokio's; other
//!    functions are listed on their own. The benches also write what criterion does not carry
//!    (the round-trip percentiles; the echo bench's message count and executable) to
//!    `BRAID_BENCH_SUMMARY_DIR`.
//! 2. Runs every `benches/python/*.py` whose name does not start with `_` with plain `python3`
//!    (the asyncio column) and, in a virtualenv under the target directory where
//!    `pip install uvloop` works, with `--loop uvloop`; each prints one JSON object (see
//!    `benches/python/_common.py`). `echo.py` is handed the echo bench's executable
//!    (`BRAID_ECHO_LOAD_GENERATOR`, from `summary/echo.json`) as its load generator, so that
//!    the asyncio and uvloop servers face the same client as braid's and tokio's.
//! 3. Writes `BENCHMARKS.md` (the table, the ratios, the echo throughput in messages per
//!    second, the targets, the machine and the date, and
//!    `benchmarks/NOTES.md` if present) and `docs/benchmarks.svg`.
//!
//! `--quick` sets `BRAID_BENCH_QUICK=1` for the benches (fewer, shorter samples) and `--quick`
//! for the Python scripts. `--skip-rust` / `--skip-python` reuse the previous run's results of
//! that half, so the report can be rewritten without measuring again. `--only echo` runs one
//! bench and its Python twin (with `--out`/`--chart` elsewhere, to check a workload without
//! touching the published report).

mod chart;
mod machine;
mod report;
mod results;
mod runner;

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

/// Command line of `braid-benchmarks`.
#[derive(Parser, Debug)]
#[command(
    name = "braid-benchmarks",
    about = "Runs braid's comparison benchmarks (braid, tokio, CPython asyncio, uvloop) and writes BENCHMARKS.md"
)]
struct Args {
    /// Fewer and shorter samples: the whole run takes under 5 minutes on a 2-core machine
    /// once built; the report says it is a quick run.
    #[arg(long)]
    quick: bool,
    /// Do not run the Rust benches: reuse the results of the previous run.
    #[arg(long)]
    skip_rust: bool,
    /// Do not run the Python scripts: reuse the results of the previous run.
    #[arg(long)]
    skip_python: bool,
    /// Run only this bench and Python script (a file stem in `benches/` and
    /// `benches/python/`, such as `echo`; repeatable). The report then holds only their
    /// results: write it elsewhere with `--out` and `--chart` to check one workload.
    #[arg(long, value_name = "NAME")]
    only: Vec<String>,
    /// Do not try to install uvloop (the uvloop column then says so).
    #[arg(long)]
    no_uvloop: bool,
    /// The Python interpreter of the asyncio column (and of the uvloop virtualenv).
    #[arg(long, default_value = "python3")]
    python: String,
    /// Where to write the report [default: BENCHMARKS.md in the workspace root].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Where to write the chart [default: docs/benchmarks.svg in the workspace root].
    #[arg(long)]
    chart: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let started = Instant::now();
    let paths = runner::Paths::discover();
    let mut problems = Vec::new();

    if !args.skip_rust {
        problems.extend(runner::run_rust_benches(&paths, args.quick, &args.only));
    }
    if !args.skip_python {
        problems.extend(runner::run_python(
            &paths,
            &args.python,
            args.quick,
            !args.no_uvloop,
            &args.only,
        ));
    }

    let measured = results::collect(&paths);
    let mut machine = machine::Machine::describe(&paths.root, &args.python);
    let measured_now = !(args.skip_rust && args.skip_python);
    if measured_now {
        // Normally there already (the runs write their results in it).
        let _ = std::fs::create_dir_all(&paths.results);
    }
    problems.extend(machine.tie_to_measuring_run(&paths.results.join("measured-by"), measured_now));
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| paths.root.join("BENCHMARKS.md"));
    let chart_path = args
        .chart
        .clone()
        .unwrap_or_else(|| paths.root.join("docs").join("benchmarks.svg"));
    let rows = report::rows(&measured);

    if let Some(dir) = chart_path.parent() {
        if let Err(e) = std::fs::create_dir_all(dir) {
            problems.push(format!("could not create {}: {e}", dir.display()));
        }
    }
    if let Err(e) = chart::draw(&chart_path, &rows, &machine, measured.quick()) {
        problems.push(format!("could not draw {}: {e}", chart_path.display()));
    }
    let chart_link = relative_link(&out, &chart_path);
    let notes = std::fs::read_to_string(paths.root.join("benchmarks").join("NOTES.md")).ok();
    let text = report::markdown(&report::Inputs {
        measured: &measured,
        rows: &rows,
        machine: &machine,
        chart_link: &chart_link,
        notes: notes.as_deref(),
        problems: &problems,
        results_dir: &relative_link(&paths.root.join("Cargo.toml"), &paths.results),
    });
    if let Err(e) = std::fs::write(&out, text) {
        eprintln!("could not write {}: {e}", out.display());
        return ExitCode::FAILURE;
    }

    let elapsed = started.elapsed().as_secs_f64();
    eprintln!(
        "\nwrote {} and {} in {:.0} s ({} mode)",
        out.display(),
        chart_path.display(),
        elapsed,
        if measured.quick() { "quick" } else { "full" }
    );
    for p in &problems {
        eprintln!("problem: {p}");
    }
    for row in rows
        .iter()
        .filter(|r| r.braid_over_tokio().is_some_and(|x| x > 1.0))
    {
        eprintln!(
            "braid slower than tokio: {} (braid/tokio {:.2})",
            row.name,
            row.braid_over_tokio().unwrap_or(f64::NAN)
        );
    }
    if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The path of `target` as a link from a document at `document` (relative when both are under
/// the same directory tree, as BENCHMARKS.md and docs/ are).
fn relative_link(document: &std::path::Path, target: &std::path::Path) -> String {
    let base = document.parent().unwrap_or(std::path::Path::new(""));
    match target.strip_prefix(base) {
        Ok(rel) => rel.display().to_string(),
        Err(_) => target.display().to_string(),
    }
}

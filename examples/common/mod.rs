//! What the teaching examples share: their one argument, `--scale F`.

/// Parses `--scale F` (or `--scale=F`) for the example `name`: F >= 0 multiplies every
/// duration (default 1), so `--scale 0.01` runs an example in a fraction of the time.
/// Prints the usage and exits 0 for `--help`, or 2 for a bad argument.
pub(crate) fn scale_arg(name: &str) -> f64 {
    let usage =
        format!("usage: {name} [--scale F]   (F >= 0 multiplies every duration; default 1)");
    match parse_scale(&usage) {
        Ok(scale) => scale,
        Err(message) => {
            eprintln!("{name}: {message}\n{usage}");
            std::process::exit(2);
        }
    }
}

fn parse_scale(usage: &str) -> Result<f64, String> {
    let mut scale = 1.0;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = match arg.as_str() {
            "-h" | "--help" => {
                println!("{usage}");
                std::process::exit(0);
            }
            "--scale" => args.next().ok_or("--scale needs a value")?,
            other => match other.strip_prefix("--scale=") {
                Some(v) => v.to_owned(),
                None => return Err(format!("unknown argument {other:?}")),
            },
        };
        scale = match value.parse::<f64>() {
            Ok(f) if f.is_finite() && f >= 0.0 => f,
            _ => {
                return Err(format!(
                    "--scale: expected a finite number >= 0, got {value:?}"
                ))
            }
        };
    }
    Ok(scale)
}

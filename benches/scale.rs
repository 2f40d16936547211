//! `cargo bench --bench scale -- [--tokens N] [--per-namespace N] [--sustain 60s]
//! [--short-lifetime 30s] [--operator-arg=--flag ...]`: the scale benchmark (see
//! tests/support/scale.rs). Against a real cluster: `E2E_KUBECONFIG=path cargo bench ...`.

#[path = "../tests/support/scale.rs"]
mod scale;

use std::time::Duration;

fn main() {
    let mut options = scale::Options::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) => (flag.to_string(), Some(value.to_string())),
            None => (arg.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .unwrap_or_else(|| panic!("{flag} needs a value"))
        };
        let duration =
            |text: String| humantime::parse_duration(&text).expect("a duration like 30s");
        match flag.as_str() {
            "--tokens" => options.tokens = value().parse().expect("a number"),
            "--per-namespace" => options.per_namespace = value().parse().expect("a number"),
            "--sustain" => options.sustain = duration(value()),
            "--short-lifetime" => options.short_lifetime = duration(value()),
            "--idle" => options.idle = duration(value()),
            "--operator-arg" => options.operator_args.push(value()),
            "--quiet" => options.verbose = false,
            // cargo bench passes --bench; a filter argument may follow.
            _ => {}
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let report = runtime.block_on(scale::run(options));
    report.print();
    let _ = Duration::ZERO;
}

//! `kube-test-apiserver --port 0 --crd crds/oauthtoken.yaml --kubeconfig-out /tmp/kc`
//!
//! Prints the URL and serves until SIGTERM/SIGINT.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use kube_test_apiserver::{Options, TestApiServer};

#[derive(Parser, Debug)]
#[command(about = "In-memory Kubernetes API server for tests (plain HTTP on 127.0.0.1)")]
struct Args {
    /// Port on 127.0.0.1 (0 = pick a free one).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// CRD YAML file(s) to pre-install (repeatable).
    #[arg(long = "crd")]
    crds: Vec<PathBuf>,
    /// Write a kubeconfig for this server here.
    #[arg(long)]
    kubeconfig_out: Option<PathBuf>,
    /// Default namespace of the written kubeconfig.
    #[arg(long, default_value = "default")]
    namespace: String,
    /// Watch events kept for resumption.
    #[arg(long, default_value_t = 2000)]
    watch_history: usize,
    /// Seconds between watch bookmarks.
    #[arg(long, default_value_t = 30)]
    bookmark_interval_secs: u64,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let crds = args
        .crds
        .iter()
        .map(std::fs::read_to_string)
        .collect::<Result<Vec<_>, _>>()?;
    let server = TestApiServer::start(Options {
        crds,
        watch_history: args.watch_history,
        bookmark_interval: Duration::from_secs(args.bookmark_interval_secs),
        port: args.port,
    })
    .await?;
    if let Some(path) = &args.kubeconfig_out {
        server.write_kubeconfig(path, &args.namespace)?;
    }
    println!("{}", server.url());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    server.shutdown().await;
    Ok(())
}

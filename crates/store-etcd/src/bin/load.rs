//! pr-etcd-load: one host's clients running persistent-reservation commands on one logical
//! unit of an etcd store, recording every call (for the linearizability checker) or reporting
//! requests/s and latency. Used by the store's multi-host tests (each host a separate process)
//! and to measure the store.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use pr_engine::EngineConfig;
use pr_store::{LuId, Store};
use pr_store_etcd::history::{self, Ending, Event};
use pr_store_etcd::workload::{self, Mix, Rng};
use pr_store_etcd::{EtcdConfig, EtcdStore};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum MixArg {
    /// Registrations, reservations, preemptions, clears and reads.
    Cluster,
    /// READ KEYS only.
    ReadKeys,
    /// REGISTER AND IGNORE EXISTING KEY, each a state change.
    Register,
}

/// Runs PR commands from THREADS clients (each its own I_T nexus) of one host on one logical
/// unit of an etcd store.
///
/// Example: pr-etcd-load --endpoints http://127.0.0.1:2379 --host-id a --first-nexus 0
/// --threads 2 --ops 100 --history a.jsonl
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// etcd client URLs, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    /// Key prefix of the store.
    #[arg(long, default_value = "/pr-helper/")]
    prefix: String,
    /// This host's id in the store's command records.
    #[arg(long)]
    host_id: String,
    /// The logical unit.
    #[arg(long, default_value = "naa.600140500000000000000000000e7cd0")]
    lu: String,
    /// Number of the first nexus of this host; its threads use the following ones.
    #[arg(long, default_value_t = 0)]
    first_nexus: u16,
    /// Nexuses across all hosts (keys PREEMPT picks its victims from).
    #[arg(long, default_value_t = 0)]
    all_nexuses: u16,
    /// Client threads, each its own I_T nexus.
    #[arg(long, default_value_t = 1)]
    threads: u16,
    /// Commands per thread.
    #[arg(long, default_value_t = 100)]
    ops: u64,
    /// The command mix.
    #[arg(long, value_enum, default_value = "cluster")]
    mix: MixArg,
    /// Seed of the command mix.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write every call (JSON lines) here.
    #[arg(long)]
    history: Option<PathBuf>,
    /// Wait (at most 60 s) for this file to exist before the first command; "ready" is printed
    /// on stdout once the store is open.
    #[arg(long)]
    start_file: Option<PathBuf>,
    /// Stop (after the command running) once this file exists; --ops still bounds the run.
    #[arg(long)]
    stop_file: Option<PathBuf>,
    /// Store command timeout, ms.
    #[arg(long, default_value_t = 2000)]
    command_timeout_ms: u64,
    /// Store request timeout, ms.
    #[arg(long, default_value_t = 1000)]
    request_timeout_ms: u64,
    /// Pause between a thread's commands, ms.
    #[arg(long, default_value_t = 0)]
    pause_ms: u64,
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(args) {
        eprintln!("pr-etcd-load: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<(), String> {
    let lu = LuId::new(args.lu.clone()).map_err(|e| e.to_string())?;
    let mut config = EtcdConfig::new(args.endpoints.clone());
    config.prefix = args.prefix.clone();
    config.host_id = Some(args.host_id.clone());
    config.command_timeout = Duration::from_millis(args.command_timeout_ms);
    config.request_timeout = Duration::from_millis(args.request_timeout_ms);
    let store = Arc::new(EtcdStore::open(config).map_err(|e| e.to_string())?);
    println!("ready");
    let _ = std::io::stdout().flush();
    if let Some(f) = &args.start_file {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !f.exists() {
            if Instant::now() >= deadline {
                return Err(format!("{} did not appear within 60 s", f.display()));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let mix = match args.mix {
        MixArg::Cluster => Mix::Cluster,
        MixArg::ReadKeys => Mix::ReadKeys,
        MixArg::Register => Mix::Register,
    };
    let all = args.all_nexuses.max(args.first_nexus + args.threads);
    let engine = EngineConfig::default();
    let t0 = Instant::now();
    let events: Vec<Event> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..args.threads)
            .map(|t| {
                let (store, lu, engine, args) = (&store, &lu, &engine, &args);
                s.spawn(move || {
                    let me = args.first_nexus + t;
                    let nexus = workload::nexus(me);
                    let mut rng = Rng::new(args.seed ^ (u64::from(me) << 20));
                    let mut out = Vec::with_capacity(args.ops as usize);
                    for n in 0..args.ops {
                        if args.stop_file.as_ref().is_some_and(|f| f.exists()) {
                            break;
                        }
                        let (cdb, params) = workload::command(&mut rng, mix, me, all, n);
                        let invoke = history::now();
                        let r = store.execute(lu, &nexus, &cdb, &params, engine);
                        let ret = history::now();
                        out.push(Event {
                            client: format!("{}/{t}", args.host_id),
                            nexus: nexus.clone(),
                            cdb,
                            params,
                            invoke,
                            ret,
                            result: Ending::of(&r),
                        });
                        if args.pause_ms > 0 {
                            std::thread::sleep(Duration::from_millis(args.pause_ms));
                        }
                    }
                    out
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_default())
            .collect()
    });
    let elapsed = t0.elapsed();
    if let Some(p) = &args.history {
        let f = std::fs::File::create(p).map_err(|e| format!("{}: {e}", p.display()))?;
        history::write(std::io::BufWriter::new(f), &events)
            .map_err(|e| format!("{}: {e}", p.display()))?;
    }
    let ok = events
        .iter()
        .filter(|e| matches!(e.result, Ending::Ok(_)))
        .count();
    let mut lat: Vec<Duration> = events.iter().map(Event::latency).collect();
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let st = store.statistics();
    println!(
        "done commands={} ok={ok} errors={} elapsed_ms={} per_s={:.0} p50_us={} p99_us={} \
         transactions={} conflicts={} retries={} deduplicated={}",
        events.len(),
        events.len() - ok,
        elapsed.as_millis(),
        events.len() as f64 / elapsed.as_secs_f64().max(1e-9),
        pct(0.5).as_micros(),
        pct(0.99).as_micros(),
        st.transactions,
        st.conflicts,
        st.retries,
        st.deduplicated
    );
    Ok(())
}

//! Durable PR OUT/s of the SQLite store with group commit against one transaction and one
//! fsync per command, at 1, 16 and 64 client threads.
//!
//! `cargo run -p pr-store --release --example group_commit [DIR] [COMMANDS_PER_RUN]`
//! (DIR defaults to a new directory under the system temporary directory; the file system
//! matters: use the one the store will live on).

use std::path::PathBuf;

use pr_store::bench::pr_out_rate;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = match args.next() {
        Some(d) => PathBuf::from(d),
        None => std::env::temp_dir().join(format!("pr-store-bench-{}", std::process::id())),
    };
    let total: usize = args.next().map(|n| n.parse()).transpose()?.unwrap_or(2048);
    std::fs::create_dir_all(&dir)?;
    println!("store in {}, about {total} commands per run", dir.display());
    println!("threads  one-fsync-per-command  group-committed  gain  commands/fsync");
    for threads in [1, 16, 64] {
        let per_thread = (total / threads).max(1);
        let single = pr_out_rate(&dir, threads, per_thread, false)?;
        let group = pr_out_rate(&dir, threads, per_thread, true)?;
        println!(
            "{threads:>7}  {:>15.0} PR OUT/s  {:>9.0} PR OUT/s  {:>5.1}×  {:>14.1}",
            single.per_second(),
            group.per_second(),
            group.per_second() / single.per_second(),
            group.batch()
        );
    }
    Ok(())
}

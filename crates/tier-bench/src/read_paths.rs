//! How a disk hit should read its record: the way tier-disk reads
//! (`preadv2` with `RWF_NOWAIT` on the async worker, the blocking pool only
//! when the page cache cannot answer) against the other ways issue 13 names,
//! on the same records with the same checks from the same client tasks:
//! every read on the blocking pool (what v1 did), a few dedicated I/O threads
//! that take requests in batches, and io_uring (one ring thread, through
//! `tokio-uring`, with the `peers` feature).
//!
//! Each way reads records laid out as the tier lays them out (head, then
//! each block and its checksum) from one file opened once, page cache warm
//! and then cold (the file's pages dropped with `posix_fadvise(DONTNEED)`
//! before the pass), and reports reads per second and the process's CPU
//! time per read (user + system from `/proc/self/stat`: a proxy pays for a
//! thread hop in CPU, not only in latency).

use std::fmt::Write as _;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{RngExt, SeedableRng};
use tokio::runtime::Runtime;
use tokio::sync::{mpsc, oneshot};

use crate::disk_raw::{check_record, write_records, Records};
use crate::workload::{SizeClass, Workload};

/// Client tasks issuing reads at once (a proxy's connections).
const CLIENTS: usize = 16;
/// Dedicated I/O threads in the thread-pool way.
const IO_THREADS: usize = 2;
/// Requests an I/O thread takes from its queue at most before answering.
const BATCH: usize = 32;

/// One way to read a record.
#[derive(Clone)]
enum Way {
    /// `preadv2(RWF_NOWAIT)` on the worker; the blocking pool on `EAGAIN`.
    NoWait,
    /// Every read on tokio's blocking pool.
    Pool,
    /// Dedicated threads, each with its own queue, taken in batches.
    Threads(Arc<Vec<mpsc::UnboundedSender<Request>>>),
    /// One io_uring ring thread.
    #[cfg(feature = "peers")]
    Uring(mpsc::UnboundedSender<Request>),
}

struct Request {
    at: u64,
    len: usize,
    done: oneshot::Sender<std::io::Result<Vec<u8>>>,
}

impl Way {
    fn name(&self) -> &'static str {
        match self {
            Way::NoWait => {
                "tier-disk's way: preadv2(RWF_NOWAIT) on the worker, blocking pool on EAGAIN"
            }
            Way::Pool => "every read on tokio's blocking pool (v1's way)",
            Way::Threads(_) => "2 dedicated I/O threads, requests taken in batches of up to 32",
            #[cfg(feature = "peers")]
            Way::Uring(_) => {
                "io_uring: one ring thread (tokio-uring), submissions batched per tick"
            }
        }
    }

    async fn read(
        &self,
        file: &Arc<File>,
        at: u64,
        len: usize,
        n: u64,
    ) -> std::io::Result<(Vec<u8>, bool)> {
        match self {
            Way::NoWait => match read_nowait(file, at, len) {
                Some(buf) => Ok((buf, false)),
                None => Ok((on_pool(file, at, len).await?, true)),
            },
            Way::Pool => Ok((on_pool(file, at, len).await?, true)),
            Way::Threads(queues) => {
                let queue = &queues[(n % queues.len() as u64) as usize];
                Ok((ask(queue, at, len).await?, true))
            }
            #[cfg(feature = "peers")]
            Way::Uring(queue) => Ok((ask(queue, at, len).await?, true)),
        }
    }
}

/// A read on tokio's blocking pool.
async fn on_pool(file: &Arc<File>, at: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let file = file.clone();
    tokio::task::spawn_blocking(move || pread(&file, at, len))
        .await
        .map_err(std::io::Error::other)?
}

/// A read queued to an I/O thread, answered through a oneshot.
async fn ask(
    queue: &mpsc::UnboundedSender<Request>,
    at: u64,
    len: usize,
) -> std::io::Result<Vec<u8>> {
    let (done, wait) = oneshot::channel();
    let _ = queue.send(Request { at, len, done });
    wait.await.map_err(std::io::Error::other)?
}

fn pread(file: &File, at: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, at)?;
    Ok(buf)
}

/// The record if the page cache holds all of it, as tier-disk reads.
fn read_nowait(file: &File, at: u64, len: usize) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        let mut slices = [std::io::IoSliceMut::new(&mut buf[done..])];
        match rustix::io::preadv2(
            file,
            &mut slices,
            at + done as u64,
            rustix::io::ReadWriteFlags::NOWAIT,
        ) {
            Ok(n) if n > 0 => done += n,
            _ => return None,
        }
    }
    Some(buf)
}

/// Dedicated I/O threads: each blocks for one request, then takes what else
/// is queued (up to a batch) before reading them all and answering.
fn start_threads(file: &Arc<File>) -> (Way, Vec<std::thread::JoinHandle<()>>) {
    let mut queues = Vec::new();
    let mut threads = Vec::new();
    for _ in 0..IO_THREADS {
        let (tx, mut rx) = mpsc::unbounded_channel::<Request>();
        let file = file.clone();
        queues.push(tx);
        threads.push(std::thread::spawn(move || {
            let mut batch = Vec::with_capacity(BATCH);
            while let Some(first) = rx.blocking_recv() {
                batch.push(first);
                while batch.len() < BATCH {
                    match rx.try_recv() {
                        Ok(r) => batch.push(r),
                        Err(_) => break,
                    }
                }
                for r in batch.drain(..) {
                    let _ = r.done.send(pread(&file, r.at, r.len));
                }
            }
        }));
    }
    (Way::Threads(Arc::new(queues)), threads)
}

/// One ring thread: tokio-uring's runtime submits every read queued in a
/// tick with one `io_uring_enter`, and completes them as the ring reports.
#[cfg(feature = "peers")]
fn start_uring(path: &Path) -> std::io::Result<(Way, std::thread::JoinHandle<()>)> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Request>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let path = path.to_path_buf();
    let thread = std::thread::spawn(move || {
        tokio_uring::start(async move {
            let file = match tokio_uring::fs::File::open(&path).await {
                Ok(f) => {
                    let _ = ready_tx.send(Ok(()));
                    std::rc::Rc::new(f)
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            while let Some(r) = rx.recv().await {
                let file = file.clone();
                tokio_uring::spawn(async move {
                    let (res, mut buf) = file.read_exact_at(vec![0u8; r.len], r.at).await;
                    buf.truncate(r.len);
                    let _ = r.done.send(res.map(|()| buf));
                });
            }
        });
    });
    ready_rx.recv().map_err(std::io::Error::other)??;
    Ok((Way::Uring(tx), thread))
}

/// This process's CPU time (user + system) so far, read as the proxy
/// section reads the proxy's.
fn process_cpu() -> Duration {
    let ticks = crate::proxy_bench::cpu_ticks(std::process::id()).map_or(0, |(_, all)| all);
    Duration::from_secs_f64(ticks as f64 / crate::proxy_bench::clock_ticks_per_second())
}

/// Reads per second, CPU per read, and the share that hopped threads.
struct Figures {
    per_sec: f64,
    cpu_us: f64,
    hopped: f64,
}

/// `reads` random records read by `CLIENTS` tasks through `way`, each
/// record's checksums and first bytes checked.
fn pass(
    rt: &Runtime,
    way: &Way,
    file: &Arc<File>,
    recs: &Arc<Records>,
    reads: u64,
) -> std::io::Result<Figures> {
    let per_task = reads / CLIENTS as u64;
    let cpu0 = process_cpu();
    let started = Instant::now();
    let results: Vec<std::io::Result<u64>> = rt.block_on(async {
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|t| {
                let (way, file, recs) = (way.clone(), file.clone(), recs.clone());
                tokio::spawn(async move {
                    let mut rng = rand::rngs::SmallRng::seed_from_u64(t as u64 + 7);
                    let mut hops = 0u64;
                    for _ in 0..per_task {
                        let i = rng.random_range(0..recs.offsets.len());
                        let (at, len, body_len) = recs.offsets[i];
                        let (buf, hopped) = way.read(&file, at, len, i as u64).await?;
                        check_record(&buf, body_len, i as u64)?;
                        hops += u64::from(hopped);
                    }
                    Ok::<u64, std::io::Error>(hops)
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.map_err(std::io::Error::other).and_then(|r| r));
        }
        out
    });
    let elapsed = started.elapsed();
    let cpu = process_cpu().saturating_sub(cpu0);
    let mut hops = 0;
    for r in results {
        hops += r?;
    }
    let done = per_task * CLIENTS as u64;
    Ok(Figures {
        per_sec: done as f64 / elapsed.as_secs_f64().max(1e-9),
        cpu_us: cpu.as_secs_f64() * 1e6 / done.max(1) as f64,
        hopped: hops as f64 / done.max(1) as f64,
    })
}

/// Drop `file`'s pages from the page cache (clean pages only: it was synced).
fn drop_cache(file: &File) -> std::io::Result<()> {
    rustix::fs::fadvise(file, 0, None, rustix::fs::Advice::DontNeed).map_err(std::io::Error::from)
}

/// The read-path section of the report, measured under `dir`.
pub fn section(rt: &Runtime, dir: &Path, quick: bool) -> String {
    match run(rt, dir, quick) {
        Ok(text) => text,
        Err(e) => format!("Read paths not measured: {e}\n\n"),
    }
}

fn run(rt: &Runtime, dir: &Path, quick: bool) -> std::io::Result<String> {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### How a disk hit reads: the tier's way against the others\n\n\
         {CLIENTS} client tasks on the bench's runtime read random records (laid out as tier-disk \
         lays them out, every block's checksum and the body's first bytes checked) from one file \
         opened once. Warm: the page cache holds the file. Cold: its pages are dropped \
         (`posix_fadvise(DONTNEED)`) before the pass, so reads go to the device. CPU is the \
         process's user + system time over the pass divided by the reads; \"hopped\" is the share \
         of reads that left the worker thread.\n"
    );
    let _ = writeln!(
        out,
        "| body | page cache | way | reads/s | CPU µs per read | hopped |\n|---|---|---|---:|---:|---:|"
    );
    for (size, n_records, warm_reads, cold_reads) in [
        (
            4usize << 10,
            20_000u64,
            if quick { 40_000 } else { 400_000 },
            if quick { 4_000 } else { 20_000 },
        ),
        (16 << 10, 10_000, if quick { 20_000 } else { 200_000 }, 0),
    ] {
        let w = Workload {
            n_keys: n_records,
            alpha: 1.0,
            size: SizeClass::Fixed(size),
            seed: 23,
        };
        let sub = tempfile::tempdir_in(dir)?;
        let recs = Arc::new(write_records(sub.path(), &w, n_records)?);
        let file = Arc::new(File::open(&recs.path)?);
        let (threads_way, threads) = start_threads(&file);
        #[cfg_attr(not(feature = "peers"), allow(unused_mut))]
        let mut ways = vec![Way::NoWait, Way::Pool, threads_way];
        #[cfg(feature = "peers")]
        let uring = match start_uring(&recs.path) {
            Ok((way, thread)) => {
                ways.push(way);
                Some(thread)
            }
            Err(e) => {
                let _ = writeln!(
                    out,
                    "| {} KiB | - | io_uring not measured: {e} | | | |",
                    size >> 10
                );
                None
            }
        };
        for (cache, reads) in [("warm", warm_reads), ("cold", cold_reads)] {
            if reads == 0 {
                continue;
            }
            for way in &ways {
                if cache == "cold" {
                    drop_cache(&file)?;
                } else {
                    // Warm the pages (and the way) before measuring.
                    pass(rt, way, &file, &recs, (reads / 10).max(CLIENTS as u64))?;
                }
                let f = pass(rt, way, &file, &recs, reads)?;
                let _ = writeln!(
                    out,
                    "| {} KiB | {cache} | {} | {:.0} | {:.2} | {:.0}% |",
                    size >> 10,
                    way.name(),
                    f.per_sec,
                    f.cpu_us,
                    100.0 * f.hopped
                );
            }
        }
        // Closing the queues ends the I/O threads.
        drop(ways);
        for t in threads {
            let _ = t.join();
        }
        #[cfg(feature = "peers")]
        if let Some(t) = uring {
            let _ = t.join();
        }
    }
    out.push('\n');
    Ok(out)
}

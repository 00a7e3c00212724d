//! `plinth-bench proxy`: throughput and latency through plinth's proxy, against a direct
//! connection to the same instance and against nginx as a reverse proxy on the same machine,
//! all three loaded by `wrk` in the same run.
//!
//! The instance is the real `plinth demo-app`. The proxy is `plinth-proxy` itself, the code the
//! server runs behind `--proxy-listen` (`Proxy::new(ProxyConfig::default())`, one route),
//! served in this process with 2 worker threads, each a current-thread tokio runtime, as the
//! server runs it (`--also-shared` loads the earlier shape too, one multi-thread runtime, in
//! the same rounds). nginx is Debian's,
//! with 2 workers and a keep-alive upstream pool, configured to forward the same headers.
//! `wrk` loads each of the three in turn, round after round, and the medians are compared.
//! Every process shares the machine's cores, so the figures are ratios within one run.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use plinth_proxy::{Backend, Proxy, ProxyConfig, RouteTable};

use crate::child::{self, Running, Ticks};
use crate::server::harness::{self, Noise};
use crate::workdir::{WorkDir, load_average, plinth_binary};

#[derive(Debug, clap::Args)]
pub struct ProxyArgs {
    /// The plinth binary whose `demo-app` is the instance (build it with `cargo build --release`
    /// first).
    #[arg(long, default_value = "target/release/plinth")]
    plinth: PathBuf,
    /// How long each `wrk` run lasts.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// `wrk`'s open connections (`-c`) for the saturating load; it runs 2 threads (`-t2`).
    #[arg(long, default_value_t = 32)]
    connections: u32,
    /// Also load each target with `wrk -t1 -c1` (one request at a time, so the cores are not
    /// saturated and the latency added is the proxy's own, not the scheduler's); `false` skips it.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    one_connection: bool,
    /// Rounds of direct, plinth, nginx; the medians are reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// An unreported `wrk` run against each first, so that connection pools and caches are warm.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warm_up: Duration,
    /// Also load, in every round, plinth's proxy in the shape it had before worker threads
    /// (one multi-thread runtime for every connection), to compare the two in the same rounds.
    #[arg(long)]
    also_shared: bool,
    /// plinth's proxy's worker threads (the server runs one per core); nginx keeps
    /// `worker_processes 2` whatever this says, and the report says when they differ.
    #[arg(long, default_value_t = WORKERS)]
    proxy_workers: usize,
    /// Keep nginx's config and logs and the demo app's output under this directory instead of
    /// a temp dir.
    #[arg(long)]
    keep: Option<PathBuf>,
}

/// The targets of the issue: at least nginx's throughput, and under 1 ms of p99 overhead.
const P99_OVERHEAD_TARGET_MS: f64 = 1.0;
const HOST: &str = "bench.localhost";
const WRK_THREADS: u32 = 2;
/// The proxy's worker threads, and nginx's worker processes.
const WORKERS: usize = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Direct,
    Plinth,
    /// plinth's proxy on one shared multi-thread runtime (`--also-shared`).
    PlinthShared,
    Nginx,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Plinth => "plinth proxy",
            Target::PlinthShared => "plinth, shared runtime",
            Target::Nginx => "nginx",
        }
    }

    /// The targets of a run, in the order each round loads them.
    fn all(args: &ProxyArgs) -> Vec<Target> {
        let mut targets = vec![Target::Direct, Target::Plinth];
        if args.also_shared {
            targets.push(Target::PlinthShared);
        }
        targets.push(Target::Nginx);
        targets
    }
}

/// How hard `wrk` loads a target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Load {
    /// `-t2 -c{--connections}`: every core busy; throughput.
    Saturating,
    /// `-t1 -c1`: one request at a time; latency without queueing.
    OneConnection,
}

impl Load {
    fn wrk_flags(self, connections: u32) -> (u32, u32) {
        match self {
            Load::Saturating => (WRK_THREADS, connections),
            Load::OneConnection => (1, 1),
        }
    }
}

/// What one `wrk` run printed.
#[derive(Clone, Debug, Default, PartialEq)]
struct WrkResult {
    requests_per_sec: f64,
    requests: u64,
    /// Milliseconds.
    p50: f64,
    p99: f64,
    /// `Non-2xx or 3xx responses`.
    non_2xx: u64,
    /// connect, read, write, timeout.
    socket_errors: u64,
}

/// One `wrk` run against one target, with the CPU each part used meanwhile.
#[derive(Debug)]
struct Sample {
    target: Target,
    load: Load,
    wrk: WrkResult,
    /// Clock ticks of the proxy (plinth: this process; nginx: master and workers).
    proxy_ticks: Option<Ticks>,
    backend_ticks: u64,
    wrk_ticks: u64,
    wall: Duration,
}

/// Parses a latency as `wrk` prints it: `412.00us`, `1.21ms`, `1.02s`, `1.50m`; milliseconds.
fn parse_latency(text: &str) -> Option<f64> {
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60_000.0)
    } else if let Some(n) = text.strip_suffix('h') {
        (n, 3_600_000.0)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|n| n * scale)
}

/// Reads `wrk --latency`'s report.
fn parse_wrk(text: &str) -> Result<WrkResult> {
    let mut result = WrkResult::default();
    let (mut rps, mut p50, mut p99, mut requests) = (None, None, None, None);
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("Requests/sec:") {
            rps = rest.trim().parse::<f64>().ok();
        } else if let Some(rest) = line.strip_prefix("50%") {
            p50 = parse_latency(rest.trim());
        } else if let Some(rest) = line.strip_prefix("99%") {
            p99 = parse_latency(rest.trim());
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            result.non_2xx = rest.trim().parse().unwrap_or(0);
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            // `connect 0, read 0, write 0, timeout 0`
            result.socket_errors =
                rest.split(',').filter_map(|part| part.split_whitespace().nth(1)?.parse::<u64>().ok()).sum();
        } else if let Some((count, _)) = line.split_once(" requests in ") {
            requests = count.trim().parse::<u64>().ok();
        }
    }
    result.requests_per_sec = rps.context("no `Requests/sec:` line")?;
    result.p50 = p50.context("no `50%` line (was --latency passed?)")?;
    result.p99 = p99.context("no `99%` line (was --latency passed?)")?;
    result.requests = requests.context("no `N requests in` line")?;
    Ok(result)
}

/// One plain HTTP/1.1 request with `Connection: close`; the status and the raw body.
pub(crate) fn http_get(addr: SocketAddr, host: &str, path: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .with_context(|| format!("not an HTTP answer: {text:?}"))?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, body)| body).to_owned();
    Ok((status, body))
}

/// Waits until `GET /` through `addr` answers 200 with the demo app's version.
fn wait_answering(addr: SocketAddr, what: &str, mut alive: impl FnMut() -> Result<()>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        alive()?;
        match http_get(addr, HOST, "/") {
            Ok((200, body)) if body.contains("v1") => return Ok(()),
            Ok((status, body)) if Instant::now() > deadline => {
                bail!("{what} on {addr} answered {status} {body:?}, not 200 with the demo app's `v1`")
            }
            Err(e) if Instant::now() > deadline => return Err(e).context(format!("{what} on {addr} never answered")),
            _ => sleep(Duration::from_millis(20)),
        }
    }
}

/// How the in-process proxy is run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ProxyRuntime {
    /// As `plinth server` runs it: `ProxyConfig::workers` threads, each with a current-thread
    /// runtime and its own backend pool, taking the connections an accepting task hands them.
    Workers,
    /// The shape before worker threads (`ProxyConfig { workers: 0, .. }`): one multi-thread
    /// (work-stealing) tokio runtime whose tasks serve every connection, sharing one pool.
    Shared,
}

/// plinth's proxy in this process, on runtimes of its own, until [`InProcessProxy::stop`].
struct InProcessProxy {
    addr: SocketAddr,
    shutdown: tokio::sync::watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl InProcessProxy {
    fn start(backend: SocketAddr, how: ProxyRuntime, workers: usize) -> Result<InProcessProxy> {
        let (config, mut runtime) = match how {
            // Accepting is all the caller's runtime does.
            ProxyRuntime::Workers => {
                (ProxyConfig { workers, ..ProxyConfig::default() }, tokio::runtime::Builder::new_current_thread())
            }
            ProxyRuntime::Shared => {
                let mut runtime = tokio::runtime::Builder::new_multi_thread();
                runtime.worker_threads(workers);
                (ProxyConfig { workers: 0, ..ProxyConfig::default() }, runtime)
            }
        };
        let runtime =
            runtime.thread_name("plinth-proxy").enable_all().build().context("starting the proxy's runtime")?;
        let proxy = Proxy::new(config);
        proxy.set_routes(RouteTable::new().with_route(HOST, vec![Backend::new("demo-app-v1", backend)])?);
        let (shutdown, mut stopped) = tokio::sync::watch::channel(false);
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).context("binding the proxy's listener")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let thread = std::thread::Builder::new().name("plinth-proxy".into()).spawn(move || {
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                // Spawned, so that with `shared` the connections' tasks run on the runtime's
                // workers as in that shape, not on this thread.
                tokio::spawn(async move {
                    proxy
                        .serve(listener, async move {
                            let _ = stopped.wait_for(|stop| *stop).await;
                        })
                        .await
                })
                .await
                .context("the proxy's task")?
                .context("serving")
            })
        })?;
        Ok(InProcessProxy { addr, shutdown, thread: Some(thread) })
    }

    fn check_alive(&self) -> Result<()> {
        if self.thread.as_ref().is_none_or(std::thread::JoinHandle::is_finished) {
            bail!("plinth's proxy stopped serving");
        }
        Ok(())
    }

    fn stop(&mut self) -> Result<()> {
        let _ = self.shutdown.send(true);
        match self.thread.take().map(std::thread::JoinHandle::join) {
            None => Ok(()),
            Some(Ok(result)) => result.context("plinth's proxy"),
            Some(Err(_)) => bail!("plinth's proxy thread panicked"),
        }
    }
}

impl Drop for InProcessProxy {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("plinth-bench: {e:#}");
        }
    }
}

/// nginx's config: 2 workers, a keep-alive upstream pool, the headers plinth's proxy sends
/// (`X-Forwarded-For`, `-Proto`, `-Host`, the client's Host), no access log.
fn nginx_config(dir: &Path, listen: SocketAddr, backend: SocketAddr) -> String {
    let d = dir.display();
    format!(
        r#"worker_processes {WORKERS};
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;

events {{
    worker_connections 1024;
}}

http {{
    access_log off;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;

    upstream demo_app {{
        server {backend};
        keepalive 64;
    }}

    server {{
        listen {listen};
        server_name {HOST};

        location / {{
            proxy_pass http://demo_app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
        }}
    }}
}}
"#
    )
}

fn start_nginx(dir: &Path, backend: SocketAddr) -> Result<(Running, SocketAddr)> {
    std::fs::create_dir_all(dir.join("tmp"))?;
    let listen: SocketAddr = format!("127.0.0.1:{}", harness::free_port()?).parse()?;
    let config = dir.join("nginx.conf");
    std::fs::write(&config, nginx_config(dir, listen, backend))?;
    let log = std::fs::File::create(dir.join("nginx.out"))?;
    let mut nginx = Running::spawn(
        "nginx",
        Command::new("nginx")
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&config)
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log),
    )?;
    wait_answering(listen, "nginx", || {
        nginx.check_alive().with_context(|| {
            format!(
                "nginx did not start; see {} and {}",
                dir.join("nginx.out").display(),
                dir.join("error.log").display()
            )
        })
    })?;
    Ok((nginx, listen))
}

/// nginx's master and workers, in clock ticks.
fn nginx_ticks(master: u32) -> Option<Ticks> {
    let workers: Ticks = child::children(master).into_iter().filter_map(child::own_ticks).sum();
    Some(child::own_ticks(master)? + workers)
}

struct Setup<'a> {
    args: &'a ProxyArgs,
    backend: &'a Running,
    nginx: &'a Running,
    addrs: Vec<(Target, SocketAddr)>,
}

impl Setup<'_> {
    fn addr(&self, target: Target) -> SocketAddr {
        self.addrs.iter().find(|(t, _)| *t == target).map_or(self.addrs[0].1, |(_, a)| *a)
    }

    fn proxy_ticks(&self, target: Target) -> Option<Ticks> {
        match target {
            Target::Direct => None,
            Target::Plinth | Target::PlinthShared => child::own_ticks(std::process::id()),
            Target::Nginx => nginx_ticks(self.nginx.pid()),
        }
    }

    fn wrk(&self, target: Target, load: Load, duration: Duration) -> Result<Sample> {
        let (threads, connections) = load.wrk_flags(self.args.connections);
        let addr = self.addr(target);
        let before = (
            self.proxy_ticks(target),
            child::own_ticks(self.backend.pid()).map_or(0, Ticks::total),
            child::reaped_children_ticks().unwrap_or(0),
        );
        let started = Instant::now();
        let out = Command::new("wrk")
            .arg(format!("-t{threads}"))
            .arg(format!("-c{connections}"))
            .arg(format!("-d{}s", duration.as_secs().max(1)))
            .arg("--latency")
            .args(["-H", &format!("Host: {HOST}")])
            .arg(format!("http://{addr}/"))
            .stdin(Stdio::null())
            .output()
            .context("running wrk (apt-get install wrk)")?;
        let wall = started.elapsed();
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "wrk against {} failed ({}): {text}{}",
                target.name(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let wrk = parse_wrk(&text).with_context(|| format!("reading wrk's report:\n{text}"))?;
        if wrk.non_2xx > 0 || wrk.socket_errors > 0 {
            bail!(
                "{}: {} answers were not 2xx and {} socket errors; every request must succeed:\n{text}",
                target.name(),
                wrk.non_2xx,
                wrk.socket_errors
            );
        }
        let proxy_ticks = match (before.0, self.proxy_ticks(target)) {
            (Some(a), Some(b)) => Some(b.since(a)),
            _ => None,
        };
        Ok(Sample {
            target,
            load,
            wrk,
            proxy_ticks,
            backend_ticks: child::own_ticks(self.backend.pid()).map_or(0, Ticks::total).saturating_sub(before.1),
            wrk_ticks: child::reaped_children_ticks().unwrap_or(0).saturating_sub(before.2),
            wall,
        })
    }
}

pub fn run(args: ProxyArgs) -> Result<()> {
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    if args.connections < WRK_THREADS {
        bail!("--connections must be at least {WRK_THREADS} (wrk runs {WRK_THREADS} threads)");
    }
    if args.duration < Duration::from_secs(1) {
        bail!("--duration must be at least 1s (wrk counts whole seconds)");
    }
    let work = WorkDir::new(args.keep.as_deref(), "proxy")?;
    let root = work.path().to_path_buf();
    let plinth = plinth_binary(&args.plinth)?;
    let load_before = load_average();
    let noise = Noise::start_ours()?;

    let backend_log = std::fs::File::create(root.join("demo-app.log"))?;
    let mut backend = Running::spawn(
        "plinth demo-app",
        Command::new(&plinth)
            .args(["demo-app", "--port", "0", "--version", "v1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(backend_log),
    )?;
    let backend_addr = child::demo_app_addr(backend.take_stdout().context("the demo app's stdout")?)?;
    wait_answering(backend_addr, "the demo app", || backend.check_alive())?;
    let mut plinth_proxy = InProcessProxy::start(backend_addr, ProxyRuntime::Workers, args.proxy_workers)?;
    wait_answering(plinth_proxy.addr, "plinth's proxy", || plinth_proxy.check_alive())?;
    let mut shared_proxy = match args.also_shared {
        true => {
            let proxy = InProcessProxy::start(backend_addr, ProxyRuntime::Shared, args.proxy_workers)?;
            wait_answering(proxy.addr, "plinth's proxy on a shared runtime", || proxy.check_alive())?;
            Some(proxy)
        }
        false => None,
    };
    let (mut nginx, nginx_addr) = start_nginx(&root.join("nginx"), backend_addr)?;
    eprintln!("proxy: demo app on {backend_addr}, plinth's proxy on {}, nginx on {nginx_addr}", plinth_proxy.addr);

    let setup = Setup {
        args: &args,
        backend: &backend,
        nginx: &nginx,
        addrs: [(Target::Direct, backend_addr), (Target::Plinth, plinth_proxy.addr), (Target::Nginx, nginx_addr)]
            .into_iter()
            .chain(shared_proxy.as_ref().map(|p| (Target::PlinthShared, p.addr)))
            .collect(),
    };
    let targets = Target::all(&args);
    if !args.warm_up.is_zero() {
        for &target in &targets {
            eprintln!("proxy: warming up {}", target.name());
            setup.wrk(target, Load::Saturating, args.warm_up)?;
        }
    }
    let loads: &[Load] =
        if args.one_connection { &[Load::Saturating, Load::OneConnection] } else { &[Load::Saturating] };
    let mut rounds: Vec<Vec<Sample>> = Vec::new();
    for round in 1..=args.rounds {
        let mut samples = Vec::new();
        for (&load, target) in loads.iter().flat_map(|l| targets.iter().map(move |t| (l, *t))) {
            let sample = setup.wrk(target, load, args.duration)?;
            eprintln!(
                "proxy: round {round}/{}: {} ({:?}): {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms",
                args.rounds,
                target.name(),
                load,
                sample.wrk.requests_per_sec,
                sample.wrk.p50,
                sample.wrk.p99
            );
            samples.push(sample);
        }
        rounds.push(samples);
    }
    plinth_proxy.stop()?;
    if let Some(proxy) = shared_proxy.as_mut() {
        proxy.stop()?;
    }
    nginx.stop()?;
    backend.stop()?;
    let others = noise.others()?;
    report(&args, &rounds);
    println!("\nOther processes used {:.0}% of the machine's CPU during the run.", 100.0 * others);
    println!("Load average (/proc/loadavg) before: {load_before}; after: {}.", load_average());
    Ok(())
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// CPU per request in microseconds, from clock ticks (10 ms each).
fn cpu_per_request(ticks: u64, requests: u64) -> f64 {
    ticks as f64 * 10_000.0 / requests.max(1) as f64
}

fn sample_of(round: &[Sample], target: Target, load: Load) -> Option<&Sample> {
    round.iter().find(|s| s.target == target && s.load == load)
}

fn report(args: &ProxyArgs, rounds: &[Vec<Sample>]) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "\nProxy: `wrk -t{WRK_THREADS} -c{} -d{}s --latency -H 'Host: {HOST}'` (saturating){}, against the demo app \
         directly, through plinth's proxy ({} worker threads{}) and through nginx ({WORKERS} workers, keepalive 64); \
         {} rounds on {cores} cores shared by all of them\n",
        args.connections,
        args.duration.as_secs(),
        if args.one_connection { " and `wrk -t1 -c1` (one connection)" } else { "" },
        args.proxy_workers,
        if args.also_shared {
            ", a current-thread runtime each; and, as before, on one multi-thread runtime"
        } else {
            ", a current-thread runtime each"
        },
        rounds.len()
    );
    if args.proxy_workers != WORKERS {
        println!("Note: plinth's proxy ran {} worker threads, nginx {WORKERS} worker processes.\n", args.proxy_workers);
    }
    println!(
        "| round | load | target | requests/s | p50 | p99 | proxy CPU per request | demo app CPU per request | wrk CPU per request |"
    );
    println!("|---:|---|---|---:|---:|---:|---:|---:|---:|");
    for (i, round) in rounds.iter().enumerate() {
        for s in round {
            let proxy = s
                .proxy_ticks
                .map_or("–".to_owned(), |t| format!("{:.1} µs", cpu_per_request(t.total(), s.wrk.requests)));
            println!(
                "| {} | {} | {} | {:.0} | {:.3} ms | {:.3} ms | {proxy} | {:.1} µs | {:.1} µs |",
                i + 1,
                load_name(args, s.load),
                s.target.name(),
                s.wrk.requests_per_sec,
                s.wrk.p50,
                s.wrk.p99,
                cpu_per_request(s.backend_ticks, s.wrk.requests),
                cpu_per_request(s.wrk_ticks, s.wrk.requests),
            );
        }
    }
    let loads: &[Load] =
        if args.one_connection { &[Load::Saturating, Load::OneConnection] } else { &[Load::Saturating] };
    // Medians over the rounds of a figure, and of a figure's difference or ratio within each
    // round (the three targets ran back to back).
    let over_rounds = |f: &dyn Fn(&[Sample]) -> Option<f64>| -> f64 {
        median(&rounds.iter().filter_map(|r| f(r)).collect::<Vec<_>>())
    };
    let of = |load: Load, target: Target, f: fn(&Sample) -> f64| move |r: &[Sample]| sample_of(r, target, load).map(f);
    let rps = |s: &Sample| s.wrk.requests_per_sec;
    let p50 = |s: &Sample| s.wrk.p50;
    let p99 = |s: &Sample| s.wrk.p99;
    let cpu = |s: &Sample| s.proxy_ticks.map_or(f64::NAN, |t| cpu_per_request(t.total(), s.wrk.requests));
    let cpu_user = |s: &Sample| s.proxy_ticks.map_or(f64::NAN, |t| cpu_per_request(t.user, s.wrk.requests));
    for &load in loads {
        println!("\nMedians of {} rounds, {}:\n", rounds.len(), load_name(args, load));
        println!(
            "| target | requests/s | p50 | p99 | p50 − direct | p99 − direct | proxy CPU per request | of which user space |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|");
        for target in Target::all(args) {
            let (overhead50, overhead99, cpu_text, user_text) = if target == Target::Direct {
                ("–".to_owned(), "–".to_owned(), "–".to_owned(), "–".to_owned())
            } else {
                let diff = |f: fn(&Sample) -> f64| {
                    over_rounds(&|r| Some(of(load, target, f)(r)? - of(load, Target::Direct, f)(r)?))
                };
                (
                    format!("{:+.3} ms", diff(p50)),
                    format!("{:+.3} ms", diff(p99)),
                    format!("{:.1} µs", over_rounds(&of(load, target, cpu))),
                    format!("{:.1} µs", over_rounds(&of(load, target, cpu_user))),
                )
            };
            println!(
                "| {} | {:.0} | {:.3} ms | {:.3} ms | {overhead50} | {overhead99} | {cpu_text} | {user_text} |",
                target.name(),
                over_rounds(&of(load, target, rps)),
                over_rounds(&of(load, target, p50)),
                over_rounds(&of(load, target, p99)),
            );
        }
    }
    let ratio = |load: Load, a: Target, b: Target| over_rounds(&|r| Some(of(load, a, rps)(r)? / of(load, b, rps)(r)?));
    let overhead =
        |load: Load, t: Target| over_rounds(&|r| Some(of(load, t, p99)(r)? - of(load, Target::Direct, p99)(r)?));
    let saturating = Load::Saturating;
    let vs_nginx = ratio(saturating, Target::Plinth, Target::Nginx);
    println!("\nAgainst the targets (medians of the per-round figures):\n");
    println!("| figure | plinth | nginx | target | plinth |");
    println!("|---|---:|---:|---:|---|");
    println!(
        "| throughput, saturating, plinth / nginx | {vs_nginx:.3}x | 1.000x | ≥ 1.000x | {} |",
        verdict(vs_nginx >= 1.0)
    );
    println!(
        "| throughput, saturating, / direct | {:.3}x | {:.3}x | | |",
        ratio(saturating, Target::Plinth, Target::Direct),
        ratio(saturating, Target::Nginx, Target::Direct)
    );
    if args.also_shared {
        let cpu_ratio =
            |a: Target| over_rounds(&|r| Some(of(saturating, a, cpu)(r)? / of(saturating, Target::Nginx, cpu)(r)?));
        println!(
            "| throughput, saturating, / nginx, shared runtime | {:.3}x | 1.000x | | |",
            ratio(saturating, Target::PlinthShared, Target::Nginx)
        );
        println!(
            "| proxy CPU per request, saturating, / nginx's: workers; shared runtime | {:.3}x; {:.3}x | 1.000x | | |",
            cpu_ratio(Target::Plinth),
            cpu_ratio(Target::PlinthShared)
        );
    }
    for &load in loads {
        let (plinth, nginx) = (overhead(load, Target::Plinth), overhead(load, Target::Nginx));
        println!(
            "| p99 − direct p99, {} | {plinth:+.3} ms | {nginx:+.3} ms | < {P99_OVERHEAD_TARGET_MS:.3} ms | {} |",
            load_name(args, load),
            verdict(plinth < P99_OVERHEAD_TARGET_MS)
        );
    }
    let wall: f64 = rounds.iter().flatten().map(|s| s.wall.as_secs_f64()).sum();
    println!("\n{} wrk runs, {wall:.0} s of load in all.", rounds.iter().map(Vec::len).sum::<usize>());
}

fn load_name(args: &ProxyArgs, load: Load) -> String {
    let (threads, connections) = load.wrk_flags(args.connections);
    format!("-t{threads} -c{connections}")
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "missed" }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "Running 10s test @ http://127.0.0.1:41000/
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   412.33us  120.10us   9.87ms   90.12%
    Req/Sec    38.12k     1.20k   40.01k    70.00%
  Latency Distribution
     50%  398.00us
     75%  450.00us
     90%  520.00us
     99%    1.21ms
  758123 requests in 10.00s, 80.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  75812.30
Transfer/sec:      8.00MB
";

    #[test]
    fn reads_wrk_reports() {
        let result = parse_wrk(REPORT).unwrap();
        assert_eq!(
            result,
            WrkResult {
                requests_per_sec: 75812.30,
                requests: 758_123,
                p50: 0.398,
                p99: 1.21,
                non_2xx: 4,
                socket_errors: 3
            }
        );
        assert!(parse_wrk("Requests/sec: 1\n").is_err());
    }

    #[test]
    fn reads_latencies_in_every_unit() {
        let cases = [("412.00us", 0.412), ("1.21ms", 1.21), ("1.02s", 1020.0), ("1.50m", 90_000.0), ("12", f64::NAN)];
        for (text, ms) in cases {
            match parse_latency(text) {
                Some(v) => assert!((v - ms).abs() < 1e-9, "{text}: {v}"),
                None => assert!(ms.is_nan(), "{text} should not parse"),
            }
        }
    }
}

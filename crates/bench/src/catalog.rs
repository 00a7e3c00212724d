//! `plinth-bench catalog`: how fast the catalog lists and filters at 10,000 environments, as p50,
//! p99 and max latency of the real `plinth server`, against two floors measured in the same run.
//!
//! The bench fills a data dir's `plinth.db` through plinth-store (the same calls the server
//! makes: `create_environment`, `move_environment`, the request log) with N environments over
//! 50 products, four templates (one of them review environments) and every final status, each
//! with its requests, then starts the release server on it and times, one request at a time
//! over one keep-alive connection, the catalog and environment endpoints. Floors:
//!
//! - **HTTP**: `GET /healthz` on the same server and connection: routing, auth-free, a tiny
//!   body.
//! - **data**: the same query's rows read in this process by `SqliteStore` (from a copy of the
//!   database made before the server started) and serialized with serde_json: what any server
//!   built on this store must do at least.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use plinth_core::cidr::Cidr;
use plinth_core::environment::{EnvStatus, RequestKind, RequestStatus};
use plinth_core::time::Timestamp;
use plinth_store::{CidrAsk, EnvFilter, EnvPatch, EnvRecord, EnvRequest, NewEnv, ReviewInfo, SqliteStore, Store as _};

use crate::child::{self, Ticks};
use crate::server::harness::{GitRepo, Noise, ServerOptions, ServerProcess};
use crate::workdir::{WorkDir, fresh_dir, load_average, plinth_binary};

#[derive(Debug, clap::Args)]
pub struct CatalogArgs {
    /// The plinth binary to run (build it with `cargo build --release` first).
    #[arg(long, default_value = "target/release/plinth")]
    plinth: PathBuf,
    /// Environments in the catalog, destroyed and failed ones included.
    #[arg(long, default_value_t = 10_000)]
    environments: usize,
    /// Products they are spread over (`[products.*]` in plinth.toml).
    #[arg(long, default_value_t = 50)]
    products: usize,
    /// Timed requests per query, after the warm-up; p50, p99 and max are over these.
    #[arg(long, default_value_t = 200)]
    requests: usize,
    /// Untimed requests per query first.
    #[arg(long, default_value_t = 20)]
    warm_up: usize,
    /// Also load the product filter from this many clients at once (each its own connection,
    /// `--requests` each); 0 skips it.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Keep the repo, data dir and server output under this directory instead of a temp dir.
    #[arg(long)]
    keep: Option<PathBuf>,
}

/// Name stems, so that a substring query (`q=search`) hits one in twenty.
const APPS: [&str; 20] = [
    "api", "web", "search", "billing", "checkout", "catalog", "orders", "payments", "auth", "mail", "media", "reports",
    "ledger", "ingest", "notify", "profile", "cart", "admin", "stock", "geo",
];

/// The template of environment `i`: 40% web, 30% worker, 20% data, 10% review environments.
fn template_of(i: usize) -> &'static str {
    match i % 10 {
        0..=3 => "web",
        4..=6 => "worker",
        7 | 8 => "data",
        _ => "review-app",
    }
}

/// How environment `i` ends up: 70% ready, 15% destroyed, 7% failed creates, 4% cleanup
/// failed, 4% destroy failed (spread by a multiplicative hash so that every product and
/// template gets each).
fn status_of(i: usize) -> EnvStatus {
    match (i.wrapping_mul(2_654_435_761) >> 7) % 100 {
        0..70 => EnvStatus::Ready,
        70..85 => EnvStatus::Destroyed,
        85..92 => EnvStatus::Failed,
        92..96 => EnvStatus::CleanupFailed,
        _ => EnvStatus::DestroyFailed,
    }
}

fn product_of(i: usize, products: usize) -> String {
    format!("product-{:02}", i % products)
}

fn name_of(i: usize, products: usize) -> String {
    if template_of(i) == "review-app" {
        format!("review-feature-{i:05}")
    } else {
        format!("{}-{i:05}", APPS[(i / products) % APPS.len()])
    }
}

fn plinth_toml(products: usize) -> String {
    let mut text = String::from("main_branch = \"main\"\n\n[environments.sandbox]\n");
    for p in 0..products {
        text.push_str(&format!(
            "\n[products.product-{p:02}]\nowner = \"team-{p:02}\"\ndescription = \"Product {p} of the catalog benchmark\"\n"
        ));
    }
    text
}

/// What was written, for choosing the queries.
#[derive(Debug, Default)]
struct Seeded {
    by_status: BTreeMap<&'static str, usize>,
    requests: usize,
    took: Duration,
}

/// Writes `n` environments and their request logs through the store, as the provisioner would
/// have left them.
async fn seed(db: &Path, n: usize, products: usize) -> Result<Seeded> {
    let store = SqliteStore::open(db).await.context("opening the store")?;
    let started = Instant::now();
    let mut seeded = Seeded::default();
    // Spread over the 90 days before 2026-11-01, a minute or so apart.
    let base = 1_761_955_200_000i64 - 90 * 86_400_000;
    for i in 0..n {
        let at = |step: i64| Timestamp(base + i as i64 * 700_000 + step * 45_000);
        let template = template_of(i);
        let name = name_of(i, products);
        let product = product_of(i, products);
        let review = template == "review-app";
        let slug = name.trim_start_matches("review-").to_owned();
        let services: Vec<String> = match template {
            "web" => vec!["api".into(), "web".into()],
            "worker" => vec!["worker".into()],
            "review-app" => vec!["api".into()],
            _ => Vec::new(),
        };
        let p = i % products;
        let cidr = (!review).then(|| -> Result<CidrAsk> {
            Ok(CidrAsk {
                pool: product.clone(),
                ranges: vec![format!("10.{p}.0.0/16").parse::<Cidr>().map_err(anyhow::Error::msg)?],
                prefix: 24,
            })
        });
        let new = NewEnv {
            name: name.clone(),
            product: product.clone(),
            template: template.to_owned(),
            template_commit: format!("{:040x}", i as u128 * 0x9e37_79b9_7f4a_7c15),
            policy_environment: "sandbox".into(),
            account: format!("sandbox-{}", i % 3),
            params: serde_json::json!({"app_name": name, "replicas": 1 + i % 5, "size": if i % 3 == 0 { "large" } else { "small" }, "auth": i % 2 == 0}),
            owner: format!("team-{p:02}"),
            requested_by: format!("dev-{:02}@example.com", i % 37),
            fqdn: Some(if review {
                format!("{slug}.review.example.com")
            } else {
                format!("{name}.sandbox.example.com")
            }),
            services,
            workspace: review.then(|| slug.clone()),
            terraform: "terraform".into(),
            review: review.then(|| ReviewInfo {
                branch: format!("feature/{i:05}"),
                slug: slug.clone(),
                head: Some(format!("{:040x}", i as u128 * 0x517c_c1b7_2722_0a95)),
                pushed_at: at(0),
            }),
            cidr: cidr.transpose()?,
        };
        let (env, create) = store.create_environment(new, at(0)).await?;
        store.move_environment_request(create.id, RequestStatus::Running, None, at(1)).await?;
        store.move_environment(env.id, EnvStatus::Provisioning, EnvPatch::default(), at(1)).await?;
        let status = status_of(i);
        seeded.requests += 1;
        let fail = |why: &str| EnvPatch { reason: Some(why.to_owned()), ..Default::default() };
        match status {
            EnvStatus::Failed | EnvStatus::CleanupFailed => {
                let why = if status == EnvStatus::Failed {
                    "the apply failed and what it made was destroyed: run #1 failed: exit status 1; cleanup run #2 applied"
                } else {
                    "the apply failed and so did its cleanup, so resources may be left: run #1 failed; cleanup run #2 failed"
                };
                store.move_environment(env.id, status, fail(why), at(2)).await?;
                store.move_environment_request(create.id, RequestStatus::Failed, Some(why.into()), at(2)).await?;
            }
            _ => {
                store.move_environment(env.id, EnvStatus::Ready, EnvPatch::default(), at(2)).await?;
                let outputs = serde_json::json!({
                    "url": format!("https://{name}.sandbox.example.com"),
                    "bucket": format!("{name}-assets"),
                    "db_password": "(sensitive)",
                });
                store.set_environment_outputs(env.id, outputs, at(2)).await?;
                store
                    .move_environment_request(
                        create.id,
                        RequestStatus::Succeeded,
                        Some("ready: run #1 applied (2 to add, 0 to change, 0 to destroy)".into()),
                        at(2),
                    )
                    .await?;
                if matches!(status, EnvStatus::Destroyed | EnvStatus::DestroyFailed) {
                    let destroy = store
                        .request_environment_change(
                            env.id,
                            RequestKind::Destroy,
                            "dev-01@example.com",
                            serde_json::json!({}),
                            at(3),
                        )
                        .await?;
                    seeded.requests += 1;
                    store.move_environment_request(destroy.id, RequestStatus::Running, None, at(3)).await?;
                    store.move_environment(env.id, EnvStatus::Destroying, EnvPatch::default(), at(3)).await?;
                    let (request_status, outcome) = if status == EnvStatus::Destroyed {
                        (RequestStatus::Succeeded, "destroyed: run #3 applied (0 to add, 0 to change, 2 to destroy)")
                    } else {
                        (RequestStatus::Failed, "run #3 failed: exit status 1; resources may be left")
                    };
                    store.move_environment(env.id, status, fail(outcome), at(4)).await?;
                    store.move_environment_request(destroy.id, request_status, Some(outcome.into()), at(4)).await?;
                }
            }
        }
        *seeded.by_status.entry(status.as_str()).or_default() += 1;
        if (i + 1) % 2000 == 0 {
            eprintln!("catalog: seeded {} environments in {:.1?}", i + 1, started.elapsed());
        }
    }
    store.close().await;
    seeded.took = started.elapsed();
    Ok(seeded)
}

/// One query, over HTTP and in-process.
struct Query {
    label: String,
    path: String,
    /// The rows of the data floor, read and serialized; returns the bytes and the row count.
    floor: Floor,
}

#[derive(Clone)]
enum Floor {
    /// `environments(filter)`, serialized.
    List(EnvFilter),
    /// One environment with its request log, as `GET /environments/{name}` reads them.
    One(String),
    /// Every environment and every request.
    Export,
    /// Nothing: the HTTP floor itself.
    None,
}

/// What the floor serializes: the rows as they are, straight from the structs.
#[derive(serde::Serialize)]
struct Rows<'a> {
    environments: &'a [EnvRecord],
    #[serde(skip_serializing_if = "Option::is_none")]
    requests: Option<&'a [EnvRequest]>,
}

#[derive(serde::Serialize)]
struct OneRow<'a> {
    environment: &'a EnvRecord,
    requests: &'a [EnvRequest],
}

/// Reads and serializes a floor's rows; the serialized size and how many environments.
async fn run_floor(store: &SqliteStore, floor: &Floor) -> Result<(usize, usize)> {
    match floor {
        Floor::List(filter) => {
            let envs = store.environments(filter).await?;
            let bytes = serde_json::to_vec(&Rows { environments: &envs, requests: None })?;
            Ok((bytes.len(), envs.len()))
        }
        Floor::One(name) => {
            let env = store.environment(name).await?.with_context(|| format!("no environment {name}"))?;
            let requests = store.environment_requests(Some(env.id), 200).await?;
            let bytes = serde_json::to_vec(&OneRow { environment: &env, requests: &requests })?;
            Ok((bytes.len(), 1))
        }
        Floor::Export => {
            let envs = store.environments(&EnvFilter::default()).await?;
            let requests = store.environment_requests(None, u32::MAX).await?;
            let bytes = serde_json::to_vec(&Rows { environments: &envs, requests: Some(&requests) })?;
            Ok((bytes.len(), envs.len()))
        }
        Floor::None => Ok((0, 0)),
    }
}

/// The filter the server builds from a list query (`filter_of` in the server's API): live
/// environments unless `all` or a status is given, 1,000 at most unless `limit` says.
fn list_filter() -> EnvFilter {
    EnvFilter { live: true, limit: Some(1000), ..Default::default() }
}

/// Latencies of one query, in microseconds.
#[derive(Debug, Default)]
struct Samples {
    http: Vec<f64>,
    floor: Vec<f64>,
    /// The response body's size, and the floor's serialized size.
    http_bytes: usize,
    floor_bytes: usize,
    rows: usize,
    /// The server's CPU time over the timed HTTP requests.
    server_cpu: Ticks,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[derive(Clone, Copy, Debug)]
struct Stats {
    p50: f64,
    p99: f64,
    max: f64,
}

fn stats(values: &[f64]) -> Stats {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    Stats { p50: percentile(&sorted, 50.0), p99: percentile(&sorted, 99.0), max: sorted.last().copied().unwrap_or(0.0) }
}

/// A keep-alive HTTP client for timing: one connection, reused for every request.
struct Client {
    http: reqwest::blocking::Client,
    base: String,
    token: String,
}

impl Client {
    fn new(base: &str, token: &str) -> Result<Client> {
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(120))
            .pool_max_idle_per_host(1)
            .build()
            .context("building an HTTP client")?;
        Ok(Client { http, base: base.to_owned(), token: token.to_owned() })
    }

    /// One GET, timed from sending it to the last byte of the body; the time in µs and the
    /// body's size.
    fn get(&self, path: &str) -> Result<(f64, usize)> {
        let start = Instant::now();
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .with_context(|| format!("GET {path}"))?;
        let status = response.status();
        let body = response.bytes().with_context(|| format!("GET {path}: reading the body"))?;
        let took = start.elapsed().as_secs_f64() * 1e6;
        if !status.is_success() {
            bail!("GET {path}: {status}: {}", String::from_utf8_lossy(&body[..body.len().min(500)]));
        }
        Ok((took, body.len()))
    }

    /// One GET, parsed: for checking what a query returns, untimed.
    fn json(&self, path: &str) -> Result<serde_json::Value> {
        let text = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .and_then(|r| r.error_for_status())
            .and_then(|r| r.text())
            .with_context(|| format!("GET {path}"))?;
        serde_json::from_str(&text).with_context(|| format!("GET {path}: not JSON"))
    }
}

pub fn run(args: CatalogArgs) -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    if args.environments == 0 || args.products == 0 || args.products > 250 {
        bail!("--environments must be at least 1, --products between 1 and 250");
    }
    if args.requests == 0 {
        bail!("--requests must be at least 1");
    }
    let work = WorkDir::new(args.keep.as_deref(), "catalog")?;
    let root = work.path().to_path_buf();
    let dir = root.join(format!("catalog-{}", args.environments));
    fresh_dir(&dir)?;
    let plinth = plinth_binary(&args.plinth)?;
    let load_before = load_average();
    // Two workers, as the server has on this machine; sqlx runs each SQLite connection on a
    // thread of its own either way.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;

    let repo = GitRepo::init(dir.join("repo"))?;
    repo.write("plinth.toml", &plinth_toml(args.products))?;
    repo.commit("products")?;
    let data = dir.join("data");
    std::fs::create_dir_all(&data)?;
    let db = data.join("plinth.db");
    let seeded = rt.block_on(seed(&db, args.environments, args.products))?;
    let db_bytes = std::fs::metadata(&db)?.len();
    eprintln!(
        "catalog: {} environments and {} requests written in {:.1?}; plinth.db is {} KiB",
        args.environments,
        seeded.requests,
        seeded.took,
        db_bytes / 1024
    );
    // The data floor reads a copy, so that it never contends with the server for the file.
    let copy = dir.join("floor.db");
    std::fs::copy(&db, &copy).context("copying the database for the data floor")?;
    let floor_store = rt.block_on(SqliteStore::open(&copy)).context("opening the copy")?;

    let mut server = ServerProcess::start(&ServerOptions {
        plinth: &plinth,
        repo: &repo.path,
        data_dir: &data,
        log: &dir.join("server.log"),
        poll_interval: Duration::from_secs(1),
        concurrency: 4,
        proxy_listen: None,
    })?;
    eprintln!("catalog: server up in {:.0?}", server.start_up);
    #[derive(serde::Deserialize)]
    struct Created {
        secret: String,
    }
    let token: Created =
        server.api.post_json("/api/v1/tokens", &serde_json::json!({"name": "reader", "roles": ["developer"]}))?;
    let base = server.api.url().to_owned();

    // The queries' arguments: a page from the middle of the live names, a ready environment.
    let live = rt.block_on(floor_store.environments(&EnvFilter { live: true, ..Default::default() }))?;
    let middle = live.get(live.len() / 2).map(|e| e.name.clone()).context("no live environment")?;
    let one = live
        .iter()
        .skip(live.len() / 3)
        .find(|e| e.status == EnvStatus::Ready && e.template == "web")
        .map(|e| e.name.clone())
        .context("no ready web environment")?;
    let product = product_of(7 % args.products, args.products);
    let all = u32::try_from(args.environments).unwrap_or(u32::MAX).max(1);
    let queries = vec![
        Query { label: "`GET /healthz` (HTTP floor)".into(), path: "/healthz".into(), floor: Floor::None },
        Query {
            label: "catalog, whole: every environment".into(),
            path: format!("/api/v1/catalog?all=true&limit={all}"),
            floor: Floor::List(EnvFilter { limit: Some(all), ..Default::default() }),
        },
        Query {
            label: "catalog, default (live, first 1,000)".into(),
            path: "/api/v1/catalog".into(),
            floor: Floor::List(list_filter()),
        },
        Query {
            label: format!("catalog, `product={product}` (1/{})", args.products),
            path: format!("/api/v1/catalog?product={product}"),
            floor: Floor::List(EnvFilter { product: Some(product.clone()), ..list_filter() }),
        },
        Query {
            label: "environments, `q=search` (1/20 of names)".into(),
            path: "/api/v1/environments?q=search".into(),
            floor: Floor::List(EnvFilter { query: Some("search".into()), ..list_filter() }),
        },
        Query {
            label: "environments, a page: `limit=100&after=…`".into(),
            path: format!("/api/v1/environments?limit=100&after={middle}"),
            floor: Floor::List(EnvFilter { after: Some(middle.clone()), limit: Some(100), ..list_filter() }),
        },
        Query {
            label: "one environment: `/environments/{name}`".into(),
            path: format!("/api/v1/environments/{one}"),
            floor: Floor::One(one.clone()),
        },
        Query { label: "catalog export".into(), path: "/api/v1/catalog/export".into(), floor: Floor::Export },
    ];

    let client = Client::new(&base, &token.secret)?;
    // Every query answers what the store holds before anything is timed.
    for q in &queries {
        let (_, rows) = rt.block_on(run_floor(&floor_store, &q.floor))?;
        if matches!(q.floor, Floor::List(_) | Floor::Export) {
            let body = client.json(&q.path)?;
            let got = body["environments"].as_array().map_or(0, Vec::len);
            if got != rows {
                bail!("{} answered {got} environments; the store holds {rows} for that filter", q.path);
            }
        }
    }

    let pid = server.pid()?;
    let noise = Noise::start(pid)?;
    let mut results = Vec::new();
    for q in &queries {
        for _ in 0..args.warm_up {
            client.get(&q.path)?;
            rt.block_on(run_floor(&floor_store, &q.floor))?;
        }
        let mut samples = Samples::default();
        let mut cpu = Ticks::default();
        for _ in 0..args.requests {
            // The server's CPU over the HTTP requests only; the floor runs in this process.
            let before = child::own_ticks(pid).context("the server is gone")?;
            let (took, bytes) = client.get(&q.path)?;
            cpu = cpu + child::own_ticks(pid).context("the server is gone")?.since(before);
            samples.http.push(took);
            samples.http_bytes = bytes;
            if !matches!(q.floor, Floor::None) {
                let start = Instant::now();
                let (bytes, rows) = rt.block_on(run_floor(&floor_store, &q.floor))?;
                samples.floor.push(start.elapsed().as_secs_f64() * 1e6);
                samples.floor_bytes = bytes;
                samples.rows = rows;
            }
        }
        samples.server_cpu = cpu;
        let s = stats(&samples.http);
        eprintln!("catalog: {}: p50 {:.2} ms, p99 {:.2} ms", q.label, s.p50 / 1e3, s.p99 / 1e3);
        results.push(samples);
    }
    server.check_alive()?;
    let config = plinth_toml(args.products);
    let mirror = data.join("repo.git");
    let breakdown = vec![
        (
            queries[1].label.clone(),
            catalog_parts(
                &rt,
                &floor_store,
                &EnvFilter { limit: Some(all), ..Default::default() },
                true,
                &config,
                &mirror,
            )?,
        ),
        (
            queries[3].label.clone(),
            catalog_parts(
                &rt,
                &floor_store,
                &EnvFilter { product: Some(product.clone()), ..list_filter() },
                false,
                &config,
                &mirror,
            )?,
        ),
    ];

    let concurrent = if args.clients > 0 {
        let paths = [queries[0].path.clone(), queries[3].path.clone()];
        let mut out = Vec::new();
        for path in paths {
            out.push((path.clone(), concurrently(&base, &token.secret, &path, args.clients, args.requests)?));
        }
        out
    } else {
        Vec::new()
    };
    let rss = crate::server::harness::proc_kib(pid, "VmHWM").unwrap_or(0);
    let (status, took) = server.stop()?;
    eprintln!("catalog: server stopped in {took:.0?} ({status})");
    let others = noise.others()?;

    report(&args, &seeded, db_bytes, &queries, &results, &concurrent, rss);
    report_parts(&queries, &results, &breakdown);
    println!("\nOther processes used {:.0}% of the machine's CPU while the queries ran.", 100.0 * others);
    println!("Load average (/proc/loadavg) before: {load_before}; after: {}.", load_average());
    Ok(())
}

/// `clients` threads, each with its own connection, each sending `requests` requests one after
/// another; every latency in µs, and the wall time.
fn concurrently(base: &str, token: &str, path: &str, clients: usize, requests: usize) -> Result<(Vec<f64>, f64)> {
    let start = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let client = Client::new(base, token);
            let path = path.to_owned();
            std::thread::spawn(move || -> Result<Vec<f64>> {
                let client = client?;
                let mut times = Vec::with_capacity(requests);
                for _ in 0..requests {
                    times.push(client.get(&path)?.0);
                }
                Ok(times)
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in threads {
        all.extend(t.join().map_err(|_| anyhow::anyhow!("a client thread panicked"))??);
    }
    Ok((all, start.elapsed().as_secs_f64()))
}

/// The median of `n` timed calls of `f` (with dropping what it returns) after one untimed call,
/// in µs.
fn time_median<T>(n: usize, mut f: impl FnMut() -> Result<T>) -> Result<f64> {
    f()?;
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        // What a step returns is dropped inside the timing: a request pays for freeing it too.
        drop(f()?);
        times.push(start.elapsed().as_secs_f64() * 1e6);
    }
    Ok(stats(&times).p50)
}

/// One step of a handler, timed alone in this process: what it is and its median in µs.
type Part = (String, f64);

/// The steps `GET /api/v1/catalog` takes (`catalog_json` in the server's API), each timed alone
/// in this process, on the copy of the database and the server's own mirror, to see where the
/// time goes. What this leaves out: the token check, routing, allocator work that only shows
/// when the steps run back to back in one request, and writing the response to the socket.
fn catalog_parts(
    rt: &tokio::runtime::Runtime,
    store: &SqliteStore,
    filter: &EnvFilter,
    whole: bool,
    config: &str,
    mirror: &Path,
) -> Result<Vec<Part>> {
    const N: usize = 21;
    let envs = rt.block_on(store.environments(filter))?;
    let mut parts: Vec<Part> = Vec::new();
    parts.push((
        format!("read the {} environments (`environments(filter)`)", envs.len()),
        time_median(N, || Ok(rt.block_on(store.environments(filter))?))?,
    ));
    let names = rt.block_on(store.live_environment_names())?.len();
    parts.push((
        format!("read every live environment's name, {names} (`live_environment_names`)"),
        time_median(N, || Ok(rt.block_on(store.live_environment_names())?))?,
    ));
    parts.push((
        "read the current deployments (`current_deployments`, none here)".into(),
        time_median(N, || Ok(rt.block_on(store.current_deployments())?))?,
    ));
    if whole {
        parts.push((
            "read the stacks' last applies (`last_applies`, none here)".into(),
            time_median(N, || Ok(rt.block_on(store.last_applies())?))?,
        ));
    }
    parts.push((
        "policy: `git for-each-ref` on the server's mirror (`Mirror::branches`, a process)".into(),
        time_median(N, || {
            let out = std::process::Command::new("git")
                .current_dir(mirror)
                .args(["for-each-ref", "--format=%(objectname) %(refname)", "refs/heads/"])
                .output()?;
            if !out.status.success() {
                bail!("git for-each-ref failed in {}", mirror.display());
            }
            Ok(())
        })?,
    ));
    parts.push((
        "policy: parse plinth.toml twice (an upper bound: the server keeps the last parse per commit)".into(),
        time_median(N, || {
            for _ in 0..2 {
                plinth_core::Config::parse(plinth_core::CONFIG_FILE, config)
                    .map_err(|d| anyhow::anyhow!("plinth.toml does not parse: {d}"))?;
            }
            Ok(())
        })?,
    ));
    let to_values = || values_of(&envs);
    parts.push((
        "each row to a `serde_json::Value`, with its services (`to_value`)".into(),
        time_median(N, &to_values)?,
    ));
    let body = serde_json::json!({"products": [], "environments": to_values()?, "services": [], "stacks": []});
    parts.push(("that `Value` to bytes (axum's `Json`)".into(), time_median(N, || Ok(serde_json::to_vec(&body)?))?));
    parts.push((
        "(not summed) the reads, the values and the bytes in one go, as one request does them, freed at the end".into(),
        time_median(N, || {
            let envs = rt.block_on(store.environments(filter))?;
            let names = rt.block_on(store.live_environment_names())?;
            let current = rt.block_on(store.current_deployments())?;
            let values = values_of(&envs)?;
            let body = serde_json::json!({"products": [], "environments": values, "services": current, "stacks": []});
            let bytes = serde_json::to_vec(&body)?;
            Ok((envs, names, body, bytes.len()))
        })?,
    ));
    parts.push((
        "(for comparison, not summed) the rows to bytes straight from the structs, as the data floor does".into(),
        time_median(N, || Ok(serde_json::to_vec(&Rows { environments: &envs, requests: None })?))?,
    ));
    parts.push((
        "(for comparison, not summed) the same body straight from the structs (`#[serde(flatten)]`; it also writes the record's own `services` names, so an upper bound)"
            .into(),
        time_median(N, || {
            let rows: Vec<CatalogRow<'_>> = envs
                .iter()
                .map(|e| CatalogRow {
                    env: e,
                    services: e
                        .services
                        .iter()
                        .map(|s| ServiceRow { service: s, hosts: e.hosts_for(s), release: None })
                        .collect(),
                })
                .collect();
            Ok(serde_json::to_vec(&CatalogBody { environments: &rows })?)
        })?,
    ));
    Ok(parts)
}

/// Each environment as the catalog shows it: the record as a `serde_json::Value`, with its
/// services (hosts, current release) in place of their names, as `catalog_json` builds it.
fn values_of(envs: &[EnvRecord]) -> Result<Vec<serde_json::Value>> {
    envs.iter()
        .map(|e| {
            let mut v = serde_json::to_value(e)?;
            v["services"] = serde_json::json!(
                e.services
                    .iter()
                    .map(|s| serde_json::json!({"service": s, "hosts": e.hosts_for(s), "release": null}))
                    .collect::<Vec<_>>()
            );
            Ok(v)
        })
        .collect()
}

/// The catalog's body built from the structs, as a handler could build it without
/// `serde_json::Value`: the comparison row of the breakdown.
#[derive(serde::Serialize)]
struct CatalogBody<'a> {
    environments: &'a [CatalogRow<'a>],
}

#[derive(serde::Serialize)]
struct CatalogRow<'a> {
    #[serde(flatten)]
    env: &'a EnvRecord,
    services: Vec<ServiceRow<'a>>,
}

#[derive(serde::Serialize)]
struct ServiceRow<'a> {
    service: &'a str,
    hosts: Vec<String>,
    release: Option<i64>,
}

fn ms(us: f64) -> String {
    if us >= 100_000.0 { format!("{:.0} ms", us / 1e3) } else { format!("{:.2} ms", us / 1e3) }
}

fn size(bytes: usize) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
    } else if bytes >= 1 << 10 {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    } else {
        format!("{bytes} B")
    }
}

fn report(
    args: &CatalogArgs,
    seeded: &Seeded,
    db_bytes: u64,
    queries: &[Query],
    results: &[Samples],
    concurrent: &[(String, (Vec<f64>, f64))],
    rss_kib: u64,
) {
    let statuses: Vec<String> = seeded.by_status.iter().map(|(s, n)| format!("{n} {s}")).collect();
    println!(
        "\nCatalog at {} environments ({}) over {} products, {} requests in the request log; plinth.db {:.1} MiB.",
        args.environments,
        statuses.join(", "),
        args.products,
        seeded.requests,
        db_bytes as f64 / f64::from(1 << 20)
    );
    println!(
        "One request at a time over one keep-alive connection, {} timed after {} warm-up; the data floor is \
         `SqliteStore` + serde_json in-process on a copy of the database.\n",
        args.requests, args.warm_up
    );
    let http_floor = results.first().map(|r| stats(&r.http)).unwrap_or(Stats { p50: 0.0, p99: 0.0, max: 0.0 });
    println!(
        "| query | rows | response | p50 | p99 | max | data floor p50 | data floor p99 | p50 / data | p99 / data | p99 / HTTP floor | p99 − (data + HTTP) | server CPU per request |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (q, r) in queries.iter().zip(results) {
        let h = stats(&r.http);
        let cpu = r.server_cpu.total() as f64 * 10_000.0 / r.http.len().max(1) as f64;
        if r.floor.is_empty() {
            println!(
                "| {} | – | {} | {} | {} | {} | | | | | 1.00x | | {} |",
                q.label,
                size(r.http_bytes),
                ms(h.p50),
                ms(h.p99),
                ms(h.max),
                ms(cpu)
            );
            continue;
        }
        let f = stats(&r.floor);
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.2}x | {:.2}x | {:.1}x | {} | {} |",
            q.label,
            r.rows,
            size(r.http_bytes),
            ms(h.p50),
            ms(h.p99),
            ms(h.max),
            ms(f.p50),
            ms(f.p99),
            h.p50 / f.p50,
            h.p99 / f.p99,
            h.p99 / http_floor.p99,
            ms(h.p99 - f.p99 - http_floor.p99),
            ms(cpu)
        );
    }
    println!(
        "\nServer CPU per request is user + system time of the server process over the timed requests, in 10 ms ticks, divided by their number."
    );
    println!("The server's peak resident memory (VmHWM) after the queries: {:.1} MiB.", rss_kib as f64 / 1024.0);
    if !concurrent.is_empty() {
        println!(
            "\n{} clients at once, each its own keep-alive connection, {} requests each:\n",
            args.clients, args.requests
        );
        println!("| path | requests/s | p50 | p99 | max |");
        println!("|---|---:|---:|---:|---:|");
        for (path, (times, wall)) in concurrent {
            let s = stats(times);
            println!("| `{path}` | {:.0} | {} | {} | {} |", times.len() as f64 / wall, ms(s.p50), ms(s.p99), ms(s.max));
        }
    }
    if let Some(whole) = results.get(1) {
        let p99 = stats(&whole.http).p99;
        println!(
            "\nThe whole catalog ({} environments): p99 {} against 200 ms: {}.",
            whole.rows,
            ms(p99),
            if p99 <= 200_000.0 { "met" } else { "missed" }
        );
    }
}

/// Where the time of two catalog queries goes: the handler's steps timed alone, against the
/// HTTP figure minus the HTTP floor.
fn report_parts(queries: &[Query], results: &[Samples], breakdown: &[(String, Vec<Part>)]) {
    let http_floor = results.first().map_or(0.0, |r| stats(&r.http).p50);
    for (label, parts) in breakdown {
        let Some(i) = queries.iter().position(|q| &q.label == label) else { continue };
        let p50 = stats(&results[i].http).p50;
        println!(
            "\nWhere the time of \"{label}\" goes: its handler's steps timed alone in this process, median of 21:\n"
        );
        println!("| step | median |");
        println!("|---|---:|");
        let mut sum = 0.0;
        for (step, us) in parts {
            println!("| {step} | {} |", ms(*us));
            if !step.starts_with('(') {
                sum += us;
            }
        }
        println!("| **sum of the steps** | **{}** |", ms(sum));
        println!("| HTTP p50 − `/healthz` p50 | {} |", ms(p50 - http_floor));
    }
}

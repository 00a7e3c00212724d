//! Route changes under load: no request fails while the routes flip between two sets of
//! backends, and once a change is made every new request goes to the new set.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::Duration;

use plinth_proxy::Drained;
use tokio::sync::watch;

use crate::support::{Client, TestBackend, TestProxy, routes, within};

const CLIENTS: usize = 8;
const SWITCHES: usize = 200;

#[derive(Debug, Default)]
struct Tally {
    ok: usize,
    failures: Vec<String>,
    /// Backends that answered requests started after the last switch.
    after_last: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_routes_under_load_drops_nothing() {
    let a = [TestBackend::start("a1").await, TestBackend::start("a2").await];
    let b = [TestBackend::start("b1").await, TestBackend::start("b2").await];
    let set_a = || routes(&[("app.localhost", &[&a[0], &a[1]])]);
    let set_b = || routes(&[("app.localhost", &[&b[0], &b[1]])]);
    let proxy = TestProxy::start(set_a()).await;

    let done = watch::Sender::new(0usize);
    let last_switch_made = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let (done, last_switch_made, stop, addr) =
            (done.clone(), Arc::clone(&last_switch_made), Arc::clone(&stop), proxy.addr);
        clients.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            // Half the clients keep one connection, half open one per request.
            let mut client = Client::open(addr).await;
            while !stop.load(SeqCst) {
                let after_last = last_switch_made.load(SeqCst);
                if i % 2 == 1 {
                    client = Client::open(addr).await;
                }
                match client.get("app.localhost", "/").await {
                    Ok(reply) if reply.status == 200 => {
                        tally.ok += 1;
                        if after_last {
                            tally.after_last.push(reply.text().to_owned());
                        }
                    }
                    Ok(reply) => tally.failures.push(format!("{}: {}", reply.status, reply.text())),
                    Err(error) => {
                        tally.failures.push(error.to_string());
                        client = Client::open(addr).await;
                    }
                }
                done.send_modify(|done| *done += 1);
            }
            tally
        }));
    }

    let mut rx = done.subscribe();
    let mut wait_for_more = async |more: usize| {
        let target = *rx.borrow() + more;
        within("requests to complete", rx.wait_for(|done| *done >= target)).await.unwrap();
    };
    wait_for_more(50).await;
    for switch in 0..SWITCHES {
        proxy.proxy.set_routes(if switch % 2 == 0 { set_b() } else { set_a() });
        wait_for_more(CLIENTS / 2).await;
    }
    proxy.proxy.set_routes(set_b());
    last_switch_made.store(true, SeqCst);
    wait_for_more(200).await;
    stop.store(true, SeqCst);

    let mut total = Tally::default();
    for client in clients {
        let tally = within("a client to stop", client).await.unwrap();
        total.ok += tally.ok;
        total.failures.extend(tally.failures);
        total.after_last.extend(tally.after_last);
    }
    assert!(total.failures.is_empty(), "{} of {} failed: {:?}", total.failures.len(), total.ok, total.failures);
    // Requests already under way at the switch are not counted.
    assert!(total.after_last.len() >= 200 - CLIENTS, "{}", total.after_last.len());
    assert!(total.after_last.iter().all(|name| name.starts_with('b')), "{:?}", total.after_last);
    for old in ["a1", "a2"] {
        let drained = proxy.proxy.drained(old, Duration::from_secs(10));
        assert_eq!(within("the old set to drain", drained).await, Drained::Done);
        assert_eq!(proxy.proxy.in_flight(old), 0);
    }
}

//! Draining: a backend taken out of the routes gets no new request, and `drained` resolves
//! exactly when its last request has finished.

use std::time::Duration;

use plinth_proxy::{Drained, RouteError, RouteTable};

use crate::support::{TestBackend, TestProxy, get, routes, within};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_backend_finishes_its_requests_and_gets_no_new_ones() {
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let proxy = TestProxy::start(routes(&[("app.localhost", &[&a])])).await;

    let held: Vec<_> = (0..3).map(|_| tokio::spawn(get(proxy.addr, "app.localhost", "/hold"))).collect();
    a.wait_held(3).await;
    assert_eq!(proxy.proxy.in_flight("a"), 3);

    // The rollout's order: add the new instance, then remove the old one.
    proxy.proxy.update_routes(|table| table.add_backend("app.localhost", b.backend())).unwrap();
    let removed = proxy.proxy.update_routes(|table| Ok::<_, RouteError>(table.remove_backend("a")));
    assert_eq!(removed, Ok(1));
    for _ in 0..10 {
        assert_eq!(get(proxy.addr, "app.localhost", "/").await.text(), "b");
    }

    let mut drained = std::pin::pin!(proxy.proxy.drained("a", Duration::from_secs(30)));
    // The held requests cannot finish before `release`, so the drain must still wait.
    assert!(tokio::time::timeout(Duration::from_millis(50), &mut drained).await.is_err());
    assert_eq!(proxy.proxy.in_flight("a"), 3);

    a.release();
    assert_eq!(within("a to drain", drained).await, Drained::Done);
    for request in held {
        let reply = within("a held request", request).await.unwrap();
        assert_eq!((reply.status, reply.text()), (200, "a"));
    }
    proxy.settled("a").await;
    proxy.settled("b").await;
}

#[tokio::test]
async fn a_drain_gives_up_after_its_timeout() {
    let a = TestBackend::start("a").await;
    let proxy = TestProxy::start(routes(&[("app.localhost", &[&a])])).await;

    let held = tokio::spawn(get(proxy.addr, "app.localhost", "/hold"));
    a.wait_held(1).await;
    proxy.proxy.set_routes(RouteTable::new());
    let drained = proxy.proxy.drained("a", Duration::from_millis(20));
    assert_eq!(within("the drain to time out", drained).await, Drained::TimedOut { left: 1 });

    // Nothing was dropped: the request still finishes once the backend answers.
    a.release();
    assert_eq!(within("the held request", held).await.unwrap().text(), "a");
    assert_eq!(proxy.proxy.drained("a", Duration::ZERO).await, Drained::Done);
}

#[tokio::test]
async fn backends_without_requests_are_drained_at_once() {
    let a = TestBackend::start("a").await;
    let proxy = TestProxy::start(routes(&[("app.localhost", &[&a])])).await;
    assert_eq!(get(proxy.addr, "app.localhost", "/").await.text(), "a");
    assert_eq!(proxy.proxy.drained("a", Duration::ZERO).await, Drained::Done);
    assert_eq!(proxy.proxy.drained("never-routed", Duration::ZERO).await, Drained::Done);
    assert_eq!(proxy.proxy.in_flight("never-routed"), 0);
}

//! The etcd store on a cluster of three members (on loopback) with one member down: killed
//! (its port refuses connections), hung (SIGSTOP: the kernel still accepts connections,
//! nothing answers) or unreachable (connecting hangs, as to a host that is gone). Every call
//! goes through `EtcdStore` with all three endpoints, the broken one listed first.
//!
//! The member the test breaks is never the cluster's leader (leadership is moved away
//! first): what is checked is the store's failover, not etcd's election (during one, a write
//! that a follower forwarded to the dead leader is lost without an answer, and fails).

use crate::common;

use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use calico_libnetwork::datastore::etcd::{EtcdConfig, EtcdStore};
use calico_libnetwork::datastore::Datastore;
use calico_libnetwork::Error;
use common::etcd::{Etcd, EtcdCluster};

/// The store's deadline per call (the plugin's default).
const DEADLINE: Duration = Duration::from_secs(5);

fn store(endpoints: Vec<String>) -> EtcdStore {
    EtcdStore::new(EtcdConfig {
        endpoints,
        timeout: DEADLINE,
        ..Default::default()
    })
    .unwrap()
}

/// What a run of calls gave: how many, which failed, the longest and the total time.
struct Run {
    calls: usize,
    failed: Vec<String>,
    longest: Duration,
    took: Duration,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} calls, {} failed, longest {:?}, all in {:?}",
            self.calls,
            self.failed.len(),
            self.longest,
            self.took
        )
    }
}

/// `n` consecutive calls through `s`: a write (a put, one etcd Txn) then a read (a get of
/// the key just written, checking its value), in turn.
async fn calls(s: &EtcdStore, tag: &str, n: usize) -> Run {
    let t0 = Instant::now();
    let mut failed = Vec::new();
    let mut longest = Duration::ZERO;
    for i in 0..n {
        let key = format!("/failover/{tag}/{}", (i / 2) % 10);
        let value = format!("{tag}-{}", i / 2).into_bytes();
        let t = Instant::now();
        let r = if i % 2 == 0 {
            s.put(&key, value).await.map(|_| ())
        } else {
            match s.get(&key).await {
                Ok(Some(kv)) if kv.value == value => Ok(()),
                Ok(other) => Err(Error::msg(format!("{key}: read {other:?}"))),
                Err(e) => Err(e),
            }
        };
        longest = longest.max(t.elapsed());
        if let Err(e) = r {
            failed.push(format!("call {i} after {:?}: {e}", t.elapsed()));
        }
    }
    Run {
        calls: n,
        failed,
        longest,
        took: t0.elapsed(),
    }
}

/// Each member's etcd ID (from its own status), in the order of `endpoints`, and the
/// leader's.
async fn member_ids(endpoints: &[String]) -> (Vec<u64>, u64) {
    let mut ids = Vec::new();
    let mut leader = 0;
    for ep in endpoints {
        let mut c = etcd_client::Client::connect([ep], None).await.unwrap();
        let st = c.status().await.unwrap();
        ids.push(st.header().unwrap().member_id());
        leader = st.leader();
    }
    (ids, leader)
}

/// Makes member `target` the leader (etcd's MoveLeader, asked of the current leader) and
/// waits until every member agrees.
async fn make_leader(endpoints: &[String], target: usize) {
    let (ids, leader) = member_ids(endpoints).await;
    if leader != ids[target] {
        let from = ids
            .iter()
            .position(|&id| id == leader)
            .expect("the leader is a member");
        let mut c = etcd_client::Client::connect([&endpoints[from]], None)
            .await
            .unwrap();
        c.move_leader(ids[target]).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, leader) = member_ids(endpoints).await;
        if leader == ids[target] {
            return;
        }
        assert!(Instant::now() < deadline, "member {target} never led");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Member `i`'s process, stopped (SIGSTOP) until dropped (SIGCONT), also after a panic.
struct Stopped(i32);

impl Stopped {
    fn new(cluster: &EtcdCluster, i: usize) -> Stopped {
        let pid = cluster.pid(i).expect("member running") as i32;
        assert!(common::host::signal_pid(pid, libc::SIGSTOP));
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        common::host::signal_pid(self.0, libc::SIGCONT);
    }
}

/// One member killed (the first endpoint), then one hung (the member the store was using):
/// every call succeeds, within the deadline. A write sent to the hung member is not sent
/// again elsewhere (it may be carried out when the member wakes up): it fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_store_keeps_answering_with_a_member_killed_or_hung() {
    let mut cluster = EtcdCluster::start_loopback(3);
    let eps = cluster.endpoints();
    // Member 2 leads: members 0 (killed) and 1 (hung) are followers.
    make_leader(&eps, 2).await;
    let s = store(eps.clone());
    let warm = calls(&s, "warm", 10).await;
    assert!(warm.failed.is_empty(), "all members up: {:?}", warm.failed);
    assert_eq!(s.current_endpoint(), eps[0]);

    // Killed: its port refuses connections (the store had one open to it).
    let pid = cluster.pid(0).unwrap();
    cluster.kill(0);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "member 0 (pid {pid}) still there"
    );
    assert!(
        TcpStream::connect(eps[0].trim_start_matches("http://")).is_err(),
        "member 0's port still accepts connections"
    );
    let killed = calls(&s, "killed", 200).await;
    // A store made now, whose first endpoint never answered.
    let fresh = store(eps.clone());
    let killed_fresh = calls(&fresh, "killed-fresh", 20).await;
    eprintln!("member 0 killed: {killed}; a new store: {killed_fresh}");
    assert!(killed.failed.is_empty(), "{:#?}", killed.failed);
    assert!(killed_fresh.failed.is_empty(), "{:#?}", killed_fresh.failed);
    assert!(killed.longest < DEADLINE && killed_fresh.longest < DEADLINE);
    assert_eq!(s.current_endpoint(), eps[1], "the next member takes over");

    // Back on its data; then the member the store uses (1) hangs.
    cluster.restart(0);
    assert_eq!(s.current_endpoint(), eps[1]);
    let stopped = Stopped::new(&cluster, 1);
    let t = Instant::now();
    let first = s.get("/failover/killed/0").await;
    let first_took = t.elapsed();
    let hung = calls(&s, "hung", 200).await;
    eprintln!(
        "member 1 hung: the first read {} in {first_took:?}, then {hung}",
        if first.is_ok() { "answered" } else { "failed" }
    );
    assert!(first.is_ok(), "{first:?}");
    assert!(first_took < DEADLINE, "{first_took:?}");
    assert!(hung.failed.is_empty(), "{:#?}", hung.failed);
    assert!(hung.longest < DEADLINE);
    assert_ne!(s.current_endpoint(), eps[1]);

    // A write to the hung member, first in a new store's list: it may have been delivered
    // (it is in the member's socket), so it is not sent to another member.
    let hung_first = store(vec![eps[1].clone(), eps[2].clone(), eps[0].clone()]);
    let t = Instant::now();
    let err = hung_first
        .put("/failover/ambiguous", b"1".to_vec())
        .await
        .expect_err("a write to a hung member has no answer");
    let write_took = t.elapsed();
    assert!(err.is_unavailable(), "{err}");
    assert!(err.to_string().contains("no answer"), "{err}");
    assert!(write_took >= DEADLINE - Duration::from_millis(100));
    // The hung member is now tried last: the next calls go to the others at once.
    let after = calls(&hung_first, "after-ambiguous", 20).await;
    eprintln!("a write to the hung member: failed in {write_took:?} ({err}); then {after}");
    assert!(after.failed.is_empty(), "{:#?}", after.failed);
    // Not the hung member's 2.5 s (half the deadline) again.
    assert!(after.longest < Duration::from_secs(2), "{after}");

    drop(stopped);
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Whether the woken member carried the write out depends on when it reads the
    // cancellation: either way, nothing sent it twice.
    let outcome = match s.get("/failover/ambiguous").await {
        Ok(Some(_)) => "applied".to_string(),
        Ok(None) => "not applied".to_string(),
        Err(e) => format!("unknown ({e})"),
    };
    eprintln!("after SIGCONT, the ambiguous write is {outcome}");
}

/// A TCP port on 127.0.0.1 where connecting hangs, as to a host that is gone: a listener
/// whose accept queue (backlog 0: one connection) is full, so the kernel drops further SYNs.
struct Blackhole {
    port: u16,
    _listener: TcpListener,
    _queued: TcpStream,
}

fn blackhole() -> Blackhole {
    use std::os::fd::AsRawFd;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    // SAFETY: listen(2) on a socket this function owns; listening again only sets the
    // backlog.
    let rc = unsafe { libc::listen(listener.as_raw_fd(), 0) };
    assert_eq!(rc, 0, "listen: {}", std::io::Error::last_os_error());
    let addr = listener.local_addr().unwrap();
    let queued = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).unwrap();
    // Positive control: the next connection hangs.
    let err = TcpStream::connect_timeout(&addr, Duration::from_millis(300)).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
    Blackhole {
        port: addr.port(),
        _listener: listener,
        _queued: queued,
    }
}

/// The first endpoint unreachable (connecting hangs): a write and a read succeed after the
/// connect timeout (1 s), well within the deadline, and the calls after them do not wait
/// for it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_store_skips_a_member_it_cannot_connect_to() {
    let etcd = Etcd::start();
    let hole = blackhole();
    let s = store(vec![
        format!("http://127.0.0.1:{}", hole.port),
        etcd.endpoint(),
    ]);
    let t = Instant::now();
    s.put("/failover/hole", b"1".to_vec()).await.unwrap();
    let write_took = t.elapsed();
    let t = Instant::now();
    let read = s.get("/failover/hole").await.unwrap().unwrap();
    let read_took = t.elapsed();
    assert_eq!(read.value, b"1");
    let then = calls(&s, "hole", 200).await;
    // A new store's first call is a read.
    let fresh = store(vec![
        format!("http://127.0.0.1:{}", hole.port),
        etcd.endpoint(),
    ]);
    let t = Instant::now();
    fresh.get("/failover/hole").await.unwrap().unwrap();
    let fresh_took = t.elapsed();
    eprintln!(
        "unreachable first member: the first write took {write_took:?}, the next read \
         {read_took:?}, then {then}; a new store's first read {fresh_took:?}"
    );
    assert!(
        write_took >= Duration::from_millis(900) && write_took < Duration::from_secs(2),
        "the connect timeout (1 s), then the other member: {write_took:?}"
    );
    assert!(fresh_took >= Duration::from_millis(900) && fresh_took < Duration::from_secs(2));
    // Not the connect timeout again.
    assert!(read_took < Duration::from_millis(900), "{read_took:?}");
    assert!(then.failed.is_empty(), "{:#?}", then.failed);
    assert!(then.longest < Duration::from_millis(900), "{then}");
    assert_eq!(s.current_endpoint(), etcd.endpoint());
}

//! etcd's Lock and Election services as `etcd-client` calls them: grants in order, a waiter that
//! holds no lock while it waits, a lease lost while waiting refused, a waiter that gives up
//! leaving the line, the client-side recipe's keys recognised, and elections with proclaim,
//! observe and resign, each refusal in etcd's words. Every call goes through a follower, so the
//! recipes' writes are forwarded as any client's are.

use super::*;
use etcd_client::{LockOptions, ProclaimOptions, ResignOptions};

/// How long a waiter is watched for a grant that must not come. A wrong grant arrives within a
/// few milliseconds of the write that allowed it; a right one never does.
const NOT_GRANTED_WITHIN: Duration = Duration::from_millis(500);

/// The key's create revision, read back (0 if the key is gone).
async fn create_revision(client: &mut Client, key: &[u8]) -> i64 {
    let response = within("get", client.get(key, None)).await.expect("get");
    response.kvs().first().map_or(0, |kv| kv.create_revision())
}

/// Waits until `count` contenders are in line under `prefix`.
async fn contenders(client: &Client, prefix: &str, count: usize) {
    eventually(&format!("{count} contenders under {prefix}"), || {
        let mut client = client.clone();
        async move {
            let options = GetOptions::new().with_prefix().with_count_only();
            let found = client.get(prefix, Some(options)).await.ok()?.count();
            (found == count as i64).then_some(())
        }
    })
    .await;
}

async fn grant(client: &mut Client, ttl_seconds: i64) -> i64 {
    within("grant", client.lease_grant(ttl_seconds, None))
        .await
        .expect("grant")
        .id()
}

/// A Lock call under `lease` on its own task, once it is second in line (its key is under the
/// prefix beside the holder's) and has not been granted within [`NOT_GRANTED_WITHIN`].
async fn waiting_lock(
    client: &Client,
    lease: i64,
) -> tokio::task::JoinHandle<Result<etcd_client::LockResponse, etcd_client::Error>> {
    let mut own = client.clone();
    let mut waiter = tokio::spawn(async move {
        own.lock("jobs", Some(LockOptions::new().with_lease(lease)))
            .await
    });
    contenders(client, "jobs/", 2).await;
    assert!(
        tokio::time::timeout(NOT_GRANTED_WITHIN, &mut waiter)
            .await
            .is_err(),
        "a waiter was granted the lock while its holder still held it"
    );
    waiter
}

/// A client of one follower only, so that every recipe step the server takes is forwarded.
async fn follower_client(cluster: &TestCluster) -> Client {
    let names = cluster.names();
    let leader = cluster.leader(&names).await;
    let follower = names
        .iter()
        .find(|name| **name != leader)
        .expect("a follower");
    cluster.client_of(follower).await
}

#[tokio::test]
async fn lock_grants_in_order_and_never_to_a_lost_lease() {
    let cluster = TestCluster::start("lock", &[]).await;
    let mut client = follower_client(&cluster).await;

    // The first contender holds the lock at once; its key is NAME/LEASE in hex.
    let first_lease = grant(&mut client, 30).await;
    let first = within(
        "lock",
        client.lock("jobs", Some(LockOptions::new().with_lease(first_lease))),
    )
    .await
    .expect("an uncontended lock is granted");
    assert_eq!(text(first.key()), format!("jobs/{first_lease:x}"));
    let first_token = create_revision(&mut client, first.key()).await;
    assert!(first_token > 0, "the holder's key exists");
    assert_eq!(revision(first.header()), first_token);

    // A second contender waits while the first holds it...
    let second_lease = grant(&mut client, 30).await;
    let second = waiting_lock(&client, second_lease).await;
    // ...and gets it when the holder unlocks, with a larger token.
    within("unlock", client.unlock(first.key()))
        .await
        .expect("unlock");
    let second = within("the waiter's grant", second)
        .await
        .expect("the waiter's task")
        .expect("the waiter is granted the lock");
    assert_eq!(text(second.key()), format!("jobs/{second_lease:x}"));
    let second_token = create_revision(&mut client, second.key()).await;
    assert!(second_token > first_token, "tokens only grow for a name");

    // A lock held through the client-side recipe (a key put under the prefix with a lease, as
    // `etcdctl lock` writes it) makes the Lock service wait too.
    within("unlock", client.unlock(second.key()))
        .await
        .expect("unlock");
    let recipe_lease = grant(&mut client, 30).await;
    let recipe_key = format!("jobs/{recipe_lease:x}");
    within(
        "put",
        client.put(
            recipe_key.as_str(),
            "",
            Some(PutOptions::new().with_lease(recipe_lease)),
        ),
    )
    .await
    .expect("the client-side recipe's key");
    // A waiter whose lease is revoked while it waits is refused, not granted.
    let lost_lease = grant(&mut client, 30).await;
    let lost = waiting_lock(&client, lost_lease).await;
    within("revoke", client.lease_revoke(lost_lease))
        .await
        .expect("revoke");
    within("unlock", client.unlock(recipe_key.as_str()))
        .await
        .expect("the recipe's holder leaves");
    let lost = within("the lost waiter's answer", lost)
        .await
        .expect("the lost waiter's task");
    assert_status(lost, Code::Unknown, "mutex: session is expired");

    // A waiter that gives up leaves the line: its key goes, and the next one is not held up.
    let holder_lease = grant(&mut client, 30).await;
    let holder = within(
        "lock",
        client.lock("jobs", Some(LockOptions::new().with_lease(holder_lease))),
    )
    .await
    .expect("lock");
    // Its lease outlives the wait below: only the withdrawal can delete its key in time.
    let quitter_lease = grant(&mut client, 120).await;
    let quitter = waiting_lock(&client, quitter_lease).await;
    // The caller goes away: its call is cancelled.
    quitter.abort();
    let quitter_key = format!("jobs/{quitter_lease:x}");
    eventually("the quitter's key is withdrawn", || {
        let mut client = client.clone();
        let key = quitter_key.clone();
        async move { (create_revision(&mut client, key.as_bytes()).await == 0).then_some(()) }
    })
    .await;
    within("unlock", client.unlock(holder.key()))
        .await
        .expect("unlock");

    // Without a lease the lock gets one of its own (etcd's 60 s session lease).
    let leaseless = within("lock", client.lock("solo", None))
        .await
        .expect("a lock without a lease");
    let key = text(leaseless.key());
    let lease = i64::from_str_radix(key.strip_prefix("solo/").expect("under solo/"), 16)
        .expect("a lease id in hex");
    let ttl = within("time to live", client.lease_time_to_live(lease, None))
        .await
        .expect("the lock's lease exists")
        .ttl();
    assert!((1..=60).contains(&ttl), "the session lease's TTL: {ttl}");

    // Refusals.
    assert_status(
        within(
            "lock",
            client.lock("jobs", Some(LockOptions::new().with_lease(0x7e57))),
        )
        .await,
        // etcd answers Unknown here (its Lock service runs the recipe over a client of its
        // own), where its KV service says NotFound.
        Code::Unknown,
        "etcdserver: requested lease not found",
    );
    assert_status(
        within("lock", client.lock("", None)).await,
        Code::InvalidArgument,
        "LockRequest.name is empty; name the lock or election",
    );
}

/// The value of the next leader (or proclaimed value) the observer sees.
async fn observed(observer: &mut etcd_client::ObserveStream) -> String {
    let response = within("observe", observer.message())
        .await
        .expect("the observe stream")
        .expect("the observe stream stays open");
    text(response.kv().expect("a leader").value())
}

#[tokio::test]
async fn election_campaign_proclaim_observe_resign() {
    let cluster = TestCluster::start("election", &[]).await;
    let mut client = follower_client(&cluster).await;

    assert_status(
        within("leader", client.leader("chief")).await,
        Code::Unknown,
        "election: no leader",
    );
    let mut observer = within("observe", client.observe("chief"))
        .await
        .expect("observe");

    let a_lease = grant(&mut client, 30).await;
    let a = within("campaign", client.campaign("chief", "a", a_lease))
        .await
        .expect("an uncontended campaign wins");
    let a_key = a.leader().expect("the winner's key").clone();
    assert_eq!(text(a_key.key()), format!("chief/{a_lease:x}"));
    assert_eq!(a_key.lease(), a_lease);
    assert_eq!(a_key.rev(), create_revision(&mut client, a_key.key()).await);
    let now = within("leader", client.leader("chief"))
        .await
        .expect("leader");
    assert_eq!(text(now.kv().expect("a leader").value()), "a");
    assert_eq!(observed(&mut observer).await, "a");

    // A second candidate waits while the first leads.
    let b_lease = grant(&mut client, 30).await;
    let mut b_client = client.clone();
    let mut b = tokio::spawn(async move { b_client.campaign("chief", "b", b_lease).await });
    contenders(&client, "chief/", 2).await;
    assert!(
        tokio::time::timeout(NOT_GRANTED_WITHIN, &mut b)
            .await
            .is_err(),
        "a candidate won while the leader still led"
    );

    // The leader proclaims; a stale leader key is refused.
    within(
        "proclaim",
        client.proclaim(
            "a2",
            Some(ProclaimOptions::new().with_leader(a_key.clone())),
        ),
    )
    .await
    .expect("the leader proclaims");
    assert_eq!(observed(&mut observer).await, "a2");
    let mut stale = a_key.clone();
    stale = stale.with_rev(a_key.rev() - 1);
    assert_status(
        within(
            "proclaim",
            client.proclaim("x", Some(ProclaimOptions::new().with_leader(stale))),
        )
        .await,
        Code::Unknown,
        "election: not leader",
    );

    // Resigning hands leadership to the next candidate.
    within(
        "resign",
        client.resign(Some(ResignOptions::new().with_leader(a_key.clone()))),
    )
    .await
    .expect("resign");
    let b = within("the candidate's win", b)
        .await
        .expect("the candidate's task")
        .expect("the candidate wins once the leader resigns");
    let b_key = b.leader().expect("the winner's key").clone();
    assert!(b_key.rev() > a_key.rev(), "leadership tokens only grow");

    assert_eq!(observed(&mut observer).await, "b");

    // Resigning again is not an error, and changes nothing.
    within(
        "resign",
        client.resign(Some(ResignOptions::new().with_leader(a_key))),
    )
    .await
    .expect("a second resign");
    let now = within("leader", client.leader("chief"))
        .await
        .expect("leader");
    assert_eq!(text(now.kv().expect("a leader").value()), "b");
}

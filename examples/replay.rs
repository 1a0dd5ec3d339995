//! `make soak-replay` (part of `make soak`): the DPoP replay store under load, across Envoy's
//! workers.
//!
//! The real Envoy (two workers, a direct response behind the filter) takes DPoP-bound tokens
//! with `max_age` 2 s and a skew of 1 s, so the store forgets a proof about three seconds after
//! its `iat`. Client threads send every fresh proof three times at once, each copy on its own
//! connection (Envoy spreads connections over its workers), for REPLAY_SECONDS (default 60).
//! It fails (exit 1) when a proof passed more than once or never, when an answer is anything
//! but 200 or the replay refusal, when Envoy's replay counter disagrees with the refusals seen,
//! or when Envoy's resident memory grows from the first third of the run to the last.
//!
//! Environment: REPLAY_SECONDS (default 60), REPLAY_THREADS (client threads, default 6).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/support/mod.rs"]
mod support;

use oauth_filter::jwt::keys::{public_jwk, sha256_b64url};
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};
use support::tokens::{jwks, now, Signer};
use support::{free_port, Envoy};

/// How often each proof is sent.
const COPIES: usize = 3;
/// Memory may grow this much (KiB) from the first third of the run to the last.
const RSS_SLACK_KIB: u64 = 8 * 1024;

/// What the clients saw of each proof: passes and replay refusals, and anything else.
#[derive(Default)]
struct Seen {
    by_proof: Mutex<HashMap<u64, (u32, u32)>>,
    other: Mutex<Vec<String>>,
}

fn main() {
    let seconds = support::env_number("REPLAY_SECONDS", 60);
    let threads = support::env_number("REPLAY_THREADS", 6) as usize;
    let issuer = Signer::es256("idp");
    let client = Arc::new(Signer::es256(""));
    let jkt = public_jwk(client.jwk().as_object().unwrap()).unwrap().1;
    let claims = json!({"iss": "https://idp.test", "sub": "replay", "exp": now() + seconds + 600,
                        "cnf": {"jkt": jkt}});
    let token = Arc::new(issuer.token(&claims));
    let config = json!({
        "providers": {"idp": {"issuer": "https://idp.test",
            "local_jwks": {"inline_string": jwks(&[issuer.jwk()])},
            "clock_skew_seconds": 1, "dpop": {"max_age": "2s"}}},
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "idp"}}]
    });
    let wasm = support::wasm_module();
    let (port, admin) = (free_port(), free_port());
    let filter = support::oauth_filter(&wasm, &config.to_string());
    let envoy = Envoy::start_workers(
        &support::direct_bootstrap(port, admin, vec![filter], vec![]),
        port,
        admin,
        2,
    )
    .unwrap_or_else(|log| panic!("{log}"));
    let build = if support::native_dir().is_some() {
        "native"
    } else {
        "Wasm"
    };
    eprintln!(
        "replay: {seconds} s, {threads} client threads, each proof sent {COPIES} times ({build})"
    );

    let seen = Arc::new(Seen::default());
    let stop = Arc::new(AtomicBool::new(false));
    let (send, receive) = mpsc::sync_channel::<(u64, Arc<String>)>(threads * COPIES);
    let receive = Arc::new(Mutex::new(receive));
    let clients: Vec<_> = (0..threads)
        .map(|_| {
            let (receive, seen, auth) = (receive.clone(), seen.clone(), format!("DPoP {token}"));
            std::thread::spawn(move || loop {
                let next = receive.lock().unwrap().recv();
                let Ok((id, proof)) = next else { return };
                send_proof(port, &auth, id, &proof, &seen);
            })
        })
        .collect();
    let sent = Arc::new(AtomicU64::new(0));
    let producer = {
        let (stop, client, token, sent) =
            (stop.clone(), client.clone(), token.clone(), sent.clone());
        std::thread::spawn(move || produce(&client, &token, &send, &stop, &sent))
    };
    let started = Instant::now();
    let mut rss = Vec::new();
    while started.elapsed() < Duration::from_secs(seconds) {
        std::thread::sleep(Duration::from_secs(5));
        rss.push(support::rss_kib(envoy.pid()));
    }
    stop.store(true, Ordering::Relaxed);
    producer.join().unwrap();
    for c in clients {
        c.join().unwrap();
    }
    let ok = report(&envoy, &seen, sent.load(Ordering::Relaxed), &rss, seconds);
    drop(envoy);
    std::process::exit(i32::from(!ok));
}

/// Sends one copy of proof `id` and notes what came back.
fn send_proof(port: u16, auth: &str, id: u64, proof: &str, seen: &Seen) {
    let headers = [
        ("authorization", auth.as_bytes()),
        ("dpop", proof.as_bytes()),
    ];
    let r = support::get(port, "/orders", &headers);
    let replayed = r.status == 401 && r.body.contains("used before");
    if r.status != 200 && !replayed {
        let line = format!("{} {}", r.status, r.body);
        seen.other.lock().unwrap().push(line);
    }
    let mut by_proof = seen.by_proof.lock().unwrap();
    let entry = by_proof.entry(id).or_default();
    if r.status == 200 {
        entry.0 += 1;
    } else if replayed {
        entry.1 += 1;
    }
}

/// Signs fresh proofs of `client` for `token`, each queued `COPIES` times, until `stop`.
fn produce(
    client: &Signer,
    token: &str,
    send: &mpsc::SyncSender<(u64, Arc<String>)>,
    stop: &AtomicBool,
    sent: &AtomicU64,
) {
    let header = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": client.jwk()});
    let ath = sha256_b64url(token.as_bytes());
    let mut id = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let claims = json!({"jti": format!("replay-{id}"), "htm": "GET",
            "htu": "http://api.test/orders", "iat": now(), "ath": ath});
        let proof = Arc::new(client.token_with(&header, &claims));
        for _ in 0..COPIES {
            if send.send((id, proof.clone())).is_err() {
                return;
            }
        }
        sent.fetch_add(1, Ordering::Relaxed);
        id += 1;
    }
}

fn report(envoy: &Envoy, seen: &Seen, proofs: u64, rss: &[u64], seconds: u64) -> bool {
    let by_proof = seen.by_proof.lock().unwrap();
    let twice = by_proof.values().filter(|(ok, _)| *ok > 1).count();
    let never = by_proof.values().filter(|(ok, _)| *ok == 0).count();
    let refused: u64 = by_proof.values().map(|(_, r)| u64::from(*r)).sum();
    let counted = envoy.counter("oauth_filter.dpop.replays");
    let other = seen.other.lock().unwrap();
    let third = (rss.len() / 3).max(1);
    let mean = |v: &[u64]| v.iter().sum::<u64>() / v.len().max(1) as u64;
    let (first, last) = (
        mean(&rss[..third.min(rss.len())]),
        mean(&rss[rss.len().saturating_sub(third)..]),
    );
    println!(
        "proofs: {proofs} in {seconds} s ({:.0} requests/s), each sent {COPIES} times",
        (proofs * COPIES as u64) as f64 / seconds as f64
    );
    println!("passed more than once: {twice}; never passed: {never}; replays refused: {refused} (Envoy counted {counted})");
    println!("other answers: {}", other.len());
    for line in other.iter().take(5) {
        println!("    {line}");
    }
    println!(
        "Envoy RSS: first third {:.1} MiB, last third {:.1} MiB",
        first as f64 / 1024.0,
        last as f64 / 1024.0
    );
    let ok = twice == 0
        && never == 0
        && other.is_empty()
        && counted == refused
        && proofs > 0
        && last <= first + RSS_SLACK_KIB;
    println!(
        "{}",
        if ok {
            "replay: every assertion held"
        } else {
            "replay: FAILED"
        }
    );
    ok
}

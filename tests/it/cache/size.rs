//! A zone's size through the binary: its metrics, least-recently-used eviction under `max_size`, and the
//! process memory that stays inside it.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_answers_by_cache_status_and_the_zone_size() {
    let backend = origin(versioned("max-age=60")).await;
    let binary = cached("", "", backend.addr());
    let client = TestClient::new();
    client.get(&url(&binary, "/a")).await;
    client.get(&url(&binary, "/a")).await;
    client.get(&url(&binary, "/a")).await;
    let metrics = binary.metrics().await;
    let zone = "zone=\"pages\"";
    assert_eq!(
        sample(
            &metrics,
            "fulcrum_cache_requests_total",
            &[zone, "status=\"MISS\""]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &metrics,
            "fulcrum_cache_requests_total",
            &[zone, "status=\"HIT\""]
        ),
        2.0
    );
    assert_eq!(sample(&metrics, "fulcrum_cache_entries", &[zone]), 1.0);
    let bytes = sample(&metrics, "fulcrum_cache_bytes", &[zone]);
    assert!(bytes > 2.0 && bytes < 4096.0, "bytes {bytes}");
    assert_eq!(
        sample(&metrics, "fulcrum_cache_evictions_total", &[zone]),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_least_recently_used_entry_is_evicted_under_max_size() {
    // Each entry is about 1.7 KB (1 KB body, key, headers, overhead): 4 KB holds two.
    let backend = origin(|_, n| {
        (
            StatusCode::OK,
            vec![("cache-control", "max-age=60".to_string())],
            format!("{}", n % 10).repeat(1000),
        )
    })
    .await;
    let binary = cached(
        "max_size = \"4k\"\nmax_entry_size = \"2k\"",
        "",
        backend.addr(),
    );
    let client = TestClient::new();
    for path in ["/1", "/2"] {
        assert_eq!(cache_status(&client.get(&url(&binary, path)).await), "MISS");
    }
    assert_eq!(cache_status(&client.get(&url(&binary, "/1")).await), "HIT");
    assert_eq!(cache_status(&client.get(&url(&binary, "/3")).await), "MISS");
    let metrics = binary.metrics().await;
    let zone = "zone=\"pages\"";
    assert_eq!(
        sample(&metrics, "fulcrum_cache_evictions_total", &[zone]),
        1.0
    );
    assert_eq!(sample(&metrics, "fulcrum_cache_entries", &[zone]), 2.0);
    assert!(sample(&metrics, "fulcrum_cache_bytes", &[zone]) <= 4096.0);
    assert_eq!(cache_status(&client.get(&url(&binary, "/1")).await), "HIT");
    assert_eq!(cache_status(&client.get(&url(&binary, "/3")).await), "HIT");
    assert_eq!(
        cache_status(&client.get(&url(&binary, "/2")).await),
        "MISS",
        "/2 was used least recently"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_filled_far_past_max_size_stays_under_it() {
    let backend = origin(|_, n| {
        (
            StatusCode::OK,
            vec![("cache-control", "max-age=60".to_string())],
            format!("{}", n % 10).repeat(4000),
        )
    })
    .await;
    let binary = cached(
        "max_size = \"64k\"\nmax_entry_size = \"8k\"",
        "",
        backend.addr(),
    );
    let client = TestClient::new();
    for n in 0..100 {
        let reply = client.get(&url(&binary, &format!("/p/{n}"))).await;
        assert_eq!(reply.body.len(), 4000);
    }
    let metrics = binary.metrics().await;
    let zone = "zone=\"pages\"";
    let bytes = sample(&metrics, "fulcrum_cache_bytes", &[zone]);
    let entries = sample(&metrics, "fulcrum_cache_entries", &[zone]);
    let evictions = sample(&metrics, "fulcrum_cache_evictions_total", &[zone]);
    assert!(bytes <= 65536.0, "bytes {bytes}");
    // About 4.6 KB an entry: 13 fit in 64 KiB; none of 4 KB bodies is counted at less than its body.
    assert!((10.0..=16.0).contains(&entries), "entries {entries}");
    assert!(
        bytes >= entries * 4000.0,
        "bytes {bytes} for {entries} entries"
    );
    assert_eq!(entries + evictions, 100.0);
    // The newest are kept, the oldest gone.
    assert_eq!(
        cache_status(&client.get(&url(&binary, "/p/99")).await),
        "HIT"
    );
    assert_eq!(
        cache_status(&client.get(&url(&binary, "/p/0")).await),
        "MISS"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_process_memory_stays_inside_max_size_when_nine_times_as_much_is_cached() {
    // 576 answers of 256 KiB (144 MiB) through a 16 MiB zone, in three rounds of 48 MiB.
    const BODY: usize = 256 << 10;
    let backend = origin(|_, n| {
        (
            StatusCode::OK,
            vec![("cache-control", "max-age=600".to_string())],
            format!("{:x}", n % 16).repeat(BODY),
        )
    })
    .await;
    let binary = cached(
        "max_size = \"16m\"\nmax_entry_size = \"1m\"",
        "",
        backend.addr(),
    );
    let client = TestClient::new();
    // Warm the process (connections, buffers, allocator arenas) with 8 entries before measuring.
    for n in 0..8 {
        let reply = client.get(&url(&binary, &format!("/warm/{n}"))).await;
        assert_eq!(reply.body.len(), BODY);
    }
    let before = binary.process.rss_kib();
    let mut rss = Vec::new();
    for round in 0..3 {
        for n in 0..192 {
            let reply = client.get(&url(&binary, &format!("/p/{round}/{n}"))).await;
            assert_eq!((reply.status, reply.body.len()), (StatusCode::OK, BODY));
            assert_eq!(cache_status(&reply), "MISS");
        }
        rss.push(binary.process.rss_kib());
    }
    let metrics = binary.metrics().await;
    let zone = "zone=\"pages\"";
    let bytes = sample(&metrics, "fulcrum_cache_bytes", &[zone]);
    let entries = sample(&metrics, "fulcrum_cache_entries", &[zone]);
    assert!(bytes <= 16.0 * 1024.0 * 1024.0, "zone bytes {bytes}");
    assert!(
        bytes >= entries * BODY as f64 && entries >= 50.0,
        "{entries} entries in {bytes} bytes"
    );
    // Once the zone is full, evicted entries' memory is reused: the last two rounds (96 MiB) barely
    // grow the process. The whole run stays within the zone's size plus the allocator's slack and
    // the answers in flight (without the bound it would grow by the 144 MiB it was sent).
    let (total, last_two) = (rss[2].saturating_sub(before), rss[2].saturating_sub(rss[0]));
    assert!(
        last_two < 16 * 1024,
        "RSS grew by {last_two} KiB while 96 MiB more replaced the zone's entries ({rss:?} KiB)"
    );
    assert!(
        total < (16 + 48) * 1024,
        "RSS grew by {total} KiB while 144 MiB went through a 16 MiB zone ({before} then {rss:?} KiB)"
    );
    // The newest entries are still served from the zone.
    assert_eq!(
        cache_status(&client.get(&url(&binary, "/p/2/191")).await),
        "HIT"
    );
}

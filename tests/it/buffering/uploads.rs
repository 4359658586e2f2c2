//! Uploads: read whole before a server is picked, limits before anything reaches it, retried with their body.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upload_opens_no_upstream_connection_until_it_is_complete() {
    let (upstream, seen) = raw_upstream(2).await;
    // read_timeout far below the upload's length: it must not count while the client sends.
    let binary = AdminBinary::start(
        "",
        "read_timeout = \"1s\"",
        &format!("{{ addr = \"{upstream}\" }}"),
    );
    let body = pattern(300);
    let mut client = TcpStream::connect(binary.addr).await.expect("connect");
    client
        .write_all(b"POST /up HTTP/1.1\r\nHost: test\r\nContent-Length: 300\r\n\r\n")
        .await
        .expect("write");
    let started = Instant::now();
    for piece in body.chunks(20) {
        assert_eq!(
            seen.connections.load(Ordering::SeqCst),
            0,
            "an upstream connection while the body is still arriving"
        );
        assert_eq!(in_flight(&binary).await, 0);
        client.write_all(piece).await.expect("write");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        started.elapsed() > Duration::from_millis(1400),
        "longer than read_timeout"
    );
    let mut pending = Vec::new();
    let answer = read_raw_response(&mut client, &mut pending)
        .await
        .expect("an answer");
    assert_eq!(answer.status, 200, "{}", answer.head);
    assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
    assert_eq!(*seen.last_body.lock(), body);
    assert_eq!(binary.passive_failures().await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_upload_over_max_body_size_reaches_no_upstream() {
    let (upstream, seen) = raw_upstream(2).await;
    let binary = AdminBinary::with_route(
        "max_body_size = \"1k\"",
        "",
        "",
        &format!("{{ addr = \"{upstream}\" }}"),
    );
    let client = TestClient::new();
    let reply = client
        .send(
            http::Request::post(format!("http://{}/up", binary.addr))
                .body(chunked(vec![Bytes::from(vec![b'a'; 600]); 3]))
                .expect("request"),
        )
        .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        reply.headers.get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..]),
        "the rest of the body is unread: the answer says the connection closes"
    );
    // Under the limit, chunked: it goes on with its length (nginx does the same).
    let reply = client
        .send(
            http::Request::post(format!("http://{}/up", binary.addr))
                .body(chunked(vec![Bytes::from(vec![b'b'; 300]); 3]))
                .expect("request"),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        seen.requests.load(Ordering::SeqCst),
        1,
        "only the second reached the upstream"
    );
    assert_eq!(*seen.last_body.lock(), vec![b'b'; 900]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_upload_goes_through_a_temp_file_and_a_retry_sends_it_again() {
    // The first server reads the whole request and closes without answering; the retry (PUT is
    // idempotent) goes to the second with the same body, read back from the temp file.
    let failing = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let failing_addr = failing.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = failing.accept().await {
            tokio::spawn(async move {
                let mut pending = Vec::new();
                let _ = read_request(&mut stream, &mut pending).await;
            });
        }
    });
    let (good, seen) = raw_upstream(2).await;
    let temp = tempfile::tempdir().expect("temp dir");
    let binary = AdminBinary::from_toml(&format!(
        "[global]\ntemp_path = \"{}\"\n\n\
         [[listener]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\n\n\
         [[route]]\npath = \"/\"\nupstream = \"app\"\n\n\
         [upstream.app]\nstrategy = \"round_robin\"\nbuffer_size = \"16k\"\n\
         servers = [{{ addr = \"{failing_addr}\" }}, {{ addr = \"{good}\" }}]\n",
        temp.path().display()
    ));
    let body = pattern(300_000);
    let client = TestClient::new();
    for _ in 0..2 {
        let reply = client
            .send(
                http::Request::put(format!("http://{}/up", binary.addr))
                    .body(crate::harness::body(body.clone()))
                    .expect("request"),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(*seen.last_body.lock(), body, "the body the good server got");
    }
    let metrics = binary.metrics().await;
    assert!(
        sample(
            &metrics,
            "fulcrum_buffer_temp_files_total",
            &["direction=\"request\""]
        ) >= 2.0,
        "uploads past buffer_size spill to a temp file"
    );
    assert!(sample(&metrics, "fulcrum_retries_total", &[]) >= 1.0);
    assert_eq!(
        sample(
            &metrics,
            "fulcrum_buffer_temp_files",
            &["direction=\"request\""]
        ),
        0.0
    );
    assert_eq!(names_in(temp.path()), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_clients_upload_is_buffered_and_goes_on_with_its_length() {
    let (upstream, seen) = raw_upstream(2).await;
    let temp = tempfile::tempdir().expect("temp dir");
    let binary = buffered_binary(temp.path(), "buffer_size = \"16k\"", upstream);
    let upload = pattern(100_000);
    let reply = TestClient::h2c()
        .send(
            http::Request::post(format!("http://{}/up", binary.addr))
                .body(chunked(
                    upload.chunks(10_000).map(Bytes::copy_from_slice).collect(),
                ))
                .expect("request"),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        *seen.last_body.lock(),
        upload,
        "the body, with a Content-Length the upstream read it by"
    );
    assert!(
        sample(
            &binary.metrics().await,
            "fulcrum_buffer_temp_files_total",
            &["direction=\"request\""],
        ) >= 1.0
    );
}

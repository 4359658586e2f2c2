//! Answers: slow readers free their upstream connections; streams stay streams; /status shows the buffers.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_slow_readers_of_a_megabyte_free_their_upstream_connections() {
    let (upstream, seen) = raw_upstream(1 << 20).await;
    let temp = tempfile::tempdir().expect("temp dir");
    let binary = buffered_binary(temp.path(), "", upstream);
    let before = binary.process.rss_kib();
    let mut readers = Vec::new();
    for _ in 0..50 {
        readers.push(slow_reader(binary.addr, 64).await);
    }
    // Every answer is read from the upstream although no client reads past its first bytes.
    wait_until(
        Duration::from_secs(10),
        "the upstream to write 50 whole answers",
        || seen.answered.load(Ordering::SeqCst) == 50,
    )
    .await;
    wait_until_async(Duration::from_secs(5), "no request in flight", || async {
        in_flight(&binary).await == 0
    })
    .await;
    // Counted at the backend: no answer is still being written to the proxy.
    assert_eq!(
        seen.requests.load(Ordering::SeqCst),
        seen.answered.load(Ordering::SeqCst),
        "answers in progress at the backend"
    );
    let metrics = binary.metrics().await;
    let memory = sample(
        &metrics,
        "fulcrum_buffer_memory_bytes",
        &["direction=\"response\""],
    );
    let grown_kib = binary.process.rss_kib().saturating_sub(before);
    assert!(
        memory <= 50.0 * (64.0 * 1024.0 + 256.0 * 1024.0),
        "buffer memory {memory} past 50 x (buffer_size + one read of at most 256k)"
    );
    // The stated bound (docs/operations.md): per slow client, buffer_size, the last piece handed to
    // its connection and the pooled upstream connection's read buffer (up to 256 KiB each), and 64 KiB
    // of connection state; the rest of each answer is in the kernel's socket buffers or a temp file.
    assert!(
        grown_kib < 50 * (64 + 2 * 256 + 64),
        "RSS grew by {grown_kib} KiB for 50 slow readers"
    );
    assert_eq!(names_in(temp.path()), 0, "temp files have no name");
    // The first reader reads its answer to the end: every byte, in order.
    let (mut first, prefix) = readers.swap_remove(0);
    assert_eq!(
        read_whole(&mut first, prefix).await,
        pattern(1 << 20),
        "the buffered answer arrives whole and in order"
    );
    drop(readers);
    drop(first);
    wait_until_async(Duration::from_secs(5), "every temp file closed", || async {
        sample(
            &binary.metrics().await,
            "fulcrum_buffer_temp_files",
            &["direction=\"response\""],
        ) == 0.0
    })
    .await;
    assert_eq!(fds_into(&binary, temp.path()), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_of_answers_past_the_socket_buffers_free_the_upstream_only_with_buffering() {
    let (upstream, seen) = raw_upstream(HUGE).await;
    let temp = tempfile::tempdir().expect("temp dir");
    // Streaming (`buffering = false` on the route): each answer stays in flight at its client's pace.
    let streaming = AdminBinary::from_toml(&format!(
        "[global]\ntemp_path = \"{}\"\n\n\
         [[listener]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\n\n\
         [[route]]\npath = \"/\"\nupstream = \"app\"\nbuffering = false\n\n\
         [upstream.app]\nservers = [{{ addr = \"{upstream}\" }}]\n",
        temp.path().display()
    ));
    let mut readers = Vec::new();
    for _ in 0..4 {
        readers.push(slow_reader(streaming.addr, 64).await);
    }
    let held_since = Instant::now();
    while held_since.elapsed() < Duration::from_secs(1) {
        assert_eq!(
            in_flight(&streaming).await,
            4,
            "answers held by their slow readers"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(readers);
    streaming.wait_none_in_flight().await;

    // Buffered (the default): every answer is read whole; the server is free while the clients wait.
    let answered = seen.answered.load(Ordering::SeqCst);
    let buffered = buffered_binary(temp.path(), "", upstream);
    let mut readers = Vec::new();
    for _ in 0..4 {
        readers.push(slow_reader(buffered.addr, 64).await);
    }
    wait_until(Duration::from_secs(10), "4 more whole answers", || {
        seen.answered.load(Ordering::SeqCst) == answered + 4
    })
    .await;
    buffered.wait_none_in_flight().await;
    let metrics = buffered.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            "fulcrum_buffer_temp_files",
            &["direction=\"response\""]
        ),
        4.0,
        "what the socket cannot take waits in a temp file"
    );
    assert!(
        sample(
            &metrics,
            "fulcrum_buffer_temp_file_bytes",
            &["direction=\"response\""]
        ) > 4.0 * 8.0 * 1024.0 * 1024.0
    );
    assert_eq!(names_in(temp.path()), 0);
    let (mut reader, prefix) = readers.swap_remove(0);
    assert_eq!(read_whole(&mut reader, prefix).await, pattern(HUGE));
}

/// A backend that answers with `content_type` (and `accel`, when given as `X-Accel-Buffering`): one
/// event, then the rest only once `gate` opens.
async fn gated_stream(
    content_type: &'static str,
    accel: Option<&'static str>,
) -> (fulcrum::demo::Backend, Arc<tokio::sync::Semaphore>) {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let held = Arc::clone(&gate);
    let backend = backend_with(move |_request| {
        let held = Arc::clone(&held);
        async move {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
            tokio::spawn(async move {
                let _ = tx
                    .send(Ok(Frame::data(Bytes::from("data: first\n\n"))))
                    .await;
                if let Ok(permit) = held.acquire().await {
                    permit.forget();
                }
                let _ = tx
                    .send(Ok(Frame::data(Bytes::from("data: last\n\n"))))
                    .await;
            });
            let stream = tokio_stream_from(rx);
            let mut response = http::Response::builder().header("content-type", content_type);
            if let Some(accel) = accel {
                response = response.header("x-accel-buffering", accel);
            }
            Ok(response
                .body(
                    StreamBody::new(stream)
                        .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
                        .boxed(),
                )
                .expect("response"))
        }
    })
    .await;
    (backend, gate)
}

/// The receiver as a stream of frames.
fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, std::io::Error>> + Send + Unpin {
    Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}

/// Sends a GET and checks that the first event arrives while the upstream still holds the rest; then
/// opens `gate` and reads the end. Returns the answer's headers.
async fn first_event_arrives_first(
    addr: SocketAddr,
    gate: &tokio::sync::Semaphore,
) -> http::HeaderMap {
    let client = TestClient::new();
    let response = client
        .response(
            http::Request::get(format!("http://{addr}/events"))
                .body(empty())
                .expect("request"),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers().clone();
    let mut body = response.into_body();
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("the first event before the upstream finishes")
        .expect("a frame")
        .expect("data");
    assert_eq!(
        first.into_data().expect("data"),
        Bytes::from("data: first\n\n")
    );
    gate.add_permits(1);
    let rest = tokio::time::timeout(Duration::from_secs(5), body.collect())
        .await
        .expect("the end")
        .expect("body")
        .to_bytes();
    assert_eq!(rest, Bytes::from("data: last\n\n"));
    headers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_and_x_accel_buffering_no_still_stream_with_buffering_on() {
    let (events, events_gate) = gated_stream("text/event-stream", None).await;
    let binary = AdminBinary::start("", "", &format!("{{ addr = \"{}\" }}", events.addr()));
    first_event_arrives_first(binary.addr, &events_gate).await;

    let (accel, accel_gate) = gated_stream("text/plain", Some("no")).await;
    let binary = AdminBinary::start("", "", &format!("{{ addr = \"{}\" }}", accel.addr()));
    let headers = first_event_arrives_first(binary.addr, &accel_gate).await;
    assert!(
        headers.get("x-accel-buffering").is_none(),
        "X-Accel-Buffering is removed, as nginx does"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_what_buffering_holds() {
    let (upstream, _seen) = raw_upstream(HUGE).await;
    let temp = tempfile::tempdir().expect("temp dir");
    let binary = buffered_binary(temp.path(), "buffer_size = \"16k\"", upstream);
    let _reader = slow_reader(binary.addr, 64).await;
    wait_until_async(Duration::from_secs(5), "a temp file in /status", || async {
        binary.status().await["buffers"]["response"]["temp_files"] == 1
    })
    .await;
    let status = binary.status().await;
    let response = &status["buffers"]["response"];
    assert!(
        response["temp_file_bytes"].as_u64().expect("bytes") > 0,
        "{status}"
    );
    assert!(
        response["memory_bytes"].as_u64().expect("bytes") <= 16 * 1024 + 256 * 1024,
        "{status}"
    );
}

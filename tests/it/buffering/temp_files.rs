//! Temp files: gone on every exit path; a temp path that takes no file makes bodies stream.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temp_files_are_gone_after_client_abort_upstream_failure_reload_and_sigterm() {
    let (upstream, _seen) = raw_upstream(HUGE).await;
    // An upstream that sends half of a 1 MB answer, then closes.
    let cutting = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let cutting_addr = cutting.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = cutting.accept().await {
            tokio::spawn(async move {
                let mut pending = Vec::new();
                if read_request(&mut stream, &mut pending).await.is_some() {
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 16777216\r\n\r\n")
                        .await;
                    let _ = stream.write_all(&pattern(HUGE / 2)).await;
                }
            });
        }
    });
    let temp = tempfile::tempdir().expect("temp dir");
    let mut binary = AdminBinary::from_toml(&format!(
        "[global]\ntemp_path = \"{}\"\nshutdown_timeout = \"1s\"\n\n\
         [[listener]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\n\n\
         [[route]]\npath = \"/cut\"\nupstream = \"cut\"\n\n\
         [[route]]\npath = \"/\"\nupstream = \"app\"\n\n\
         [upstream.cut]\nbuffer_size = \"16k\"\nservers = [{{ addr = \"{cutting_addr}\" }}]\n\n\
         [upstream.app]\nbuffer_size = \"16k\"\nservers = [{{ addr = \"{upstream}\" }}]\n",
        temp.path().display()
    ));
    let files = |metrics: &str| {
        sample(
            metrics,
            "fulcrum_buffer_temp_files",
            &["direction=\"response\""],
        )
    };
    // A temp file appears for a slow reader, and is gone when the client aborts.
    let (reader, _) = slow_reader(binary.addr, 64).await;
    wait_until_async(Duration::from_secs(5), "a temp file", || async {
        files(&binary.metrics().await) == 1.0
    })
    .await;
    assert_eq!(
        fds_into(&binary, temp.path()),
        1,
        "the open temp file is in temp_path"
    );
    assert_eq!(names_in(temp.path()), 0, "and has no name there");
    drop(reader);
    wait_until_async(
        Duration::from_secs(5),
        "the aborted answer's temp file closed",
        || async { files(&binary.metrics().await) == 0.0 },
    )
    .await;

    // The upstream fails mid-answer: the client's answer is cut, and the temp file goes.
    let mut stream = TcpStream::connect(binary.addr).await.expect("connect");
    stream
        .write_all(b"GET /cut HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .expect("write");
    let mut received = 0;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("the proxy closes a cut answer")
        {
            Ok(0) | Err(_) => break,
            Ok(n) => received += n,
        }
    }
    assert!(received < HUGE, "a cut answer is not completed");
    wait_until_async(
        Duration::from_secs(5),
        "the cut answer's temp file closed",
        || async { files(&binary.metrics().await) == 0.0 },
    )
    .await;

    // A reload while a buffered answer waits for its reader: it finishes whole afterwards.
    let (mut reader, prefix) = slow_reader(binary.addr, 12).await;
    wait_until_async(Duration::from_secs(5), "a temp file", || async {
        files(&binary.metrics().await) == 1.0
    })
    .await;
    binary.reload_replacing(
        "buffer_size = \"16k\"\nservers",
        "buffer_size = \"32k\"\nservers",
    );
    let body = read_whole(&mut reader, prefix).await;
    assert_eq!(body, pattern(HUGE));
    drop(reader);
    wait_until_async(
        Duration::from_secs(5),
        "no temp file after the reload",
        || async { files(&binary.metrics().await) == 0.0 },
    )
    .await;

    // SIGTERM with a temp file open: the process ends and nothing is left in temp_path.
    let _reader = slow_reader(binary.addr, 64).await;
    wait_until_async(Duration::from_secs(5), "a temp file", || async {
        files(&binary.metrics().await) == 1.0
    })
    .await;
    binary.process.signal("TERM");
    binary.process.wait_exit(Duration::from_secs(10));
    assert_eq!(names_in(temp.path()), 0, "nothing left after SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_temp_path_degrades_to_streaming() {
    let temp = tempfile::tempdir().expect("temp dir");
    // A path that is not a directory, and a directory no one (root included) can make a file in.
    let not_a_dir = temp.path().join("file");
    std::fs::write(&not_a_dir, b"x").expect("write");
    for path in [not_a_dir.as_path(), Path::new("/proc")] {
        streams_without_a_temp_file(path).await;
    }
}

/// A binary whose `temp_path` is `path` serves a large answer to a slow reader and a large upload whole,
/// streaming, and counts a fallback for each.
async fn streams_without_a_temp_file(path: &Path) {
    let (upstream, seen) = raw_upstream(HUGE).await;
    let binary = buffered_binary(path, "buffer_size = \"16k\"", upstream);
    // An answer past buffer_size streams at the client's pace, whole.
    let (mut reader, prefix) = slow_reader(binary.addr, 12).await;
    wait_until_async(Duration::from_secs(5), "a response fallback", || async {
        sample(
            &binary.metrics().await,
            "fulcrum_buffer_fallbacks_total",
            &["direction=\"response\"", "reason=\"temp_file_error\""],
        ) >= 1.0
    })
    .await;
    let body = read_whole(&mut reader, prefix).await;
    assert_eq!(body, pattern(HUGE));
    // An upload past buffer_size streams the rest and arrives whole.
    let upload = pattern(200_000);
    let reply = TestClient::new()
        .send(
            http::Request::post(format!("http://{}/up", binary.addr))
                .body(crate::harness::body(upload.clone()))
                .expect("request"),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(*seen.last_body.lock(), upload);
    let metrics = binary.metrics().await;
    for direction in ["request", "response"] {
        assert!(
            sample(
                &metrics,
                "fulcrum_buffer_fallbacks_total",
                &[
                    &format!("direction=\"{direction}\""),
                    "reason=\"temp_file_error\""
                ],
            ) >= 1.0,
            "{direction}: {metrics}"
        );
    }
    drop(reader);
}

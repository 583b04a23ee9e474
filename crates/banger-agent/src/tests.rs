//! Sessions driven over an in-memory pipe, running real (unprivileged)
//! processes on the test host.

use std::sync::Mutex;

use banger_agent_proto::handshake;
use tokio::io::DuplexStream;

use super::*;

#[derive(Debug, Default)]
struct RecordingPower(Mutex<Vec<bool>>);

impl Power for RecordingPower {
    fn power_off(&self, reboot: bool) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(reboot);
    }
}

static POWER: std::sync::LazyLock<RecordingPower> = std::sync::LazyLock::new(Default::default);

async fn connect() -> DuplexStream {
    let (mut ours, theirs) = tokio::io::duplex(256 << 10);
    tokio::spawn(async move { session(theirs, &*POWER).await });
    handshake(&mut ours, "test").await.expect("handshake");
    ours
}

#[derive(Debug, Default)]
struct Outcome {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    exit: Option<Message>,
}

async fn collect<S: AsyncRead + Unpin>(s: &mut S) -> Outcome {
    let mut o = Outcome::default();
    while let Some(f) = read_frame(s).await.expect("frame") {
        match f {
            Frame::Stdout(d) => o.stdout.extend(d),
            Frame::Stderr(d) => o.stderr.extend(d),
            Frame::Control(m @ (Message::Exit { .. } | Message::Error { .. })) => {
                o.exit = Some(m);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    o
}

/// One exec on a fresh session, to its end.
async fn run(req: ExecRequest) -> Outcome {
    let mut s = connect().await;
    send(&mut s, &Message::Exec(req)).await.expect("exec");
    collect(&mut s).await
}

fn sh(script: &str) -> ExecRequest {
    ExecRequest {
        argv: vec!["sh".into(), "-c".into(), script.into()],
        cwd: Some("/".into()),
        ..Default::default()
    }
}

fn exit(code: i32) -> Option<Message> {
    Some(Message::Exit {
        code: Some(code),
        signal: None,
    })
}

#[tokio::test]
async fn exec_separates_streams_and_returns_the_exit_code() {
    let o = run(sh("echo out; echo err >&2; exit 7")).await;
    assert_eq!(o.stdout, b"out\n");
    assert_eq!(o.stderr, b"err\n");
    assert_eq!(o.exit, exit(7));
}

#[tokio::test]
async fn pings_repeat_until_a_request() {
    let mut s = connect().await;
    for _ in 0..3 {
        send(&mut s, &Message::Ping).await.expect("ping");
        assert_eq!(
            read_frame(&mut s).await.expect("pong"),
            Some(Frame::Control(Message::Pong))
        );
    }
}

#[tokio::test]
async fn stdin_is_streamed_and_closed() {
    let mut s = connect().await;
    let mut req = sh("cat; echo done");
    req.stdin = true;
    send(&mut s, &Message::Exec(req)).await.expect("exec");
    write_frame(&mut s, Kind::Stdin, b"hello ")
        .await
        .expect("in");
    write_frame(&mut s, Kind::Stdin, b"world\n")
        .await
        .expect("in");
    send(&mut s, &Message::StdinEof).await.expect("eof");
    let o = collect(&mut s).await;
    assert_eq!(o.stdout, b"hello world\ndone\n");
    assert_eq!(o.exit, exit(0));
}

#[tokio::test]
async fn a_signal_reaches_the_whole_group() {
    let mut s = connect().await;
    send(&mut s, &Message::Exec(sh("sleep 30 & wait")))
        .await
        .expect("exec");
    tokio::time::sleep(Duration::from_millis(200)).await;
    send(&mut s, &Message::Signal { signal: 15 })
        .await
        .expect("signal");
    let o = collect(&mut s).await;
    assert_eq!(
        o.exit,
        Some(Message::Exit {
            code: None,
            signal: Some(15)
        })
    );
}

#[tokio::test]
async fn a_missing_program_exits_127_with_the_reason() {
    let o = run(ExecRequest {
        argv: vec!["/no/such/program".into()],
        ..Default::default()
    })
    .await;
    assert_eq!(o.exit, exit(127));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/no/such/program"));
}

#[tokio::test]
async fn an_unknown_user_is_an_error() {
    let mut req = sh("true");
    req.user = Some("no-such-user-xyz".into());
    let o = run(req).await;
    assert!(
        matches!(&o.exit, Some(Message::Error { message }) if message.contains("no-such-user-xyz")),
        "{o:?}"
    );
}

#[tokio::test]
async fn env_and_cwd_are_applied() {
    let mut req = sh("echo $GREETING; pwd");
    req.env = vec![("GREETING".into(), "hi".into())];
    req.cwd = Some("/tmp".into());
    let o = run(req).await;
    assert_eq!(o.stdout, b"hi\n/tmp\n");
}

#[tokio::test]
async fn a_pty_has_the_requested_size_and_follows_resizes() {
    let mut s = connect().await;
    let mut req = sh("tty; stty size; read x; stty size");
    req.tty = Some((80, 24));
    req.stdin = true;
    send(&mut s, &Message::Exec(req)).await.expect("exec");
    let mut out = Vec::new();
    while !String::from_utf8_lossy(&out).contains("24 80") {
        match read_frame(&mut s).await.expect("frame") {
            Some(Frame::Stdout(d)) => out.extend(d),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        String::from_utf8_lossy(&out).contains("/dev/pts/"),
        "{out:?}"
    );
    send(
        &mut s,
        &Message::Resize {
            cols: 100,
            rows: 40,
        },
    )
    .await
    .expect("resize");
    write_frame(&mut s, Kind::Stdin, b"\n")
        .await
        .expect("enter");
    let o = collect(&mut s).await;
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(text.contains("40 100"), "{text:?}");
    assert_eq!(o.exit, exit(0));
}

#[tokio::test]
async fn a_vanished_client_kills_the_command() {
    let mut s = connect().await;
    send(&mut s, &Message::Exec(sh("echo $$; exec sleep 30")))
        .await
        .expect("exec");
    let pid: i32 = loop {
        if let Some(Frame::Stdout(d)) = read_frame(&mut s).await.expect("frame") {
            break String::from_utf8_lossy(&d).trim().parse().expect("pid");
        }
    };
    drop(s);
    let gone = async {
        while nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|st| st.contains(") Z"))
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), gone)
        .await
        .expect("the command outlived its client");
}

#[tokio::test]
async fn background_output_holders_do_not_hang_the_exit() {
    // The background sleep keeps stdout open; the Exit must still come.
    let o = run(sh("echo $$; sleep 30 & echo hi")).await;
    assert_eq!(o.exit, exit(0));
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(text.ends_with("hi\n"), "{text:?}");
    let pgid: i32 = text.lines().next().expect("pid").parse().expect("pid");
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(-pgid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

#[tokio::test]
async fn archives_round_trip_and_report_failures() {
    let src = tempfile::tempdir().expect("tmp");
    let dst = tempfile::tempdir().expect("tmp");
    std::fs::create_dir_all(src.path().join("t/inner")).expect("mkdir");
    std::fs::write(src.path().join("t/inner/f"), vec![7u8; 300_000]).expect("write");

    // Get: the agent packs, the test unpacks.
    let mut s = connect().await;
    send(
        &mut s,
        &Message::GetArchive {
            path: src.path().join("t").display().to_string(),
        },
    )
    .await
    .expect("get");
    let mut tar = Vec::new();
    let o = loop {
        match read_frame(&mut s).await.expect("frame") {
            Some(Frame::Stdout(d)) => tar.extend(d),
            Some(Frame::Control(m)) => break m,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(o, exit(0).expect("exit"));

    // Put: the test sends what it got, renamed on the way in.
    let mut s = connect().await;
    let dest = dst.path().join("copy");
    send(
        &mut s,
        &Message::PutArchive {
            dest: dest.display().to_string(),
        },
    )
    .await
    .expect("put");
    banger_agent_proto::send_data(&mut s, Kind::Stdin, &tar)
        .await
        .expect("data");
    send(&mut s, &Message::StdinEof).await.expect("eof");
    assert_eq!(collect(&mut s).await.exit, exit(0));
    assert_eq!(
        std::fs::read(dest.join("inner/f")).expect("copied"),
        vec![7u8; 300_000]
    );

    // A destination whose parent is missing: an error naming it.
    let mut s = connect().await;
    send(
        &mut s,
        &Message::PutArchive {
            dest: "/no/such/parent/x".into(),
        },
    )
    .await
    .expect("put");
    banger_agent_proto::send_data(&mut s, Kind::Stdin, &tar)
        .await
        .expect("data");
    send(&mut s, &Message::StdinEof).await.expect("eof");
    let o = collect(&mut s).await;
    assert!(
        matches!(&o.exit, Some(Message::Error { message }) if message.contains("/no/such/parent")),
        "{o:?}"
    );
}

#[tokio::test]
async fn power_off_answers_then_acts() {
    let mut s = connect().await;
    send(&mut s, &Message::PowerOff { reboot: true })
        .await
        .expect("poweroff");
    assert_eq!(
        read_frame(&mut s).await.expect("ack"),
        Some(Frame::Control(Message::Pong))
    );
    // The session then ends, after acting.
    assert_eq!(read_frame(&mut s).await.expect("end"), None);
    assert!(POWER.0.lock().expect("lock").contains(&true));
}

#[tokio::test]
async fn an_old_daemon_gets_our_hello_and_nothing_else() {
    let (mut ours, theirs) = tokio::io::duplex(4096);
    tokio::spawn(async move { session(theirs, &*POWER).await });
    send(
        &mut ours,
        &Message::Hello(Hello {
            protocol: PROTOCOL_VERSION + 1,
            software: "future".into(),
        }),
    )
    .await
    .expect("hello");
    match read_frame(&mut ours).await.expect("hello back") {
        Some(Frame::Control(Message::Hello(h))) => assert_eq!(h.protocol, PROTOCOL_VERSION),
        other => panic!("{other:?}"),
    }
    assert_eq!(read_frame(&mut ours).await.expect("end"), None);
}

/// Sessions as QEMU guests serve them: streams of one mux carrier.
#[tokio::test]
async fn sessions_run_unchanged_over_mux_streams() {
    use banger_agent_proto::mux::{self, MuxClient};
    let (host, guest) = tokio::io::duplex(64 << 10);
    tokio::spawn(mux::serve(guest, |s| {
        tokio::spawn(async move { session(s, &*POWER).await });
    }));
    let client = MuxClient::connect(host, Duration::from_secs(10))
        .await
        .expect("sync");
    let mut jobs = Vec::new();
    for i in 0..4 {
        let client = client.clone();
        jobs.push(tokio::spawn(async move {
            let mut s = client.open().await.expect("open");
            handshake(&mut s, "test").await.expect("handshake");
            send(&mut s, &Message::Ping).await.expect("ping");
            assert_eq!(
                read_frame(&mut s).await.expect("pong"),
                Some(Frame::Control(Message::Pong))
            );
            let req = ExecRequest {
                stdin: true,
                ..sh("wc -c")
            };
            send(&mut s, &Message::Exec(req)).await.expect("exec");
            let input = vec![b'x'; 100_000 * (i + 1)];
            banger_agent_proto::send_data(&mut s, Kind::Stdin, &input)
                .await
                .expect("stdin");
            send(&mut s, &Message::StdinEof).await.expect("eof");
            let o = collect(&mut s).await;
            assert_eq!(o.exit, exit(0));
            assert_eq!(
                String::from_utf8_lossy(&o.stdout).trim(),
                input.len().to_string()
            );
        }));
    }
    for j in jobs {
        j.await.expect("session");
    }

    // A dropped stream is a vanished client: its command is killed.
    let mut s = client.open().await.expect("open");
    handshake(&mut s, "test").await.expect("handshake");
    send(&mut s, &Message::Exec(sh("echo $$; exec sleep 30")))
        .await
        .expect("exec");
    let pid: i32 = loop {
        if let Some(Frame::Stdout(d)) = read_frame(&mut s).await.expect("frame") {
            break String::from_utf8_lossy(&d).trim().parse().expect("pid");
        }
    };
    drop(s);
    let gone = async {
        while nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|st| st.contains(") Z"))
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), gone)
        .await
        .expect("the command outlived its stream");
}

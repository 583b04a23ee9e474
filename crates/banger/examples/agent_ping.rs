//! Waits for a guest agent to answer a ping and prints the milliseconds
//! that took; for `bench/vm_run.sh`'s raw QEMU baseline (no daemon in the
//! loop).
//!
//! `agent_ping VSOCK_SOCKET [TIMEOUT_SECS]` (a Firecracker-style vsock
//! unix socket), or `agent_ping --serial AGENT_SOCKET [TIMEOUT_SECS]`
//! (QEMU's virtio-serial chardev, sessions multiplexed).
//!
//! Over serial it does what the daemon does: connect, wait for the
//! agent's mux sync (bounded, then again), then ping in a stream.
//!
//! Like the daemon, it waits for the agent's ready call (the guest
//! connecting to host port 1052, `<VSOCK_SOCKET>_1052`) and pings once
//! after it: an event instead of a poll, and no connection into a guest
//! still booting, which can stop QEMU's vsock backend for good.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use banger_agent_proto::{
    AGENT_PORT, Frame, MAX_READY_LINE, Message, READY_GREETING, READY_PORT, handshake, read_frame,
    send, vsock,
};
use tokio::io::AsyncBufReadExt;

/// Removes the ready socket however the wait ends.
struct ReadySocket(PathBuf);

impl Drop for ReadySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1).peekable();
    let serial = args.next_if_eq("--serial").is_some();
    let Some(path) = args.next() else {
        eprintln!("usage: agent_ping [--serial] SOCKET [TIMEOUT_SECS]");
        return std::process::ExitCode::from(2);
    };
    let timeout = Duration::from_secs(args.next().and_then(|s| s.parse().ok()).unwrap_or(120));
    let t = Instant::now();
    if serial {
        return match tokio::time::timeout(timeout, ping_serial(&path)).await {
            Ok(Ok(())) => {
                println!("{}", t.elapsed().as_millis());
                std::process::ExitCode::SUCCESS
            }
            Ok(Err(e)) => {
                eprintln!("agent_ping: {path}: {e}");
                std::process::ExitCode::FAILURE
            }
            Err(_) => {
                eprintln!("agent_ping: no answer on {path} within {timeout:?}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let ready_path = PathBuf::from(format!("{path}_{READY_PORT}"));
    match std::fs::remove_file(&ready_path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            eprintln!("agent_ping: removing {}: {e}", ready_path.display());
            return std::process::ExitCode::FAILURE;
        }
    }
    let listener = match tokio::net::UnixListener::bind(&ready_path) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("agent_ping: binding {}: {e}", ready_path.display());
            return std::process::ExitCode::FAILURE;
        }
    };
    let _ready = ReadySocket(ready_path.clone());
    let call = tokio::time::timeout(timeout, async {
        let (s, _) = listener.accept().await?;
        let mut line = String::new();
        let mut reader =
            tokio::io::BufReader::new(tokio::io::AsyncReadExt::take(s, MAX_READY_LINE as u64));
        reader.read_line(&mut line).await?;
        Ok::<_, std::io::Error>(line)
    })
    .await;
    match call {
        Ok(Ok(line)) if line.starts_with(READY_GREETING) => {}
        Ok(Ok(line)) => {
            eprintln!("agent_ping: not the agent's ready call on {ready_path:?}: {line:?}");
            return std::process::ExitCode::FAILURE;
        }
        Ok(Err(e)) => {
            eprintln!("agent_ping: the ready call on {ready_path:?}: {e}");
            return std::process::ExitCode::FAILURE;
        }
        Err(_) => {
            eprintln!("agent_ping: no ready call on {ready_path:?} within {timeout:?}");
            return std::process::ExitCode::FAILURE;
        }
    }
    let attempt = tokio::time::timeout(Duration::from_secs(5), async {
        let mut s = vsock::connect(path.as_ref(), AGENT_PORT).await?;
        handshake(&mut s, "agent_ping").await?;
        send(&mut s, &Message::Ping).await?;
        read_frame(&mut s).await
    })
    .await;
    match attempt {
        Ok(Ok(Some(Frame::Control(Message::Pong)))) => {
            println!("{}", t.elapsed().as_millis());
            std::process::ExitCode::SUCCESS
        }
        other => {
            eprintln!(
                "agent_ping: the agent called ready but did not answer a ping on {path}: {other:?}"
            );
            std::process::ExitCode::FAILURE
        }
    }
}

/// Until the agent answers: a mux sync that times out means the guest
/// is not up yet, so connect again.
async fn ping_serial(path: &str) -> Result<(), banger_agent_proto::ProtoError> {
    use banger_agent_proto::mux::MuxClient;
    loop {
        let sock = tokio::net::UnixStream::connect(path).await?;
        let client = match MuxClient::connect(sock, Duration::from_secs(5)).await {
            Ok(c) => c,
            Err(_) => continue,
        };
        let mut s = client.open().await?;
        handshake(&mut s, "agent_ping").await?;
        send(&mut s, &Message::Ping).await?;
        return match read_frame(&mut s).await? {
            Some(Frame::Control(Message::Pong)) => Ok(()),
            other => Err(std::io::Error::other(format!("not a pong: {other:?}")).into()),
        };
    }
}

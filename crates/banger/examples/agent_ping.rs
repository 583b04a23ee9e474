//! Polls a guest agent behind a vsock unix socket until it answers a ping
//! and prints the milliseconds that took; for `bench/vm_run.sh`'s raw
//! QEMU baseline (no daemon in the loop).
//!
//! `agent_ping VSOCK_SOCKET [TIMEOUT_SECS]`

use std::time::{Duration, Instant};

use banger_agent_proto::{AGENT_PORT, Frame, Message, handshake, read_frame, send, vsock};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next() else {
        eprintln!("usage: agent_ping VSOCK_SOCKET [TIMEOUT_SECS]");
        return std::process::ExitCode::from(2);
    };
    let timeout = Duration::from_secs(args.next().and_then(|s| s.parse().ok()).unwrap_or(120));
    let t = Instant::now();
    while t.elapsed() < timeout {
        let attempt = tokio::time::timeout(Duration::from_secs(5), async {
            let mut s = vsock::connect(path.as_ref(), AGENT_PORT).await?;
            handshake(&mut s, "agent_ping").await?;
            send(&mut s, &Message::Ping).await?;
            read_frame(&mut s).await
        })
        .await;
        if let Ok(Ok(Some(Frame::Control(Message::Pong)))) = attempt {
            println!("{}", t.elapsed().as_millis());
            return std::process::ExitCode::SUCCESS;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("agent_ping: no answer on {path} within {timeout:?}");
    std::process::ExitCode::FAILURE
}

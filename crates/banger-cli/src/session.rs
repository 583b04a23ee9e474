//! `vm exec` and `vm cp` over an attached connection: the client's half of
//! the agent protocol.

use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use banger_agent_proto::archive;
use banger_agent_proto::{ExecRequest, Frame, Kind, Message, read_frame, send, write_frame};
use banger_api::vm::AttachRequest;
use banger_client::Client;
use nix::sys::termios;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// What the writer task sends to the agent.
enum Out {
    Data(Vec<u8>),
    Control(Message),
}

/// Puts the terminal on stdin in raw mode until dropped.
struct RawMode {
    saved: termios::Termios,
}

impl RawMode {
    fn enter() -> Result<Self> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd()).context("reading the terminal mode")?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), termios::SetArg::TCSANOW, &raw)
            .context("setting the terminal to raw mode")?;
        Ok(Self { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(
            std::io::stdin().as_fd(),
            termios::SetArg::TCSANOW,
            &self.saved,
        );
    }
}

/// The local terminal's size (cols, rows), if stdout is one.
pub fn terminal_size() -> Option<(u16, u16)> {
    let ws = rustix::termios::tcgetwinsize(std::io::stdout()).ok()?;
    (ws.ws_col > 0).then_some((ws.ws_col, ws.ws_row))
}

/// The shell's convention for a command's end: its code, or 128 + signal.
pub fn exit_code(code: Option<i32>, signal: Option<i32>) -> i32 {
    match (code, signal) {
        (Some(c), _) => c,
        (None, Some(s)) => 128 + s,
        (None, None) => 255,
    }
}

/// Runs `req` in `vm`; returns the exit code to exit with.
pub async fn exec(client: &Client, vm: &str, req: ExecRequest) -> Result<i32> {
    let tty = req.tty.is_some();
    let interactive = req.stdin;
    let stream = client
        .attach(vm, &AttachRequest::Exec(req))
        .await
        .with_context(|| format!("vm {vm}"))?;
    let (mut r, mut w) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel::<Out>(16);

    let writer = tokio::spawn(async move {
        while let Some(out) = rx.recv().await {
            let sent = match out {
                Out::Data(d) => write_frame(&mut w, Kind::Stdin, &d).await,
                Out::Control(m) => send(&mut w, &m).await,
            };
            if sent.is_err() {
                break;
            }
        }
        // Never half-close: the agent reads an end of stream as "the
        // client is gone" and kills the command.
        std::future::pending::<()>().await;
    });

    let _raw = if tty && nix::unistd::isatty(std::io::stdin().as_fd()).unwrap_or(false) {
        Some(RawMode::enter()?)
    } else {
        None
    };
    if interactive {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut stdin = tokio::io::stdin();
            let mut buf = vec![0u8; 32 << 10];
            loop {
                match stdin.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        if !tty {
                            let _ = tx.send(Out::Control(Message::StdinEof)).await;
                        }
                        break;
                    }
                    Ok(n) => {
                        if tx.send(Out::Data(buf[..n].to_vec())).await.is_err() {
                            break;
                        }
                    }
                }
            }
        });
    }
    if tty {
        let tx = tx.clone();
        if let Ok(mut winch) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
        {
            tokio::spawn(async move {
                while winch.recv().await.is_some() {
                    if let Some((cols, rows)) = terminal_size() {
                        if tx
                            .send(Out::Control(Message::Resize { cols, rows }))
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                }
            });
        }
    }

    // Ctrl-C without a tty: interrupt the remote command, then kill it if
    // it is still there after a grace period or a second Ctrl-C. (With a
    // tty, Ctrl-C is a byte the remote terminal turns into SIGINT.)
    let mut interrupts = 0u32;
    let mut kill_at: Option<tokio::time::Instant> = None;
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    let result = loop {
        let deadline =
            kill_at.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(86_400));
        tokio::select! {
            frame = read_frame(&mut r) => match frame {
                Ok(Some(Frame::Stdout(d))) => {
                    stdout.write_all(&d).context("writing stdout")?;
                    stdout.flush().ok();
                }
                Ok(Some(Frame::Stderr(d))) => {
                    stderr.write_all(&d).context("writing stderr")?;
                    stderr.flush().ok();
                }
                Ok(Some(Frame::Control(Message::Exit { code, signal }))) => {
                    break Ok(exit_code(code, signal));
                }
                Ok(Some(Frame::Control(Message::Error { message }))) => {
                    break Err(anyhow!("vm {vm}: {message}"));
                }
                Ok(Some(_)) => {}
                Ok(None) => break Err(anyhow!("vm {vm}: the connection to the guest agent closed before the command's exit status arrived")),
                Err(e) => break Err(anyhow!("vm {vm}: guest agent connection: {e}")),
            },
            _ = tokio::signal::ctrl_c(), if !tty => {
                interrupts += 1;
                let sig = if interrupts == 1 { nix::libc::SIGINT } else { nix::libc::SIGKILL };
                let _ = tx.send(Out::Control(Message::Signal { signal: sig })).await;
                kill_at = Some(tokio::time::Instant::now() + Duration::from_secs(2));
            }
            () = tokio::time::sleep_until(deadline), if kill_at.is_some() => {
                let _ = tx.send(Out::Control(Message::Signal { signal: nix::libc::SIGKILL })).await;
                kill_at = None;
            }
        }
    };
    writer.abort();
    result
}

/// One side of `vm cp`: `NAME:/path` in the guest, anything else here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    Guest { vm: String, path: String },
    Host(PathBuf),
}

impl Place {
    pub fn parse(s: &str) -> Self {
        match s.split_once(':') {
            // A '/' before the colon makes it a host path (./a:b).
            Some((vm, path)) if !vm.is_empty() && !vm.contains('/') => Self::Guest {
                vm: vm.to_owned(),
                path: path.to_owned(),
            },
            _ => Self::Host(PathBuf::from(s)),
        }
    }
}

/// `vm cp SRC DST`: exactly one side in a guest.
pub async fn copy(client: &Client, src: &str, dst: &str) -> Result<()> {
    match (Place::parse(src), Place::parse(dst)) {
        (Place::Host(local), Place::Guest { vm, path }) => {
            copy_in(client, &local, &vm, &path).await
        }
        (Place::Guest { vm, path }, Place::Host(local)) => {
            copy_out(client, &vm, &path, &local).await
        }
        (Place::Guest { .. }, Place::Guest { .. }) => {
            bail!("both sides are in vms; copy through the host in two steps")
        }
        (Place::Host(_), Place::Host(_)) => {
            bail!(
                "neither side is in a vm; write one as NAME:/path (e.g. `banger vm cp ./src box:/root/`)"
            )
        }
    }
}

/// Reads the agent's verdict at the end of a copy.
async fn verdict<R: tokio::io::AsyncRead + Unpin>(r: &mut R, vm: &str) -> Result<()> {
    loop {
        match read_frame(r).await {
            Ok(Some(Frame::Control(Message::Exit { .. }))) => return Ok(()),
            Ok(Some(Frame::Control(Message::Error { message }))) => bail!("vm {vm}: {message}"),
            Ok(Some(_)) => {}
            Ok(None) => {
                bail!("vm {vm}: the guest agent closed the connection before confirming the copy")
            }
            Err(e) => bail!("vm {vm}: guest agent connection: {e}"),
        }
    }
}

async fn copy_in(client: &Client, local: &Path, vm: &str, dest: &str) -> Result<()> {
    std::fs::symlink_metadata(local).with_context(|| format!("{}", local.display()))?;
    let local = std::path::absolute(local).with_context(|| format!("{}", local.display()))?;
    let stream = client
        .attach(
            vm,
            &AttachRequest::CopyIn {
                dest: dest.to_owned(),
            },
        )
        .await
        .with_context(|| format!("vm {vm}"))?;
    let (mut r, mut w) = tokio::io::split(stream);
    let (mut chunks, job) = archive::pack_stream(local.clone());
    while let Some(chunk) = chunks.recv().await {
        write_frame(&mut w, Kind::Stdin, &chunk)
            .await
            .with_context(|| format!("sending {} to vm {vm}", local.display()))?;
    }
    job.await
        .context("packing task")?
        .with_context(|| format!("reading {}", local.display()))?;
    send(&mut w, &Message::StdinEof)
        .await
        .context("finishing the copy")?;
    w.flush().await.ok();
    verdict(&mut r, vm).await
}

async fn copy_out(client: &Client, vm: &str, path: &str, local: &Path) -> Result<()> {
    let stream = client
        .attach(
            vm,
            &AttachRequest::CopyOut {
                path: path.to_owned(),
            },
        )
        .await
        .with_context(|| format!("vm {vm}"))?;
    let (mut r, _w) = tokio::io::split(stream);
    // The guest's archive, on the user's host: trusted in nothing.
    let (tx, job) = archive::unpack_stream(local.to_path_buf(), archive::Origin::Untrusted);
    let mut tx = Some(tx);
    let outcome = loop {
        match read_frame(&mut r).await {
            Ok(Some(Frame::Stdout(d))) => {
                if let Some(t) = &tx {
                    if t.send(d).await.is_err() {
                        // The unpacker failed; its error says why.
                        tx = None;
                    }
                }
            }
            Ok(Some(Frame::Control(Message::Exit { .. }))) => break Ok(()),
            Ok(Some(Frame::Control(Message::Error { message }))) => {
                break Err(anyhow!("vm {vm}: {message}"));
            }
            Ok(Some(_)) => {}
            Ok(None) => {
                break Err(anyhow!(
                    "vm {vm}: the guest agent closed the connection mid-copy"
                ));
            }
            Err(e) => break Err(anyhow!("vm {vm}: guest agent connection: {e}")),
        }
    };
    drop(tx);
    let unpacked = job.await.context("unpacking task")?;
    outcome?;
    let done = unpacked.with_context(|| format!("writing {}", local.display()))?;
    report_unpacked(vm, &done)
}

/// What a guest's archive held that was not copied, or copied with its
/// mode masked: said on stderr, and a refusal fails the command (the
/// rest was copied).
fn report_unpacked(vm: &str, done: &archive::Unpacked) -> Result<()> {
    for p in &done.masked {
        eprintln!(
            "warning: {}: setuid, setgid, sticky or world-writable bits masked",
            crate::printable::printable(&p.display().to_string())
        );
    }
    for (p, why) in &done.refused {
        eprintln!(
            "refused: {}: {}",
            crate::printable::printable(&p.display().to_string()),
            crate::printable::printable(&why.to_string())
        );
    }
    if done.refused.is_empty() {
        Ok(())
    } else {
        Err(anyhow!(
            "vm {vm}: {} entries of the guest's archive were refused (the rest was copied)",
            done.refused.len()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_parse_like_scp() {
        assert_eq!(
            Place::parse("box:/root/f"),
            Place::Guest {
                vm: "box".into(),
                path: "/root/f".into()
            }
        );
        assert_eq!(Place::parse("./a:b"), Place::Host("./a:b".into()));
        assert_eq!(Place::parse("/tmp/x"), Place::Host("/tmp/x".into()));
        assert_eq!(Place::parse(":x"), Place::Host(":x".into()));
    }

    #[test]
    fn exit_codes_follow_the_shell() {
        assert_eq!(exit_code(Some(7), None), 7);
        assert_eq!(exit_code(None, Some(9)), 137);
        assert_eq!(exit_code(None, Some(2)), 130);
        assert_eq!(exit_code(None, None), 255);
    }
}

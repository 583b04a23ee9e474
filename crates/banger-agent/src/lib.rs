//! The guest side of banger: one session per vsock connection, or per
//! stream multiplexed over the virtio-serial port ([`serial`]).
//!
//! A session opens with the versioned hello, then serves one request:
//! `Ping` (any number, for readiness), `Exec` (pipes or a PTY), an archive
//! in or out (`vm cp`), or `PowerOff`. It is written against any byte
//! stream so the tests drive it over an in-memory pipe; `main.rs` feeds it
//! vsock connections and mux streams.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use banger_agent_proto::archive::{self, ArchiveError};
use banger_agent_proto::{
    ExecRequest, Frame, Hello, Kind, Message, PROTOCOL_VERSION, ProtoError, read_frame, send,
    write_frame,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::mpsc;

mod exec;
pub mod identity;
pub mod power;
pub mod serial;
pub mod users;

pub use power::{BANGER_INIT_PID1, SystemPower};

/// Identifies this build in the hello.
pub const SOFTWARE: &str = concat!("banger-agent ", env!("CARGO_PKG_VERSION"));

/// How long output is still forwarded after the command exited, for
/// background processes that inherited its stdout: `sh -c 'daemon &'`
/// must not hang the caller forever.
pub const LINGER: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Proto(#[from] ProtoError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("the client opened with {0} instead of a hello")]
    NoHello(String),
}

/// What a session asks of the machine beyond processes and files.
pub trait Power: Send + Sync {
    fn power_off(&self, reboot: bool);
}

/// Serves one connection to its end.
pub async fn session<S>(stream: S, power: &dyn Power) -> Result<(), AgentError>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut r, mut w) = tokio::io::split(stream);
    let theirs = match read_frame(&mut r).await? {
        Some(Frame::Control(Message::Hello(h))) => h,
        None => return Ok(()),
        Some(other) => return Err(AgentError::NoHello(format!("{other:?}"))),
    };
    send(
        &mut w,
        &Message::Hello(Hello {
            protocol: PROTOCOL_VERSION,
            software: SOFTWARE.into(),
        }),
    )
    .await?;
    if theirs.protocol != PROTOCOL_VERSION {
        // The daemon names both versions to its user; nothing more to say.
        return Ok(());
    }
    loop {
        let Some(frame) = read_frame(&mut r).await? else {
            return Ok(());
        };
        match frame {
            Frame::Control(Message::Ping) => send(&mut w, &Message::Pong).await?,
            Frame::Control(Message::Exec(req)) => return exec::run(req, r, w).await,
            Frame::Control(Message::PowerOff { reboot }) => {
                send(&mut w, &Message::Pong).await?;
                w.shutdown().await.ok();
                power.power_off(reboot);
                return Ok(());
            }
            Frame::Control(Message::PutArchive { dest }) => return put(dest.into(), r, w).await,
            Frame::Control(Message::GetArchive { path }) => return get(path.into(), w).await,
            Frame::Control(Message::Identify(id)) => {
                let targets = identity::Targets {
                    root: Path::new("/"),
                    kernel: true,
                };
                let done = tokio::task::spawn_blocking(move || identity::apply(&id, targets)).await;
                let answer = match done {
                    Ok(Ok(())) => Message::Pong,
                    Ok(Err(e)) => Message::Error {
                        message: format!("taking on the new identity: {e}"),
                    },
                    Err(e) => Message::Error {
                        message: format!("taking on the new identity: {e}"),
                    },
                };
                send(&mut w, &answer).await?;
            }
            other => {
                send(
                    &mut w,
                    &Message::Error {
                        message: format!("unexpected {other:?}"),
                    },
                )
                .await?;
            }
        }
    }
}

/// The end of a request: `Exit` for success, `Error` with the reason.
/// Waits for an archive job (`what`: pack or unpack) and reports it.
async fn finish<W: AsyncWrite + Unpin, T>(
    w: &mut W,
    job: tokio::task::JoinHandle<Result<T, ArchiveError>>,
    what: &str,
) -> Result<(), AgentError> {
    let msg = match job.await {
        Ok(Ok(_)) => Message::Exit {
            code: Some(0),
            signal: None,
        },
        Ok(Err(e)) => Message::Error {
            message: e.to_string(),
        },
        Err(e) => Message::Error {
            message: format!("{what}: {e}"),
        },
    };
    send(w, &msg).await?;
    w.shutdown().await.ok();
    Ok(())
}

async fn put<S: AsyncRead + AsyncWrite>(
    dest: PathBuf,
    mut r: ReadHalf<S>,
    mut w: WriteHalf<S>,
) -> Result<(), AgentError> {
    // The host's archive, sent at the user's request: as it is.
    let (tx, job) = archive::unpack_stream(dest, archive::Origin::Trusted);
    let mut tx = Some(tx);
    loop {
        match read_frame(&mut r).await? {
            Some(Frame::Stdin(data)) => {
                // A failed unpack drops its end: keep reading to the end
                // of the client's stream, then report why.
                if let Some(t) = &tx {
                    if t.send(data).await.is_err() {
                        tx = None;
                    }
                }
            }
            Some(Frame::Control(Message::StdinEof)) | None => break,
            Some(_) => {}
        }
    }
    drop(tx);
    finish(&mut w, job, "unpack").await
}

async fn get<S: AsyncRead + AsyncWrite>(
    path: PathBuf,
    mut w: WriteHalf<S>,
) -> Result<(), AgentError> {
    let (mut rx, job) = archive::pack_stream(path);
    while let Some(chunk) = rx.recv().await {
        write_frame(&mut w, Kind::Stdout, &chunk).await?;
    }
    finish(&mut w, job, "pack").await
}

/// Exit status to the wire.
fn exit_message(status: ExitStatus) -> Message {
    use std::os::unix::process::ExitStatusExt;
    Message::Exit {
        code: status.code(),
        signal: status.signal(),
    }
}

/// Output chunks from the command's readers to the session's writer.
type OutTx = mpsc::Sender<(Kind, Vec<u8>)>;

/// Where commands start and what they see, for `user` (default root).
fn environment(req: &ExecRequest) -> Result<(users::Account, Vec<(String, String)>), String> {
    let account = users::lookup(
        Path::new("/etc/passwd"),
        req.user.as_deref().unwrap_or("root"),
    )?;
    let mut env = vec![
        (
            "PATH".to_owned(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
        ),
        ("HOME".to_owned(), account.home.clone()),
        ("USER".to_owned(), account.name.clone()),
        ("LOGNAME".to_owned(), account.name.clone()),
        ("SHELL".to_owned(), account.shell.clone()),
    ];
    if req.tty.is_some() {
        env.push(("TERM".to_owned(), "xterm-256color".to_owned()));
    }
    // The caller's own settings (TERM included) win.
    for (k, v) in &req.env {
        env.retain(|(ek, _)| ek != k);
        env.push((k.clone(), v.clone()));
    }
    Ok((account, env))
}

#[cfg(test)]
mod tests;

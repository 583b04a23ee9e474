//! `Exec`: a command with pipes, or on a fresh PTY.
//!
//! Output flows through a bounded channel to the session's one writer, so
//! a slow client slows the command down instead of growing a buffer.
//! Client frames are handled by their own task: stdin writes that block
//! on a command not reading must never stall its output.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::process::Stdio;

use banger_agent_proto::CHUNK;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin};

use super::*;

/// Where client input goes.
enum Input {
    Pipe(Option<ChildStdin>),
    Pty {
        writer: tokio::fs::File,
        control: OwnedFd,
    },
}

impl Input {
    async fn write(&mut self, data: &[u8]) {
        let ok = match self {
            Self::Pipe(Some(s)) => s.write_all(data).await.is_ok(),
            Self::Pipe(None) => true,
            Self::Pty { writer, .. } => {
                writer.write_all(data).await.is_ok() && writer.flush().await.is_ok()
            }
        };
        if !ok {
            // The command closed its stdin: later input has nowhere to go.
            if let Self::Pipe(s) = self {
                *s = None;
            }
        }
    }

    fn close(&mut self) {
        if let Self::Pipe(s) = self {
            *s = None;
        }
    }

    fn resize(&self, cols: u16, rows: u16) {
        if let Self::Pty { control, .. } = self {
            let ws = rustix::termios::Winsize {
                ws_row: rows,
                ws_col: cols,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            if let Err(e) = rustix::termios::tcsetwinsize(control, ws) {
                eprintln!("banger-agent: resize: {e}");
            }
        }
    }
}

fn signal_group(pgid: u32, signal: i32) {
    let Ok(sig) = Signal::try_from(signal) else {
        return;
    };
    // Negative pid: the whole process group (the command and its children).
    let _ = nix::sys::signal::kill(Pid::from_raw(-(pgid as i32)), sig);
}

fn forward<R>(mut src: R, kind: Kind, tx: OutTx)
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match src.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send((kind, buf[..n].to_vec())).await.is_err() {
                        break;
                    }
                }
            }
        }
    });
}

fn command(
    req: &ExecRequest,
    account: &users::Account,
    env: Vec<(String, String)>,
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(&req.argv[0]);
    cmd.args(&req.argv[1..]).env_clear().envs(env);
    let cwd = match &req.cwd {
        Some(c) => c.clone(),
        None if Path::new(&account.home).is_dir() => account.home.clone(),
        None => "/".into(),
    };
    cmd.current_dir(cwd);
    if rustix::process::geteuid().as_raw() != account.uid {
        cmd.uid(account.uid).gid(account.gid);
    }
    cmd
}

fn spawn_pipes(
    req: &ExecRequest,
    account: &users::Account,
    env: Vec<(String, String)>,
    tx: &OutTx,
) -> std::io::Result<(Child, Input)> {
    let mut cmd = command(req, account, env);
    cmd.process_group(0)
        .stdin(if req.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    if let Some(out) = child.stdout.take() {
        forward(out, Kind::Stdout, tx.clone());
    }
    if let Some(err) = child.stderr.take() {
        forward(err, Kind::Stderr, tx.clone());
    }
    let stdin = child.stdin.take();
    Ok((child, Input::Pipe(stdin)))
}

fn spawn_pty(
    req: &ExecRequest,
    account: &users::Account,
    env: Vec<(String, String)>,
    (cols, rows): (u16, u16),
    tx: &OutTx,
) -> std::io::Result<(Child, Input)> {
    let ws = nix::pty::Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&ws), None).map_err(std::io::Error::from)?;
    let mut cmd = command(req, account, env);
    cmd.stdin(Stdio::from(pty.slave.try_clone()?))
        .stdout(Stdio::from(pty.slave.try_clone()?))
        .stderr(Stdio::from(pty.slave.try_clone()?));
    #[allow(unsafe_code)]
    // SAFETY: the closure runs in the forked child before exec and only
    // makes two async-signal-safe syscalls (setsid, ioctl) on fd 0, which
    // std has already pointed at the PTY's slave; it allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::setsid()?;
            rustix::process::ioctl_tiocsctty(rustix::stdio::stdin())?;
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    // The parent keeps no slave fd: the master then reads EOF (EIO) once
    // the command and everything it started have closed theirs.
    drop(pty.slave);
    let reader = File::from(pty.master.try_clone()?);
    let writer = tokio::fs::File::from_std(File::from(pty.master.try_clone()?));
    let tx = tx.clone();
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut reader = reader;
        let mut buf = vec![0u8; CHUNK];
        loop {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.blocking_send((Kind::Stdout, buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
    });
    Ok((
        child,
        Input::Pty {
            writer,
            control: pty.master,
        },
    ))
}

pub(crate) async fn run<S>(
    req: ExecRequest,
    mut r: ReadHalf<S>,
    mut w: WriteHalf<S>,
) -> Result<(), AgentError>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    if req.argv.is_empty() {
        send(
            &mut w,
            &Message::Error {
                message: "no command given".into(),
            },
        )
        .await?;
        return Ok(());
    }
    let (account, env) = match environment(&req) {
        Ok(x) => x,
        Err(message) => {
            send(&mut w, &Message::Error { message }).await?;
            return Ok(());
        }
    };
    let (tx, mut rx) = mpsc::channel::<(Kind, Vec<u8>)>(16);
    let spawned = match req.tty {
        Some(size) => spawn_pty(&req, &account, env, size, &tx),
        None => spawn_pipes(&req, &account, env, &tx),
    };
    drop(tx);
    let (mut child, mut input) = match spawned {
        Ok(x) => x,
        Err(e) => {
            // As a shell reports it: 127 not found, 126 not runnable.
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            let msg = format!("banger-agent: {}: {e}\n", req.argv[0]);
            write_frame(&mut w, Kind::Stderr, msg.as_bytes()).await?;
            send(
                &mut w,
                &Message::Exit {
                    code: Some(code),
                    signal: None,
                },
            )
            .await?;
            return Ok(());
        }
    };
    let pgid = child.id().unwrap_or(0);
    let input_task = tokio::spawn(async move {
        loop {
            match read_frame(&mut r).await {
                Ok(Some(Frame::Stdin(d))) => input.write(&d).await,
                Ok(Some(Frame::Control(Message::StdinEof))) => input.close(),
                Ok(Some(Frame::Control(Message::Resize { cols, rows }))) => {
                    input.resize(cols, rows)
                }
                Ok(Some(Frame::Control(Message::Signal { signal }))) => signal_group(pgid, signal),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    // The client is gone before the command ended: nobody
                    // can see its output or stop it any more.
                    signal_group(pgid, Signal::SIGKILL as i32);
                    return;
                }
            }
        }
    });

    let mut status: Option<ExitStatus> = None;
    let mut linger: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    let result: Result<(), AgentError> = async {
        loop {
            tokio::select! {
                out = rx.recv() => match out {
                    Some((kind, data)) => write_frame(&mut w, kind, &data).await?,
                    None => break,
                },
                st = child.wait(), if status.is_none() => {
                    status = Some(st?);
                    linger = Some(Box::pin(tokio::time::sleep(LINGER)));
                }
                () = async { if let Some(l) = linger.as_mut() { l.await } }, if linger.is_some() => break,
            }
        }
        let status = match status {
            Some(s) => s,
            None => child.wait().await?,
        };
        send(&mut w, &exit_message(status)).await?;
        w.shutdown().await.ok();
        Ok(())
    }
    .await;
    // Exit was sent (or the client vanished): what the command left in the
    // background is no longer this session's to kill.
    input_task.abort();
    if result.is_err() {
        signal_group(pgid, Signal::SIGKILL as i32);
    }
    result
}

//! The protocol between `bangerd` and the guest agent, over one byte
//! stream (a vsock connection; Firecracker's hybrid vsock and the
//! vhost-user backend used with QEMU both hand the daemon a unix socket).
//!
//! Frames: a 4-byte big-endian length, a 1-byte kind, then the payload.
//! Control messages ([`Message`]) are JSON; process output and input are
//! raw bytes in their own frame kinds, so a 100 MB output is a stream of
//! bounded frames, never one buffer. Both sides open with [`Hello`]; a
//! version mismatch is refused with a message that names both versions.

pub mod archive;
pub mod mux;
pub mod vsock;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bumped on any incompatible change to frames or messages.
pub const PROTOCOL_VERSION: u32 = 1;
/// The vsock port the agent listens on.
pub const AGENT_PORT: u32 = 52;
/// The name of the virtio-serial port QEMU guests reach the agent over
/// (multiplexed, see [`mux`]); the guest finds it in
/// `/sys/class/virtio-ports/*/name`.
pub const SERIAL_PORT_NAME: &str = "org.banger.agent";
/// The host port the agent calls once it listens: the daemon waits for
/// that call instead of knocking on the guest while it boots (QEMU's
/// vsock backend can wedge on connections made before the guest's driver
/// is up). Both VMMs hand a guest-initiated connection to port P to the
/// host unix socket `<vsock uds>_P`.
pub const READY_PORT: u32 = 1052;
/// What the agent writes on that call, followed by its software string
/// and a newline.
pub const READY_GREETING: &str = "banger-agent-ready";
/// Longest ready line the daemon reads.
pub const MAX_READY_LINE: usize = 256;
/// Largest payload of one frame; output is chunked below this.
pub const MAX_FRAME: usize = 1 << 20;
/// Chunk size writers use for process output.
pub const CHUNK: usize = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("peer closed the connection in the middle of a frame")]
    Truncated,
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("bad control message: {0}")]
    BadMessage(String),
    #[error(
        "guest agent speaks protocol v{agent} but this bangerd speaks v{daemon}: rebuild the VM's agent (it is injected at create) or upgrade banger"
    )]
    VersionMismatch { daemon: u32, agent: u32 },
    #[error("expected {expected}, got {got}")]
    Unexpected { expected: &'static str, got: String },
    /// The vsock backend closed at once: the guest has nothing listening
    /// on that port (yet).
    #[error("the connection closed (nothing listens on guest port {port} yet)")]
    NothingListening { port: u32 },
    /// The multiplexed agent channel (virtio-serial) failed.
    #[error(transparent)]
    Mux(#[from] mux::MuxError),
}

/// Frame kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Control = 0,
    Stdout = 1,
    Stderr = 2,
    Stdin = 3,
}

impl TryFrom<u8> for Kind {
    type Error = ProtoError;
    fn try_from(b: u8) -> Result<Self, ProtoError> {
        Ok(match b {
            0 => Self::Control,
            1 => Self::Stdout,
            2 => Self::Stderr,
            3 => Self::Stdin,
            other => return Err(ProtoError::UnknownKind(other)),
        })
    }
}

/// Opening message of both sides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol: u32,
    /// Free-form build identification, for messages.
    pub software: String,
}

/// A command to run in the guest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    pub argv: Vec<String>,
    #[serde(default)]
    pub env: Vec<(String, String)>,
    #[serde(default)]
    pub cwd: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    /// Allocate a PTY of this size (cols, rows).
    #[serde(default)]
    pub tty: Option<(u16, u16)>,
    /// The client will send stdin frames (else stdin is /dev/null).
    #[serde(default)]
    pub stdin: bool,
}

/// Control messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    Hello(Hello),
    Ping,
    Pong,
    Exec(ExecRequest),
    /// No more stdin.
    StdinEof,
    Resize {
        cols: u16,
        rows: u16,
    },
    Signal {
        signal: i32,
    },
    /// The command finished: exit code, or the signal that killed it.
    Exit {
        code: Option<i32>,
        signal: Option<i32>,
    },
    /// Shut the guest down. `reboot` asks for a reset instead of a power
    /// off: Firecracker has no ACPI power off and exits on a guest reboot.
    PowerOff {
        #[serde(default)]
        reboot: bool,
    },
    /// Receive a tar stream (Stdin frames, then `StdinEof`) and unpack it
    /// at `dest` (see [`archive::unpack_to`]). Answered with `Exit`.
    PutArchive {
        dest: String,
    },
    /// Send `path` as a tar stream (Stdout frames), then `Exit`.
    GetArchive {
        path: String,
    },
    /// Take on this machine's identity (a VM restored from a snapshot
    /// is a copy of another until it does). Answered with `Pong`, or
    /// `Error` naming the step that failed.
    Identify(Box<Identity>),
    Error {
        message: String,
    },
}

/// Who a restored guest now is: everything a snapshot copied from the
/// VM it was taken of that must differ between copies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub hostname: String,
    pub nic: Option<NicIdentity>,
    /// 32 hex digits, for `/etc/machine-id`.
    pub machine_id: String,
    /// The guest's new ssh host key, made by the host (so it is pinned
    /// before anyone connects); every other host key is removed.
    pub ssh_host_key: Option<HostKey>,
    /// The host's wall clock when sent (the guest's stopped at the save).
    pub unix_secs: i64,
    pub unix_nanos: u32,
    /// Fresh host randomness, credited to the guest kernel's pool, which
    /// is then reseeded: copies must not share a random stream.
    pub entropy: Vec<u8>,
}

/// The NIC's address after a restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicIdentity {
    pub mac: String,
    pub ip: std::net::Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<std::net::Ipv4Addr>,
}

/// An OpenSSH host key pair (ed25519).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostKey {
    /// The private key file's text (OpenSSH format).
    pub private: String,
    /// `ssh-ed25519 AAAA…`.
    pub public: String,
}

/// One received frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Control(Message),
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Stdin(Vec<u8>),
}

/// Writes a frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    kind: Kind,
    payload: &[u8],
) -> Result<(), ProtoError> {
    if payload.len() > MAX_FRAME {
        return Err(ProtoError::TooLarge(payload.len()));
    }
    let len = u32::try_from(payload.len()).map_err(|_| ProtoError::TooLarge(payload.len()))?;
    let mut header = [0u8; 5];
    header[..4].copy_from_slice(&len.to_be_bytes());
    header[4] = kind as u8;
    w.write_all(&header).await?;
    w.write_all(payload).await?;
    Ok(())
}

/// Writes a control message.
pub async fn send<W: AsyncWrite + Unpin>(w: &mut W, msg: &Message) -> Result<(), ProtoError> {
    let json = serde_json::to_vec(msg).map_err(|e| ProtoError::BadMessage(e.to_string()))?;
    write_frame(w, Kind::Control, &json).await?;
    w.flush().await?;
    Ok(())
}

/// Writes `data` as one or more output frames of at most [`CHUNK`] bytes.
pub async fn send_data<W: AsyncWrite + Unpin>(
    w: &mut W,
    kind: Kind,
    data: &[u8],
) -> Result<(), ProtoError> {
    for chunk in data.chunks(CHUNK) {
        write_frame(w, kind, chunk).await?;
    }
    Ok(())
}

/// Reads the next frame; `Ok(None)` on a clean end of stream (between
/// frames), [`ProtoError::Truncated`] when the peer vanished mid-frame.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Frame>, ProtoError> {
    let mut header = [0u8; 5];
    let mut got = 0;
    while got < header.len() {
        let n = r.read(&mut header[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(ProtoError::Truncated)
            };
        }
        got += n;
    }
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len > MAX_FRAME {
        return Err(ProtoError::TooLarge(len));
    }
    let kind = Kind::try_from(header[4])?;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => ProtoError::Truncated,
            _ => ProtoError::Io(e),
        })?;
    Ok(Some(match kind {
        Kind::Control => Frame::Control(
            serde_json::from_slice(&payload).map_err(|e| ProtoError::BadMessage(e.to_string()))?,
        ),
        Kind::Stdout => Frame::Stdout(payload),
        Kind::Stderr => Frame::Stderr(payload),
        Kind::Stdin => Frame::Stdin(payload),
    }))
}

/// The daemon's side of the opening: send our hello, require the agent's
/// and a matching version. Returns the agent's hello.
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    software: &str,
) -> Result<Hello, ProtoError> {
    send(
        s,
        &Message::Hello(Hello {
            protocol: PROTOCOL_VERSION,
            software: software.to_owned(),
        }),
    )
    .await?;
    match read_frame(s).await? {
        Some(Frame::Control(Message::Hello(h))) if h.protocol == PROTOCOL_VERSION => Ok(h),
        Some(Frame::Control(Message::Hello(h))) => Err(ProtoError::VersionMismatch {
            daemon: PROTOCOL_VERSION,
            agent: h.protocol,
        }),
        Some(Frame::Control(Message::Error { message })) => Err(ProtoError::Unexpected {
            expected: "the agent's hello",
            got: format!("error: {message}"),
        }),
        other => Err(ProtoError::Unexpected {
            expected: "the agent's hello",
            got: format!("{other:?}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::io::{AsyncRead, ReadBuf, duplex};

    use super::*;

    /// A reader that hands out at most one byte per read: every frame
    /// boundary and header arrives split.
    struct Trickle<R>(R);

    impl<R: AsyncRead + Unpin> AsyncRead for Trickle<R> {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let mut one = [0u8; 1];
            let mut small = ReadBuf::new(&mut one);
            match Pin::new(&mut self.get_mut().0).poll_read(cx, &mut small) {
                Poll::Ready(Ok(())) => {
                    buf.put_slice(small.filled());
                    Poll::Ready(Ok(()))
                }
                other => other,
            }
        }
    }

    #[tokio::test]
    async fn frames_round_trip_through_one_byte_reads() {
        let (mut a, b) = duplex(64);
        let writer = tokio::spawn(async move {
            send(
                &mut a,
                &Message::Exec(ExecRequest {
                    argv: vec!["echo".into(), "hi".into()],
                    ..Default::default()
                }),
            )
            .await
            .expect("send");
            write_frame(&mut a, Kind::Stdout, b"out")
                .await
                .expect("stdout");
            write_frame(&mut a, Kind::Stderr, b"")
                .await
                .expect("empty frame");
            send(
                &mut a,
                &Message::Exit {
                    code: Some(0),
                    signal: None,
                },
            )
            .await
            .expect("exit");
        });
        let mut r = Trickle(b);
        let mut got = Vec::new();
        while let Some(f) = read_frame(&mut r).await.expect("read") {
            got.push(f);
        }
        writer.await.expect("writer");
        assert_eq!(got.len(), 4);
        assert!(matches!(&got[0], Frame::Control(Message::Exec(e)) if e.argv == ["echo", "hi"]));
        assert_eq!(got[1], Frame::Stdout(b"out".to_vec()));
        assert_eq!(got[2], Frame::Stderr(Vec::new()));
        assert_eq!(
            got[3],
            Frame::Control(Message::Exit {
                code: Some(0),
                signal: None
            })
        );
    }

    #[tokio::test]
    async fn interleaved_streams_keep_their_order() {
        let (mut a, mut b) = duplex(1 << 16);
        let writer = tokio::spawn(async move {
            for i in 0..100u32 {
                let kind = if i % 3 == 0 {
                    Kind::Stderr
                } else {
                    Kind::Stdout
                };
                write_frame(&mut a, kind, format!("{i}\n").as_bytes())
                    .await
                    .expect("write");
            }
        });
        let mut seen = Vec::new();
        while let Some(f) = read_frame(&mut b).await.expect("read") {
            let (tag, data) = match f {
                Frame::Stdout(d) => ('o', d),
                Frame::Stderr(d) => ('e', d),
                other => panic!("{other:?}"),
            };
            seen.push((tag, String::from_utf8(data).expect("utf8")));
        }
        writer.await.expect("writer");
        for (i, (tag, line)) in seen.iter().enumerate() {
            assert_eq!(line, &format!("{i}\n"), "order kept across streams");
            assert_eq!(*tag, if i % 3 == 0 { 'e' } else { 'o' });
        }
        assert_eq!(seen.len(), 100);
    }

    #[tokio::test]
    async fn a_hundred_megabytes_stream_in_bounded_frames() {
        const TOTAL: usize = 100 << 20;
        let (mut a, mut b) = duplex(1 << 20);
        let writer = tokio::spawn(async move {
            let block = vec![0xabu8; 4 << 20];
            let mut sent = 0;
            while sent < TOTAL {
                send_data(&mut a, Kind::Stdout, &block).await.expect("data");
                sent += block.len();
            }
        });
        let (mut total, mut largest) = (0usize, 0usize);
        while let Some(f) = read_frame(&mut b).await.expect("read") {
            let Frame::Stdout(d) = f else {
                panic!("unexpected frame")
            };
            largest = largest.max(d.len());
            total += d.len();
        }
        writer.await.expect("writer");
        assert_eq!(total, TOTAL);
        assert!(largest <= CHUNK, "frames stay bounded ({largest} bytes)");
    }

    #[tokio::test]
    async fn a_peer_that_vanishes_mid_frame_is_not_a_clean_end() {
        let (mut a, mut b) = duplex(64);
        // Header says 10 bytes; only 3 arrive.
        a.write_all(&[0, 0, 0, 10, 1, b'a', b'b', b'c'])
            .await
            .expect("write");
        drop(a);
        assert!(matches!(
            read_frame(&mut b).await,
            Err(ProtoError::Truncated)
        ));

        let (mut a, mut b) = duplex(64);
        a.write_all(&[0, 0]).await.expect("write");
        drop(a);
        assert!(
            matches!(read_frame(&mut b).await, Err(ProtoError::Truncated)),
            "half a header"
        );

        let (a, mut b) = duplex(64);
        drop(a);
        assert!(
            matches!(read_frame(&mut b).await, Ok(None)),
            "clean end between frames"
        );
    }

    #[tokio::test]
    async fn garbage_is_refused() {
        let (mut a, mut b) = duplex(64);
        a.write_all(&[0xff, 0xff, 0xff, 0xff, 0])
            .await
            .expect("write");
        assert!(matches!(
            read_frame(&mut b).await,
            Err(ProtoError::TooLarge(_))
        ));
        let (mut a, mut b) = duplex(64);
        a.write_all(&[0, 0, 0, 0, 9]).await.expect("write");
        assert!(matches!(
            read_frame(&mut b).await,
            Err(ProtoError::UnknownKind(9))
        ));
        let (mut a, mut b) = duplex(64);
        write_frame(&mut a, Kind::Control, b"{not json")
            .await
            .expect("write");
        assert!(matches!(
            read_frame(&mut b).await,
            Err(ProtoError::BadMessage(_))
        ));
        let mut sink = tokio::io::sink();
        assert!(matches!(
            write_frame(&mut sink, Kind::Stdout, &vec![0; MAX_FRAME + 1]).await,
            Err(ProtoError::TooLarge(_))
        ));
    }

    async fn fake_agent<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, version: u32) {
        let _theirs = read_frame(&mut s).await.expect("read");
        send(
            &mut s,
            &Message::Hello(Hello {
                protocol: version,
                software: "agent-test".into(),
            }),
        )
        .await
        .expect("hello");
    }

    #[tokio::test]
    async fn handshake_accepts_the_same_version_and_names_both_on_mismatch() {
        let (mut d, a) = duplex(1024);
        tokio::spawn(fake_agent(a, PROTOCOL_VERSION));
        let h = handshake(&mut d, "bangerd-test").await.expect("handshake");
        assert_eq!(h.software, "agent-test");

        let (mut d, a) = duplex(1024);
        tokio::spawn(fake_agent(a, PROTOCOL_VERSION + 1));
        let err = handshake(&mut d, "bangerd-test")
            .await
            .expect_err("mismatch");
        let msg = err.to_string();
        assert!(matches!(err, ProtoError::VersionMismatch { .. }));
        assert!(
            msg.contains(&format!("v{}", PROTOCOL_VERSION + 1))
                && msg.contains(&format!("v{PROTOCOL_VERSION}")),
            "{msg}"
        );

        let (mut d, a) = duplex(1024);
        drop(a);
        assert!(
            handshake(&mut d, "bangerd-test").await.is_err(),
            "agent gone"
        );
    }
}

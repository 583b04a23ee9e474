//! banger-agent: started early in the guest's boot, serves bangerd on
//! every channel the VM has: vsock port [`AGENT_PORT`] (Firecracker) and
//! the virtio-serial port [`SERIAL_PORT_NAME`] (QEMU), whose streams are
//! multiplexed ([`banger_agent_proto::mux`]). Static, so any image can
//! run it.

use std::process::ExitCode;
use std::sync::Arc;

use banger_agent::serial::{self, Port};
use banger_agent::{SOFTWARE, SystemPower, session};
use banger_agent_proto::{AGENT_PORT, READY_GREETING, READY_PORT, SERIAL_PORT_NAME, mux};
use tokio::io::AsyncWriteExt;
use tokio_vsock::{VMADDR_CID_ANY, VMADDR_CID_HOST, VsockAddr, VsockListener, VsockStream};

fn main() -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("banger-agent: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async {
        // Either channel alone is enough: a VM has the one its VMM gives.
        let vsock = match VsockListener::bind(VsockAddr::new(VMADDR_CID_ANY, AGENT_PORT)) {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("banger-agent: no vsock port {AGENT_PORT}: {e}");
                None
            }
        };
        let serial = tokio::spawn(find_and_serve_serial(vsock.is_none()));
        match vsock {
            Some(l) => {
                eprintln!("{SOFTWARE}: listening on vsock port {AGENT_PORT}");
                tokio::spawn(report_ready());
                tokio::spawn(accept_vsock(l));
            }
            // The serial port is the only way to the host.
            None => {
                if serial.await.is_err() {
                    eprintln!("banger-agent: virtio-serial task failed");
                }
                eprintln!("banger-agent: no channel to the host");
                return ExitCode::FAILURE;
            }
        }
        std::future::pending::<()>().await;
        ExitCode::SUCCESS
    })
}

async fn accept_vsock(listener: VsockListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(async move {
                    if let Err(e) = session(stream, &SystemPower).await {
                        eprintln!("banger-agent: session: {e}");
                    }
                });
            }
            Err(e) => {
                eprintln!("banger-agent: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// Waits for the agent's virtio-serial port (it appears after the agent
/// starts) and serves it; returns only if there is none or it fails.
/// `alone`: no vsock either, so say so sooner.
async fn find_and_serve_serial(alone: bool) {
    let quiet = std::time::Duration::from_secs(if alone { 10 } else { 3600 });
    let path = match serial::wait_port(SERIAL_PORT_NAME, quiet).await {
        Ok(Some(path)) => path,
        Ok(None) => {
            eprintln!("banger-agent: no virtio-serial port {SERIAL_PORT_NAME}");
            return;
        }
        Err(e) => {
            eprintln!("banger-agent: waiting for virtio-serial port {SERIAL_PORT_NAME}: {e}");
            return;
        }
    };
    match Port::open(&path) {
        Ok(p) => {
            eprintln!("{SOFTWARE}: listening on virtio-serial {}", path.display());
            serve_serial(p).await;
        }
        Err(e) => eprintln!("banger-agent: opening {}: {e}", path.display()),
    }
}

/// One mux epoch per host connection, for the agent's life.
async fn serve_serial(port: Arc<Port>) {
    loop {
        if let Err(e) = port.wait_for_host().await {
            eprintln!("banger-agent: virtio-serial port: {e}; giving it up");
            return;
        }
        let served = mux::serve(port.epoch(), |s| {
            tokio::spawn(async move {
                if let Err(e) = session(s, &SystemPower).await {
                    eprintln!("banger-agent: session: {e}");
                }
            });
        })
        .await;
        match served {
            Ok(()) => eprintln!("banger-agent: the host left the virtio-serial port"),
            Err(e) => eprintln!("banger-agent: virtio-serial port: {e}"),
        }
    }
}

/// Tells the host the agent listens: one connection to the host's
/// [`READY_PORT`] carrying a line. A host that is not waiting (a daemon
/// that adopted this VM, or an agent restarted by its unit) refuses it;
/// that is fine, it asks the agent directly then.
async fn report_ready() {
    let line = format!("{READY_GREETING} {SOFTWARE}\n");
    for attempt in 0..3 {
        match VsockStream::connect(VsockAddr::new(VMADDR_CID_HOST, READY_PORT)).await {
            Ok(mut s) => {
                match s.write_all(line.as_bytes()).await {
                    Ok(()) => eprintln!("banger-agent: reported ready to the host"),
                    Err(e) => eprintln!("banger-agent: reporting ready: {e}"),
                }
                let _ = AsyncWriteExt::shutdown(&mut s).await;
                return;
            }
            Err(e) if attempt == 2 => {
                eprintln!("banger-agent: no host waiting for the ready report ({e}); it will ask");
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
}

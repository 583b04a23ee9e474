//! banger-agent: started early in the guest's boot, listens on vsock
//! port [`AGENT_PORT`] for bangerd. Static, so any image can run it.

use std::process::ExitCode;

use banger_agent::{SOFTWARE, SystemPower, session};
use banger_agent_proto::{AGENT_PORT, READY_GREETING, READY_PORT};
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
        let listener = match VsockListener::bind(VsockAddr::new(VMADDR_CID_ANY, AGENT_PORT)) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("banger-agent: listening on vsock port {AGENT_PORT}: {e}");
                return ExitCode::FAILURE;
            }
        };
        eprintln!("{SOFTWARE}: listening on vsock port {AGENT_PORT}");
        tokio::spawn(report_ready());
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
    })
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

//! banger-agent: started early in the guest's boot, listens on vsock
//! port [`AGENT_PORT`] for bangerd. Static, so any image can run it.

use std::process::ExitCode;

use banger_agent::{SOFTWARE, SystemPower, session};
use banger_agent_proto::AGENT_PORT;
use tokio_vsock::{VMADDR_CID_ANY, VsockAddr, VsockListener};

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

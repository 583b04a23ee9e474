//! The crash matrix's hook in a real daemon (feature `failpoints`): the
//! point named by `BANGER_FAILPOINT` makes the process abort there, as a
//! crash would (no destructor, no flush, no core file).

/// The variable naming the point a daemon dies at.
pub const FAILPOINT_ENV: &str = "BANGER_FAILPOINT";

/// Arms the point `BANGER_FAILPOINT` names, if any; returns it.
pub fn arm_from_env() -> Option<String> {
    let point = std::env::var(FAILPOINT_ENV)
        .ok()
        .filter(|p| !p.is_empty())?;
    let name = point.clone();
    let armed = fail::cfg_callback(point.clone(), move || {
        eprintln!("bangerd: failpoint {name}: aborting, as a crash would");
        // No core file for a crash on purpose.
        let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0);
        std::process::abort();
    });
    match armed {
        Ok(()) => Some(point),
        Err(e) => {
            eprintln!("bangerd: {FAILPOINT_ENV}={point}: {e}");
            None
        }
    }
}

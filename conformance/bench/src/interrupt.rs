//! Ctrl-C and SIGTERM: a flag the benchmarks check between steps, so that an interrupted run
//! unwinds through its guards (namespaces, agents, etcd, mounts) instead of leaving them
//! behind.

use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

/// Set by SIGINT/SIGTERM once [`install`] ran.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Makes SIGINT and SIGTERM set the flag [`check`] reads, instead of killing the process.
pub fn install() -> Result<(), String> {
    let handler = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(sig, &handler) }
            .map_err(|e| format!("installing the {sig} handler: {e}"))?;
    }
    Ok(())
}

/// Whether SIGINT or SIGTERM arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Panics (unwinding through every guard) if the user interrupted the bench.
pub fn check() {
    assert!(!interrupted(), "interrupted; cleaning up");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_sets_the_flag_and_check_panics() {
        install().expect("install");
        assert!(!interrupted());
        check();
        nix::sys::signal::raise(Signal::SIGTERM).expect("raise SIGTERM");
        assert!(
            interrupted(),
            "SIGTERM must set the flag, not end the process"
        );
        assert!(std::panic::catch_unwind(check).is_err(), "check must panic");
    }
}

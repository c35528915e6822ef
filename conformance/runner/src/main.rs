//! `cni-conformance`: runs the CNI spec's cases against a conflist or a single plugin in fresh
//! network namespaces, at every spec version the plugins advertise, and prints a table of
//! case x version. The work is in the library ([`cni_conformance`]); `--help` has the usage.

use std::process::ExitCode;

fn main() -> ExitCode {
    cni_conformance::main(std::env::args_os().skip(1))
}

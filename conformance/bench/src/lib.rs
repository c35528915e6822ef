//! What the benchmark binaries (`cni-bench`, `vxlan-bench`, `vxlan-scale-bench`) share.

pub mod chart;

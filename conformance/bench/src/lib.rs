//! What the benchmark binaries (`cni-bench`, `vxlan-bench`, `vxlan-scale-bench`) share: Ctrl-C
//! cleanup, statistics, the report files, the frame of their `main`, and cni-bench's chart.

pub mod chart;
pub mod frame;
pub mod interrupt;
pub mod report;
pub mod stats;

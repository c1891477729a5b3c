//! Pure policy, no I/O and no clock of its own: Redlock's decision rule, and how waiting
//! acquires take turns. The core applies them to whatever its transports report.

pub(crate) mod tally;
pub(crate) mod wait;

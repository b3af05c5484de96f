//! Drift: the engine's PSI against a reference ([`riskpipe_engine::drift`]) and, here, the
//! backtest's drift report (PSI per day and its heat map).

pub use riskpipe_engine::drift::*;

mod report;

pub use report::DriftReport;

//! The Kafka edge of riskpipe: the only code that knows Kafka.
//!
//! [`live::run`] consumes transaction and fraud-label topics, decodes JSON payloads straight into
//! Arrow batches ([`decode`]), runs the same [`FeatureChain`](riskpipe_operators::FeatureChain)
//! and [`ScoringStage`](crate::stages::ScoringStage) as `riskpipe backtest`, publishes scores,
//! alerts and dead letters ([`encode`]) and stores input offsets only after the broker has
//! acknowledged every output derived from them. [`replay`] reads a topic range back for
//! backtests; [`demo`] runs everything against an in-process mock cluster; [`observe`] serves
//! Prometheus metrics and health.

pub mod config;
pub mod decode;
pub mod demo;
pub mod encode;
pub mod live;
pub mod observe;
pub mod replay;

pub use config::KafkaConfig;

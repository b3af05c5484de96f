//! `riskpipe run`: the live pipeline — the Kafka source, the configured job and the Kafka sink
//! on the driver — until the shutdown future resolves (then it drains, commits and returns) or
//! a stage fails for good.

use std::future::Future;
use std::sync::Arc;

use crate::config::PipelineConfig;
use crate::decoders;
use crate::driver::{Counters, Driver, Summary};
use crate::jobs;
use crate::observe::Health;
use crate::sinks::kafka::KafkaSink;
use crate::sources::kafka::KafkaSource;
use crate::{PipelineError, Result};

/// Checks the config, builds the job (loading its model), joins the consumer group and runs.
pub async fn run(
    cfg: &PipelineConfig,
    health: Arc<Health>,
    counters: Arc<Counters>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<Summary> {
    let kafka = cfg.kafka.as_ref().ok_or_else(|| {
        PipelineError::Config(vec![
            "no [kafka] section: the live pipeline needs one".into(),
        ])
    })?;
    cfg.validate()?;
    let job = jobs::build(cfg)?;
    let source = KafkaSource::new(kafka, cfg.streams(), health.clone())?;
    let sink = KafkaSink::new(kafka)?;
    let driver = Driver::new(
        decoders::build(kafka.format, kafka.max_message_bytes),
        kafka.in_flight_batches,
    );
    let result = driver.run(source, job, sink, counters, shutdown).await;
    health.set_stopped();
    result
}

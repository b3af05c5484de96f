//! The Kafka sink: scores, alerts and dead letters to their topics. A batch's delivery resolves
//! once the broker acknowledged every one of its records; a record the broker refuses for good
//! fails the delivery, so the driver stops without acknowledging the batch's input.

use std::time::{Duration, Instant};

use arrow::array::{Array, StringArray};
use futures::FutureExt;
use futures::future::{BoxFuture, join_all};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};

use super::{DeadLetter, Delivered, Origin, Sink, SinkBatch};
use crate::encoders::{self, Encoder, Payloads};
use crate::events::{self, Stage};
use crate::jobs::Records;
use crate::kafka::KafkaConfig;
use crate::{PipelineError, Result};

/// Which output a record belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Output {
    Score,
    Alert,
    DeadLetter,
}

/// Publishes to the topics of a `[kafka]` section.
pub struct KafkaSink {
    producer: FutureProducer,
    encoder: Box<dyn Encoder>,
    scores_topic: String,
    alerts_topic: String,
    dead_letter_topic: String,
    payloads: Payloads,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("scores_topic", &self.scores_topic)
            .field("alerts_topic", &self.alerts_topic)
            .finish_non_exhaustive()
    }
}

impl KafkaSink {
    /// A producer with the section's properties (and its producer-only ones).
    pub fn new(kafka: &KafkaConfig) -> Result<Self> {
        let mut cfg = kafka.client();
        if cfg.get("linger.ms").is_none() {
            // librdkafka's 5 ms default would spend half of a 10 ms latency budget waiting.
            cfg.set("linger.ms", "1");
        }
        for (k, v) in &kafka.producer_properties {
            cfg.set(k, v);
        }
        Ok(Self {
            producer: cfg
                .create()
                .map_err(PipelineError::kafka("creating the producer"))?,
            encoder: encoders::build(kafka.format),
            scores_topic: kafka.topics.scores.clone(),
            alerts_topic: kafka.topics.alerts.clone(),
            dead_letter_topic: kafka.topics.dead_letter.clone(),
            payloads: Payloads::default(),
        })
    }

    /// Encodes `records` and hands each to librdkafka.
    async fn publish(
        &mut self,
        records: &Records,
        topic: Output,
        deliveries: &mut Vec<(DeliveryFuture, Output)>,
    ) -> Result<()> {
        let started = Instant::now();
        self.payloads.clear();
        self.encoder.encode(&records.batch, &mut self.payloads)?;
        events::stage_time(Stage::Encode, started.elapsed().as_secs_f64());
        let keys = records
            .keys
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| PipelineError::Bug("record keys are not Utf8".into()))?;
        let name = match topic {
            Output::Score => &self.scores_topic,
            _ => &self.alerts_topic,
        };
        for (i, payload) in self.payloads.iter().enumerate() {
            let key = keys.is_valid(i).then(|| keys.value(i).as_bytes());
            let d = send(&self.producer, name, key, payload, None).await?;
            deliveries.push((d, topic));
        }
        Ok(())
    }

    async fn dead_letter(
        &self,
        d: &DeadLetter,
        deliveries: &mut Vec<(DeliveryFuture, Output)>,
    ) -> Result<()> {
        let Origin::Message(m) = &d.origin else {
            return Err(PipelineError::Bug(
                "a row of a file reached the Kafka dead-letter topic".into(),
            ));
        };
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "riskpipe.source.topic",
                value: Some(m.topic.as_bytes()),
            })
            .insert(Header {
                key: "riskpipe.source.partition",
                value: Some(m.partition.to_string().as_bytes()),
            })
            .insert(Header {
                key: "riskpipe.source.offset",
                value: Some(m.offset.to_string().as_bytes()),
            })
            .insert(Header {
                key: "riskpipe.error.kind",
                value: Some(d.kind.as_str().as_bytes()),
            })
            .insert(Header {
                key: "riskpipe.error",
                value: Some(d.reason.as_bytes()),
            });
        let delivery = send(
            &self.producer,
            &self.dead_letter_topic,
            m.key.as_deref(),
            &m.payload,
            Some(headers),
        )
        .await?;
        deliveries.push((delivery, Output::DeadLetter));
        Ok(())
    }
}

/// Hands a record to librdkafka, waiting while its queue is full (backpressure).
async fn send(
    producer: &FutureProducer,
    topic: &str,
    key: Option<&[u8]>,
    payload: &[u8],
    headers: Option<OwnedHeaders>,
) -> Result<DeliveryFuture> {
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).payload(payload);
    record.key = key;
    record.headers = headers;
    loop {
        match producer.send_result(record) {
            Ok(delivery) => return Ok(delivery),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err((e, _)) => {
                return Err(PipelineError::Delivery {
                    topic: topic.to_string(),
                    source: e,
                });
            }
        }
    }
}

impl Sink for KafkaSink {
    type Delivery = BoxFuture<'static, Result<Delivered>>;

    async fn send(&mut self, batch: SinkBatch) -> Result<Self::Delivery> {
        let mut deliveries = Vec::new();
        if let Some(r) = &batch.output.scores {
            self.publish(r, Output::Score, &mut deliveries).await?;
        }
        if let Some(r) = &batch.output.alerts {
            self.publish(r, Output::Alert, &mut deliveries).await?;
        }
        for d in &batch.dead {
            self.dead_letter(d, &mut deliveries).await?;
        }
        Ok(async move {
            let (futures, outputs): (Vec<_>, Vec<_>) = deliveries.into_iter().unzip();
            let mut delivered = Delivered::default();
            for (result, output) in join_all(futures).await.into_iter().zip(outputs) {
                match result {
                    Ok(Ok(_)) => match output {
                        Output::Score => delivered.scores += 1,
                        Output::Alert => delivered.alerts += 1,
                        Output::DeadLetter => delivered.dead_letters += 1,
                    },
                    Ok(Err((source, m))) => {
                        return Err(PipelineError::Delivery {
                            topic: rdkafka::message::Message::topic(&m).to_string(),
                            source,
                        });
                    }
                    Err(_) => {
                        return Err(PipelineError::Bug(
                            "the producer dropped a delivery report".into(),
                        ));
                    }
                }
            }
            Ok(delivered)
        }
        .boxed())
    }
}

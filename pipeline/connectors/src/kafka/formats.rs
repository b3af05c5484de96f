//! The formats a `[kafka]` section names, built: one decoder for the job's input topics and
//! one encoder for the output topics, each topic in its own format (`[kafka.formats]`), one
//! schema registry client shared by every Avro topic.

use crate::Result;
use crate::decoders::{self, AvroDecoder, Decoder, Format, JsonDecoder};
use crate::encoders::{self, AvroEncoder, Encoder, JsonEncoder};
use riskpipe_core::Inputs;
use riskpipe_core::Streams;

use super::KafkaConfig;

impl KafkaConfig {
    /// The decoder of this section's formats, for a job reading `streams` with `inputs` (JSON
    /// events by their declaration, where the job declares them).
    pub fn decoder(&self, streams: Streams, job: &Inputs) -> Result<Box<dyn Decoder>> {
        let kafka = self;
        let inputs = kafka.input_formats(streams);
        // One registry client (and schema cache) for every Avro topic.
        let registry =
            match inputs.iter().any(|(_, f)| *f == Format::Avro) || kafka.format == Format::Avro {
                true => Some(kafka.registry()?),
                false => None,
            };
        let of = |format: Format| -> Result<Box<dyn Decoder>> {
            Ok(match (format, &registry) {
                (Format::Avro, Some(r)) => Box::new(job.declared.iter().fold(
                    AvroDecoder::new(r.clone(), kafka.max_message_bytes)?,
                    |avro, d| avro.declaring(d.as_ref().clone()),
                )),
                _ => {
                    let json = JsonDecoder::new(kafka.max_message_bytes);
                    Box::new(
                        job.declared
                            .iter()
                            .fold(json, |json, d| json.declaring(d.as_ref().clone())),
                    )
                }
            })
        };
        if inputs.iter().all(|(_, f)| *f == kafka.format) {
            return of(kafka.format);
        }
        let topics = inputs
            .into_iter()
            .map(|(topic, format)| Ok((topic.to_string(), of(format)?)))
            .collect::<Result<_>>()?;
        Ok(Box::new(decoders::ByTopic {
            topics,
            other: of(kafka.format)?,
        }))
    }

    /// The encoder of this section's formats.
    pub fn encoder(&self) -> Result<Box<dyn Encoder>> {
        let kafka = self;
        let outputs = kafka.output_formats();
        let of = |format: Format| -> Result<Box<dyn Encoder>> {
            Ok(match format {
                Format::Json => Box::new(JsonEncoder),
                Format::Avro => Box::new(AvroEncoder::new(
                    kafka.registry()?,
                    kafka
                        .schema_registry
                        .as_ref()
                        .map(|r| r.subject_strategy)
                        .unwrap_or_default(),
                )),
            })
        };
        if outputs.iter().all(|(_, f)| *f == kafka.format) {
            return of(kafka.format);
        }
        let topics = outputs
            .into_iter()
            .map(|(topic, format)| Ok((topic.to_string(), of(format)?)))
            .collect::<Result<_>>()?;
        Ok(Box::new(encoders::ByTopic { topics }))
    }
}

//! What the demo publishes: transactions and labels in event-time order as JSON (or Avro)
//! payloads, and the warm-up its state starts from.

use arrow::datatypes::{Float64Type, Int64Type, TimestampNanosecondType};
use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};
use riskpipe_operators::columns;
use riskpipe_schemas::{FraudLabel, Transaction, label, tx};

use crate::encoders::rfc3339;
use crate::kafka::KafkaConfig;
use crate::sources::history::History;
use crate::{PipelineConfig, PipelineError, Result};

/// The transactions and label events to publish, as JSON payloads in publishing order.
#[derive(Debug, Default)]
pub struct Feed {
    /// `(is_label, key, payload, transaction index)` in publishing order: transactions are
    /// keyed by customer, labels by terminal.
    pub messages: Vec<(bool, String, Vec<u8>, usize)>,
    /// Transactions in the feed.
    pub transactions: usize,
    /// Transaction ids in feed order (index = the `transaction index` above).
    pub ids: Vec<i64>,
    /// Which transactions are frauds (from the history's label column).
    pub frauds: Vec<bool>,
}

impl Feed {
    /// The same feed with every payload in Avro (schema-registry wire format, the schemas of
    /// the job's declared `inputs`), each schema registered through `kafka.schema_registry`:
    /// the JSON payloads go through riskpipe's JSON decoder and Avro encoder.
    pub fn into_avro(mut self, kafka: &KafkaConfig, inputs: &crate::jobs::Inputs) -> Result<Feed> {
        let streams = crate::jobs::fraud::STREAMS;
        let json = inputs
            .declared
            .iter()
            .fold(crate::decoders::JsonDecoder::new(usize::MAX), |json, d| {
                json.declaring(d.as_ref().clone())
            });
        let strategy = kafka
            .schema_registry
            .as_ref()
            .map(|r| r.subject_strategy)
            .unwrap_or_default();
        let mut encoder = crate::encoders::AvroEncoder::new(kafka.registry()?, strategy);
        for (labels, schema, topic) in [
            (false, inputs.events.clone(), kafka.events_topic(streams)),
            (
                true,
                inputs.side.clone().unwrap_or_else(|| inputs.events.clone()),
                kafka.side_topic(streams).unwrap_or_default(),
            ),
        ] {
            let at: Vec<usize> = (0..self.messages.len())
                .filter(|&i| self.messages[i].0 == labels)
                .collect();
            if at.is_empty() {
                continue;
            }
            let payloads: Vec<&[u8]> = at.iter().map(|&i| self.messages[i].2.as_slice()).collect();
            let decoded = crate::decoders::Decoder::decode(&json, topic, &schema, &payloads)?;
            if let Some(r) = decoded.rejected.first() {
                return Err(PipelineError::Bug(format!(
                    "a feed payload riskpipe wrote does not decode: {}",
                    r.reason
                )));
            }
            let mut out = crate::encoders::Payloads::default();
            crate::encoders::Encoder::encode(&mut encoder, topic, &decoded.batch, &mut out)?;
            for (&i, p) in at.iter().zip(out.iter()) {
                self.messages[i].2 = p.to_vec();
            }
        }
        Ok(self)
    }

    /// The same feed with only its label messages (`labels`) or only its transactions.
    pub fn only(&self, labels: bool) -> Feed {
        Feed {
            messages: self
                .messages
                .iter()
                .filter(|m| m.0 == labels)
                .cloned()
                .collect(),
            transactions: self.transactions,
            ids: self.ids.clone(),
            frauds: self.frauds.clone(),
        }
    }
}

/// The first `count` transactions after skipping `skip`, interleaved with the label events
/// whose label time is reached (labels first at equal times, as in replay).
pub fn feed(history: &History, cfg: &PipelineConfig, skip: usize, count: usize) -> Result<Feed> {
    feed_after(history, cfg, skip, skip, count)
}

/// [`feed`] for a pipeline whose state was warmed with the transactions from `warmed_from` up
/// to `skip` and the labels known by then ([`WarmUp::labels`]): the labels of those
/// transactions that come later are in the feed.
pub fn feed_after(
    history: &History,
    cfg: &PipelineConfig,
    warmed_from: usize,
    skip: usize,
    count: usize,
) -> Result<Feed> {
    let fraud = crate::jobs::fraud::FraudConfig::of(cfg)?;
    let t = &history.events;
    let end = (skip + count).min(t.num_rows());
    let start = skip.min(end);
    let id = columns::primitive::<Int64Type>(t, tx::TRANSACTION_ID)?;
    let customer = columns::primitive::<Int64Type>(t, tx::CUSTOMER_ID)?;
    let terminal = columns::primitive::<Int64Type>(t, tx::TERMINAL_ID)?;
    let amount = columns::primitive::<Float64Type>(t, tx::TX_AMOUNT)?;
    let time = columns::primitive::<TimestampNanosecondType>(t, &history.event_time)?;
    let truth = columns::i64_values(t, &fraud.truth_column())?;
    let empty = arrow::array::RecordBatch::new_empty(riskpipe_schemas::fraud_label_schema());
    let l = history.side.as_ref().unwrap_or(&empty);
    let l_id = columns::primitive::<Int64Type>(l, tx::TRANSACTION_ID)?;
    let l_customer = columns::primitive::<Int64Type>(l, tx::CUSTOMER_ID)?;
    let l_terminal = columns::primitive::<Int64Type>(l, tx::TERMINAL_ID)?;
    let l_time = columns::primitive::<TimestampNanosecondType>(l, &history.event_time)?;
    let l_label_time = columns::primitive::<TimestampNanosecondType>(l, label::LABEL_TIME)?;
    let l_flag = columns::i64_values(l, label::TX_FRAUD)?;
    let warmed = warmed_from < start;
    let first_time = if start < end {
        time.value(warmed_from.min(start))
    } else {
        0
    };
    let json = |e: serde_json::Error| PipelineError::Bug(format!("encoding JSON: {e}"));
    let mut out = Feed::default();
    // Labels of transactions before the slice would count frauds the windows never saw.
    let mut next_label = 0;
    #[allow(clippy::needless_range_loop)] // i indexes several Arrow columns at once
    for i in start..end {
        let t_i = time.value(i);
        while next_label < l.num_rows() && l_label_time.value(next_label) <= t_i {
            let j = next_label;
            next_label += 1;
            // Labels known by the first transaction went into the warm-up.
            if l_time.value(j) < first_time || (warmed && i == start) {
                continue;
            }
            let payload = serde_json::to_vec(&FraudLabel {
                transaction_id: l_id.value(j),
                customer_id: l_customer.value(j),
                terminal_id: l_terminal.value(j),
                tx_datetime: rfc3339(l_time.value(j)),
                label_time: rfc3339(l_label_time.value(j)),
                tx_fraud: l_flag.value(j),
            })
            .map_err(json)?;
            // Keyed by terminal: the label features' key, so a repartitioned topology finds a
            // terminal's labels in the partition its forwarded transactions go to.
            out.messages
                .push((true, l_terminal.value(j).to_string(), payload, usize::MAX));
        }
        let payload = serde_json::to_vec(&Transaction {
            transaction_id: id.value(i),
            tx_datetime: rfc3339(t_i),
            customer_id: customer.value(i),
            terminal_id: terminal.value(i),
            tx_amount: amount.value(i),
        })
        .map_err(json)?;
        out.messages.push((
            false,
            customer.value(i).to_string(),
            payload,
            out.transactions,
        ));
        out.ids.push(id.value(i));
        out.frauds.push(truth.value(i) != 0);
        out.transactions += 1;
    }
    Ok(out)
}

/// The history the demo's state is warmed with before its first scored transaction, as a
/// pipeline that had been running would hold it: the transactions within the job's horizon
/// (the features' reach, the drift window and the lateness) before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WarmUp {
    /// The first transaction of the warm-up.
    pub from: usize,
    /// The first scored transaction (the warm-up ends before it).
    pub scored_from: usize,
}

impl WarmUp {
    /// The warm-up before transaction `skip`; `None`: the first transaction that has the
    /// whole horizon before it in the history, so the state is complete from the first score.
    pub fn of(history: &History, cfg: &PipelineConfig, skip: Option<usize>) -> Result<WarmUp> {
        let times =
            columns::primitive::<TimestampNanosecondType>(&history.events, &history.event_time)?
                .values();
        let reach = cfg
            .job
            .kind()
            .rebuild_horizon(cfg)
            .map_or(0, |h| i64::try_from(h.reach.as_nanos()).unwrap_or(i64::MAX));
        let scored_from = match skip {
            Some(s) => s.min(times.len()),
            None => {
                let first = times.first().copied().unwrap_or_default();
                let s = times.partition_point(|&t| t < first.saturating_add(reach));
                if s >= times.len() {
                    return Err(PipelineError::BadInput(format!(
                        "the history ({} transactions) ends within the job's horizon of {} days: nothing is left to score after the warm-up (give --skip)",
                        times.len(),
                        reach / 86_400_000_000_000
                    )));
                }
                s
            }
        };
        let from = match times.get(scored_from) {
            Some(&t) => times.partition_point(|&x| x < t.saturating_sub(reach)),
            None => scored_from,
        };
        Ok(WarmUp { from, scored_from })
    }

    /// Transactions in the warm-up.
    pub fn transactions(&self) -> usize {
        self.scored_from - self.from
    }

    /// The labels the warm-up applies: of its transactions, known by the first scored one.
    pub fn labels(&self, history: &History) -> Result<Option<arrow::array::RecordBatch>> {
        let times =
            columns::primitive::<TimestampNanosecondType>(&history.events, &history.event_time)?
                .values();
        // From the warm-up's first transaction; known by the first scored one.
        let (Some(side), Some(&first), Some(&cut)) = (
            &history.side,
            times.get(self.from),
            times.get(self.scored_from),
        ) else {
            return Ok(None);
        };
        let of_tx = columns::primitive::<TimestampNanosecondType>(side, &history.event_time)?;
        let known = columns::primitive::<TimestampNanosecondType>(side, &history.side_time)?;
        let keep = arrow::array::BooleanArray::from_iter(
            of_tx
                .values()
                .iter()
                .zip(known.values())
                .map(|(&t, &k)| Some(t >= first && k <= cut)),
        );
        Ok(Some(arrow::compute::filter_record_batch(side, &keep)?))
    }

    /// Runs the warm-up through a new job's stages (the code a restarted pipeline brings its
    /// restored state up to its committed offsets with) and writes their state as checkpoint 1
    /// of `cfg.state`, at offset 0 of every partition of the job's input topics, whose
    /// offsets it commits for the group: the live pipeline then restores it as any restarted
    /// pipeline restores its newest checkpoint. Returns the warm-up's refused transactions.
    pub fn seed(
        &self,
        rt: &tokio::runtime::Runtime,
        cfg: &PipelineConfig,
        history: &History,
        partitions: i32,
    ) -> Result<usize> {
        let state = cfg.state.as_ref().ok_or_else(|| {
            PipelineError::Bug("the demo's warm-up needs a state directory".into())
        })?;
        let kafka = cfg
            .kafka
            .as_ref()
            .ok_or_else(|| PipelineError::Bug("the demo's warm-up needs [kafka]".into()))?;
        let mut job = crate::jobs::build(cfg)?;
        let input = crate::jobs::JobInput {
            side: self.labels(history)?,
            events: history.events.slice(self.from, self.transactions()),
            partitions: None,
        };
        let scoring: Option<&mut dyn crate::jobs::ScoreStage> = if job.scoring.has_state() {
            Some(job.scoring.as_mut())
        } else {
            None
        };
        let kind = cfg.job.kind();
        let refused =
            crate::jobs::warm_up(job.features.as_mut(), scoring, input, kind.batch_rows())?;
        let snapshot = crate::jobs::StateSnapshot::join(
            job.features.snapshot()?,
            match job.scoring.has_state() {
                true => Some(job.scoring.snapshot()?),
                false => None,
            },
        );
        let streams = cfg.streams();
        let mut topics: Vec<(&str, i32)> = vec![(kafka.events_topic(streams), partitions.max(1))];
        if let Some(side) = kafka.side_topic(streams) {
            topics.push((side, 1));
        }
        let mut positions = crate::state::Positions::new();
        let mut offsets = TopicPartitionList::new();
        for &(topic, n) in &topics {
            for p in 0..n {
                positions.entry(topic.to_string()).or_default().insert(p, 0);
                offsets
                    .add_partition_offset(topic, p, Offset::Offset(0))
                    .map_err(PipelineError::kafka("listing the offsets to commit"))?;
            }
        }
        let store = crate::state::CheckpointStore::open(state)?;
        rt.block_on(store.write(1, kind.name(), positions, snapshot))?;
        crate::sources::kafka_restore::group_consumer(kafka)?
            .commit(&offsets, rdkafka::consumer::CommitMode::Sync)
            .map_err(PipelineError::kafka("committing the warm-up's offsets"))?;
        Ok(refused)
    }
}

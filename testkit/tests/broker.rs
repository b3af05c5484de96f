//! The broker process starts on loopback, creates topics a Kafka client sees, and answers
//! fault-injection commands (so tests that rely on it fail loudly when it does not).

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use riskpipe_testkit::Broker;

#[test]
fn broker_serves_topics_and_answers_commands() {
    let mut broker = Broker::start(&[("a", 3)]);
    broker.command("topic b 2");
    assert!(
        broker.try_command("no-such-command").starts_with("error:"),
        "an unknown command is an error"
    );
    assert!(
        broker
            .try_command("topic c notanumber")
            .starts_with("error:")
    );
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .set("group.id", "testkit")
        .create()
        .expect("consumer");
    let partitions = |topic: &str| {
        consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .expect("metadata")
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .map_or(0, |t| t.partitions().len())
    };
    assert_eq!(partitions("a"), 3);
    assert_eq!(partitions("b"), 2);
}

"""Confluent's Python client on riskpipe's Avro topics (driven by tests/avro.rs).

produce: JSON lines {"topic", "key", "value"} on stdin, each value serialised with
confluent_kafka's AvroSerializer (registering the writer schema under <topic>-value) and
produced. Transactions are written with an evolved schema (an extra CHANNEL field, TERMINAL_ID
an int) to exercise Avro resolution on riskpipe's side.

consume: reads N records of a topic with AvroDeserializer (writer schema looked up by the id in
each message) and prints each as a JSON line, times as microseconds.
"""

import datetime
import json
import sys

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext


def registry(url, user_info):
    conf = {"url": url}
    if user_info:
        conf["basic.auth.user.info"] = user_info
    return SchemaRegistryClient(conf)


def micros(text):
    t = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
    delta = t - epoch
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def evolved_transaction(schema_text):
    s = json.loads(schema_text)
    for f in s["fields"]:
        if f["name"] == "TERMINAL_ID":
            f["type"] = "int"
    s["fields"].insert(0, {"name": "CHANNEL", "type": "string", "default": "web"})
    return json.dumps(s)


def produce(bootstrap, url, user_info, schemas_dir, transactions_topic):
    client = registry(url, user_info)
    serializers = {}

    def serializer(topic, stem, evolve):
        if topic not in serializers:
            with open(f"{schemas_dir}/{stem}.avsc") as f:
                text = f.read()
            if evolve:
                text = evolved_transaction(text)
            serializers[topic] = AvroSerializer(client, text)
        return serializers[topic]

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    n = 0
    for line in sys.stdin:
        m = json.loads(line)
        v = m["value"]
        if m["topic"] == transactions_topic:
            v["TX_DATETIME"] = micros(v["TX_DATETIME"])
            v["CHANNEL"] = "pos"
            ser = serializer(m["topic"], "transaction", True)
        else:
            v["TX_DATETIME"] = micros(v["TX_DATETIME"])
            v["LABEL_TIME"] = micros(v["LABEL_TIME"])
            ser = serializer(m["topic"], "fraud_label", False)
        payload = ser(v, SerializationContext(m["topic"], MessageField.VALUE))
        while True:
            try:
                producer.produce(m["topic"], key=m["key"].encode(), value=payload)
                break
            except BufferError:
                producer.poll(0.1)
        n += 1
        producer.poll(0)
    if producer.flush(60) != 0:
        sys.exit("messages left unflushed")
    print(json.dumps({"produced": n}), flush=True)


def consume(bootstrap, url, user_info, topic, count, timeout_s):
    deserializer = AvroDeserializer(registry(url, user_info))
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "interop-" + topic,
            "enable.auto.commit": False,
        }
    )
    md = consumer.list_topics(topic, timeout=10)
    consumer.assign(
        [TopicPartition(topic, p, 0) for p in md.topics[topic].partitions]
    )
    got = 0
    deadline = datetime.datetime.now() + datetime.timedelta(seconds=timeout_s)
    while got < count and datetime.datetime.now() < deadline:
        m = consumer.poll(0.5)
        if m is None:
            continue
        if m.error():
            sys.exit(f"consume: {m.error()}")
        v = deserializer(m.value(), SerializationContext(topic, MessageField.VALUE))
        for k, x in list(v.items()):
            if isinstance(x, datetime.datetime):
                v[k] = micros(x.isoformat())
        print(json.dumps({"key": m.key().decode(), "value": v}), flush=True)
        got += 1
    consumer.close()
    if got < count:
        sys.exit(f"read {got} of {count} records of {topic}")


if __name__ == "__main__":
    command, bootstrap, url, user_info = sys.argv[1:5]
    if command == "produce":
        produce(bootstrap, url, user_info, sys.argv[5], sys.argv[6])
    elif command == "consume":
        consume(bootstrap, url, user_info, sys.argv[5], int(sys.argv[6]), float(sys.argv[7]))
    else:
        sys.exit(f"unknown command {command}")

//! deploy/ cannot drift from the product: every metric the Grafana dashboard and the Prometheus
//! alert rules query is exported by a running pipeline, and the Kubernetes ConfigMap is a
//! pipeline config riskpipe's own loader accepts, with the shipped features and threshold.
//! (deploy/check.sh runs the external validators: hadolint, the Compose schema,
//! kubernetes-validate, promtool.)

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use riskpipe_pipeline::PipelineConfig;
use riskpipe_pipeline::kafka::KafkaConfig;
use support::{Broker, Pipeline, kafka_section, root, write_config};

/// Every `riskpipe_*` metric name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("riskpipe_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

#[test]
fn dashboard_and_alert_rules_query_only_exported_metrics() {
    let dashboard = std::fs::read_to_string(root().join("deploy/grafana/dashboards/riskpipe.json"))
        .expect("dashboard");
    let rules =
        std::fs::read_to_string(root().join("deploy/prometheus/alerts.yml")).expect("rules");
    let queried: BTreeSet<String> = metric_names(&dashboard)
        .into_iter()
        .chain(metric_names(&rules))
        .collect();
    assert!(queried.len() >= 9, "{queried:?}");

    let broker = Broker::start(&[
        ("transactions", 2),
        ("fraud-labels", 1),
        ("scores", 1),
        ("scores-challenger", 1),
        ("alerts", 1),
        ("riskpipe-dead-letter", 1),
    ]);
    let dir = tempfile::tempdir().expect("tempdir");
    // With a challenger, so its panel's metrics exist too.
    let config = write_config(
        dir.path(),
        &format!(
            "\n[challenger]\npath = {:?}\n{}",
            root().join("models/fraud_gbm.onnx").display().to_string(),
            kafka_section(
                &broker.bootstrap,
                "deploy",
                "[kafka.consumer_properties]\n\"statistics.interval.ms\" = \"200\"",
            )
        ),
    );
    // Drift gauges from the first rows on (the shipped config waits for the features' reach
    // and 1,000 rows in the window).
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(
        &config,
        text.replace(
            "window_days = 7\n",
            "window_days = 7\nmin_rows = 1\nwarm_up = \"0s\"\n",
        ),
    )
    .expect("config");
    let mut pipeline = Pipeline::start(&config);
    pipeline.wait_ready();
    // A reload (of the same file: "unchanged") exports the reload counter.
    pipeline.signal("HUP");
    let producer: ThreadedProducer<DefaultProducerContext> =
        riskpipe_pipeline::demo::feed_producer(&KafkaConfig::for_bootstrap(&broker.bootstrap))
            .expect("producer");
    // Keyed by id, so both partitions send events and the watermark exists.
    for id in 1..=20 {
        let tx = support::transaction_json(id, 7);
        let key = id.to_string();
        let record: BaseRecord<'_, str, str> = BaseRecord::to("transactions")
            .key(key.as_str())
            .payload(tx.as_str());
        producer.send(record).map_err(|(e, _)| e).expect("send");
    }
    let bad: BaseRecord<'_, str, str> = BaseRecord::to("transactions").key("7").payload("{oops");
    producer.send(bad).map_err(|(e, _)| e).expect("send");
    producer.flush(Duration::from_secs(10)).expect("flush");

    // Scores, a dead letter, a commit and a lag sample have all happened once these are there.
    let deadline = Instant::now() + Duration::from_secs(60);
    let body = loop {
        let (_, body) = pipeline.get("/metrics");
        let exported = metric_names(&body);
        if queried.is_subset(&exported) {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "not exported: {:?}\n{body}",
            queried.difference(&exported).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(body.contains("riskpipe_ready 1"), "{body}");
    assert!(
        body.contains("riskpipe_batch_rows_bucket{le=\"1000\"}"),
        "batch sizes have row buckets: {body}"
    );
    let (ok, _) = pipeline.terminate();
    assert!(ok);
}

#[test]
fn kubernetes_config_map_is_a_valid_pipeline_config_with_the_shipped_job() {
    let yaml = std::fs::read_to_string(root().join("deploy/kubernetes/configmap.yaml"))
        .expect("configmap");
    let mut toml = String::new();
    let mut inside = false;
    for line in yaml.lines() {
        if line.trim_start().starts_with("pipeline.toml: |") {
            inside = true;
            continue;
        }
        if inside {
            match line.strip_prefix("    ") {
                Some(l) => toml.push_str(l),
                None if line.trim().is_empty() => {}
                None => break,
            }
            toml.push('\n');
        }
    }
    let cfg = PipelineConfig::from_toml(&toml, &root().join("config")).expect("parses");
    // In the image the model is at /opt/riskpipe/models; the SASL secrets come from the
    // environment. Nothing else may be wrong.
    let others: Vec<String> = cfg
        .problems()
        .into_iter()
        .filter(|p| !p.contains("/opt/riskpipe/models/") && !p.contains("environment variable"))
        .collect();
    assert!(others.is_empty(), "{others:#?}");
    let shipped = PipelineConfig::handbook().expect("shipped");
    let names = |c: &PipelineConfig| {
        riskpipe_pipeline::jobs::fraud::FraudConfig::of(c)
            .expect("fraud")
            .features
            .feature_names()
            .expect("names")
    };
    assert_eq!(names(&cfg), names(&shipped));
    assert_eq!(cfg.alerts.threshold, shipped.alerts.threshold);
    assert_eq!(
        cfg.model.primary().path.file_name(),
        shipped.model.primary().path.file_name(),
        "the shipped model"
    );
    let drift = |c: &PipelineConfig| {
        c.drift
            .as_ref()
            .and_then(|d| d.reference.file_name().map(|f| f.to_owned()))
    };
    assert_eq!(drift(&cfg), drift(&shipped), "the shipped drift reference");
}

/// docs/operations/monitoring.md keeps up with deploy/: it has a row for every panel of the
/// dashboard and for every alert rule, with the rule's severity, and no row for a rule that
/// does not exist.
#[test]
fn the_monitoring_page_lists_every_panel_and_alert_rule() {
    let page = std::fs::read_to_string(root().join("docs/operations/monitoring.md")).expect("page");
    let rows: Vec<Vec<&str>> = page
        .lines()
        .filter(|l| l.starts_with("| "))
        .map(|l| l.trim_matches('|').split(" | ").map(str::trim).collect())
        .collect();
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("deploy/grafana/dashboards/riskpipe.json"))
            .expect("dashboard"),
    )
    .expect("dashboard json");
    let mut missing = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().expect("title");
        if !rows.iter().any(|r| r[0] == title) {
            missing.push(format!("panel {title:?}"));
        }
    }
    // Each rule's name and the severity label after it.
    let rules =
        std::fs::read_to_string(root().join("deploy/prometheus/alerts.yml")).expect("rules");
    let mut alerts: Vec<(String, String)> = Vec::new();
    for line in rules.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("- alert:") {
            alerts.push((name.trim().to_string(), String::new()));
        } else if let (Some(severity), Some(last)) =
            (line.strip_prefix("severity:"), alerts.last_mut())
        {
            last.1 = severity.trim().to_string();
        }
    }
    assert!(alerts.len() >= 8, "{alerts:?}");
    for (name, severity) in &alerts {
        let cell = format!("`{name}`");
        match rows.iter().find(|r| r[0] == cell) {
            None => missing.push(format!("alert {name}")),
            Some(row) if row.get(2) != Some(&severity.as_str()) => missing.push(format!(
                "alert {name}: severity {severity}, the page says {row:?}"
            )),
            Some(_) => {}
        }
    }
    for row in rows.iter().filter(|r| r[0].starts_with("`Riskpipe")) {
        if !alerts.iter().any(|(name, _)| row[0] == format!("`{name}`")) {
            missing.push(format!("{} is no rule of alerts.yml", row[0]));
        }
    }
    assert!(
        missing.is_empty(),
        "docs/operations/monitoring.md: {missing:?}"
    );
}

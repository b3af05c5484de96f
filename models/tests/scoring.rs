//! Scoring a tiny hand-made model: sigmoid(0.5 + a - 2b).

use std::sync::Arc;

use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use riskpipe_models::{ModelConfig, ModelError, Provider, Scorer};

fn fixture() -> ModelConfig {
    ModelConfig::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/logistic.onnx"
    ))
}

fn batch(a: Vec<f64>, b: Vec<i64>) -> RecordBatch {
    let schema = Schema::new(vec![
        Field::new("a", DataType::Float64, false),
        Field::new("b", DataType::Int64, false),
    ]);
    RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(Float64Array::from(a)),
            Arc::new(Int64Array::from(b)),
        ],
    )
    .expect("batch")
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

#[test]
fn scores_match_the_hand_computed_logistic() {
    let mut scorer = Scorer::load(&fixture()).expect("load");
    assert_eq!(scorer.features(), ["a", "b"]);
    assert_eq!(scorer.name(), "logistic-fixture");
    let scores = scorer
        .score(&batch(vec![0.0, 1.0, 3.0, -2.0], vec![0, 1, -1, 2]))
        .expect("score");
    let expected = [
        sigmoid(0.5),
        sigmoid(0.5 + 1.0 - 2.0),
        sigmoid(0.5 + 3.0 + 2.0),
        sigmoid(0.5 - 2.0 - 4.0),
    ];
    assert_eq!(scores.len(), 4);
    for (s, e) in scores.iter().zip(expected) {
        assert!((f64::from(*s) - e).abs() < 1e-6, "{s} vs {e}");
    }
    // An empty batch scores to nothing rather than failing.
    assert!(
        scorer
            .score(&batch(vec![], vec![]))
            .expect("empty")
            .is_empty()
    );
}

#[test]
fn unavailable_providers_fall_back_to_cpu() {
    let mut cfg = fixture();
    cfg.providers = vec![Provider::Tensorrt, Provider::Cuda, Provider::Cpu];
    let scorer = Scorer::load(&cfg).expect("load");
    // This machine's ONNX Runtime is the CPU build.
    assert_eq!(scorer.provider(), Provider::Cpu);
}

#[test]
fn feature_columns_come_from_config_over_metadata() {
    let mut cfg = fixture();
    cfg.features = Some(vec!["b".into(), "a".into()]);
    let mut scorer = Scorer::load(&cfg).expect("load");
    // Swapped: the model now reads a=b_col, b=a_col.
    let s = scorer.score(&batch(vec![1.0], vec![0])).expect("score")[0];
    assert!((f64::from(s) - sigmoid(0.5 + 0.0 - 2.0)).abs() < 1e-6);
}

#[test]
fn wrong_feature_count_is_a_clear_model_error() {
    let mut cfg = fixture();
    cfg.features = Some(vec!["a".into()]);
    let err = Scorer::load(&cfg).expect_err("must fail");
    assert!(matches!(err, ModelError::Model { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("takes 2 features but 1 are configured"),
        "{err}"
    );
}

#[test]
fn bad_batches_are_bad_input() {
    let mut scorer = Scorer::load(&fixture()).expect("load");
    let missing = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("a", DataType::Float64, false)])),
        vec![Arc::new(Float64Array::from(vec![1.0]))],
    )
    .expect("batch");
    let err = scorer.score(&missing).expect_err("missing b");
    assert!(
        err.to_string().contains("missing feature column \"b\""),
        "{err}"
    );
    assert_eq!(err.fault(), riskpipe_schemas::Fault::BadInput);
    let text = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("a", DataType::Float64, false),
            Field::new("b", DataType::Utf8, false),
        ])),
        vec![
            Arc::new(Float64Array::from(vec![1.0])),
            Arc::new(StringArray::from(vec!["x"])),
        ],
    )
    .expect("batch");
    assert!(
        scorer
            .score(&text)
            .expect_err("text")
            .to_string()
            .contains("not numeric")
    );
}

#[test]
fn missing_model_file_is_reported() {
    let err = Scorer::load(&ModelConfig::new("/nonexistent/model.onnx")).expect_err("must fail");
    assert!(err.to_string().contains("file not found"), "{err}");
}

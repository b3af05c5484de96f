//! Scoring a tiny hand-made model: sigmoid(0.5 + a - 2b).

use std::sync::Arc;

use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use riskpipe_models::{BoundColumns, ModelConfig, ModelError, Provider, Scorer};

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
    assert!(matches!(err, ModelError::Bindings { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("input features (float [N,2]) takes 2 columns, but 1 are bound: a"),
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
        err.to_string().contains("missing model input column \"b\""),
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
            .contains("is Utf8, the model reads it as float")
    );
}

#[test]
fn missing_model_file_is_reported() {
    let err = Scorer::load(&ModelConfig::new("/nonexistent/model.onnx")).expect_err("must fail");
    assert!(err.to_string().contains("file not found"), "{err}");
}

fn data(file: &str) -> ModelConfig {
    ModelConfig::new(format!("{}/tests/data/{file}", env!("CARGO_MANIFEST_DIR")))
}

fn bind(pairs: &[(&str, &[&str])]) -> Option<std::collections::BTreeMap<String, BoundColumns>> {
    Some(
        pairs
            .iter()
            .map(|(input, cols)| {
                (
                    input.to_string(),
                    BoundColumns::Many(cols.iter().map(|c| c.to_string()).collect()),
                )
            })
            .collect(),
    )
}

/// Three named inputs of other types (double [N,2], int64 [N,1], string [N,1]) bound by config
/// to columns of other Arrow types, a double [N] output: each score is the hand-computed one.
#[test]
fn named_double_int64_and_string_inputs_are_bound_by_config() {
    let mut cfg = data("mixed.onnx");
    cfg.output = "score".into();
    cfg.inputs = bind(&[("x", &["p", "q"]), ("n", &["count"]), ("kind", &["kind"])]);
    let mut scorer = Scorer::load(&cfg).expect("load");
    assert_eq!(scorer.features(), ["p", "q", "count", "kind"]);
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("kind", DataType::Utf8, false),
            Field::new("q", DataType::Float32, false),
            Field::new("p", DataType::Float64, false),
            Field::new("count", DataType::Int32, false),
        ])),
        vec![
            Arc::new(StringArray::from(vec!["risky", "calm", "risky"])),
            Arc::new(arrow::array::Float32Array::from(vec![2.0, 4.0, 0.0])),
            Arc::new(Float64Array::from(vec![1.0, 3.0, 0.0])),
            Arc::new(arrow::array::Int32Array::from(vec![5, 6, 0])),
        ],
    )
    .expect("batch");
    let scores = scorer.score(&batch).expect("score");
    let expected = [0.1 + 0.02 + 0.005 + 0.5, 0.3 + 0.04 + 0.006, 0.5];
    for (s, e) in scores.iter().zip(expected) {
        assert_eq!(*s, e as f32, "{scores:?}");
    }
    // Text where a number is read, or a number where text is read, is bad input.
    let swapped = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("kind", DataType::Float64, false),
            Field::new("q", DataType::Float32, false),
            Field::new("p", DataType::Float64, false),
            Field::new("count", DataType::Int32, false),
        ])),
        vec![
            Arc::new(Float64Array::from(vec![1.0])),
            Arc::new(arrow::array::Float32Array::from(vec![2.0])),
            Arc::new(Float64Array::from(vec![1.0])),
            Arc::new(arrow::array::Int32Array::from(vec![5])),
        ],
    )
    .expect("batch");
    let err = scorer.score(&swapped).expect_err("number for text");
    assert_eq!(err.fault(), riskpipe_schemas::Fault::BadInput);
    assert!(
        err.to_string().contains("the model reads it as string"),
        "{err}"
    );
}

/// Bindings that do not fit the graph: every problem in one error.
#[test]
fn every_binding_that_does_not_fit_the_graph_is_listed_at_once() {
    let mut cfg = data("mixed.onnx");
    cfg.output = "probabilities".into();
    cfg.inputs = bind(&[
        ("x", &["p"]),
        ("kind", &["kind", "other"]),
        ("typo", &["t"]),
    ]);
    let err = Scorer::load(&cfg).expect_err("must fail");
    let ModelError::Bindings { problems, .. } = &err else {
        panic!("{err}");
    };
    let want = [
        "[model.inputs] binds \"typo\", which the model has no input of (its inputs: x (double [N,2]), n (int64 [N,1]), kind (string [N,1]))",
        "input x (double [N,2]) takes 2 columns, but 1 are bound: p",
        "input n (int64 [N,1]) is bound to no column: add `n = [...]` under [model.inputs]",
        "input kind (string [N,1]) takes 1 columns, but 2 are bound: kind, other",
        "the model has no output \"probabilities\" (its outputs: score (double [N]))",
    ];
    for w in want {
        assert!(
            problems.iter().any(|p| p.starts_with(w)),
            "missing {w:?} in {problems:#?}"
        );
    }
    assert_eq!(problems.len(), want.len(), "{problems:#?}");
    // A model of several inputs cannot be bound by `features`.
    let mut cfg = data("mixed.onnx");
    cfg.output = "score".into();
    cfg.features = Some(vec!["p".into(), "q".into()]);
    let err = Scorer::load(&cfg).expect_err("must fail");
    assert!(err.to_string().contains("the model has 3 inputs"), "{err}");
}

/// A ZipMap output (skl2onnx's default export) is refused with how to export without it; the
/// label output (int64) is refused as no probability.
#[test]
fn a_zipmap_output_is_refused_with_how_to_export_without_it() {
    let mut cfg = data("zipmap.onnx");
    cfg.output = "output_probability".into();
    let err = Scorer::load(&cfg).expect_err("zipmap");
    let text = err.to_string();
    assert!(text.contains("is a ZipMap"), "{text}");
    assert!(text.contains("\"zipmap\": False"), "{text}");
    cfg.output = "output_label".into();
    let err = Scorer::load(&cfg).expect_err("label");
    assert!(err.to_string().contains("holds int64 values"), "{err}");
}

/// A row scores the same alone as within a batch, bit for bit: the example's scikit-learn
/// pipeline (skl2onnx's LinearClassifier, whose one-row kernel rounds differently) and its
/// LightGBM model, each row of 64 scored alone, in pairs and all together.
#[test]
fn a_row_scores_the_same_alone_as_in_a_batch() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/payments/");
    let n = 64usize;
    let mut r = 7u64;
    let mut next = move |m: u64| {
        r = r
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (r >> 33) % m
    };
    let categories = ["grocery", "travel", "electronics", "restaurants", "gaming"];
    let channels = ["pos", "online", "atm"];
    let mut cat = Vec::new();
    let mut chan = Vec::new();
    let mut count = Vec::new();
    let mut numbers: Vec<Vec<f32>> = vec![Vec::new(); 4];
    for _ in 0..n {
        cat.push(categories[next(5) as usize]);
        chan.push(channels[next(3) as usize]);
        count.push(next(4) as i64);
        for (k, col) in numbers.iter_mut().enumerate() {
            col.push(match k {
                2 => next(2) as f32,
                _ => next(30_000) as f32 / 100.0,
            });
        }
    }
    let names = [
        "amount",
        "card_mean_amount_7days",
        "night",
        "card_merchant_count_7days",
    ];
    let mut fields = vec![
        Field::new("merchant_category", DataType::Utf8, false),
        Field::new("channel", DataType::Utf8, false),
        Field::new("card_count_1h", DataType::Int64, false),
    ];
    fields.extend(
        names
            .iter()
            .map(|c| Field::new(*c, DataType::Float32, false)),
    );
    let mut columns: Vec<arrow::array::ArrayRef> = vec![
        Arc::new(StringArray::from(cat)),
        Arc::new(StringArray::from(chan)),
        Arc::new(Int64Array::from(count)),
    ];
    columns.extend(
        numbers
            .into_iter()
            .map(|c| Arc::new(arrow::array::Float32Array::from(c)) as arrow::array::ArrayRef),
    );
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).expect("batch");
    for file in ["sklearn_pipeline.onnx", "lightgbm_categorical.onnx"] {
        let mut cfg = ModelConfig::new(format!("{example}{file}"));
        cfg.inputs = bind(&[
            ("merchant_category", &["merchant_category"]),
            ("channel", &["channel"]),
            ("card_count_1h", &["card_count_1h"]),
            ("amount", &["amount"]),
            ("card_mean_amount_7days", &["card_mean_amount_7days"]),
            ("night", &["night"]),
            ("card_merchant_count_7days", &["card_merchant_count_7days"]),
        ]);
        let mut scorer = Scorer::load(&cfg).expect("load");
        let all = scorer.score(&batch).expect("batch");
        for size in [1, 2] {
            let parts: Vec<f32> = (0..n)
                .step_by(size)
                .flat_map(|i| scorer.score(&batch.slice(i, size)).expect("part"))
                .collect();
            let differ = parts
                .iter()
                .zip(&all)
                .filter(|(a, b)| a.to_bits() != b.to_bits())
                .count();
            assert_eq!(
                differ, 0,
                "{file}: {differ} of {n} rows differ scored {size} at a time"
            );
        }
    }
}

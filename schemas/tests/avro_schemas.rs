//! The Avro schema files under `schemas/avro/` are exactly what [`riskpipe_schemas::avro`] makes
//! of the Arrow schemas. `RISKPIPE_BLESS=1` rewrites them after a deliberate schema change.

#[test]
fn avro_schema_files_are_the_arrow_schemas_in_avro() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("avro");
    let bless = std::env::var_os("RISKPIPE_BLESS").is_some();
    let mut stale = Vec::new();
    for (stem, name, arrow) in riskpipe_schemas::avro::events() {
        let schema =
            riskpipe_schemas::avro::schema(name, &arrow).expect("every event has an Avro form");
        let text = serde_json::to_string_pretty(&schema).expect("json") + "\n";
        let path = dir.join(format!("{stem}.avsc"));
        if bless {
            std::fs::create_dir_all(&dir).expect("dir");
            std::fs::write(&path, &text).expect("write");
            continue;
        }
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        if on_disk != text {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "stale Avro schemas (rewrite with RISKPIPE_BLESS=1 cargo test -p riskpipe-schemas --test avro_schemas): {stale:?}"
    );
}

#[test]
fn types_without_an_avro_form_are_named() {
    use arrow::datatypes::{DataType, Field, Schema};
    let arrow = std::sync::Arc::new(Schema::new(vec![Field::new("X", DataType::UInt8, false)]));
    let e = riskpipe_schemas::avro::schema("X", &arrow).expect_err("no Avro form");
    assert!(e.contains("X") && e.contains("UInt8"), "{e}");
}

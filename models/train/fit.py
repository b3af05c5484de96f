"""Trains a fraud model from riskpipe's training-set export of any declared job, and writes it as
ONNX with its bindings and a metrics file. No data set's names are in here: the columns come from
the job's config and the export.

    riskpipe features --config job.toml --input history.parquet --output export.parquet
    python models/train/fit.py --config job.toml --export export.parquet --out model.onnx \
        --train-days 60 --valid-days 30 --test-days 30

The export holds each event's declared fields, every feature, LABEL (1 fraud, 0 genuine) and
LABEL_KNOWN_AT (when the label is known: the config's job.replay.label_delay after the event).

Time split, from the first event's day (or --start): training days, a gap of the label delay,
validation days, the gap again, test days. A row's label is used only once known
(LABEL_KNOWN_AT): training rows known by validation's start, for choosing; training and
validation rows known by the test's start, for the final fit. Hyperparameters and the alert
threshold are chosen on the validation days only; the test days are scored once, at the end.

Inputs: every feature, every declared number, and every declared text field with at most
--max-categories distinct values in training (a LightGBM categorical feature); the event id and
time, the truth, the label columns, numbers the features group by (numeric ids) and text with
more values (ids) are left out, each named in the metrics file. --inputs names them instead,
--exclude leaves some out (e.g. merchant identity).

Model: LightGBM in a scikit-learn pipeline (text through an ordinal encoder, as LightGBM
categorical features; unknown values map to -1, LightGBM's missing), exported with skl2onnx and
onnxmltools' LightGBM converter, without ZipMap: one named input per column, bound by the
model's `riskpipe.inputs` metadata, so riskpipe needs no `[model.inputs]` for it.
"""

import argparse
import itertools
import json
import pathlib
import re
import sys
import time
import tomllib

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pyarrow.parquet as pq
from lightgbm import LGBMClassifier
from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm
from skl2onnx import to_onnx, update_registered_converter
from skl2onnx.common.data_types import FloatTensorType, StringTensorType
from skl2onnx.common.shape_calculator import calculate_linear_classifier_output_shapes
from sklearn.compose import ColumnTransformer
from sklearn.metrics import average_precision_score, precision_score, recall_score, roc_auc_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OrdinalEncoder

LABEL = "LABEL"
LABEL_KNOWN_AT = "LABEL_KNOWN_AT"
DAY_NS = 86_400 * 10**9
GRID = {
    "n_estimators": [100, 300],
    "num_leaves": [7, 31],
    "learning_rate": [0.05, 0.1],
    "min_child_samples": [20],
}


def humantime_seconds(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    total = 0.0
    for amount, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([smhdw])", text):
        total += float(amount) * units[unit]
    return total


def job_columns(config: dict) -> dict:
    """What the config says of the events: id, time, amount, entity, truth, text fields."""
    job = config["job"]
    events = job["events"]
    replay = job.get("replay", {})
    labels = job.get("labels", {})
    return {
        "id": events["id"],
        "time": events["time"]["field"],
        "amount": events.get("amount"),
        "entity": events.get("entity"),
        "truth": replay.get("label") or labels.get("label"),
    }


def load(export: pathlib.Path, time_column: str) -> pd.DataFrame:
    frame = pq.read_table(export).to_pandas()
    for c in (time_column, LABEL_KNOWN_AT):
        frame[c] = pd.to_datetime(frame[c], utc=True)
    return frame


def feature_keys(config: dict) -> set:
    """The declared fields the features group by (window and label-risk keys)."""
    features = config["job"].get("features", {})
    keys = set()
    for section in ("windows", "label_risk"):
        for f in features.get(section, []):
            key = f.get("key")
            keys.update(key if isinstance(key, list) else [key] if key else [])
    return keys


def choose_inputs(frame, train, cols, keys, args):
    reserved = {cols["id"], cols["time"], cols["truth"], LABEL, LABEL_KNOWN_AT}
    if args.inputs:
        names = args.inputs.split(",")
    else:
        names = [c for c in frame.columns if c not in reserved]
    excluded = set(args.exclude.split(",")) if args.exclude else set()
    numbers, texts, left_out = [], [], []
    for c in names:
        if c in excluded:
            left_out.append((c, "excluded by --exclude"))
            continue
        kind = frame[c].dtype
        numeric = pd.api.types.is_bool_dtype(kind) or pd.api.types.is_numeric_dtype(kind)
        if numeric and c in keys and not args.inputs:
            left_out.append((c, "a number the features group by: an identifier"))
        elif numeric:
            numbers.append(c)
        elif pd.api.types.is_string_dtype(kind) or kind == object:
            distinct = train[c].nunique()
            if args.inputs or distinct <= args.max_categories:
                texts.append(c)
            else:
                left_out.append((c, f"{distinct} distinct values in training (an id?)"))
        else:
            left_out.append((c, f"type {kind}"))
    return numbers, texts, left_out


def model(numbers, texts, params, seed):
    prepare = ColumnTransformer(
        [
            ("text", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1), texts),
            ("numbers", "passthrough", numbers),
        ]
    )
    classify = LGBMClassifier(
        random_state=seed, deterministic=True, n_jobs=1, verbose=-1, **params
    )
    return Pipeline([("prepare", prepare), ("classify", classify)])


def fit(pipe, x, y, texts):
    pipe.fit(x, y, classify__categorical_feature=list(range(len(texts))))
    return pipe


def frame_for(rows, numbers, texts):
    x = rows[texts + numbers].copy()
    for c in texts:
        x[c] = x[c].fillna("").astype(str)
    for c in numbers:
        x[c] = x[c].astype(np.float32)
    return x


def metrics(y, scores, threshold):
    alerts = scores >= threshold
    out = {"rows": int(len(y)), "frauds": int(y.sum())}
    if 0 < y.sum() < len(y):
        out["auc_roc"] = float(roc_auc_score(y, scores))
        out["average_precision"] = float(average_precision_score(y, scores))
    out["alerts"] = int(alerts.sum())
    out["precision_at_threshold"] = float(precision_score(y, alerts, zero_division=0))
    out["recall_at_threshold"] = float(recall_score(y, alerts, zero_division=0))
    return out


def best_threshold(y, scores):
    """The threshold of the largest F1 on these rows (ties: the higher threshold)."""
    best = (0.0, 0.5)
    for t in np.unique(np.round(scores, 4)):
        alerts = scores >= t
        tp = float((alerts & (y == 1)).sum())
        if tp == 0:
            continue
        p, r = tp / alerts.sum(), tp / max(y.sum(), 1)
        f1 = 2 * p * r / (p + r)
        if f1 > best[0] or (f1 == best[0] and t > best[1]):
            best = (f1, float(t))
    return best[1], best[0]


def export_onnx(pipe, numbers, texts, name):
    update_registered_converter(
        LGBMClassifier,
        "LightGbmLGBMClassifier",
        calculate_linear_classifier_output_shapes,
        convert_lightgbm,
        options={"nocl": [True, False], "zipmap": [True, False, "columns"]},
    )
    inputs = [(c, StringTensorType([None, 1])) for c in texts] + [
        (c, FloatTensorType([None, 1])) for c in numbers
    ]
    onx = to_onnx(
        pipe,
        initial_types=inputs,
        options={"zipmap": False},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    onx.ir_version = min(onx.ir_version, 9)
    bindings = {c: [c] for c in texts + numbers}
    onnx.helper.set_model_props(
        onx, {"riskpipe.inputs": json.dumps(bindings), "riskpipe.model": name}
    )
    onnx.checker.check_model(onx)
    return onx


def onnx_scores(onx, x, numbers, texts):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(onx.SerializeToString(), opts)
    feed = {c: x[[c]].to_numpy().astype(object) for c in texts}
    feed.update({c: x[[c]].to_numpy().astype(np.float32) for c in numbers})
    return session.run(["probabilities"], feed)[0][:, 1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", type=pathlib.Path, required=True)
    p.add_argument("--export", type=pathlib.Path, required=True)
    p.add_argument("--out", type=pathlib.Path, required=True, help="the .onnx written; its .metrics.json beside it")
    p.add_argument("--train-days", type=int, required=True)
    p.add_argument("--valid-days", type=int, required=True)
    p.add_argument("--test-days", type=int, required=True)
    p.add_argument("--start", help="first training day (YYYY-MM-DD; default: the first event's)")
    p.add_argument("--gap-days", type=int, help="days between training and validation, and between validation and test (default: the config's label delay)")
    p.add_argument("--inputs", help="comma-separated input columns (default: every feature and declared field but ids)")
    p.add_argument("--exclude", help="comma-separated columns left out of the inputs")
    p.add_argument("--max-categories", type=int, default=100)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--name", help="the model's name (default: the output file's stem)")
    p.add_argument("--validation-only", action="store_true", help="stop after the validation days: write OUT with the suffix .validation.json (inputs, search, validation metrics) and neither fit on nor score the test days; for comparing feature sets before one is tested once")
    args = p.parse_args()

    config = tomllib.loads(args.config.read_text())
    cols = job_columns(config)
    frame = load(args.export, cols["time"])
    day0 = (
        pd.Timestamp(args.start, tz="UTC")
        if args.start
        else frame[cols["time"]].min().normalize()
    )
    t = frame[cols["time"]]
    # Training, a gap of the label delay, validation, the gap again, test: the labels of the
    # days before a gap are known after it (a row whose label is still unknown is left out).
    delay = humantime_seconds(config["job"].get("replay", {}).get("label_delay", "7d"))
    gap = args.gap_days if args.gap_days is not None else int(np.ceil(delay / 86400))
    offsets = np.cumsum([0, args.train_days, gap, args.valid_days, gap, args.test_days])
    edges = [day0 + pd.Timedelta(days=int(d)) for d in offsets]
    train_all = frame[(t >= edges[0]) & (t < edges[1])]
    valid = frame[(t >= edges[2]) & (t < edges[3])]
    test = frame[(t >= edges[4]) & (t < edges[5])]
    # Labels as they were known: at validation's start to choose, at the test's start to refit.
    train = train_all[train_all[LABEL_KNOWN_AT] <= edges[2]]
    refit = frame[
        (((t >= edges[0]) & (t < edges[1])) | ((t >= edges[2]) & (t < edges[3])))
        & (frame[LABEL_KNOWN_AT] <= edges[4])
    ]
    if min(len(train), len(valid), len(test)) == 0 or train[LABEL].sum() == 0:
        print(f"empty split or no known fraud in training: train {len(train)}, valid {len(valid)}, test {len(test)}", file=sys.stderr)
        return 1
    numbers, texts, left_out = choose_inputs(frame, train, cols, feature_keys(config), args)
    x_train, x_valid = frame_for(train, numbers, texts), frame_for(valid, numbers, texts)
    y_train, y_valid = train[LABEL].to_numpy(), valid[LABEL].to_numpy()

    started = time.time()
    tried = []
    for values in itertools.product(*GRID.values()):
        params = dict(zip(GRID.keys(), values))
        pipe = fit(model(numbers, texts, params, args.seed), x_train, y_train, texts)
        scores = pipe.predict_proba(x_valid)[:, 1]
        ap = float(average_precision_score(y_valid, scores)) if y_valid.sum() else 0.0
        tried.append({"params": params, "validation_average_precision": ap})
    chosen = max(tried, key=lambda c: c["validation_average_precision"])["params"]
    chooser = fit(model(numbers, texts, chosen, args.seed), x_train, y_train, texts)
    valid_scores = chooser.predict_proba(x_valid)[:, 1]
    threshold, f1 = best_threshold(y_valid, valid_scores)
    if args.validation_only:
        report = {
            "model": args.name or args.out.stem,
            "export": str(args.export),
            "split": {"train": [str(edges[0].date()), str(edges[1].date())], "validation": [str(edges[2].date()), str(edges[3].date())], "gap_days": gap},
            "inputs": {"numbers": numbers, "text": texts, "left_out": [{"column": c, "why": w} for c, w in left_out]},
            "search": tried,
            "chosen": chosen,
            "threshold": {"value": threshold, "validation_f1": f1},
            "validation": metrics(y_valid, valid_scores, threshold),
            "seconds": round(time.time() - started, 1),
        }
        path = args.out.with_suffix(".validation.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")
        v = report["validation"]
        print(f"wrote {path}: validation AUC {v.get('auc_roc', float('nan')):.4f}, AP {v.get('average_precision', float('nan')):.4f} (test days untouched)")
        return 0

    final = fit(model(numbers, texts, chosen, args.seed), frame_for(refit, numbers, texts), refit[LABEL].to_numpy(), texts)
    x_test, y_test = frame_for(test, numbers, texts), test[LABEL].to_numpy()
    name = args.name or args.out.stem
    onx = export_onnx(final, numbers, texts, name)
    native = final.predict_proba(x_test)[:, 1]
    exported = onnx_scores(onx, x_test, numbers, texts)
    test_scores = exported
    baseline = None
    if cols["amount"] and cols["amount"] in test:
        amount = test[cols["amount"]].abs().to_numpy()
        if 0 < y_test.sum() < len(y_test):
            baseline = {
                "inputs": [f"|{cols['amount']}|"],
                "auc_roc": float(roc_auc_score(y_test, amount)),
                "average_precision": float(average_precision_score(y_test, amount)),
            }
    report = {
        "model": name,
        "export": str(args.export),
        "split": {
            "train": [str(edges[0].date()), str(edges[1].date())],
            "validation": [str(edges[2].date()), str(edges[3].date())],
            "test": [str(edges[4].date()), str(edges[5].date())],
            "gap_days": gap,
            "rows": {"train": int(len(train)), "train_labels_unknown": int(len(train_all) - len(train)), "validation": int(len(valid)), "refit": int(len(refit)), "test": int(len(test))},
        },
        "inputs": {"numbers": numbers, "text": texts, "left_out": [{"column": c, "why": w} for c, w in left_out]},
        "search": tried,
        "chosen": chosen,
        "threshold": {"value": threshold, "validation_f1": f1},
        "validation": metrics(y_valid, valid_scores, threshold),
        "test": metrics(y_test, test_scores, threshold),
        "baseline_test": baseline,
        "onnx_vs_native_max_abs_diff": float(np.max(np.abs(exported - native))) if len(native) else 0.0,
        "seconds": round(time.time() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(onx, args.out)
    metrics_path = args.out.with_suffix(".metrics.json")
    metrics_path.write_text(json.dumps(report, indent=2) + "\n")
    test_m = report["test"]
    print(f"wrote {args.out} and {metrics_path}: test AUC {test_m.get('auc_roc', float('nan')):.4f}, "
          f"AP {test_m.get('average_precision', float('nan')):.4f}, threshold {threshold:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

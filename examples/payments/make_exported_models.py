"""Writes two models as teams export them, with their preprocessing inside, for the payments
example's model bindings (docs/guides/models.md):

- sklearn_pipeline.onnx: a scikit-learn Pipeline (one-hot encoder over the raw merchant category
  and channel strings, a scaler over the numbers, a logistic regression), exported with skl2onnx
  without ZipMap: two string inputs, one int64 input and four float inputs, each named after its
  column;
- lightgbm_categorical.onnx: a scikit-learn Pipeline (ordinal encoder over the same strings,
  LightGBM with both as categorical features), exported with skl2onnx and onnxmltools' LightGBM
  converter: the same inputs.

Both are fitted on a simulated sample drawn here with a fixed seed (not on real payments: they
show bindings end to end; the training loop trains real models). Run with the packages of
models/train/requirements.txt:
    "$(models/train/venv.sh)" examples/payments/make_exported_models.py
"""
import pathlib

import numpy as np
import onnx
import pandas as pd
from lightgbm import LGBMClassifier
from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm
from skl2onnx import to_onnx, update_registered_converter
from skl2onnx.common.data_types import FloatTensorType, Int64TensorType, StringTensorType
from skl2onnx.common.shape_calculator import calculate_linear_classifier_output_shapes
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

HERE = pathlib.Path(__file__).parent
CATEGORIES = ["grocery", "travel", "electronics", "restaurants", "gaming"]
CHANNELS = ["pos", "online", "atm"]
TEXT = ["merchant_category", "channel"]
COUNTS = ["card_count_1h"]
NUMBERS = ["amount", "card_mean_amount_7days", "night", "card_merchant_count_7days"]


def sample(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Payments whose fraud odds rise with the amount, the card's last-hour count, night, online
    payments and the gaming and electronics categories."""
    r = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "merchant_category": r.choice(CATEGORIES, n),
            "channel": r.choice(CHANNELS, n),
            "card_count_1h": r.poisson(0.4, n).astype(np.int64),
            "amount": r.gamma(2.0, 40.0, n).astype(np.float32),
            "card_mean_amount_7days": r.gamma(2.0, 40.0, n).astype(np.float32),
            "night": (r.random(n) < 0.2).astype(np.float32),
            "card_merchant_count_7days": r.poisson(1.0, n).astype(np.float32),
        }
    )
    z = (
        -6.0
        + 0.012 * df["amount"]
        + 0.9 * df["card_count_1h"]
        + 1.2 * df["night"]
        + 1.5 * (df["channel"] == "online")
        + 1.3 * df["merchant_category"].isin(["gaming", "electronics"])
        - 0.2 * df["card_merchant_count_7days"]
    )
    y = (r.random(n) < 1.0 / (1.0 + np.exp(-z))).astype(np.int64)
    return df, y


def inputs():
    return (
        [(c, StringTensorType([None, 1])) for c in TEXT]
        + [(c, Int64TensorType([None, 1])) for c in COUNTS]
        + [(c, FloatTensorType([None, 1])) for c in NUMBERS]
    )


def save(model: onnx.ModelProto, name: str, title: str) -> None:
    model.ir_version = min(model.ir_version, 9)
    onnx.helper.set_model_props(model, {"riskpipe.model": title})
    onnx.checker.check_model(model)
    out = HERE / name
    onnx.save(model, out)
    print(f"wrote {out}")


def main() -> None:
    x, y = sample(20_000, seed=7)
    logistic = Pipeline(
        [
            (
                "prepare",
                ColumnTransformer(
                    [
                        ("text", OneHotEncoder(handle_unknown="ignore"), TEXT),
                        ("numbers", StandardScaler(), COUNTS + NUMBERS),
                    ]
                ),
            ),
            ("classify", LogisticRegression(max_iter=1000)),
        ]
    ).fit(x, y)
    save(
        to_onnx(logistic, initial_types=inputs(), options={"zipmap": False}, target_opset={"": 17, "ai.onnx.ml": 3}),
        "sklearn_pipeline.onnx",
        "payments_sklearn_pipeline",
    )

    update_registered_converter(
        LGBMClassifier,
        "LightGbmLGBMClassifier",
        calculate_linear_classifier_output_shapes,
        convert_lightgbm,
        options={"nocl": [True, False], "zipmap": [True, False, "columns"]},
    )
    gbm = Pipeline(
        [
            (
                "prepare",
                ColumnTransformer(
                    [
                        ("text", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1), TEXT),
                        ("numbers", "passthrough", COUNTS + NUMBERS),
                    ]
                ),
            ),
            (
                "classify",
                LGBMClassifier(
                    n_estimators=60,
                    num_leaves=15,
                    learning_rate=0.1,
                    random_state=7,
                    deterministic=True,
                    n_jobs=1,
                    verbose=-1,
                ),
            ),
        ]
    )
    gbm.fit(x, y, classify__categorical_feature=[0, 1])
    save(
        to_onnx(gbm, initial_types=inputs(), options={"zipmap": False}, target_opset={"": 17, "ai.onnx.ml": 3}),
        "lightgbm_categorical.onnx",
        "payments_lightgbm_categorical",
    )


if __name__ == "__main__":
    main()

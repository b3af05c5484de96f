"""Writes model.onnx: a small logistic model over the payments example's features, with fixed
weights chosen by hand (not trained: it shows the declared contract end to end; issue 34's
training loop trains real ones). Run with the `onnx` package (models/train/requirements.txt):
    python examples/payments/make_model.py
"""
import pathlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FEATURES = [
    "amount.value",
    "card_count_1h",
    "card_count_1day",
    "card_mean_amount_7days",
    "card_mean_amount_1h",
    "night",
    "card_merchant_count_7days",
]
WEIGHTS = [0.004, 1.2, 0.1, -0.002, 0.002, 1.0, -0.3]
BIAS = -5.0

x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, len(FEATURES)])
y = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 1])
w = numpy_helper.from_array(np.array(WEIGHTS, dtype=np.float32).reshape(-1, 1), "w")
b = numpy_helper.from_array(np.array([BIAS], dtype=np.float32), "b")
graph = helper.make_graph(
    [
        helper.make_node("MatMul", ["input", "w"], ["z0"]),
        helper.make_node("Add", ["z0", "b"], ["z"]),
        helper.make_node("Sigmoid", ["z"], ["probabilities"]),
    ],
    "payments_logistic",
    [x],
    [y],
    [w, b],
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
model.ir_version = 8
helper.set_model_props(
    model, {"riskpipe.features": ",".join(FEATURES), "riskpipe.model": "payments_logistic"}
)
onnx.checker.check_model(model)
out = pathlib.Path(__file__).with_name("model.onnx")
onnx.save(model, out)
print(f"wrote {out}")

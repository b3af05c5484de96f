"""Writes the tiny ONNX fixtures of the models tests (run with the python models/train/venv.sh prints).

logistic.onnx: one input `features` float[N, 2], output `probabilities` float[N, 2] where
column 1 = sigmoid(0.5 + 1.0 * a - 2.0 * b); metadata riskpipe.features = "a,b".
"""
import os

import numpy as np
import onnx
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.linear_model import LogisticRegression

here = os.path.dirname(os.path.abspath(__file__))
lr = LogisticRegression().fit(np.array([[0, 0], [1, 1], [2, 0], [0, 2]], dtype=np.float32), [0, 1, 1, 0])
lr.coef_ = np.array([[1.0, -2.0]])
lr.intercept_ = np.array([0.5])
onx = to_onnx(lr, initial_types=[("features", FloatTensorType([None, 2]))],
              options={id(lr): {"zipmap": False}}, target_opset=17)
onnx.helper.set_model_props(onx, {"riskpipe.features": "a,b", "riskpipe.model": "logistic-fixture"})
onnx.save(onx, os.path.join(here, "logistic.onnx"))

# identity.onnx: one input `features` float[N, 1], output `probabilities` float[N, 1] equal to it:
# a "model" whose answer is no probability for any input outside [0, 1] (the pipeline's tests of
# unfit model answers); metadata riskpipe.features = "TX_AMOUNT". Needs only onnx.
from onnx import TensorProto, helper

graph = helper.make_graph(
    [helper.make_node("Identity", ["features"], ["probabilities"])],
    "identity",
    [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, 1])],
    [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 1])],
)
identity = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
onnx.helper.set_model_props(identity, {"riskpipe.features": "TX_AMOUNT", "riskpipe.model": "identity-fixture"})
onnx.checker.check_model(identity)
onnx.save(identity, os.path.join(here, "identity.onnx"))

# zipmap.onnx: logistic.onnx's model exported with ZipMap (skl2onnx's default): its
# `output_probability` is a sequence of {class: probability} maps, which riskpipe refuses
# with a message saying how to export without it.
onx = to_onnx(lr, initial_types=[("features", FloatTensorType([None, 2]))], target_opset=17)
onnx.helper.set_model_props(onx, {"riskpipe.features": "a,b", "riskpipe.model": "zipmap-fixture"})
onnx.save(onx, os.path.join(here, "zipmap.onnx"))

# mixed.onnx: three named inputs of other types, output `score` double[N]:
#   score = x[:, 0] * 0.1 + x[:, 1] * 0.01 + n * 0.001 + (0.5 if kind == "risky" else 0)
# (opset 19: Equal over strings) with `x` double[N, 2], `n` int64[N, 1], `kind` string[N, 1]; no metadata (bound by config).
graph = helper.make_graph(
    [
        helper.make_node("MatMul", ["x", "w"], ["xw"]),
        helper.make_node("Cast", ["n"], ["nd"], to=TensorProto.DOUBLE),
        helper.make_node("Mul", ["nd", "wn"], ["nw"]),
        helper.make_node("Equal", ["kind", "risky"], ["is_risky"]),
        helper.make_node("Cast", ["is_risky"], ["risky_d"], to=TensorProto.DOUBLE),
        helper.make_node("Mul", ["risky_d", "half"], ["rw"]),
        helper.make_node("Add", ["xw", "nw"], ["s0"]),
        helper.make_node("Add", ["s0", "rw"], ["s1"]),
        helper.make_node("Reshape", ["s1", "flat"], ["score"]),
    ],
    "mixed",
    [
        helper.make_tensor_value_info("x", TensorProto.DOUBLE, [None, 2]),
        helper.make_tensor_value_info("n", TensorProto.INT64, [None, 1]),
        helper.make_tensor_value_info("kind", TensorProto.STRING, [None, 1]),
    ],
    [helper.make_tensor_value_info("score", TensorProto.DOUBLE, [None])],
    [
        onnx.numpy_helper.from_array(np.array([[0.1], [0.01]], dtype=np.float64), "w"),
        onnx.numpy_helper.from_array(np.array([[0.001]], dtype=np.float64), "wn"),
        onnx.numpy_helper.from_array(np.array(["risky"], dtype=object), "risky"),
        onnx.numpy_helper.from_array(np.array([0.5], dtype=np.float64), "half"),
        onnx.numpy_helper.from_array(np.array([-1], dtype=np.int64), "flat"),
    ],
)
mixed = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)
onnx.checker.check_model(mixed)
onnx.save(mixed, os.path.join(here, "mixed.onnx"))

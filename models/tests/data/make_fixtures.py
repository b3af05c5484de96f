"""Writes the tiny ONNX fixtures of the models tests (run with models/train/.venv/bin/python).

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

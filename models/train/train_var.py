"""Train riskpipe's 1-day VaR model on riskpipe's own market feature export; export it to ONNX.

Method: filtered historical simulation with a learned blend. riskpipe's series operators give,
for each day t and from data up to t only, the RiskMetrics volatility forecast sigma_t
(sqrt of EWMA_VAR, lambda 0.94) and rolling empirical quantiles of past standardized losses
z_s = -r_s / sigma_{s-1} (windows 250/500/1000, levels 99% and 99.5%). The model predicts the
next day's loss quantile as

    VaR_t = sigma_t * (beta . Q_t)

where beta comes from a linear quantile regression (pinball loss at the VaR confidence, no
intercept) of z_{t+1} on Q_t. Training uses only the earlier period: candidate input sets are
fitted on 1999-2005 and compared on 2006-2008 by pinball loss; the chosen set is refitted on
1999-2008; 2009-2018 is never seen and is reported as out-of-sample. The first 250 days are
warm-up (no forecast is trained on or evaluated before day 250).
"""

import argparse
import datetime as dt
import json

import numpy as np
import onnx
import onnxruntime as ort
import pyarrow.parquet as pq
from onnx import TensorProto, helper
from scipy.stats import chi2
from sklearn.linear_model import QuantileRegressor

CANDIDATES = [
    ["ZQ99_250"],
    ["ZQ99_500"],
    ["ZQ99_1000"],
    ["ZQ995_500"],
    ["ZQ99_500", "ZQ995_500"],
    ["ZQ99_250", "ZQ99_500", "ZQ99_1000"],
    ["ZQ99_250", "ZQ995_250", "ZQ99_1000", "ZQ995_1000"],
    ["ZQ99_250", "ZQ99_500", "ZQ99_1000", "ZQ995_250", "ZQ995_500", "ZQ995_1000"],
]
WARMUP = 250
VALIDATION_FROM = dt.date(2006, 1, 1)
TEST_FROM = dt.date(2009, 1, 1)


def pinball(y, pred, q):
    d = y - pred
    return float(np.mean(np.maximum(q * d, (q - 1) * d)))


def var_stats(hits, confidence):
    """Exceedances, Kupiec LR and p, share of rolling 250-day windows in the green zone."""
    hits = np.asarray(hits, dtype=int)
    t, x, p = len(hits), int(hits.sum()), 1 - confidence
    phat = x / t
    ll0 = (t - x) * np.log(1 - p) + x * np.log(p)
    ll1 = (t - x) * np.log(1 - phat) + (x * np.log(phat) if x else 0.0)
    lr = -2 * (ll0 - ll1)
    wins = np.convolve(hits, np.ones(250, dtype=int), "valid")
    return {
        "observations": t,
        "exceedances": x,
        "rate": phat,
        "kupiec_lr": float(lr),
        "kupiec_p": float(chi2.sf(lr, 1)),
        "green_share": float(np.mean(wins <= 4)) if len(wins) else None,
    }


def fit(X, y, q):
    m = QuantileRegressor(quantile=q, alpha=0.0, fit_intercept=False, solver="highs")
    return m.fit(X, y).coef_


def export(path, inputs, beta, name):
    """ONNX graph: x[:, 0] is EWMA_VAR, x[:, 1:] the quantile inputs; var = sqrt(x0) * (x1: . beta)."""
    k = len(beta)
    graph = helper.make_graph(
        [
            helper.make_node("Slice", ["x", "s0", "e0", "axis"], ["variance"]),
            helper.make_node("Sqrt", ["variance"], ["sigma"]),
            helper.make_node("Slice", ["x", "s1", "e1", "axis"], ["q"]),
            helper.make_node("MatMul", ["q", "beta"], ["multiple"]),
            helper.make_node("Mul", ["sigma", "multiple"], ["var2d"]),
            helper.make_node("Reshape", ["var2d", "flat"], ["var"]),
        ],
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1 + k])],
        [helper.make_tensor_value_info("var", TensorProto.FLOAT, [None])],
        [
            helper.make_tensor("s0", TensorProto.INT64, [1], [0]),
            helper.make_tensor("e0", TensorProto.INT64, [1], [1]),
            helper.make_tensor("s1", TensorProto.INT64, [1], [1]),
            helper.make_tensor("e1", TensorProto.INT64, [1], [1 + k]),
            helper.make_tensor("axis", TensorProto.INT64, [1], [1]),
            helper.make_tensor("beta", TensorProto.FLOAT, [k, 1], [float(b) for b in beta]),
            helper.make_tensor("flat", TensorProto.INT64, [1], [-1]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="riskpipe")
    model.ir_version = 8
    helper.set_model_props(model, {"riskpipe.features": ",".join(inputs), "riskpipe.model": name})
    onnx.checker.check_model(model)
    onnx.save(model, path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--features", required=True, help="riskpipe features export (Parquet)")
    ap.add_argument("--out", required=True, help="directory for var_nasdaq.onnx and its metrics")
    ap.add_argument("--confidence", type=float, default=0.99)
    args = ap.parse_args()
    q = args.confidence

    t = pq.read_table(args.features)
    ns = t["TIME"].cast("int64").to_numpy()
    dates = np.array([dt.date(1970, 1, 1) + dt.timedelta(days=int(x // 86_400_000_000_000)) for x in ns])
    col = lambda c: t[c].to_numpy(zero_copy_only=False).astype(np.float64)
    sigma = np.sqrt(col("EWMA_VAR"))
    z = col("Z_LOSS")
    r = col("LOG_RETURN")
    n = len(z)
    # Row t forecasts the loss of row t+1: target z_{t+1}, realized loss -r_{t+1}.
    target = np.full(n, np.nan)
    target[:-1] = z[1:]
    loss = np.full(n, np.nan)
    loss[:-1] = -r[1:]
    next_date = np.empty(n, dtype=object)
    next_date[:-1] = dates[1:]
    next_date[-1] = dt.date.max
    rows = np.arange(n)
    usable = (rows >= WARMUP) & ~np.isnan(target)

    def period(lo, hi):
        return usable & np.array([lo <= d < hi for d in next_date])

    train = period(dt.date.min, VALIDATION_FROM)
    valid = period(VALIDATION_FROM, TEST_FROM)
    early = period(dt.date.min, TEST_FROM)
    test = period(TEST_FROM, dt.date.max)

    results = []
    for cand in CANDIDATES:
        Q = np.column_stack([col(c) for c in cand])
        ok = ~np.isnan(Q).any(axis=1)
        beta = fit(Q[train & ok], target[train & ok], q)
        pred = Q @ beta
        results.append({
            "inputs": cand,
            "beta": beta.tolist(),
            "validation_pinball": pinball(target[valid & ok], pred[valid & ok], q),
            "validation_rate": float(np.mean(target[valid & ok] > pred[valid & ok])),
        })
        print(f"{cand}: validation pinball {results[-1]['validation_pinball']:.5f}, "
              f"exceedance rate {100 * results[-1]['validation_rate']:.2f}%")
    best = min(results, key=lambda r: r["validation_pinball"])
    inputs = best["inputs"]
    Q = np.column_stack([col(c) for c in inputs])
    ok = ~np.isnan(Q).any(axis=1) & ~np.isnan(sigma)
    beta = fit(Q[early & ok], target[early & ok], q)
    print(f"chosen {inputs}; refitted on 1999-2008: beta = {np.round(beta, 4).tolist()}")

    var = sigma * (Q @ beta)
    name = "var_qr_fhs"
    path = f"{args.out}/var_nasdaq.onnx"
    export(path, ["EWMA_VAR"] + inputs, beta, name)
    # The exported graph must reproduce the numpy forecast (float32 tolerance).
    X = np.column_stack([col("EWMA_VAR")] + [col(c) for c in inputs]).astype(np.float32)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = sess.run(["var"], {"x": X[ok]})[0]
    assert np.allclose(got, var[ok], rtol=1e-5, atol=1e-7), "ONNX export differs from numpy"

    def stats(mask):
        m = mask & ok
        return var_stats(loss[m] > var[m], q)

    metrics = {
        "model": name,
        "method": "linear quantile regression (pinball, no intercept) of the next day's standardized "
                  "loss on rolling empirical quantiles of past standardized losses, times the EWMA "
                  "(lambda 0.94) volatility forecast",
        "confidence": q,
        "inputs": ["EWMA_VAR"] + inputs,
        "beta": beta.tolist(),
        "train": "forecasts for 1999-12-31 .. 2008-12-31 (after the 250-day warm-up)",
        "selection": {"fit": "1999-2005", "validate": "2006-2008", "candidates": results},
        "in_sample_1999_2008": stats(early),
        "out_of_sample_2009_2018": stats(test),
        "all_after_warmup": stats(usable),
    }
    with open(f"{args.out}/var_nasdaq.metrics.json", "w") as f:
        json.dump(metrics, f, indent=2)
    for k in ("in_sample_1999_2008", "out_of_sample_2009_2018", "all_after_warmup"):
        s = metrics[k]
        print(f"{k}: {s['exceedances']}/{s['observations']} = {100 * s['rate']:.2f}%, "
              f"Kupiec p {s['kupiec_p']:.3f}, green {100 * s['green_share']:.1f}%")


if __name__ == "__main__":
    main()

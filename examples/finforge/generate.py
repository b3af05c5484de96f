"""Generates the finforge example's data set: synthetic personal-finance transactions from
finforge 3.0.0 (PyPI; not written here), fraud injected as its scenarios, with the columns that
give the label away left out.

    python examples/finforge/generate.py [--out DIR] [--check]

Writes DIR/transactions.parquet (default DIR: $RISKPIPE_CACHE/finforge, else
~/.cache/riskpipe/finforge) and prints the SHA-256 of the rows (a canonical CSV of them); --check
fails unless it equals examples/finforge/transactions.sha256, so a drift in generation (another
package version, another seed) fails loudly. Run it with the pinned packages of
examples/finforge/requirements.txt (examples/finforge/generate.sh makes that venv).

What is generated: one finforge run per persona (finforge simulates one persona per run), each
with its own seed, 6 months from 2026-01-01, fraud at finforge's rate 0.03 (card-fraud bursts,
account takeovers, mule accounts, refund abuse, invoice fraud, as each persona allows).

What is kept, per transaction: `transaction_id` and `user_id` (neutral: hashes of finforge's,
whose fraud ids read `fraud_txn_...`), `timestamp` (epoch milliseconds, UTC), `merchant`,
`category`, `amount` (signed: credits positive), `transaction_type` (debit / credit),
`balance_before`, `balance_after`, and the truth `is_fraud`. Dropped, and why:
- `spending_style` (`fraud_injected` on every fraud row), `savings_tendency` and
  `merchant_loyalty` (0 on every fraud row), `impulse_buying_score`, `lifestyle_score` and
  `night_activity_score` (user traits finforge overwrites on fraud rows), `is_recurring`,
  `is_subscription`, `is_discretionary`, `recurrence_type`, `income_source`, `expense_nature`,
  `cashflow_type` (set by the fraud scenario itself, with values normal rows never have),
  `session_id` (fraud rows carry none, in a representation of their own);
- `fraud_*`, `risk_*`, `anomaly_*`: they describe the fraud;
- `persona`, `day_type`, `balance_state`, `is_overdraft`, `overdraft_amount`,
  `business_context`, `account_type`, `is_business_*`, `is_tax_related`, `is_vendor_payment`,
  `is_payroll`, `seasonal_factor`: a payment stream does not carry them (simulation
  parameters or labels derived from the simulation), and several are constant on fraud rows.
"""
import argparse
import hashlib
import os
import pathlib
import sys

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from finforge import DatasetGenerator

HERE = pathlib.Path(__file__).parent
PERSONAS = ["student", "salaried", "freelancer", "business_owner", "household", "retired"]
USERS = 150
MONTHS = 6
FRAUD_RATE = 0.03
SEED = 20260101
KEPT = [
    "transaction_id",
    "user_id",
    "timestamp",
    "merchant",
    "category",
    "amount",
    "transaction_type",
    "balance_before",
    "balance_after",
    "is_fraud",
]


def neutral(prefix: str, persona: str, value: str) -> str:
    return prefix + hashlib.sha256(f"{persona}/{value}".encode()).hexdigest()[:16]


def generate() -> pd.DataFrame:
    parts = []
    for i, persona in enumerate(PERSONAS):
        df = (
            DatasetGenerator(seed=SEED + i, start_date="2026-01-01")
            .with_persona(persona)
            .with_users(USERS)
            .for_months(MONTHS)
            .with_fraud(rate=FRAUD_RATE)
            .generate()
        )
        df["transaction_id"] = [neutral("t", persona, v) for v in df["transaction_id"]]
        df["user_id"] = [neutral("u", persona, v) for v in df["user_id"]]
        parts.append(df[KEPT])
    rows = pd.concat(parts, ignore_index=True)
    rows["timestamp"] = (
        pd.to_datetime(rows["timestamp"]).dt.tz_localize("UTC").astype("datetime64[ms, UTC]")
    )
    # One history in time order (ties by id), as a stream would deliver it.
    return rows.sort_values(["timestamp", "transaction_id"], kind="stable").reset_index(drop=True)


def digest(rows: pd.DataFrame) -> str:
    canonical = rows.assign(timestamp=rows["timestamp"].astype("int64")).to_csv(
        index=False, float_format="%.17g", lineterminator="\n"
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def main() -> int:
    default = pathlib.Path(
        os.environ.get("RISKPIPE_CACHE", pathlib.Path.home() / ".cache" / "riskpipe")
    ) / "finforge"
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=pathlib.Path, default=default)
    parser.add_argument("--check", action="store_true", help="fail unless the rows' checksum is the committed one")
    args = parser.parse_args()
    rows = generate()
    sha = digest(rows)
    expected = (HERE / "transactions.sha256").read_text().split()[0]
    if args.check and sha != expected:
        print(f"finforge generation drifted: rows {sha}, committed {expected}", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(
        rows.assign(timestamp=rows["timestamp"].astype("int64")), preserve_index=False
    )
    path = args.out / "transactions.parquet"
    pq.write_table(table, path)
    frauds = int(rows["is_fraud"].sum())
    print(f"{path}: {len(rows)} transactions, {frauds} frauds, {rows['user_id'].nunique()} users; rows sha256 {sha}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

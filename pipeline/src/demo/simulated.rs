//! A simulated card-payment history shaped like the handbook's, generated from a seed: what the
//! demo scores when no history file is given, and what `riskpipe simulate` writes.
//!
//! The simulator follows the one the Fraud Detection Handbook describes (chapter 3, "Transaction
//! data simulator"): customers and terminals on a 100 × 100 grid, each customer paying at the
//! terminals within radius 5 of it, a Poisson number of payments a day around noon with a
//! normally distributed amount, and three fraud scenarios (amounts over 220; two terminals a day
//! compromised for 28 days; three customers a day compromised for 14 days, a third of their
//! payments five times their amount). Its random draws come from one ChaCha8 stream per
//! purpose, so a seed gives the same draws on every platform (the normal and Poisson samplers'
//! floating point may still differ in the last digit elsewhere); the draws are not the
//! handbook's (NumPy's), so the rows differ from the published file while their distributions
//! match it (`tests/first_run.rs`: the shipped model finds its frauds and reports no drift on it).

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Float64Array, Int64Array, RecordBatch, TimestampNanosecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, Poisson};
use riskpipe_schemas::{label, tx};

use crate::{PipelineError, Result};

/// Seconds since the simulated history's start (a column of the handbook file).
pub const TX_TIME_SECONDS: &str = "TX_TIME_SECONDS";
/// Whole days since the start.
pub const TX_TIME_DAYS: &str = "TX_TIME_DAYS";
/// Which fraud scenario made a transaction a fraud (0: genuine).
pub const TX_FRAUD_SCENARIO: &str = "TX_FRAUD_SCENARIO";

const DAY_S: i64 = 86_400;
const GRID: f64 = 100.0;
const RADIUS: f64 = 5.0;

/// What to simulate; the default is the handbook's own size and period.
#[derive(Debug, Clone)]
pub struct Simulation {
    /// Customers (some have no terminal within reach and never pay).
    pub customers: usize,
    /// Terminals.
    pub terminals: usize,
    /// Days of payments.
    pub days: u32,
    /// The first day, as seconds since the Unix epoch (UTC midnight).
    pub start_s: i64,
    /// Seed of every draw.
    pub seed: u64,
}

impl Default for Simulation {
    fn default() -> Self {
        Self {
            customers: 5_000,
            terminals: 10_000,
            days: 183,
            // 2018-04-01T00:00:00Z, the handbook's first day.
            start_s: 1_522_540_800,
            seed: 0,
        }
    }
}

struct Customer {
    mean_amount: f64,
    tx_per_day: f64,
    terminals: Vec<i64>,
}

/// One simulated payment before ordering.
struct Payment {
    seconds: i64,
    customer: i64,
    terminal: i64,
    amount: f64,
    scenario: i64,
}

impl Simulation {
    /// A stream of draws for one purpose (`stream` tells them apart).
    fn rng(&self, stream: u64) -> ChaCha8Rng {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(stream);
        rng
    }

    fn customers(&self) -> Vec<Customer> {
        let mut rng = self.rng(1);
        let places: Vec<(f64, f64)> = (0..self.terminals)
            .map(|_| (rng.random_range(0.0..GRID), rng.random_range(0.0..GRID)))
            .collect();
        let mut rng = self.rng(2);
        (0..self.customers)
            .map(|_| {
                let (x, y) = (rng.random_range(0.0..GRID), rng.random_range(0.0..GRID));
                let mean_amount = rng.random_range(5.0..100.0);
                let tx_per_day = rng.random_range(0.0..4.0);
                let terminals = places
                    .iter()
                    .enumerate()
                    .filter(|(_, (tx_, ty))| (tx_ - x).hypot(ty - y) < RADIUS)
                    .map(|(i, _)| i as i64)
                    .collect();
                Customer {
                    mean_amount,
                    tx_per_day,
                    terminals,
                }
            })
            .collect()
    }

    /// Every payment of `customer`, from a stream of its own.
    fn payments(&self, id: usize, c: &Customer, out: &mut Vec<Payment>) -> Result<()> {
        if c.terminals.is_empty() || c.tx_per_day <= 0.0 {
            return Ok(());
        }
        let bad = |e: String| PipelineError::Bug(format!("simulating customer {id}: {e}"));
        let mut rng = self.rng(1_000 + id as u64);
        let count = Poisson::new(c.tx_per_day).map_err(|e| bad(e.to_string()))?;
        let time = Normal::new(DAY_S as f64 / 2.0, 20_000.0).map_err(|e| bad(e.to_string()))?;
        let amount =
            Normal::new(c.mean_amount, c.mean_amount / 2.0).map_err(|e| bad(e.to_string()))?;
        for day in 0..i64::from(self.days) {
            let n = count.sample(&mut rng) as u64;
            for _ in 0..n {
                let seconds = time.sample(&mut rng) as i64;
                if !(1..DAY_S).contains(&seconds) {
                    continue;
                }
                let mut a = amount.sample(&mut rng);
                if a < 0.0 {
                    a = rng.random_range(0.0..c.mean_amount * 2.0);
                }
                let Some(&terminal) = c.terminals.choose(&mut rng) else {
                    continue;
                };
                out.push(Payment {
                    seconds: day * DAY_S + seconds,
                    customer: id as i64,
                    terminal,
                    amount: (a * 100.0).round() / 100.0,
                    scenario: 0,
                });
            }
        }
        Ok(())
    }

    /// The three fraud scenarios, over payments in time order.
    fn add_frauds(&self, payments: &mut [Payment]) {
        for p in payments.iter_mut() {
            if p.amount > 220.0 {
                p.scenario = 1;
            }
        }
        let day_of = |p: &Payment| p.seconds.div_euclid(DAY_S);
        let mut by_terminal: HashMap<i64, Vec<usize>> = HashMap::new();
        let mut by_customer: HashMap<i64, Vec<usize>> = HashMap::new();
        for (i, p) in payments.iter().enumerate() {
            by_terminal.entry(p.terminal).or_default().push(i);
            by_customer.entry(p.customer).or_default().push(i);
        }
        let terminals: Vec<i64> = (0..self.terminals as i64).collect();
        let customers: Vec<i64> = (0..self.customers as i64).collect();
        let mut rng = self.rng(3);
        let last_day = payments.last().map_or(0, day_of);
        for day in 0..last_day {
            for t in terminals.choose_multiple(&mut rng, 2) {
                for &i in by_terminal.get(t).map_or(&[][..], Vec::as_slice) {
                    if (day..day + 28).contains(&day_of(&payments[i])) {
                        payments[i].scenario = 2;
                    }
                }
            }
            for c in customers.choose_multiple(&mut rng, 3) {
                let within: Vec<usize> = by_customer
                    .get(c)
                    .map_or(&[][..], Vec::as_slice)
                    .iter()
                    .copied()
                    .filter(|&i| (day..day + 14).contains(&day_of(&payments[i])))
                    .collect();
                for &i in within.choose_multiple(&mut rng, within.len() / 3) {
                    payments[i].amount *= 5.0;
                    payments[i].scenario = 3;
                }
            }
        }
    }

    /// The history: one row per payment in time order, with the handbook file's columns
    /// (`TRANSACTION_ID` numbering them in that order; `TX_DATETIME` a UTC timestamp without a
    /// zone, as in the file).
    pub fn transactions(&self) -> Result<RecordBatch> {
        let customers = self.customers();
        let mut payments = Vec::new();
        for (id, c) in customers.iter().enumerate() {
            self.payments(id, c, &mut payments)?;
        }
        // Stable: payments of one instant keep their customers' order.
        payments.sort_by_key(|p| p.seconds);
        self.add_frauds(&mut payments);
        let ns = |s: i64| (self.start_s + s) * 1_000_000_000;
        let int = |f: &dyn Fn(&Payment) -> i64| -> Arc<Int64Array> {
            Arc::new(Int64Array::from_iter_values(payments.iter().map(f)))
        };
        let schema = Arc::new(Schema::new(vec![
            Field::new(tx::TRANSACTION_ID, DataType::Int64, false),
            Field::new(
                tx::TX_DATETIME,
                DataType::Timestamp(TimeUnit::Nanosecond, None),
                false,
            ),
            Field::new(tx::CUSTOMER_ID, DataType::Int64, false),
            Field::new(tx::TERMINAL_ID, DataType::Int64, false),
            Field::new(tx::TX_AMOUNT, DataType::Float64, false),
            Field::new(TX_TIME_SECONDS, DataType::Int64, false),
            Field::new(TX_TIME_DAYS, DataType::Int64, false),
            Field::new(label::TX_FRAUD, DataType::Int64, false),
            Field::new(TX_FRAUD_SCENARIO, DataType::Int64, false),
        ]));
        Ok(RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values(0..payments.len() as i64)),
                Arc::new(TimestampNanosecondArray::from_iter_values(
                    payments.iter().map(|p| ns(p.seconds)),
                )),
                int(&|p| p.customer),
                int(&|p| p.terminal),
                Arc::new(Float64Array::from_iter_values(
                    payments.iter().map(|p| p.amount),
                )),
                int(&|p| p.seconds),
                int(&|p| p.seconds.div_euclid(DAY_S)),
                int(&|p| i64::from(p.scenario != 0)),
                int(&|p| p.scenario),
            ],
        )?)
    }

    /// The simulated transactions as a history of these features (labels derived as from a
    /// file).
    pub fn history(
        &self,
        fraud: &crate::jobs::fraud::FraudConfig,
    ) -> Result<crate::sources::history::History> {
        let (events, labels) = fraud.declarations()?;
        crate::sources::file::prepare(
            std::path::Path::new("simulated history"),
            self.transactions()?,
            crate::sources::file::Shape::new(&events, &labels, &fraud.features, &fraud.replay)?,
            None,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::AsArray;
    use arrow::datatypes::{Float64Type, Int64Type};

    fn small() -> Simulation {
        Simulation {
            customers: 500,
            terminals: 1_000,
            days: 60,
            ..Simulation::default()
        }
    }

    #[test]
    fn a_seed_gives_the_same_history_and_another_seed_another() {
        let a = small().transactions().expect("simulate");
        assert_eq!(a, small().transactions().expect("simulate"));
        let b = Simulation { seed: 7, ..small() }
            .transactions()
            .expect("simulate");
        assert_ne!(a.num_rows(), 0);
        assert_ne!(a, b);
    }

    #[test]
    fn the_history_has_the_handbooks_shape() {
        let t = Simulation::default().transactions().expect("simulate");
        let n = t.num_rows() as f64;
        // The handbook file: 1,754,155 transactions, 0.84 % frauds, amounts averaging 53.6.
        assert!((1.6e6..1.9e6).contains(&n), "{n} transactions");
        let fraud = t.column(7).as_primitive::<Int64Type>();
        let share = fraud.values().iter().sum::<i64>() as f64 / n;
        assert!((0.005..0.012).contains(&share), "fraud share {share}");
        let amount = t.column(4).as_primitive::<Float64Type>();
        let mean = amount.values().iter().sum::<f64>() / n;
        assert!((45.0..62.0).contains(&mean), "mean amount {mean}");
        let seconds = t.column(5).as_primitive::<Int64Type>();
        assert!(seconds.values().windows(2).all(|w| w[0] <= w[1]));
        let scenarios = t.column(8).as_primitive::<Int64Type>();
        for s in 1..=3 {
            assert!(scenarios.values().contains(&s), "no scenario {s} fraud");
        }
    }
}

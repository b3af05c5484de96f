//! The built-in aggregation kinds, one file each; each registers itself.

mod count;
mod decayed;
mod distinct;
mod first;
mod first_seen;
mod last;
mod last_k;
mod max;
mod mean;
mod min;
mod since_previous;
mod stddev;
mod sum;
mod variance;

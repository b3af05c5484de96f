//! The built-in aggregation kinds, one file each; each registers itself.

mod count;
mod first;
mod last;
mod max;
mod mean;
mod min;
mod since_previous;
mod stddev;
mod sum;
mod variance;

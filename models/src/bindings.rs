//! Model bindings: which columns feed which named input of an ONNX graph (as float, double,
//! int64 or string tensors), and which output holds the score.
//!
//! A binding is read from the config (`[model.inputs]`: input name → columns, in order), else
//! from the model's `riskpipe.inputs` metadata (the same map as JSON); a model with one input
//! may instead name its columns as `features` (config) or `riskpipe.features` (metadata), the
//! single float input the handbook's models take. Loading a model checks every binding against the
//! graph and returns every problem at once.

use std::collections::BTreeMap;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float32Type, Float64Type, Int64Type};
use ort::session::SessionInputValue;
use ort::value::{Outlet, Tensor, TensorElementType, ValueType};
use serde::Deserialize;

use crate::{ModelError, Result};

/// Metadata key holding a model's bindings: a JSON object, input name → list of columns.
pub const INPUTS_METADATA_KEY: &str = "riskpipe.inputs";

/// The element types riskpipe feeds a model input with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Element {
    /// 32-bit float (`tensor(float)`).
    Float,
    /// 64-bit float (`tensor(double)`).
    Double,
    /// 64-bit integer (`tensor(int64)`).
    Int64,
    /// UTF-8 text (`tensor(string)`).
    String,
}

impl Element {
    fn of(t: &TensorElementType) -> Option<Self> {
        match t {
            TensorElementType::Float32 => Some(Self::Float),
            TensorElementType::Float64 => Some(Self::Double),
            TensorElementType::Int64 => Some(Self::Int64),
            TensorElementType::String => Some(Self::String),
            _ => None,
        }
    }

    /// Its ONNX name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Float => "float",
            Self::Double => "double",
            Self::Int64 => "int64",
            Self::String => "string",
        }
    }

    /// The Arrow type a column is cast to before it feeds an input of this type.
    pub fn arrow(self) -> DataType {
        match self {
            Self::Float => DataType::Float32,
            Self::Double => DataType::Float64,
            Self::Int64 => DataType::Int64,
            Self::String => DataType::Utf8,
        }
    }

    /// Whether it is text (a category), not a number.
    pub fn is_text(self) -> bool {
        self == Self::String
    }

    /// The type one column takes when two inputs (of an ensemble's members) read it as `self`
    /// and `other`: the wider number; `None` when one reads text and the other a number.
    pub fn merge(self, other: Self) -> Option<Self> {
        use Element::*;
        match (self, other) {
            (a, b) if a == b => Some(a),
            (String, _) | (_, String) => None,
            _ => Some(Double),
        }
    }
}

/// One column a model reads and the type it reads it as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputColumn {
    /// The column (a declared field or a feature).
    pub name: String,
    /// How the model reads it.
    pub element: Element,
}

/// The columns bound to one input: one name, or several in order.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum BoundColumns {
    /// One column.
    One(String),
    /// Several columns, in the order the input takes them.
    Many(Vec<String>),
}

impl BoundColumns {
    /// The column names, in order.
    pub fn names(&self) -> &[String] {
        match self {
            Self::One(c) => std::slice::from_ref(c),
            Self::Many(c) => c,
        }
    }
}

/// One graph input as bound: its columns are indices into the scorer's [`InputColumn`]s.
#[derive(Debug, Clone)]
pub(crate) struct TensorBinding {
    pub(crate) name: String,
    pub(crate) element: Element,
    pub(crate) columns: Vec<usize>,
    /// `[N]` (one column) rather than `[N, k]`.
    pub(crate) rank1: bool,
}

/// The picked output and how its scores are read.
#[derive(Debug, Clone)]
pub(crate) struct OutputPick {
    pub(crate) name: String,
    pub(crate) double: bool,
}

/// Bindings checked against a graph.
#[derive(Debug, Clone)]
pub(crate) struct Resolved {
    pub(crate) tensors: Vec<TensorBinding>,
    pub(crate) columns: Vec<InputColumn>,
    pub(crate) output: OutputPick,
}

/// Where a model's columns are named.
#[derive(Debug, Clone)]
pub(crate) enum Naming {
    /// `input name → columns`.
    Inputs(BTreeMap<String, BoundColumns>),
    /// The columns of the one input.
    Features(Vec<String>),
}

/// `[N,3]`-style shape of an outlet's dimensions (`N` for a dynamic one).
fn shape_text(dims: &[i64]) -> String {
    let d: Vec<String> = dims
        .iter()
        .enumerate()
        .map(|(i, &d)| match (i, d) {
            (0, d) if d < 0 => "N".to_string(),
            (_, d) if d < 0 => "?".to_string(),
            (_, d) => d.to_string(),
        })
        .collect();
    format!("[{}]", d.join(","))
}

/// How an outlet reads in a message: `name (string [N,1])`.
pub(crate) fn describe(outlet: &Outlet) -> String {
    format!("{} ({})", outlet.name(), type_text(outlet.dtype()))
}

fn type_text(t: &ValueType) -> String {
    match t {
        ValueType::Tensor { ty, shape, .. } => {
            let ty = Element::of(ty).map_or_else(|| format!("{ty}"), |e| e.name().to_string());
            format!("{ty} {}", shape_text(shape))
        }
        ValueType::Sequence(inner) if matches!(inner.as_ref(), ValueType::Map { .. }) => {
            format!("a sequence of maps, {}", type_text(inner))
        }
        ValueType::Sequence(inner) => format!("a sequence of {}", type_text(inner)),
        ValueType::Map { key, value } => format!("map {key} -> {value}"),
        ValueType::Optional(inner) => format!("optional {}", type_text(inner)),
    }
}

/// Checks `naming` against the graph's `inputs` and picks `output` among its `outputs`: every
/// problem at once, with the columns whose bindings did fit (so that they can be checked too).
pub(crate) fn resolve(
    inputs: &[Outlet],
    outputs: &[Outlet],
    naming: &Naming,
    output: &str,
) -> std::result::Result<Resolved, (Vec<String>, Vec<InputColumn>)> {
    let mut problems = Vec::new();
    let all_inputs = || inputs.iter().map(describe).collect::<Vec<_>>().join(", ");
    let bound: BTreeMap<&str, &[String]> = match naming {
        Naming::Inputs(map) => {
            for name in map.keys() {
                if !inputs.iter().any(|i| i.name() == name) {
                    problems.push(format!(
                        "[model.inputs] binds {name:?}, which the model has no input of (its inputs: {})",
                        all_inputs()
                    ));
                }
            }
            map.iter().map(|(k, v)| (k.as_str(), v.names())).collect()
        }
        Naming::Features(columns) => match inputs {
            [one] => [(one.name(), columns.as_slice())].into_iter().collect(),
            _ => {
                problems.push(format!(
                    "the model has {} inputs ({}): bind each to its columns under [model.inputs] (`features` names the columns of a model with one input)",
                    inputs.len(),
                    all_inputs()
                ));
                BTreeMap::new()
            }
        },
    };
    let mut columns: Vec<InputColumn> = Vec::new();
    let mut tensors = Vec::new();
    for input in inputs {
        let Some(names) = bound.get(input.name()) else {
            if matches!(naming, Naming::Inputs(_)) {
                problems.push(format!(
                    "input {} is bound to no column: add `{} = [...]` under [model.inputs]",
                    describe(input),
                    input.name()
                ));
            }
            continue;
        };
        let ValueType::Tensor { ty, shape, .. } = input.dtype() else {
            problems.push(format!(
                "input {} is no tensor: riskpipe feeds float, double, int64 and string tensors",
                describe(input)
            ));
            continue;
        };
        let Some(element) = Element::of(ty) else {
            problems.push(format!(
                "input {} takes {ty} elements: riskpipe feeds float, double, int64 and string tensors",
                describe(input)
            ));
            continue;
        };
        if names.is_empty() {
            problems.push(format!(
                "input {} is bound to an empty list of columns",
                describe(input)
            ));
            continue;
        }
        let rank1 = match shape.len() {
            1 if names.len() == 1 => true,
            1 => {
                problems.push(format!(
                    "input {} takes one value per row, but {} columns are bound: {}",
                    describe(input),
                    names.len(),
                    names.join(", ")
                ));
                continue;
            }
            2 if shape[1] > 0 && shape[1] as usize != names.len() => {
                problems.push(format!(
                    "input {} takes {} columns, but {} are bound: {}",
                    describe(input),
                    shape[1],
                    names.len(),
                    names.join(", ")
                ));
                continue;
            }
            2 => false,
            _ => {
                problems.push(format!(
                    "input {} is not [N] or [N,k]: riskpipe feeds one row per event",
                    describe(input)
                ));
                continue;
            }
        };
        if shape[0] > 1 {
            problems.push(format!(
                "input {} takes a fixed {} rows: export it with a dynamic first dimension",
                describe(input),
                shape[0]
            ));
        }
        let mut indices = Vec::with_capacity(names.len());
        for name in names.iter() {
            match columns.iter().position(|c| &c.name == name) {
                Some(i) if columns[i].element == element => indices.push(i),
                Some(i) => problems.push(format!(
                    "column {name:?} is bound as {} and as {} (input {})",
                    columns[i].element.name(),
                    element.name(),
                    input.name()
                )),
                None => {
                    columns.push(InputColumn {
                        name: name.clone(),
                        element,
                    });
                    indices.push(columns.len() - 1);
                }
            }
        }
        tensors.push(TensorBinding {
            name: input.name().to_string(),
            element,
            columns: indices,
            rank1,
        });
    }
    let output = pick_output(outputs, output).map_err(|p| problems.push(p));
    match output {
        Ok(output) if problems.is_empty() => Ok(Resolved {
            tensors,
            columns,
            output,
        }),
        _ => Err((problems, columns)),
    }
}

fn pick_output(outputs: &[Outlet], name: &str) -> std::result::Result<OutputPick, String> {
    let Some(out) = outputs.iter().find(|o| o.name() == name) else {
        return Err(format!(
            "the model has no output {name:?} (its outputs: {}): set `output` to the one holding the probability of fraud",
            outputs.iter().map(describe).collect::<Vec<_>>().join(", ")
        ));
    };
    let accepted = "riskpipe takes a float or double tensor [N], [N,1] or [N,2] (class probabilities; column 1 is the score)";
    match out.dtype() {
        ValueType::Sequence(inner) if matches!(inner.as_ref(), ValueType::Map { .. }) => {
            Err(format!(
                "output {} is a ZipMap (one {{class: probability}} map per row): export the model without it, \
             skl2onnx: `to_onnx(model, ..., options={{\"zipmap\": False}})`, onnxmltools: \
             `convert_lightgbm(model, ..., zipmap=False)`; its probabilities are then a [N,2] tensor",
                describe(out)
            ))
        }
        ValueType::Tensor { ty, shape, .. } => {
            let double = match ty {
                TensorElementType::Float32 => false,
                TensorElementType::Float64 => true,
                _ => {
                    return Err(format!(
                        "output {} holds {} values (class labels?): {accepted}",
                        describe(out),
                        Element::of(ty).map_or_else(|| format!("{ty}"), |e| e.name().into())
                    ));
                }
            };
            match &shape[..] {
                [_] | [_, -1 | 1 | 2] => Ok(OutputPick {
                    name: name.to_string(),
                    double,
                }),
                _ => Err(format!("output {} does not fit: {accepted}", describe(out))),
            }
        }
        _ => Err(format!("output {} is no tensor: {accepted}", describe(out))),
    }
}

/// The model input values of one batch: one column per model column, each cast to the type the
/// model reads it as, no nulls.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// Columns, in the model's column order.
    pub columns: Vec<ArrayRef>,
    /// Rows.
    pub rows: usize,
}

impl Inputs {
    /// Reads `columns` of `batch`, each cast to its element type. A missing column, a null, a
    /// number where text is read or text where a number is read is bad input.
    pub fn read(columns: &[InputColumn], batch: &arrow::array::RecordBatch) -> Result<Self> {
        let mut out = Vec::with_capacity(columns.len());
        for c in columns {
            let name = &c.name;
            let col = batch.column_by_name(name).ok_or_else(|| {
                ModelError::BadInput(format!("missing model input column {name:?}"))
            })?;
            if col.null_count() > 0 {
                return Err(ModelError::BadInput(format!(
                    "model input column {name:?} has nulls"
                )));
            }
            let text = matches!(
                col.data_type(),
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
            );
            let fits = match c.element {
                Element::String => text,
                _ => col.data_type().is_numeric(),
            };
            if !fits {
                return Err(ModelError::BadInput(format!(
                    "model input column {name:?} is {}, the model reads it as {}",
                    col.data_type(),
                    c.element.name()
                )));
            }
            let target = c.element.arrow();
            let cast_col = if col.data_type() == &target {
                col.clone()
            } else {
                cast(col, &target)
                    .map_err(|e| ModelError::BadInput(format!("model input {name:?}: {e}")))?
            };
            out.push(cast_col);
        }
        Ok(Self {
            columns: out,
            rows: batch.num_rows(),
        })
    }

    /// The rows at `indices`, in that order.
    pub fn take(&self, indices: &[u32]) -> Result<Self> {
        let idx = arrow::array::UInt32Array::from(indices.to_vec());
        let columns = self
            .columns
            .iter()
            .map(|c| arrow::compute::take(c.as_ref(), &idx, None))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| ModelError::BadInput(e.to_string()))?;
        Ok(Self {
            columns,
            rows: indices.len(),
        })
    }

    /// Row `row` of column `column` as a number, `None` for text.
    pub fn number(&self, column: usize, row: usize) -> Option<f64> {
        let c = self.columns.get(column)?;
        match c.data_type() {
            DataType::Float32 => Some(f64::from(c.as_primitive::<Float32Type>().value(row))),
            DataType::Float64 => Some(c.as_primitive::<Float64Type>().value(row)),
            DataType::Int64 => Some(c.as_primitive::<Int64Type>().value(row) as f64),
            _ => None,
        }
    }

    /// Row `row` of column `column` as text, `None` for a number.
    pub fn text(&self, column: usize, row: usize) -> Option<&str> {
        let c = self.columns.get(column)?;
        (c.data_type() == &DataType::Utf8).then(|| c.as_string::<i32>().value(row))
    }
}

/// The tensor an input takes from its `columns` (already of its element type), `rows` rows.
pub(crate) fn tensor(
    binding: &TensorBinding,
    columns: &[&ArrayRef],
    rows: usize,
) -> Result<SessionInputValue<'static>> {
    let width = columns.len();
    let shape: Vec<usize> = if binding.rank1 {
        vec![rows]
    } else {
        vec![rows, width]
    };
    fn row_major<T: Copy + Default>(columns: &[&[T]], rows: usize) -> Vec<T> {
        let width = columns.len();
        let mut out = vec![T::default(); rows * width];
        for (j, col) in columns.iter().enumerate() {
            for (i, v) in col.iter().take(rows).enumerate() {
                out[i * width + j] = *v;
            }
        }
        out
    }
    let value: SessionInputValue<'static> = match binding.element {
        Element::Float => {
            let cols: Vec<&[f32]> = columns
                .iter()
                .map(|c| c.as_primitive::<Float32Type>().values().as_ref())
                .collect();
            Tensor::from_array((shape, row_major(&cols, rows)))?.into()
        }
        Element::Double => {
            let cols: Vec<&[f64]> = columns
                .iter()
                .map(|c| c.as_primitive::<Float64Type>().values().as_ref())
                .collect();
            Tensor::from_array((shape, row_major(&cols, rows)))?.into()
        }
        Element::Int64 => {
            let cols: Vec<&[i64]> = columns
                .iter()
                .map(|c| c.as_primitive::<Int64Type>().values().as_ref())
                .collect();
            Tensor::from_array((shape, row_major(&cols, rows)))?.into()
        }
        Element::String => {
            let cols: Vec<_> = columns.iter().map(|c| c.as_string::<i32>()).collect();
            // ONNX Runtime copies the text again; `ort` takes owned strings here.
            let mut text: Vec<String> = Vec::with_capacity(rows * width);
            for i in 0..rows {
                for c in &cols {
                    let v = c.value(i);
                    if v.contains('\0') {
                        return Err(ModelError::BadInput(format!(
                            "input {}: a value holds a NUL character, which a string tensor cannot",
                            binding.name
                        )));
                    }
                    text.push(v.to_string());
                }
            }
            Tensor::from_string_array((shape, text.as_slice()))?.into()
        }
    };
    Ok(value)
}

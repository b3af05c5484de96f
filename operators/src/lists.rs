//! Reference lists (block lists, allow lists of cards, merchants, devices) that decision rules
//! test membership in with `in_list('name', value)`; the whole set is swapped at once, so a
//! batch sees one version of every list.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, RwLock};

use arrow::array::{Array, AsArray, BooleanArray};
use arrow::datatypes::{DataType, Field, FieldRef};
use datafusion_common::{Result, ScalarValue, exec_err, plan_err};
use datafusion_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};

/// The function rules call: `in_list('blocked_cards', card_id)`.
pub const IN_LIST: &str = "in_list";

type Sets = Arc<HashMap<String, Arc<HashSet<String>>>>;

/// Named sets of values, shared by every rule of a decider and replaced whole.
#[derive(Debug, Clone, Default)]
pub struct Lists {
    sets: Arc<RwLock<Sets>>,
}

impl Lists {
    /// The lists `sets` (name → values).
    pub fn new(sets: HashMap<String, HashSet<String>>) -> Self {
        let lists = Self::default();
        lists.replace(sets);
        lists
    }

    /// Replaces every list at once: a batch evaluated after this sees only the new lists.
    pub fn replace(&self, sets: HashMap<String, HashSet<String>>) {
        let sets: Sets = Arc::new(sets.into_iter().map(|(k, v)| (k, Arc::new(v))).collect());
        if let Ok(mut s) = self.sets.write() {
            *s = sets;
        }
    }

    /// The lists now.
    fn now(&self) -> Sets {
        self.sets.read().map(|s| s.clone()).unwrap_or_default()
    }

    /// The lists' names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.now().keys().cloned().collect();
        names.sort();
        names
    }

    /// `in_list(name, value)` over these lists: true when the value (as text: an integer id
    /// as its decimal digits) is in the named list, NULL for a NULL value (which matches no
    /// rule). A name that is no list is refused when the rule is planned.
    pub fn function(&self) -> Arc<ScalarUDF> {
        Arc::new(ScalarUDF::new_from_impl(InList {
            lists: self.clone(),
            signature: Signature::any(2, Volatility::Volatile),
        }))
    }
}

#[derive(Debug)]
struct InList {
    lists: Lists,
    signature: Signature,
}

// One function per set of lists: two are equal when they read the same lists.
impl PartialEq for InList {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.lists.sets, &other.lists.sets)
    }
}

impl Eq for InList {}

impl Hash for InList {
    fn hash<H: Hasher>(&self, state: &mut H) {
        Arc::as_ptr(&self.lists.sets).hash(state);
    }
}

fn list_name(value: Option<&ScalarValue>) -> Option<&str> {
    match value {
        Some(ScalarValue::Utf8(Some(s)) | ScalarValue::LargeUtf8(Some(s))) => Some(s),
        Some(ScalarValue::Utf8View(Some(s))) => Some(s),
        _ => None,
    }
}

impl ScalarUDFImpl for InList {
    fn name(&self) -> &str {
        IN_LIST
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Boolean)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs<'_>) -> Result<FieldRef> {
        let Some(name) = list_name(args.scalar_arguments.first().copied().flatten()) else {
            return plan_err!("in_list takes a list's name as text first: in_list('name', value)");
        };
        if !self.lists.now().contains_key(name) {
            return plan_err!(
                "in_list: no list {name:?} is declared (lists: {:?})",
                self.lists.names()
            );
        }
        Ok(Arc::new(Field::new(IN_LIST, DataType::Boolean, true)))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [name, value] = args.args.as_slice() else {
            return exec_err!("in_list takes two arguments");
        };
        let ColumnarValue::Scalar(name) = name else {
            return exec_err!("in_list: the list's name must be text, not a column");
        };
        let Some(name) = list_name(Some(name)) else {
            return exec_err!("in_list: the list's name must be text");
        };
        let sets = self.lists.now();
        let Some(set) = sets.get(name) else {
            return exec_err!("in_list: no list {name:?}");
        };
        let values = value.to_array(args.number_rows)?;
        let text = arrow::compute::cast(&values, &DataType::Utf8)?;
        let text = text.as_string::<i32>();
        let hits: BooleanArray = (0..text.len())
            .map(|i| text.is_valid(i).then(|| set.contains(text.value(i))))
            .collect();
        Ok(ColumnarValue::Array(Arc::new(hits)))
    }
}

//! The configuration reference, `docs/reference/config.md`, generated from the config types'
//! own source: every section reachable from the root (`PipelineConfig`) and from each job kind
//! registered for `[job] kind = "..."`, every field with its TOML type, whether it is required,
//! and its doc comment. A field without a doc comment fails the test, as does a stale page
//! (`RISKPIPE_BLESS=1 cargo test --test config_reference` rewrites it).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use quote::ToTokens;
use syn::{Attribute, Fields, GenericArgument, Item, PathArguments, Type};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A config type as the source declares it.
enum Declared {
    Struct {
        docs: String,
        /// Every field has a default (`#[serde(default)]` on the struct).
        defaulted: bool,
        fields: Vec<syn::Field>,
        /// The source file, where its fields' `default = "…"` functions are.
        file: PathBuf,
    },
    Enum {
        docs: String,
        /// `#[serde(untagged)]`: read as whichever variant fits, so its doc comment says what.
        untagged: bool,
        variants: Vec<String>,
        /// The variant marked `#[default]`, as a config writes it.
        default: Option<String>,
    },
}

/// The text of the doc comments among `attrs`, joined into one paragraph.
fn docs(attrs: &[Attribute]) -> String {
    attrs
        .iter()
        .filter(|a| a.path().is_ident("doc"))
        .filter_map(|a| match &a.meta {
            syn::Meta::NameValue(nv) => match &nv.value {
                syn::Expr::Lit(syn::ExprLit {
                    lit: syn::Lit::Str(s),
                    ..
                }) => Some(s.value().trim().to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect::<Vec<_>>()
        .join(" ")
        .trim()
        .to_string()
}

/// The `#[serde(...)]` arguments among `attrs`, as text (`default`, `rename = "x"`, ...).
fn serde_args(attrs: &[Attribute]) -> Vec<String> {
    attrs
        .iter()
        .filter(|a| a.path().is_ident("serde"))
        .filter_map(|a| match &a.meta {
            syn::Meta::List(list) => Some(list.tokens.to_string()),
            _ => None,
        })
        .flat_map(|t| {
            t.split(',')
                .map(|s| s.trim().replace(' ', ""))
                .collect::<Vec<_>>()
        })
        .filter(|s| !s.is_empty())
        .collect()
}

fn arg_value<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter().find_map(|a| {
        a.strip_prefix(&format!("{name}="))
            .map(|v| v.trim_matches('"'))
    })
}

fn derives_deserialize(attrs: &[Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("derive") && a.to_token_stream().to_string().contains("Deserialize")
    })
}

/// What the source says of defaults: each file's free functions' returned expressions, and
/// each type's `impl Default` field initializers.
#[derive(Default)]
struct Defaults {
    functions: HashMap<(PathBuf, String), syn::Expr>,
    /// Constants by name (a default function may return one from another file).
    consts: HashMap<String, syn::Expr>,
    fields: HashMap<String, HashMap<String, syn::Expr>>,
}

/// Every config type of the workspace's source by name, the job kinds by their `kind`, and the
/// defaults the source states.
fn declared() -> (
    BTreeMap<String, Declared>,
    BTreeMap<String, String>,
    Defaults,
) {
    let mut types = BTreeMap::new();
    let mut jobs = BTreeMap::new();
    let mut defaults = Defaults::default();
    let mut files = Vec::new();
    for dir in ["pipeline", "operators", "models", "schemas"] {
        collect(&root().join(dir), &mut files);
    }
    for file in files {
        let text = std::fs::read_to_string(&file).expect("source");
        let parsed = syn::parse_file(&text).expect("parse");
        walk(&parsed.items, &file, &mut types, &mut jobs, &mut defaults);
    }
    (types, jobs, defaults)
}

/// The expression a block returns, when it is only that.
fn returned(block: &syn::Block) -> Option<syn::Expr> {
    match block.stmts.as_slice() {
        [syn::Stmt::Expr(e, None)] => Some(e.clone()),
        _ => None,
    }
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.is_dir() && !["tests", "benches", "target"].contains(&name) {
            collect(&path, files);
        } else if name.ends_with(".rs") && name != "tests.rs" {
            files.push(path);
        }
    }
}

fn walk(
    items: &[Item],
    file: &Path,
    types: &mut BTreeMap<String, Declared>,
    jobs: &mut BTreeMap<String, String>,
    defaults: &mut Defaults,
) {
    for item in items {
        match item {
            Item::Const(c) => {
                defaults
                    .consts
                    .insert(c.ident.to_string(), (*c.expr).clone());
            }
            Item::Fn(f) => {
                if let Some(e) = returned(&f.block) {
                    defaults
                        .functions
                        .insert((file.to_path_buf(), f.sig.ident.to_string()), e);
                }
            }
            Item::Impl(i)
                if i.trait_
                    .as_ref()
                    .is_some_and(|(_, p, _)| p.is_ident("Default")) =>
            {
                let (Type::Path(p), Some(syn::ImplItem::Fn(f))) = (&*i.self_ty, i.items.first())
                else {
                    continue;
                };
                let Some(syn::Expr::Struct(lit)) = returned(&f.block) else {
                    continue;
                };
                let Some(name) = p.path.segments.last() else {
                    continue;
                };
                let inits = lit
                    .fields
                    .iter()
                    .filter_map(|fv| match &fv.member {
                        syn::Member::Named(id) => Some((id.to_string(), fv.expr.clone())),
                        _ => None,
                    })
                    .collect();
                defaults.fields.insert(name.ident.to_string(), inits);
            }
            Item::Struct(s) if derives_deserialize(&s.attrs) => {
                if let Fields::Named(named) = &s.fields {
                    types.insert(
                        s.ident.to_string(),
                        Declared::Struct {
                            docs: docs(&s.attrs),
                            defaulted: serde_args(&s.attrs).iter().any(|a| a == "default"),
                            fields: named.named.iter().cloned().collect(),
                            file: file.to_path_buf(),
                        },
                    );
                }
            }
            Item::Enum(e) if derives_deserialize(&e.attrs) => {
                let args = serde_args(&e.attrs);
                let rename = arg_value(&args, "rename_all").unwrap_or("");
                let written_name = |v: &syn::Variant| {
                    let vargs = serde_args(&v.attrs);
                    match arg_value(&vargs, "rename") {
                        Some(r) => r.to_string(),
                        None => renamed(&v.ident.to_string(), rename),
                    }
                };
                let variants = e.variants.iter().map(written_name).collect();
                let default = e
                    .variants
                    .iter()
                    .find(|v| v.attrs.iter().any(|a| a.path().is_ident("default")))
                    .map(|v| format!("{:?}", written_name(v)));
                types.insert(
                    e.ident.to_string(),
                    Declared::Enum {
                        docs: docs(&e.attrs),
                        untagged: args.iter().any(|a| a == "untagged"),
                        variants,
                        default,
                    },
                );
            }
            Item::Impl(i) => {
                let tag = i
                    .attrs
                    .iter()
                    .find(|a| a.path().segments.iter().any(|s| s.ident == "typetag"))
                    .map(|a| a.to_token_stream().to_string());
                if let (Some(tag), Type::Path(p)) = (tag, &*i.self_ty)
                    && let Some(name) = tag.split('"').nth(1)
                    && let Some(last) = p.path.segments.last()
                {
                    jobs.insert(name.to_string(), last.ident.to_string());
                }
            }
            Item::Mod(m) => {
                if let Some((_, items)) = &m.content {
                    walk(items, file, types, jobs, defaults);
                }
            }
            _ => {}
        }
    }
}

/// A variant's name as serde's `rename_all` writes it.
fn renamed(ident: &str, rule: &str) -> String {
    let snake = {
        let mut out = String::new();
        for (i, c) in ident.chars().enumerate() {
            if c.is_uppercase() && i > 0 {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        }
        out
    };
    match rule {
        "snake_case" => snake,
        "kebab-case" => snake.replace('_', "-"),
        "lowercase" => ident.to_lowercase(),
        "SCREAMING_SNAKE_CASE" => snake.to_uppercase(),
        _ => ident.to_string(),
    }
}

/// The last path segment of `ty` and its generic type arguments.
fn parts(ty: &Type) -> Option<(String, Vec<Type>)> {
    match ty {
        Type::Path(p) => {
            let last = p.path.segments.last()?;
            let args = match &last.arguments {
                PathArguments::AngleBracketed(a) => a
                    .args
                    .iter()
                    .filter_map(|g| match g {
                        GenericArgument::Type(t) => Some(t.clone()),
                        _ => None,
                    })
                    .collect(),
                _ => Vec::new(),
            };
            Some((last.ident.to_string(), args))
        }
        _ => None,
    }
}

/// How a field of type `ty` reads in TOML, and the config type it opens, if any (with whether
/// it is an array of tables).
fn toml_type(ty: &Type, types: &BTreeMap<String, Declared>) -> (String, Option<(String, bool)>) {
    let is_struct = |t: &str| matches!(types.get(t), Some(Declared::Struct { .. }));
    let Some((name, args)) = parts(ty) else {
        return (ty.to_token_stream().to_string(), None);
    };
    let inner = |i: usize| args.get(i).map(|t| toml_type(t, types));
    match name.as_str() {
        "Option" | "Box" | "Arc" => inner(0).unwrap_or_default(),
        "Vec" => match inner(0) {
            Some((_, Some((t, _)))) if is_struct(&t) => {
                (format!("array of [{t}]"), Some((t, true)))
            }
            Some((t, _)) => (format!("array of {t}"), None),
            None => ("array".into(), None),
        },
        "HashMap" | "BTreeMap" | "IndexMap" => match inner(1) {
            Some((_, Some((t, _)))) if is_struct(&t) => {
                (format!("table of [{t}]"), Some((t, false)))
            }
            Some((t, _)) => (format!("table of {t}"), None),
            None => ("table".into(), None),
        },
        // The root's two types with a reading of their own.
        "Models" => (
            "table ([model]), or an array of tables ([[model]], an ensemble)".into(),
            Some(("ModelConfig".into(), false)),
        ),
        "JobConfig" => ("table: the job kind's settings, below by kind".into(), None),
        "String" | "str" => ("string".into(), None),
        "PathBuf" => ("path (relative to the config file)".into(), None),
        "bool" => ("boolean".into(), None),
        "f32" | "f64" => ("number".into(), None),
        "u8" | "u16" | "u32" | "u64" | "usize" | "i32" | "i64" | "NonZeroUsize" | "NonZeroU32"
        | "NonZeroU64" => ("integer".into(), None),
        "Duration" => (
            "duration (\"500ms\", \"10s\", \"1h\", \"30d\")".into(),
            None,
        ),
        other => match types.get(other) {
            Some(Declared::Struct { .. }) => {
                (format!("table ({other})"), Some((other.into(), false)))
            }
            Some(Declared::Enum {
                docs,
                untagged: true,
                ..
            }) => (docs.trim_end_matches('.').to_lowercase(), None),
            Some(Declared::Enum { variants, .. }) if !variants.is_empty() => (
                format!(
                    "one of {}",
                    variants
                        .iter()
                        .map(|v| format!("`{v}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                Some((other.into(), false)),
            ),
            _ => (other.to_string(), None),
        },
    }
}

/// What a field's custom deserializer reads, where it replaces the Rust type's reading.
fn custom_reading(with: &str) -> Option<&'static str> {
    match with.rsplit("::").next()? {
        "durations" => Some("array of durations (\"10m\", \"1h\", \"30d\")"),
        "duration" | "humantime_serde" => Some("duration (\"500ms\", \"10s\", \"1h\")"),
        "key_columns" => Some("field name, or array of field names (a combined key)"),
        _ => None,
    }
}

/// A default as a config file would write it, from the expression the source gives it;
/// `None` where it is not a plain value (the description then says).
fn written(e: &syn::Expr, file: &Path, defaults: &Defaults) -> Option<String> {
    use syn::{Expr, Lit};
    let int = |e: &Expr| -> Option<u64> {
        match e {
            Expr::Lit(l) => match &l.lit {
                Lit::Int(i) => i.base10_parse().ok(),
                _ => None,
            },
            Expr::Binary(b) if matches!(b.op, syn::BinOp::Mul(_)) => {
                let (Expr::Lit(x), Expr::Lit(y)) = (&*b.left, &*b.right) else {
                    return None;
                };
                match (&x.lit, &y.lit) {
                    (Lit::Int(x), Lit::Int(y)) => {
                        Some(x.base10_parse::<u64>().ok()? * y.base10_parse::<u64>().ok()?)
                    }
                    _ => None,
                }
            }
            _ => None,
        }
    };
    let seconds = |n: u64| match n {
        0 => "\"0s\"".to_string(),
        n if n % 86_400 == 0 => format!("\"{}d\"", n / 86_400),
        n if n % 3_600 == 0 => format!("\"{}h\"", n / 3_600),
        n if n % 60 == 0 => format!("\"{}m\"", n / 60),
        n => format!("\"{n}s\""),
    };
    match e {
        Expr::Lit(l) => match &l.lit {
            Lit::Str(t) => Some(format!("{:?}", t.value())),
            Lit::Bool(b) => Some(b.value.to_string()),
            Lit::Int(i) => Some(i.base10_digits().to_string()),
            Lit::Float(f) => Some(f.base10_digits().to_string()),
            _ => None,
        },
        Expr::Binary(_) => int(e).map(|n| n.to_string()),
        Expr::MethodCall(m)
            if ["into", "to_string", "to_owned"].contains(&m.method.to_string().as_str()) =>
        {
            written(&m.receiver, file, defaults)
        }
        Expr::Call(c) => {
            let Expr::Path(f) = &*c.func else { return None };
            let name: Vec<String> = f
                .path
                .segments
                .iter()
                .map(|s| s.ident.to_string())
                .collect();
            let arg = c.args.first().and_then(int);
            match (
                name.iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .as_slice(),
                arg,
            ) {
                ([.., "Duration", "from_secs"], Some(n)) => Some(seconds(n)),
                ([.., "Duration", "from_millis"], Some(n)) => Some(format!("\"{n}ms\"")),
                ([.., "String", "from"], _) => {
                    c.args.first().and_then(|a| written(a, file, defaults))
                }
                ([.., "Vec", "new"], _) => Some("[]".into()),
                ([.., "HashMap" | "BTreeMap", "new"], _) => Some("{}".into()),
                ([one], _) if c.args.is_empty() => defaults
                    .functions
                    .get(&(file.to_path_buf(), one.to_string()))
                    .and_then(|e| written(e, file, defaults)),
                _ => None,
            }
        }
        Expr::Cast(c) => written(&c.expr, file, defaults),
        Expr::Paren(p) => written(&p.expr, file, defaults),
        Expr::Path(p) => match p
            .path
            .segments
            .iter()
            .map(|s| s.ident.to_string())
            .collect::<Vec<_>>()
            .as_slice()
        {
            [one] if one == "None" => Some("none".into()),
            [one] => defaults
                .consts
                .get(one)
                .and_then(|e| written(e, file, defaults)),
            [.., d, z] if d == "Duration" && z == "ZERO" => Some("\"0s\"".into()),
            _ => None,
        },
        Expr::Macro(m) if m.mac.path.is_ident("vec") && m.mac.tokens.is_empty() => {
            Some("[]".into())
        }
        _ => None,
    }
}

/// What `Default::default()` of a field's type is, written as a config would.
fn type_default(ty: &Type) -> Option<String> {
    let (name, _) = parts(ty)?;
    Some(
        match name.as_str() {
            "String" | "PathBuf" => "\"\"",
            "bool" => "false",
            "u8" | "u16" | "u32" | "u64" | "usize" | "i32" | "i64" => "0",
            "f32" | "f64" => "0.0",
            "Vec" => "[]",
            "HashMap" | "BTreeMap" | "IndexMap" => "{}",
            "Option" => "none",
            _ => return None,
        }
        .to_string(),
    )
}

struct Section {
    /// The heading: the TOML table's header.
    header: String,
    /// What follows the header in the heading (the job kind, for a job's sections).
    label: String,
    /// Its dotted path (empty at the top level).
    path: String,
    type_name: String,
}

#[derive(Default)]
struct Page {
    out: String,
    problems: Vec<String>,
    seen: HashMap<String, String>,
    defaults: Defaults,
}

impl Page {
    fn section(&mut self, s: Section, types: &BTreeMap<String, Declared>, extra: &str) {
        let Some(declared) = types.get(&s.type_name) else {
            return;
        };
        let Declared::Struct {
            docs: type_docs,
            defaulted,
            fields,
            file,
        } = declared
        else {
            return;
        };
        let heading = format!("`{}`{}", s.header, s.label);
        if let Some(first) = self.seen.get(&s.type_name) {
            self.out.push_str(&format!(
                "\n## {heading}\n\nAs [{first}](#{}).\n",
                anchor(first)
            ));
            return;
        }
        self.seen.insert(s.type_name.clone(), heading.clone());
        self.out.push_str(&format!("\n## {heading}\n\n"));
        if !type_docs.is_empty() {
            self.out.push_str(&format!("{type_docs}\n\n"));
        }
        self.out.push_str(extra);
        self.out
            .push_str("| field | type | default | what it is |\n|---|---|---|---|\n");
        let mut nested = Vec::new();
        let mut rows = Vec::new();
        self.rows(
            &s,
            &s.type_name,
            fields,
            *defaulted,
            file,
            types,
            &mut rows,
            &mut nested,
        );
        for row in rows {
            self.out.push_str(&row);
        }
        for n in nested {
            self.section(n, types, "");
        }
    }

    #[allow(
        clippy::too_many_arguments,
        reason = "one section's walk, recursing into flattened structs"
    )]
    fn rows(
        &mut self,
        s: &Section,
        type_name: &str,
        fields: &[syn::Field],
        defaulted: bool,
        file: &Path,
        types: &BTreeMap<String, Declared>,
        rows: &mut Vec<String>,
        nested: &mut Vec<Section>,
    ) {
        for f in fields {
            let args = serde_args(&f.attrs);
            if args
                .iter()
                .any(|a| a == "skip" || a == "skip_deserializing")
            {
                continue;
            }
            let Some(ident) = &f.ident else { continue };
            let ident = ident.to_string();
            if args.iter().any(|a| a == "flatten") {
                if let Some((name, _)) = parts(&f.ty)
                    && let Some(Declared::Struct {
                        fields,
                        defaulted,
                        file,
                        ..
                    }) = types.get(&name)
                {
                    self.rows(s, &name, fields, *defaulted, file, types, rows, nested);
                }
                continue;
            }
            let key = arg_value(&args, "rename")
                .map(str::to_string)
                .unwrap_or_else(|| ident.trim_start_matches("r#").to_string());
            let optional = parts(&f.ty).is_some_and(|(n, _)| n == "Option");
            let has_default = defaulted
                || args
                    .iter()
                    .any(|a| a == "default" || a.starts_with("default="));
            let (mut ty, opens) = toml_type(&f.ty, types);
            if let Some(reading) = arg_value(&args, "deserialize_with")
                .or_else(|| arg_value(&args, "with"))
                .and_then(custom_reading)
            {
                ty = reading.to_string();
            }
            let doc = docs(&f.attrs);
            if doc.is_empty() {
                self.problems.push(format!(
                    "{}.{key} ({}) has no doc comment",
                    s.header, s.type_name
                ));
            }
            // The default as the source states it: the field's `default = "f"`, else its
            // type's `impl Default`, else its Rust type's default.
            let stated = arg_value(&args, "default")
                .and_then(|f| {
                    self.defaults
                        .functions
                        .get(&(file.to_path_buf(), f.to_string()))
                })
                .or_else(|| {
                    self.defaults
                        .fields
                        .get(type_name)
                        .and_then(|inits| inits.get(&ident))
                })
                .map(|e| written(e, file, &self.defaults));
            let opens_section = opens
                .as_ref()
                .is_some_and(|(t, _)| matches!(types.get(t), Some(Declared::Struct { .. })));
            let enum_default = parts(&f.ty).and_then(|(n, _)| match types.get(&n) {
                Some(Declared::Enum { default, .. }) => default.clone(),
                _ => None,
            });
            let stated = match (stated, enum_default) {
                (None | Some(None), Some(v)) if has_default => Some(Some(v)),
                (stated, _) => stated,
            };
            let required = match (optional, has_default, stated) {
                (false, false, _) => "required".to_string(),
                (_, _, Some(Some(v))) if v == "none" => v,
                (_, _, Some(Some(v))) => format!("`{v}`"),
                (_, _, Some(None)) => "see description".to_string(),
                (true, _, None) => "none".to_string(),
                (false, true, None) if opens_section => "its fields' defaults".to_string(),
                (false, true, None) => {
                    type_default(&f.ty).map_or("see description".to_string(), |v| format!("`{v}`"))
                }
            };
            if let Some((t, array)) = opens
                && matches!(types.get(&t), Some(Declared::Struct { .. }))
            {
                let path = match s.path.as_str() {
                    "" => key.clone(),
                    p => format!("{p}.{key}"),
                };
                let header = match (array, ty.starts_with("table of")) {
                    (true, _) => format!("[[{path}]]"),
                    (false, true) => format!("[{path}.<name>]"),
                    (false, false) => format!("[{path}]"),
                };
                ty = format!(
                    "[`{header}`](#{})",
                    anchor(&format!("`{header}`{}", s.label))
                );
                nested.push(Section {
                    header,
                    label: s.label.clone(),
                    path,
                    type_name: t,
                });
            }
            rows.push(format!(
                "| `{key}` | {} | {required} | {} |\n",
                ty.replace('|', "\\|"),
                doc.replace('|', "\\|")
            ));
        }
    }
}

/// The anchor GitHub gives a heading of `` `text` ``.
fn anchor(text: &str) -> String {
    text.chars()
        .filter_map(|c| match c {
            'a'..='z' | '0'..='9' | '-' | '_' => Some(c),
            'A'..='Z' => Some(c.to_ascii_lowercase()),
            ' ' => Some('-'),
            _ => None,
        })
        .collect()
}

fn page() -> (String, Vec<String>) {
    let (types, jobs, defaults) = declared();
    let mut page = Page {
        defaults,
        ..Page::default()
    };
    page.out.push_str(
        "# Configuration reference\n\n\
Generated from the config types' source and their doc comments (`RISKPIPE_BLESS=1 cargo test \
--test config_reference` rewrites it; CI fails when it is stale or when a field has no doc \
comment). Sections are TOML tables; `riskpipe validate --config FILE` lists every problem of a \
file at once. Durations are written as text (`\"500ms\"`, `\"10s\"`, `\"1h\"`, `\"30d\"`). The \
default column gives what a field is when left out: `required`, a value, `none` (absent), or the \
description's word where the default depends on other settings.\n",
    );
    page.section(
        Section {
            header: "(top level)".into(),
            label: String::new(),
            path: String::new(),
            type_name: "PipelineConfig".into(),
        },
        &types,
        "",
    );
    for (kind, type_name) in &jobs {
        page.section(
            Section {
                header: "[job]".into(),
                label: format!(" ({kind})"),
                path: "job".into(),
                type_name: type_name.clone(),
            },
            &types,
            &format!("The `{kind}` job's settings: `[job]` with `kind = \"{kind}\"`.\n\n"),
        );
    }
    (page.out, page.problems)
}

#[test]
fn the_config_reference_covers_every_field_and_is_current() {
    let (text, problems) = page();
    assert!(
        problems.is_empty(),
        "{} config fields have no doc comment:\n{}",
        problems.len(),
        problems.join("\n")
    );
    for section in [
        "## `[kafka]`",
        "## `[job]` (fraud)",
        "## `[[job.features.aggregate]]` (fraud)",
        "## `[model]`",
    ] {
        assert!(
            text.contains(section),
            "{section} missing from the reference"
        );
    }
    let path = root().join("docs/reference/config.md");
    if std::env::var_os("RISKPIPE_BLESS").is_some() {
        std::fs::write(&path, &text).expect("write");
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == text,
        "docs/reference/config.md is stale: run RISKPIPE_BLESS=1 cargo test --test config_reference"
    );
}

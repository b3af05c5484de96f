//! The documentation's config snippets cannot rot. Every `toml` block in README.md and docs/
//! names, in an HTML comment on the line before it, the config it extends
//! (`<!-- extends config/fraud-handbook.toml -->`, optionally `replacing job.events` to drop a
//! table of it first) or why it is not checked (`<!-- not checked: ... -->`). An extending
//! snippet is merged into that config (its keys replace the config's, tables merged key by key;
//! `${env:NAME}` references read as a placeholder value) and must load and validate with no
//! problem. A snippet that needs an optional build (`needs --features sql`) is validated by the
//! build that has it and only parsed by the others, which say so.
//!
//! Every shell command of the docs is checked too: a `riskpipe` command's subcommand and
//! options against the binary's help, the repository files it names, and any other command is
//! listed with why it is not run here (and who runs it, where someone does).

use std::path::{Path, PathBuf};

use riskpipe_pipeline::PipelineConfig;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A fenced `toml` block: where it is, the comment before it, its text.
struct Snippet {
    at: String,
    marker: Option<String>,
    text: String,
}

fn snippets(path: &Path) -> Vec<Snippet> {
    let text = std::fs::read_to_string(path).expect("doc");
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim_start().starts_with("```toml") {
            let marker = (i > 0)
                .then(|| lines[i - 1].trim())
                .filter(|l| l.starts_with("<!--") && l.ends_with("-->"))
                .map(|l| {
                    l.trim_start_matches("<!--")
                        .trim_end_matches("-->")
                        .trim()
                        .to_string()
                });
            let start = i + 1;
            let mut end = start;
            while end < lines.len() && !lines[end].trim_start().starts_with("```") {
                end += 1;
            }
            out.push(Snippet {
                at: format!(
                    "{}:{}",
                    path.strip_prefix(root()).unwrap_or(path).display(),
                    i + 1
                ),
                marker,
                text: lines[start..end].join("\n"),
            });
            i = end;
        }
        i += 1;
    }
    out
}

/// `over` merged into `base`: tables key by key, anything else replaced.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// `${env:NAME}` references as a placeholder value (tests cannot set the environment).
fn without_env(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("${env:") {
        out.push_str(&rest[..at]);
        match rest[at..].find('}') {
            Some(end) => {
                out.push_str("placeholder");
                rest = &rest[at + end + 1..];
            }
            None => {
                out.push_str(&rest[at..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// Whether this build has the optional feature `name`.
fn has_feature(name: &str) -> bool {
    match name {
        "sql" => cfg!(feature = "sql"),
        "s3" => cfg!(feature = "s3"),
        other => panic!("no optional feature {other:?}"),
    }
}

#[test]
fn every_config_snippet_of_the_docs_extends_a_config_and_validates() {
    let docs = doc_files();
    let (mut checked, mut exempt, mut failures) = (0, Vec::new(), Vec::new());
    for doc in &docs {
        for s in snippets(doc) {
            let Some(marker) = &s.marker else {
                failures.push(format!(
                    "{}: a toml snippet without `<!-- extends ... -->` or `<!-- not checked: ... -->`",
                    s.at
                ));
                continue;
            };
            if let Some(why) = marker.strip_prefix("not checked:") {
                assert!(!why.trim().is_empty(), "{}: say why", s.at);
                exempt.push(format!("{}: {}", s.at, why.trim()));
                continue;
            }
            let Some(spec) = marker.strip_prefix("extends ") else {
                failures.push(format!("{}: unknown marker {marker:?}", s.at));
                continue;
            };
            let mut words = spec.split_whitespace();
            let base_path = root().join(words.next().expect("a config"));
            let mut replacing = Vec::new();
            let mut needs = None;
            while let Some(w) = words.next() {
                match w {
                    "replacing" => replacing.push(words.next().expect("a table").to_string()),
                    "needs" => {
                        let _ = words.next(); // --features
                        needs = words.next().map(str::to_string);
                    }
                    other => panic!("{}: unknown word {other:?} in the marker", s.at),
                }
            }
            let mut base: toml::Table =
                toml::from_str(&std::fs::read_to_string(&base_path).expect("base config"))
                    .expect("base config");
            for table in &replacing {
                let mut parts: Vec<&str> = table.split('.').collect();
                let last = parts.pop().expect("a name");
                let mut at = &mut base;
                for p in parts {
                    at = at
                        .get_mut(p)
                        .and_then(toml::Value::as_table_mut)
                        .expect("the table replaced");
                }
                at.remove(last);
            }
            let snippet: toml::Table = match toml::from_str(&without_env(&s.text)) {
                Ok(t) => t,
                Err(e) => {
                    failures.push(format!("{}: not TOML: {e}", s.at));
                    continue;
                }
            };
            merge(&mut base, snippet);
            let text = toml::to_string(&base).expect("toml");
            let dir = base_path.parent().expect("config dir");
            match PipelineConfig::from_toml(&text, dir) {
                Err(e) => failures.push(format!("{}: {e}", s.at)),
                Ok(cfg) => {
                    let built = needs.as_deref().is_none_or(has_feature);
                    if !built {
                        eprintln!(
                            "{}: parsed only (this build lacks the `{}` feature; the all-features build validates it)",
                            s.at,
                            needs.as_deref().unwrap_or_default()
                        );
                    } else {
                        let problems = cfg.problems();
                        if !problems.is_empty() {
                            failures.push(format!("{}: {problems:?}", s.at));
                        }
                    }
                    checked += 1;
                }
            }
        }
    }
    eprintln!("{checked} snippets checked; not checked:");
    for e in &exempt {
        eprintln!("  {e}");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(checked >= 10, "{checked} snippets checked");
}

/// Every markdown file of the documentation: README.md and docs/ (recursively), in order.
fn doc_files() -> Vec<PathBuf> {
    let mut docs = vec![root().join("README.md")];
    let mut dirs = vec![root().join("docs")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("docs") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                docs.push(path);
            }
        }
    }
    docs.sort();
    docs
}

/// The commands of the `sh` blocks of `path`: (where, the command with its continuation lines
/// joined and its comment left out).
fn commands(path: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).expect("doc");
    let mut out = Vec::new();
    let mut in_block = false;
    let mut pending: Option<(String, String)> = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") {
            in_block = !in_block && ["```sh", "```bash", "```console"].contains(&trimmed);
            continue;
        }
        if !in_block {
            continue;
        }
        // A comment starts at ` #` (`${t##*:}` is not one).
        let code = match line.find(" #") {
            Some(at) => &line[..at],
            None => line,
        };
        let at = format!(
            "{}:{}",
            path.strip_prefix(root()).unwrap_or(path).display(),
            i + 1
        );
        let (at, mut joined) = pending.take().unwrap_or((at, String::new()));
        joined.push_str(code.trim().trim_end_matches('\\'));
        joined.push(' ');
        if code.trim_end().ends_with('\\') {
            pending = Some((at, joined));
        } else if !joined.trim().is_empty() {
            out.push((at, joined.trim().to_string()));
        }
    }
    out
}

/// The commands the docs show that this test does not run, each with why; what they name in the
/// repository must still exist.
const NOT_RUN: &[(&str, &str)] = &[
    (
        "cargo nextest run",
        "the README's test command: .ci/run runs it",
    ),
    (
        "for t in",
        "creates topics with Kafka's own CLI on a broker of yours",
    ),
    ("kafka-topics.sh", "Kafka's own CLI on a broker of yours"),
    ("done", "the end of the loop above"),
    (
        "bash examples/finforge/generate.sh",
        ".ci/run runs it (the finforge data set)",
    ),
    (
        "$(models/train/venv.sh) models/train/fit.py",
        "tests/finforge.rs runs fit.py with these options; its options are checked below",
    ),
    (
        "docker compose -f deploy/compose.yaml",
        "needs Docker; .ci/run validates deploy/compose.yaml against the Compose Specification",
    ),
    (
        "models/train/run.sh",
        "retrains the shipped models (minutes); tests train with fit.py instead",
    ),
];

/// Placeholders the docs use for a user's own files.
fn placeholder(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.starts_with("my")
        || name.starts_with("out")
        || [
            "history.csv",
            "sim.parquet",
            "features.parquet",
            "export.parquet",
            "model.onnx",
        ]
        .contains(&name)
        || path.starts_with("/var/")
        || path.starts_with("~")
        || path.starts_with("state/")
        || path.starts_with("out/")
}

/// Every command of the docs' `sh` blocks is checked: a `riskpipe` command (or `cargo run --
/// …`) names a command the binary has and options its help lists, and the repository files it
/// names exist; `fit.py`'s options are its own; any other command is listed in [`NOT_RUN`] with
/// why, and the files it names exist too.
#[test]
fn every_shell_command_of_the_docs_names_what_exists() {
    let help = |args: &[&str]| -> String {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_riskpipe"))
            .args(args)
            .output()
            .expect("run riskpipe");
        assert!(o.status.success(), "riskpipe {args:?} --help failed");
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let fit = std::fs::read_to_string(root().join("models/train/fit.py")).expect("fit.py");
    let (mut checked, mut failures) = (0, Vec::new());
    for doc in doc_files() {
        for (at, command) in commands(&doc) {
            let words: Vec<&str> = command.split_whitespace().collect();
            // The repository files it names.
            for w in &words {
                let path = w.trim_matches(['"', '\'', '(', ')', '$']);
                let in_repo = [
                    "config/",
                    "examples/",
                    "models/",
                    "deploy/",
                    "schemas/",
                    "../shared/",
                ]
                .iter()
                .any(|p| path.starts_with(p));
                if in_repo && !placeholder(path) && !root().join(path).exists() {
                    failures.push(format!("{at}: {path} does not exist"));
                }
            }
            let riskpipe_args: Option<&[&str]> = match words.as_slice() {
                ["riskpipe", rest @ ..] => Some(rest),
                ["cargo", "run", "--release", "--", rest @ ..] => Some(rest),
                _ => None,
            };
            if let Some(args) = riskpipe_args {
                let Some(sub) = args.first() else {
                    failures.push(format!("{at}: riskpipe without a command"));
                    continue;
                };
                let text = help(&[sub, "--help"]);
                for flag in args.iter().filter(|a| a.starts_with("--")) {
                    let flag = flag.split('=').next().unwrap_or(flag);
                    if !text.contains(&format!("{flag} "))
                        && !text.contains(&format!("{flag}\n"))
                        && !text.contains(&format!("{flag}="))
                    {
                        failures.push(format!("{at}: riskpipe {sub} has no option {flag}"));
                    }
                }
                checked += 1;
                continue;
            }
            let Some((_, why)) = NOT_RUN.iter().find(|(start, _)| command.starts_with(start))
            else {
                failures.push(format!(
                    "{at}: `{command}` is neither a riskpipe command nor listed as not run"
                ));
                continue;
            };
            if command.contains("fit.py") {
                for flag in words.iter().filter(|a| a.starts_with("--")) {
                    if !fit.contains(&format!("add_argument(\"{flag}\"")) {
                        failures.push(format!("{at}: fit.py has no option {flag}"));
                    }
                }
            }
            eprintln!("{at}: not run: {why}");
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(checked >= 10, "{checked} riskpipe commands checked");
}

/// A heading's anchor as the repository host makes it: lower case, punctuation other than `-`
/// and `_` dropped, spaces as `-`.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' '))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a markdown file's headings (outside code blocks).
fn anchors(path: &Path) -> Vec<String> {
    let mut fenced = false;
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            if l.trim_start().starts_with("```") {
                fenced = !fenced;
            }
            !fenced && l.starts_with('#')
        })
        .map(|l| anchor(l.trim_start_matches('#')))
        .collect()
}

/// Every relative link of README.md and docs/ leads to a file of the repository, and a link to a
/// heading (`page.md#heading`) to a heading that page has: moving or renaming a page or a
/// section fails here rather than leaving a reader at a dead end.
#[test]
fn every_link_of_the_docs_leads_somewhere() {
    let (mut checked, mut broken) = (0, Vec::new());
    for doc in doc_files() {
        let text = std::fs::read_to_string(&doc).expect("doc");
        let mut fenced = false;
        for (n, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("```") {
                fenced = !fenced;
            }
            if fenced {
                continue;
            }
            let mut rest = line;
            while let Some(at) = rest.find("](") {
                let tail = &rest[at + 2..];
                let Some(end) = tail.find(')') else { break };
                let target = &tail[..end];
                rest = &tail[end..];
                if target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                checked += 1;
                let (file, heading) = target.split_once('#').unwrap_or((target, ""));
                let path = if file.is_empty() {
                    doc.clone()
                } else {
                    doc.parent().expect("dir").join(file)
                };
                let at = format!(
                    "{}:{}",
                    doc.strip_prefix(root()).unwrap_or(&doc).display(),
                    n + 1
                );
                if !path.exists() {
                    broken.push(format!("{at}: {target} (no such file)"));
                } else if !heading.is_empty()
                    && path.extension().is_some_and(|e| e == "md")
                    && !anchors(&path).contains(&heading.to_string())
                {
                    broken.push(format!("{at}: {target} (no such heading)"));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
    assert!(checked >= 50, "{checked} links checked");
}

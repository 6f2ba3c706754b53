//! A YAML document as a tree whose every node knows its line, so that any error found
//! while decoding the config (a bad regex, a missing key) can point at the line to fix.
//!
//! serde_yaml stops at the first error and has no position for values validated after
//! parsing; yaml-rust2's marked events give data and lines in one pass. Its own `load`
//! recurses once per nesting level, so the events are pulled one by one here instead and
//! the tree is built with an explicit stack.
//!
//! A config file is input an attacker may write (a ConfigMap, a shared repository), so
//! the tree is bounded: [`MAX_DEPTH`] levels of nesting, and — aliases expanded —
//! [`MAX_NODES`] nodes and [`MAX_TEXT_BYTES`] of scalar text. An alias is counted in full
//! where it is used, so a "billion laughs" document is refused after a few kilobytes of
//! work: anchored nodes are shared while parsing and copied only once the whole document
//! is known to fit.

use std::collections::HashMap;
use std::fmt::Write;
use std::rc::Rc;

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::TScalarStyle;

/// Most nesting of lists and mappings (a config needs about 7).
pub const MAX_DEPTH: usize = 64;
/// Most nodes in a document once its aliases are expanded (a config with a hundred
/// routes has a few thousand).
pub const MAX_NODES: usize = 100_000;
/// Most bytes of scalar text in a document once its aliases are expanded.
pub const MAX_TEXT_BYTES: usize = 4 * 1024 * 1024;

/// One node of the document with the 1-based line it starts on.
#[derive(Debug, Clone)]
pub struct Node {
    /// What the node holds.
    pub value: Value,
    /// 1-based line of the node's first character.
    pub line: usize,
}

/// The shape of a node.
#[derive(Debug, Clone)]
pub enum Value {
    /// `~`, `null`, an empty value.
    Null,
    /// Any scalar, with whether it was written without quotes (only plain scalars can be
    /// numbers, booleans or null).
    Scalar { text: String, plain: bool },
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping in document order; keys are scalars.
    Map(Vec<Entry>),
}

/// A mapping entry.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The key text.
    pub key: String,
    /// Line of the key (what an error about the entry points at).
    pub key_line: usize,
    /// The value.
    pub value: Node,
}

impl Node {
    /// A short description of the node's type for error messages.
    pub fn kind(&self) -> &'static str {
        match &self.value {
            Value::Null => "null",
            Value::Scalar { .. } => "a scalar",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

/// A document that is not valid YAML or exceeds a bound, with its line and, for a bound,
/// the YAML path of the node that crossed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    /// 1-based line.
    pub line: usize,
    /// YAML path such as `routes[3].identity` (empty at the root, and for syntax errors).
    pub path: String,
    /// What is wrong, written for the person fixing it.
    pub message: String,
}

/// Parses the first YAML document of `text`. An empty document is `Null`.
pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    let mut parser = Parser::new_from_str(text);
    let mut builder = TreeBuilder::default();
    loop {
        let (event, mark) = parser.next_token().map_err(|e| SyntaxError {
            line: e.marker().line(),
            path: String::new(),
            message: format!("YAML syntax error: {}", e.info()),
        })?;
        if matches!(event, Event::DocumentEnd | Event::StreamEnd) {
            break;
        }
        builder.on_event(event, mark.line())?;
    }
    Ok(builder.root.map_or(
        Node {
            value: Value::Null,
            line: 1,
        },
        |root| materialize(&root),
    ))
}

/// A finished node while parsing: shared by its anchor and every alias of it, with its
/// size once expanded.
struct Shared {
    value: Draft,
    /// Nodes in it, aliases expanded.
    nodes: usize,
    /// Scalar bytes in it, aliases expanded.
    text: usize,
    /// Levels of lists and mappings in it (0 for a scalar).
    height: usize,
}

enum Draft {
    Null,
    Scalar { text: String, plain: bool },
    Seq(Vec<Child>),
    Map(Vec<DraftEntry>),
}

/// A node where it is used: its own line, or the alias's line for an alias.
struct Child {
    line: usize,
    node: Rc<Shared>,
}

struct DraftEntry {
    key: String,
    key_line: usize,
    value: Child,
}

/// A list or mapping whose end has not been seen yet.
struct Open {
    line: usize,
    anchor: usize,
    kind: OpenKind,
}

enum OpenKind {
    Seq(Vec<Child>),
    Map {
        entries: Vec<DraftEntry>,
        pending_key: Option<(String, usize)>,
    },
}

/// Builds the tree from parser events, counting the expanded size as it goes.
#[derive(Default)]
struct TreeBuilder {
    stack: Vec<Open>,
    anchors: HashMap<usize, Rc<Shared>>,
    root: Option<Child>,
    /// Nodes so far, aliases expanded.
    nodes: usize,
    /// Scalar bytes so far, aliases expanded.
    text: usize,
}

impl TreeBuilder {
    fn on_event(&mut self, event: Event, line: usize) -> Result<(), SyntaxError> {
        match event {
            Event::Scalar(text, style, anchor, _tag) => {
                let bytes = text.len();
                self.count(1, bytes, line)?;
                let plain = style == TScalarStyle::Plain;
                let value = if plain && matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL")
                {
                    Draft::Null
                } else {
                    Draft::Scalar { text, plain }
                };
                let node = Rc::new(Shared {
                    value,
                    nodes: 1,
                    text: bytes,
                    height: 0,
                });
                self.complete(Child { line, node }, anchor, line)
            }
            Event::SequenceStart(anchor, _) => self.open(line, anchor, OpenKind::Seq(Vec::new())),
            Event::MappingStart(anchor, _) => self.open(
                line,
                anchor,
                OpenKind::Map {
                    entries: Vec::new(),
                    pending_key: None,
                },
            ),
            Event::SequenceEnd | Event::MappingEnd => match self.stack.pop() {
                Some(open) => {
                    let child = close(open.kind, open.line);
                    self.complete(child, open.anchor, line)
                }
                None => Ok(()),
            },
            Event::Alias(id) => {
                let Some(node) = self.anchors.get(&id).map(Rc::clone) else {
                    return Err(self.error(
                        line,
                        "alias refers to an anchor that is unknown or not finished (an alias inside its own anchor)",
                    ));
                };
                if self.stack.len() + node.height > MAX_DEPTH {
                    return Err(self.too_deep(line));
                }
                self.count(node.nodes, node.text, line)?;
                self.complete(Child { line, node }, 0, line)
            }
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart
            | Event::DocumentEnd => Ok(()),
        }
    }

    fn open(&mut self, line: usize, anchor: usize, kind: OpenKind) -> Result<(), SyntaxError> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(self.too_deep(line));
        }
        self.count(1, 0, line)?;
        self.stack.push(Open { line, anchor, kind });
        Ok(())
    }

    /// Adds an expanded node (or alias) to the running size, refusing past the bounds.
    fn count(&mut self, nodes: usize, text: usize, line: usize) -> Result<(), SyntaxError> {
        self.nodes = self.nodes.saturating_add(nodes);
        self.text = self.text.saturating_add(text);
        if self.nodes > MAX_NODES {
            return Err(self.error(
                line,
                &format!(
                    "the document holds more than {MAX_NODES} values once its aliases are expanded (the most a config may hold)"
                ),
            ));
        }
        if self.text > MAX_TEXT_BYTES {
            return Err(self.error(
                line,
                &format!(
                    "the document holds more than {} MiB of text once its aliases are expanded (the most a config may hold)",
                    MAX_TEXT_BYTES / (1024 * 1024)
                ),
            ));
        }
        Ok(())
    }

    fn too_deep(&self, line: usize) -> SyntaxError {
        self.error(
            line,
            &format!("lists and mappings are nested more than {MAX_DEPTH} levels deep (the most a config may hold)"),
        )
    }

    fn error(&self, line: usize, message: &str) -> SyntaxError {
        SyntaxError {
            line,
            path: self.path(),
            message: message.to_string(),
        }
    }

    /// The YAML path of the node the next event starts, e.g. `routes[2].identity`.
    fn path(&self) -> String {
        let mut path = String::new();
        for open in &self.stack {
            match &open.kind {
                OpenKind::Seq(items) => {
                    let _ = write!(path, "[{}]", items.len());
                }
                OpenKind::Map {
                    pending_key: Some((key, _)),
                    ..
                } => {
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(key);
                }
                OpenKind::Map { .. } => {}
            }
        }
        path
    }

    fn complete(&mut self, child: Child, anchor: usize, line: usize) -> Result<(), SyntaxError> {
        if anchor > 0 {
            self.anchors.insert(anchor, Rc::clone(&child.node));
        }
        let Some(top) = self.stack.last_mut() else {
            self.root = Some(child);
            return Ok(());
        };
        match &mut top.kind {
            OpenKind::Seq(items) => items.push(child),
            OpenKind::Map {
                entries,
                pending_key,
            } => match pending_key.take() {
                Some((key, key_line)) => entries.push(DraftEntry {
                    key,
                    key_line,
                    value: child,
                }),
                None => match &child.node.value {
                    Draft::Scalar { text, .. } => *pending_key = Some((text.clone(), child.line)),
                    Draft::Null => *pending_key = Some((String::new(), child.line)),
                    _ => return Err(self.error(line, "mapping keys must be plain strings")),
                },
            },
        }
        Ok(())
    }
}

/// A finished list or mapping with its expanded size.
fn close(kind: OpenKind, line: usize) -> Child {
    let (value, (nodes, text, height)) = match kind {
        OpenKind::Seq(items) => {
            let size = sizes(items.iter().map(|c| (&*c.node, None)));
            (Draft::Seq(items), size)
        }
        OpenKind::Map { entries, .. } => {
            // Each key is one more scalar node.
            let size = sizes(entries.iter().map(|e| (&*e.value.node, Some(e.key.len()))));
            (Draft::Map(entries), size)
        }
    };
    Child {
        line,
        node: Rc::new(Shared {
            value,
            nodes,
            text,
            height,
        }),
    }
}

/// Nodes, text and height of a collection holding `children` (each with the length of
/// its key, for a mapping).
fn sizes<'a>(children: impl Iterator<Item = (&'a Shared, Option<usize>)>) -> (usize, usize, usize) {
    let (mut nodes, mut text, mut height) = (1usize, 0usize, 0usize);
    for (child, key) in children {
        let key_nodes = usize::from(key.is_some());
        nodes = nodes.saturating_add(child.nodes).saturating_add(key_nodes);
        text = text
            .saturating_add(child.text)
            .saturating_add(key.unwrap_or(0));
        height = height.max(child.height);
    }
    (nodes, text, height + 1)
}

/// The owned tree, aliases copied out. Recurses at most [`MAX_DEPTH`] levels, and copies
/// at most the bounded expanded size.
fn materialize(child: &Child) -> Node {
    let value = match &child.node.value {
        Draft::Null => Value::Null,
        Draft::Scalar { text, plain } => Value::Scalar {
            text: text.clone(),
            plain: *plain,
        },
        Draft::Seq(items) => Value::Seq(items.iter().map(materialize).collect()),
        Draft::Map(entries) => Value::Map(
            entries
                .iter()
                .map(|e| Entry {
                    key: e.key.clone(),
                    key_line: e.key_line,
                    value: materialize(&e.value),
                })
                .collect(),
        ),
    };
    Node {
        value,
        line: child.line,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn map_keys(node: &Node) -> Vec<(String, usize)> {
        match &node.value {
            Value::Map(entries) => entries
                .iter()
                .map(|e| (e.key.clone(), e.key_line))
                .collect(),
            other => panic!("expected a map, got {other:?}"),
        }
    }

    #[test]
    fn keys_carry_their_lines() {
        let doc = parse("a: 1\n\nb:\n  c: x\n").unwrap();
        assert_eq!(map_keys(&doc), vec![("a".into(), 1), ("b".into(), 3)]);
    }

    #[test]
    fn quoted_and_plain_scalars_are_told_apart() {
        let doc = parse("a: \"1\"\nb: 1\nc: ~\nd:\n").unwrap();
        let Value::Map(entries) = doc.value else {
            panic!()
        };
        assert!(matches!(
            &entries[0].value.value,
            Value::Scalar { plain: false, .. }
        ));
        assert!(matches!(
            &entries[1].value.value,
            Value::Scalar { plain: true, .. }
        ));
        assert!(matches!(entries[2].value.value, Value::Null));
        assert!(matches!(entries[3].value.value, Value::Null));
    }

    #[test]
    fn aliases_resolve_to_their_anchor() {
        let doc = parse("a: &x [1, 2]\nb: *x\n").unwrap();
        let Value::Map(entries) = doc.value else {
            panic!()
        };
        assert!(matches!(&entries[1].value.value, Value::Seq(items) if items.len() == 2));
    }

    #[test]
    fn syntax_errors_have_a_line() {
        let err = parse("a: 1\nb: [1, 2\n").unwrap_err();
        assert!(err.line >= 2, "{err:?}");
    }

    /// `- ` nested `depth` times, as a block sequence (the 10 KB file at 5,000).
    fn nested_block_lists(depth: usize) -> String {
        let mut text = String::new();
        for level in 0..depth {
            text.push_str(&" ".repeat(level));
            text.push_str("-\n");
        }
        text.push_str(&" ".repeat(depth));
        text.push_str("- x\n");
        text
    }

    /// The classic "billion laughs": nine levels of nine aliases of the level below.
    pub(crate) fn billion_laughs() -> String {
        let mut text = String::from(
            "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
        );
        for (prev, name) in "abcdefgh".chars().zip("bcdefghi".chars()) {
            let refs = vec![format!("*{prev}"); 9].join(",");
            let _ = writeln!(text, "{name}: &{name} [{refs}]");
        }
        text
    }

    /// Parses on a thread with a small stack, as a guard against any recursion per level.
    fn parse_on_small_stack(text: String) -> Result<Node, SyntaxError> {
        std::thread::Builder::new()
            .stack_size(128 * 1024)
            .spawn(move || parse(&text))
            .unwrap()
            .join()
            .expect("parsing must not overflow the stack")
    }

    #[test]
    fn nesting_past_the_limit_is_an_error_with_path_and_line_never_a_crash() {
        for depth in [MAX_DEPTH, 5_000, 20_000] {
            let err = parse_on_small_stack(nested_block_lists(depth)).unwrap_err();
            assert_eq!(err.line, MAX_DEPTH + 1, "{err:?}");
            assert_eq!(err.path, "[0]".repeat(MAX_DEPTH), "{err:?}");
            assert!(
                err.message.contains("nested more than 64 levels"),
                "{err:?}"
            );
        }
        // The 10 KB file: 5,000 compact `- ` on one line.
        let err = parse_on_small_stack(format!("{}x\n", "- ".repeat(5_000))).unwrap_err();
        assert_eq!(
            (err.line, err.path.clone()),
            (1, "[0]".repeat(MAX_DEPTH)),
            "{err:?}"
        );
        for depth in [100, 20_000] {
            let flow = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            let err = parse_on_small_stack(flow).unwrap_err();
            // The scanner refuses past 255 flow levels before the tree sees them.
            let want = if depth > 255 {
                "recursion limit"
            } else {
                "nested more than 64"
            };
            assert!(err.message.contains(want), "{depth}: {err:?}");
        }
        // One level less is fine.
        assert!(parse_on_small_stack(nested_block_lists(MAX_DEPTH - 1)).is_ok());
    }

    #[test]
    fn nesting_is_named_by_its_yaml_path() {
        let mut text = String::from("routes:\n  - name: a\n    identity:\n");
        let mut indent = 6;
        for _ in 0..70 {
            text.push_str(&" ".repeat(indent));
            text.push_str("k:\n");
            indent += 2;
        }
        text.push_str(&" ".repeat(indent));
        text.push_str("v\n");
        let err = parse_on_small_stack(text).unwrap_err();
        assert!(err.path.starts_with("routes[0].identity.k.k.k"), "{err:?}");
        assert_eq!(err.path.matches(".k").count(), MAX_DEPTH - 3, "{err:?}");
    }

    #[test]
    fn an_alias_bomb_is_refused_early_with_its_line() {
        let bomb = billion_laughs();
        let err = parse_on_small_stack(bomb.clone()).unwrap_err();
        assert!(
            err.message
                .contains("more than 100000 values once its aliases are expanded"),
            "{err:?}"
        );
        // `a` to `e` hold about 75,000 values expanded; the first `*e` of `f` adds 66,430.
        assert_eq!((err.line, err.path.as_str()), (6, "f[0]"), "{err:?}");
        // An alias that would nest the document too deep counts its anchor's height.
        let mut deep = String::from("a: &a ");
        deep.push_str(&"[".repeat(40));
        deep.push_str(&"]".repeat(40));
        deep.push_str("\nb: ");
        deep.push_str(&"[".repeat(30));
        deep.push_str("*a");
        deep.push_str(&"]".repeat(30));
        deep.push('\n');
        let err = parse_on_small_stack(deep).unwrap_err();
        assert!(err.message.contains("nested more than 64"), "{err:?}");
        assert_eq!(err.line, 2, "{err:?}");
    }

    #[test]
    fn aliased_text_is_bounded_too() {
        let big = "x".repeat(512 * 1024);
        let text = format!("a: &a \"{big}\"\nb: [*a, *a, *a, *a, *a, *a, *a, *a]\n");
        let err = parse(&text).unwrap_err();
        assert!(err.message.contains("more than 4 MiB of text"), "{err:?}");
        // `a` and seven copies of it, plus the keys, cross 4 MiB.
        assert_eq!((err.line, err.path.as_str()), (2, "b[6]"), "{err:?}");
    }

    #[test]
    fn aliases_within_the_bounds_are_copied_with_the_alias_line() {
        let doc =
            parse("base: &id\n  header: X-User\nroutes:\n  - identity: *id\n  - identity: *id\n")
                .unwrap();
        let Value::Map(entries) = doc.value else {
            panic!()
        };
        let Value::Seq(routes) = &entries[1].value.value else {
            panic!()
        };
        for (route, line) in routes.iter().zip([4, 5]) {
            let Value::Map(fields) = &route.value else {
                panic!()
            };
            assert_eq!(fields[0].value.line, line);
            assert!(matches!(&fields[0].value.value, Value::Map(m) if m[0].key == "header"));
        }
    }

    #[test]
    fn a_recursive_alias_is_an_error() {
        let err = parse("a: &a [1, *a]\n").unwrap_err();
        assert!(err.message.contains("alias"), "{err:?}");
    }

    #[test]
    fn empty_document_is_null() {
        assert!(matches!(parse("").unwrap().value, Value::Null));
        assert!(matches!(
            parse("# only a comment\n").unwrap().value,
            Value::Null
        ));
    }
}

//! A YAML document as a tree whose every node knows its line, so that any error found
//! while decoding the config (a bad regex, a missing key) can point at the line to fix.
//!
//! serde_yaml stops at the first error and has no position for values validated after
//! parsing; yaml-rust2's marked events give data and lines in one pass.

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

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

/// A YAML syntax error with its line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    /// 1-based line.
    pub line: usize,
    /// The parser's description.
    pub message: String,
}

/// Parses one YAML document. An empty document is `Null`.
pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    let mut builder = TreeBuilder::default();
    let mut parser = Parser::new_from_str(text);
    parser.load(&mut builder, false).map_err(|e| SyntaxError {
        line: e.marker().line(),
        message: e.info().to_string(),
    })?;
    if let Some(message) = builder.error {
        return Err(SyntaxError {
            line: builder.error_line,
            message,
        });
    }
    Ok(builder.root.unwrap_or(Node {
        value: Value::Null,
        line: 1,
    }))
}

/// Builds the tree from parser events; aliases are resolved to copies of their anchors.
#[derive(Default)]
struct TreeBuilder {
    stack: Vec<Open>,
    anchors: Vec<(usize, Node)>,
    root: Option<Node>,
    error: Option<String>,
    error_line: usize,
}

enum Open {
    Seq {
        node: Node,
        anchor: usize,
    },
    Map {
        node: Node,
        anchor: usize,
        pending_key: Option<(String, usize)>,
    },
}

impl TreeBuilder {
    fn fail(&mut self, line: usize, message: String) {
        if self.error.is_none() {
            self.error = Some(message);
            self.error_line = line;
        }
    }

    fn complete(&mut self, node: Node, anchor: usize) {
        if anchor > 0 {
            self.anchors.push((anchor, node.clone()));
        }
        let Some(top) = self.stack.last_mut() else {
            self.root = Some(node);
            return;
        };
        match top {
            Open::Seq { node: seq, .. } => {
                if let Value::Seq(items) = &mut seq.value {
                    items.push(node);
                }
            }
            Open::Map {
                node: map,
                pending_key,
                ..
            } => match pending_key.take() {
                None => {
                    let line = node.line;
                    match node.value {
                        Value::Scalar { text, .. } => *pending_key = Some((text, line)),
                        Value::Null => *pending_key = Some((String::new(), line)),
                        _ => self.fail(line, "mapping keys must be plain strings".into()),
                    }
                }
                Some((key, key_line)) => {
                    if let Value::Map(entries) = &mut map.value {
                        entries.push(Entry {
                            key,
                            key_line,
                            value: node,
                        });
                    }
                }
            },
        }
    }
}

impl MarkedEventReceiver for TreeBuilder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        let line = mark.line();
        match event {
            Event::Scalar(text, style, anchor, _tag) => {
                let plain = style == TScalarStyle::Plain;
                let value = if plain && matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL")
                {
                    Value::Null
                } else {
                    Value::Scalar { text, plain }
                };
                self.complete(Node { value, line }, anchor);
            }
            Event::SequenceStart(anchor, _) => self.stack.push(Open::Seq {
                node: Node {
                    value: Value::Seq(Vec::new()),
                    line,
                },
                anchor,
            }),
            Event::MappingStart(anchor, _) => self.stack.push(Open::Map {
                node: Node {
                    value: Value::Map(Vec::new()),
                    line,
                },
                anchor,
                pending_key: None,
            }),
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some(open) = self.stack.pop() {
                    let (node, anchor) = match open {
                        Open::Seq { node, anchor } | Open::Map { node, anchor, .. } => {
                            (node, anchor)
                        }
                    };
                    self.complete(node, anchor);
                }
            }
            Event::Alias(id) => match self.anchors.iter().rev().find(|(a, _)| *a == id) {
                Some((_, node)) => {
                    let mut node = node.clone();
                    node.line = line;
                    self.complete(node, 0);
                }
                None => self.fail(line, "alias refers to an unknown anchor".into()),
            },
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart
            | Event::DocumentEnd => {}
        }
    }
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn empty_document_is_null() {
        assert!(matches!(parse("").unwrap().value, Value::Null));
        assert!(matches!(
            parse("# only a comment\n").unwrap().value,
            Value::Null
        ));
    }
}

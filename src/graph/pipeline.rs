//! Pipelines as data: parsing and validating `pipelines/*.toml`.
//!
//! A pipeline names its nodes (a `kind` plus that kind's parameters) and the
//! edges between them, written as chains:
//!
//! ```toml
//! edges = ["input -> vad"]
//!
//! [nodes.input]
//! kind = "input"
//! sample_rate = 16000
//!
//! [nodes.vad]
//! kind = "silero_vad"
//! threshold = 0.5
//! ```
//!
//! Every problem (bad TOML, unknown kind, missing or mistyped parameter,
//! dangling edge, cycle, unreachable node) fails at load with a message
//! naming the file, the line and the node.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use super::nodes::NodeKind;

/// A validated pipeline: nodes in a topological order, edges by index.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub source: PathBuf,
    pub description: String,
    pub nodes: Vec<NodeSpec>,
    /// `(from, to)` indices into `nodes`.
    pub edges: Vec<(usize, usize)>,
    /// Index of the single `input` node.
    pub input: usize,
}

#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub name: String,
    pub kind: NodeKind,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    #[serde(default)]
    description: String,
    edges: Vec<String>,
    nodes: BTreeMap<String, toml::Value>,
}

impl Pipeline {
    /// Reads and validates a pipeline file.
    pub fn load(path: &Path) -> Result<Pipeline> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read pipeline {}", path.display()))?;
        Pipeline::parse(&text, path)
    }

    /// Validates pipeline text; `source` is only used in messages.
    pub fn parse(text: &str, source: &Path) -> Result<Pipeline> {
        let where_ = source.display();
        let raw: RawPipeline =
            toml::from_str(text).map_err(|e| anyhow::anyhow!("pipeline {where_}: {e}"))?;

        let node_line = |name: &str| {
            line_of(text, &format!("[nodes.{name}]"))
                .or_else(|| line_of(text, &format!("[nodes.\"{name}\"]")))
                .map(|l| format!(" line {l}"))
                .unwrap_or_default()
        };

        let mut nodes = Vec::with_capacity(raw.nodes.len());
        for (name, value) in raw.nodes {
            let kind: NodeKind = value.try_into().map_err(|e: toml::de::Error| {
                anyhow::anyhow!(
                    "pipeline {where_}{}: node `{name}`: {}",
                    node_line(&name),
                    e.message().trim()
                )
            })?;
            nodes.push(NodeSpec { name, kind });
        }
        let index_of = |name: &str| nodes.iter().position(|n| n.name == name);

        let mut edges = Vec::new();
        for chain in &raw.edges {
            let at = line_of(text, chain)
                .map(|l| format!(" line {l}"))
                .unwrap_or_default();
            let names: Vec<&str> = chain.split("->").map(str::trim).collect();
            if names.len() < 2 || names.iter().any(|n| n.is_empty()) {
                bail!("pipeline {where_}{at}: edge \"{chain}\" must look like \"a -> b\"");
            }
            for pair in names.windows(2) {
                let from = index_of(pair[0]).with_context(|| {
                    format!(
                        "pipeline {where_}{at}: edge \"{chain}\" names node `{}`, which is not defined",
                        pair[0]
                    )
                })?;
                let to = index_of(pair[1]).with_context(|| {
                    format!(
                        "pipeline {where_}{at}: edge \"{chain}\" names node `{}`, which is not defined",
                        pair[1]
                    )
                })?;
                if from == to {
                    bail!(
                        "pipeline {where_}{at}: node `{}` has an edge to itself",
                        pair[0]
                    );
                }
                if !edges.contains(&(from, to)) {
                    edges.push((from, to));
                }
            }
        }

        let inputs: Vec<usize> = (0..nodes.len())
            .filter(|&i| matches!(nodes[i].kind, NodeKind::Input(_)))
            .collect();
        let input = match inputs.as_slice() {
            [one] => *one,
            [] => {
                bail!("pipeline {where_}: no node of kind \"input\" (where session audio enters)")
            }
            many => bail!(
                "pipeline {where_}: {} nodes of kind \"input\" ({}); exactly one is allowed",
                many.len(),
                many.iter()
                    .map(|&i| format!("`{}`", nodes[i].name))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        if let Some(&(from, _)) = edges.iter().find(|&&(_, to)| to == input) {
            bail!(
                "pipeline {where_}{}: node `{}` has an edge into the input node `{}`",
                node_line(&nodes[from].name),
                nodes[from].name,
                nodes[input].name
            );
        }

        let order = topological_order(nodes.len(), &edges).map_err(|i| {
            anyhow::anyhow!(
                "pipeline {where_}{}: node `{}` is part of a cycle",
                node_line(&nodes[i].name),
                nodes[i].name
            )
        })?;
        let reachable = reachable_from(input, nodes.len(), &edges);
        if let Some(i) = (0..nodes.len()).find(|&i| !reachable[i]) {
            bail!(
                "pipeline {where_}{}: node `{}` is not connected to the input `{}`",
                node_line(&nodes[i].name),
                nodes[i].name,
                nodes[input].name
            );
        }

        // Renumber nodes in topological order so builders can rely on it.
        let mut position = vec![0; nodes.len()];
        for (new, &old) in order.iter().enumerate() {
            position[old] = new;
        }
        let mut slots: Vec<Option<NodeSpec>> = nodes.into_iter().map(Some).collect();
        let nodes = order
            .iter()
            .map(|&old| slots[old].take().expect("each node is placed once"))
            .collect();
        let edges = edges
            .into_iter()
            .map(|(a, b)| (position[a], position[b]))
            .collect();
        Ok(Pipeline {
            source: source.to_path_buf(),
            description: raw.description,
            nodes,
            edges,
            input: position[input],
        })
    }
}

/// 1-based line of the first line containing `needle`.
fn line_of(text: &str, needle: &str) -> Option<usize> {
    text.lines().position(|l| l.contains(needle)).map(|i| i + 1)
}

/// Kahn's algorithm; on a cycle, returns a node on it.
fn topological_order(n: usize, edges: &[(usize, usize)]) -> Result<Vec<usize>, usize> {
    let mut indegree = vec![0usize; n];
    for &(_, to) in edges {
        indegree[to] += 1;
    }
    let mut ready: VecDeque<usize> = (0..n).filter(|&i| indegree[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop_front() {
        order.push(i);
        for &(from, to) in edges {
            if from == i {
                indegree[to] -= 1;
                if indegree[to] == 0 {
                    ready.push_back(to);
                }
            }
        }
    }
    if order.len() == n {
        Ok(order)
    } else {
        Err((0..n).find(|&i| indegree[i] > 0).unwrap_or(0))
    }
}

fn reachable_from(start: usize, n: usize, edges: &[(usize, usize)]) -> Vec<bool> {
    let mut seen = vec![false; n];
    let mut stack = vec![start];
    while let Some(i) = stack.pop() {
        if std::mem::replace(&mut seen[i], true) {
            continue;
        }
        stack.extend(edges.iter().filter(|e| e.0 == i).map(|e| e.1));
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Pipeline> {
        Pipeline::parse(text, Path::new("test.toml"))
    }

    fn error_of(text: &str) -> String {
        format!("{:#}", parse(text).expect_err("config must be refused"))
    }

    const GOOD: &str = r#"
edges = ["input -> a -> b", "input -> b"]

[nodes.input]
kind = "input"
sample_rate = 16000

[nodes.a]
kind = "passthrough"

[nodes.b]
kind = "passthrough"
"#;

    #[test]
    fn good_pipeline_is_ordered_topologically() {
        let p = parse(GOOD).unwrap();
        assert_eq!(p.nodes.len(), 3);
        assert_eq!(p.nodes[p.input].name, "input");
        for &(from, to) in &p.edges {
            assert!(from < to, "edge {from}->{to} not in topological order");
        }
        assert_eq!(p.edges.len(), 3);
    }

    #[test]
    fn unknown_kind_names_node_and_line() {
        let e = error_of(&GOOD.replace(
            "kind = \"passthrough\"\n\n[nodes.b]",
            "kind = \"passthru\"\n\n[nodes.b]",
        ));
        assert!(e.contains("node `a`"), "{e}");
        assert!(e.contains("line 8"), "{e}");
        assert!(e.contains("passthru"), "{e}");
    }

    #[test]
    fn mistyped_param_names_node() {
        let e = error_of(&GOOD.replace("sample_rate = 16000", "sample_rate = \"fast\""));
        assert!(e.contains("node `input`"), "{e}");
        assert!(e.contains("line 4"), "{e}");
    }

    #[test]
    fn unknown_param_names_node_and_param() {
        let e = error_of(&GOOD.replace("sample_rate = 16000", "sample_rat = 16000"));
        assert!(
            e.contains("node `input`") && e.contains("sample_rat"),
            "{e}"
        );
    }

    #[test]
    fn missing_kind_names_node() {
        let e = error_of(&GOOD.replace("[nodes.b]\nkind = \"passthrough\"", "[nodes.b]"));
        assert!(e.contains("node `b`") && e.contains("kind"), "{e}");
    }

    #[test]
    fn dangling_edge_names_node_and_line() {
        let e = error_of(&GOOD.replace("\"input -> b\"", "\"input -> c\""));
        assert!(e.contains("`c`") && e.contains("line 2"), "{e}");
    }

    #[test]
    fn cycle_is_refused() {
        let e = error_of(&GOOD.replace("\"input -> b\"", "\"b -> a\""));
        assert!(e.contains("cycle"), "{e}");
    }

    #[test]
    fn unreachable_node_is_refused() {
        let e = error_of(&GOOD.replace("\"input -> a -> b\", \"input -> b\"", "\"input -> a\""));
        assert!(e.contains("node `b`") && e.contains("not connected"), "{e}");
    }

    #[test]
    fn syntax_error_names_line() {
        let e = error_of("edges = [\"input -> a\"\n[nodes.input]\nkind = \"input\"\n");
        assert!(e.contains("line"), "{e}");
    }

    #[test]
    fn two_inputs_are_refused() {
        let e = error_of(&GOOD.replace(
            "[nodes.b]\nkind = \"passthrough\"",
            "[nodes.b]\nkind = \"input\"",
        ));
        assert!(e.contains("exactly one"), "{e}");
    }
}

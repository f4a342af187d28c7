//! The GPU's rewrite of a model graph before its weights load
//! ([`tensor_core::Backend::prepare_graph`]): products of one input become
//! one product over a stacked matrix, and its parts [`Op::Slice`] views.
//!
//! Queries, keys and values (and a feed-forward block's gate and up) then
//! take one dispatch instead of three (two), and the compiled graph can
//! rotate queries and keys and store keys and values in one more. Rows are
//! computed exactly as before: only matrices whose rows are a multiple of 8
//! are stacked (the exact products' order depends on that, as llama.cpp's
//! repacking does), and only where every reader of a part can read a view
//! (RoPE, attention, SwiGLU, GeGLU, add, RMSNorm: the norm copies a view it cannot
//! read into a row of its own, and the fast step's attention takes per-head
//! query and key norms from the stack itself).

use gguf_format::GgmlType;
use tensor_core::graph::{Graph, Node, NodeId, Op, WeightId, WeightKind, WeightSpec};

/// Whether `op` reads its input `x` at any offset and row stride (the
/// compiled graph's RMSNorm through a copy, but for the fast step's
/// virtual norms and the per-head ones its attention applies).
fn reads_views(op: &Op) -> bool {
    matches!(
        op,
        Op::Rope { .. }
            | Op::Attention { .. }
            | Op::Swiglu { .. }
            | Op::Geglu { .. }
            | Op::Add { .. }
            | Op::RmsNorm { .. }
    )
}

/// `op` with its inputs renumbered by `map`.
fn remap(op: &Op, map: &[NodeId]) -> Op {
    let mut op = op.clone();
    for x in op.inputs_mut() {
        *x = map[x.0];
    }
    op
}

/// Moves the selection of output rows after a residual sum:
/// `Add(OutputRows(m), OutputRows(r))` becomes `OutputRows(Add(m, r))`
/// (the sum of every row, then its output rows: the same values). The sum
/// then sits beside the product `m` that feeds it, which accumulates into
/// the residual in the compiled graph, and a single token's step needs no
/// sum at all; a prompt's last-row step copies one row instead of two.
pub fn rows_after_sums(g: Graph) -> Graph {
    let consumers = g.consumers();
    let mut nodes = g.nodes.clone();
    let mut dead = vec![false; nodes.len()];
    for k in 0..nodes.len() {
        let Op::Add { a, b } = nodes[k].op else {
            continue;
        };
        let rows_of = |x: NodeId| match nodes[x.0].op {
            Op::OutputRows { x: src } if consumers[x.0] == [NodeId(k)] => Some(src),
            _ => None,
        };
        let (Some(ma), Some(mb)) = (rows_of(a), rows_of(b)) else {
            continue;
        };
        if a == b {
            continue;
        }
        // The sum of every row takes the first selection's place (after
        // both operands); the Add becomes the selection of its rows.
        let (first, second) = if a.0 < b.0 { (a, b) } else { (b, a) };
        let name = format!("{}_all", base_name(&nodes[k]));
        nodes[first.0] = Node {
            name: match nodes[k].layer {
                Some(l) => format!("{name}-{l}"),
                None => name,
            },
            layer: nodes[k].layer,
            op: Op::Add { a: ma, b: mb },
            width: nodes[k].width,
        };
        nodes[k].op = Op::OutputRows { x: first };
        dead[second.0] = true;
    }
    compact(Graph { nodes, ..g }, &dead)
}

/// A node's name without its block suffix.
fn base_name(nd: &Node) -> String {
    match nd.layer {
        Some(l) => nd
            .name
            .strip_suffix(&format!("-{l}"))
            .unwrap_or(&nd.name)
            .to_string(),
        None => nd.name.clone(),
    }
}

/// The graph without the nodes marked `dead` (which nothing reads).
fn compact(g: Graph, dead: &[bool]) -> Graph {
    if !dead.contains(&true) {
        return g;
    }
    let mut map = vec![NodeId(0); g.nodes.len()];
    let mut out = Vec::with_capacity(g.nodes.len());
    for (i, n) in g.nodes.iter().enumerate() {
        if dead[i] {
            continue;
        }
        out.push(Node {
            op: remap(&n.op, &map),
            ..n.clone()
        });
        map[i] = NodeId(out.len() - 1);
    }
    Graph {
        output: map[g.output.0],
        nodes: out,
        ..g
    }
}

/// Stacks runs of consecutive products of one input whose weights share a
/// type and row length (and have biases alike), where every reader of them
/// reads views.
pub fn stack_products(g: Graph, dtype: &dyn Fn(&WeightSpec) -> Option<GgmlType>) -> Graph {
    let consumers = g.consumers();
    let plain = |w: WeightId| {
        let s = &g.weights[w.0];
        s.stack.is_empty() && s.kind == WeightKind::Matrix
    };
    // Runs of stackable products, as (first index, count).
    let mut runs: Vec<(usize, usize)> = Vec::new();
    let mut i = 0;
    while i < g.nodes.len() {
        let Op::MatMul { x, w, bias } = g.nodes[i].op else {
            i += 1;
            continue;
        };
        let ok = |j: usize| -> bool {
            let Op::MatMul {
                x: xj,
                w: wj,
                bias: bj,
            } = g.nodes[j].op
            else {
                return false;
            };
            let (s, s0) = (&g.weights[wj.0], &g.weights[w.0]);
            xj == x
                && plain(wj)
                && bj.is_some() == bias.is_some()
                && s.shape.first() == s0.shape.first()
                && dtype(s).is_some()
                && dtype(s) == dtype(s0)
                && s.n_rows().is_multiple_of(8)
                && j != g.output.0
                && !consumers[j].is_empty()
                && consumers[j].iter().all(|c| reads_views(&g.nodes[c.0].op))
        };
        let mut n = 0;
        while i + n < g.nodes.len() && ok(i + n) {
            n += 1;
        }
        if n >= 2 {
            runs.push((i, n));
            i += n;
        } else {
            i += 1;
        }
    }
    if runs.is_empty() {
        return g;
    }
    let Graph {
        mut weights,
        nodes,
        output,
        n_kv_layers,
    } = g;
    let mut map = vec![NodeId(0); nodes.len()];
    let mut out: Vec<Node> = Vec::with_capacity(nodes.len() + runs.len());
    let mut r = 0;
    let mut i = 0;
    while i < nodes.len() {
        if r < runs.len() && runs[r].0 == i {
            let (first, n) = runs[r];
            r += 1;
            let members = &nodes[first..first + n];
            let spec_of = |k: usize| match members[k].op {
                Op::MatMul { w, bias, .. } => (w, bias),
                _ => unreachable!("runs hold products"),
            };
            let (w0, b0) = spec_of(0);
            let mut spec = weights[w0.0].clone();
            spec.stack = (1..n).map(|k| weights[spec_of(k).0 .0].clone()).collect();
            weights.push(spec);
            let w = WeightId(weights.len() - 1);
            let bias = b0.map(|b0| {
                let mut spec = weights[b0.0].clone();
                spec.stack = (1..n)
                    .map(|k| weights[spec_of(k).1.expect("alike").0].clone())
                    .collect();
                weights.push(spec);
                WeightId(weights.len() - 1)
            });
            let Op::MatMul { x, .. } = members[0].op else {
                unreachable!("runs hold products")
            };
            let layer = members[0].layer;
            let names: Vec<String> = members.iter().map(base_name).collect();
            let mut name = names.join("+");
            if let Some(l) = layer {
                name = format!("{name}-{l}");
            }
            let width = members.iter().map(|m| m.width).sum();
            out.push(Node {
                name,
                layer,
                op: Op::MatMul {
                    x: map[x.0],
                    w,
                    bias,
                },
                width,
            });
            let stacked = NodeId(out.len() - 1);
            let mut offset = 0;
            for (k, m) in members.iter().enumerate() {
                out.push(Node {
                    name: m.name.clone(),
                    layer: m.layer,
                    op: Op::Slice { x: stacked, offset },
                    width: m.width,
                });
                map[first + k] = NodeId(out.len() - 1);
                offset += m.width;
            }
            i += n;
            continue;
        }
        let op = remap(&nodes[i].op, &map);
        out.push(Node {
            op,
            ..nodes[i].clone()
        });
        map[i] = NodeId(out.len() - 1);
        i += 1;
    }
    // Weights no node uses any more are dropped (and ids renumbered).
    let mut used = vec![false; weights.len()];
    for n in &mut out {
        for w in n.op.weights_mut() {
            used[w.0] = true;
        }
    }
    let mut new_id = vec![usize::MAX; weights.len()];
    let mut kept = Vec::new();
    for (i, w) in weights.into_iter().enumerate() {
        if used[i] {
            new_id[i] = kept.len();
            kept.push(w);
        }
    }
    for n in &mut out {
        for w in n.op.weights_mut() {
            w.0 = new_id[w.0];
        }
    }
    Graph {
        weights: kept,
        nodes: out,
        output: map[output.0],
        n_kv_layers,
    }
}

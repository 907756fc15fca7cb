//! `TreeEnsembleRegressor` and `TreeEnsembleClassifier`: gradient-boosted and random-forest
//! models as scikit-learn (skl2onnx), XGBoost and LightGBM (onnxmltools) export them.
//!
//! The ensemble is flattened at load time into one node array, each tree laid out depth-first
//! from its root so a row's walk stays in a few cache lines. The attribute arrays come from an
//! untrusted file: every child must exist in the same tree, no node may be reached twice (a
//! cycle would loop forever), every leaf weight must name a leaf and a valid target. Scores
//! follow onnxruntime exactly, including its binary-classification conventions, because a
//! model must give the same answer here as where the data scientist validated it.

use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

use super::kernel::{Kernel, PostTransform, Rows, batch_dim};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Leq,
    Lt,
    Gte,
    Gt,
    Eq,
    Neq,
    Leaf,
}

impl Mode {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "BRANCH_LEQ" => Self::Leq,
            "BRANCH_LT" => Self::Lt,
            "BRANCH_GTE" => Self::Gte,
            "BRANCH_GT" => Self::Gt,
            "BRANCH_EQ" => Self::Eq,
            "BRANCH_NEQ" => Self::Neq,
            "LEAF" => Self::Leaf,
            _ => return None,
        })
    }
}

/// One node, 16 bytes: a branch reads feature `feature & FEATURE` and goes to node `yes` or
/// `no` (`MISSING` set: a NaN goes to `yes`). A leaf reads feature 0 and goes to itself both
/// ways, so a walk can run a tree's full depth without testing for leaves (see
/// [`Ensemble::walk`]); its weights are at [`Ensemble::leaf_weights`].
#[derive(Debug, Clone, Copy)]
struct Node {
    threshold: f32,
    feature: u32,
    yes: u32,
    no: u32,
}

const MISSING: u32 = 1 << 31;
const FEATURE: u32 = (1 << 24) - 1;

/// Comparison codes for the specialised walks (`MIXED`: look the mode up per node).
const LEQ: u8 = 0;
const LT: u8 = 1;
const MIXED: u8 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Aggregate {
    Sum,
    Average,
    Min,
    Max,
}

#[derive(Debug)]
struct Ensemble {
    nodes: Vec<Node>,
    /// The mode of each node (parallel to `nodes`), read when the modes are mixed.
    modes: Vec<Mode>,
    roots: Vec<u32>,
    /// The depth of each tree (edges on its longest path), parallel to `roots`.
    depths: Vec<u32>,
    /// For each node (parallel to `nodes`), its range in `weights` (empty for a branch).
    leaf_weights: Vec<(u32, u32)>,
    /// (target or class index, weight), grouped per leaf.
    weights: Vec<(u32, f32)>,
    /// Targets (regressor) or classes (classifier).
    n_targets: usize,
    /// One more than the highest feature index a branch reads.
    n_features: usize,
    /// See [`Ensemble::choose_walk`].
    walk_kind: (u8, bool),
}

impl Mode {
    #[inline(always)]
    fn test(self, x: f32, t: f32) -> bool {
        match self {
            Mode::Leq => x <= t,
            Mode::Lt => x < t,
            Mode::Gte => x >= t,
            Mode::Gt => x > t,
            Mode::Eq => x == t,
            Mode::Neq => x != t,
            Mode::Leaf => false,
        }
    }
}

impl Ensemble {
    /// Calls `visit` with the weights of the leaf each tree sends `row` to, in tree order.
    /// The walk is specialised for the common cases (every branch `<=` as scikit-learn and
    /// LightGBM export, or `<` as XGBoost does; with or without missing-value tracking).
    fn visit_leaves(&self, row: &[f32], visit: impl FnMut(&[(u32, f32)])) {
        match self.walk_kind {
            (LEQ, false) => self.walk::<LEQ, false>(row, visit),
            (LEQ, true) => self.walk::<LEQ, true>(row, visit),
            (LT, false) => self.walk::<LT, false>(row, visit),
            (LT, true) => self.walk::<LT, true>(row, visit),
            _ => self.walk::<MIXED, true>(row, visit),
        }
    }

    /// Which specialised walk fits: (LEQ, LT or MIXED, any missing-value tracking).
    fn choose_walk(&mut self) {
        let mut branches = self.modes.iter().filter(|m| **m != Mode::Leaf);
        let code = match branches.next() {
            Some(first) if branches.all(|m| m == first) => match first {
                Mode::Leq => LEQ,
                Mode::Lt => LT,
                _ => MIXED,
            },
            Some(_) => MIXED,
            None => LEQ,
        };
        let missing = self.nodes.iter().any(|n| n.feature & MISSING != 0);
        self.walk_kind = (code, missing);
    }

    #[inline(always)]
    fn walk<const M: u8, const TRACK_MISSING: bool>(
        &self,
        row: &[f32],
        mut visit: impl FnMut(&[(u32, f32)]),
    ) {
        // Every tree is walked its full depth: leaves loop to themselves, so there is no
        // data-dependent exit branch to mispredict, and the step is a bitwise select. Four
        // trees are walked in lockstep: each step waits on the load of the node before it, and
        // four independent chains keep the core busy while one waits.
        let step = |i: usize| -> usize {
            let n = self.nodes[i];
            let x = row[(n.feature & FEATURE) as usize];
            let mut yes = match M {
                LEQ => x <= n.threshold,
                LT => x < n.threshold,
                _ => self.modes[i].test(x, n.threshold),
            };
            if TRACK_MISSING {
                yes |= n.feature & MISSING != 0 && x.is_nan();
            }
            let mask = u32::from(yes).wrapping_neg();
            (n.no ^ ((n.yes ^ n.no) & mask)) as usize
        };
        let mut leaf = |i: usize| {
            let (start, end) = self.leaf_weights[i];
            visit(&self.weights[start as usize..end as usize]);
        };
        let mut roots = self.roots.chunks_exact(4);
        let mut depths = self.depths.chunks_exact(4);
        for (r, d) in (&mut roots).zip(&mut depths) {
            let (mut a, mut b, mut c, mut e) =
                (r[0] as usize, r[1] as usize, r[2] as usize, r[3] as usize);
            let depth = d[0].max(d[1]).max(d[2]).max(d[3]);
            for _ in 0..depth {
                a = step(a);
                b = step(b);
                c = step(c);
                e = step(e);
            }
            // Visited in tree order: sums come out as onnxruntime adds them.
            leaf(a);
            leaf(b);
            leaf(c);
            leaf(e);
        }
        for (&root, &depth) in roots.remainder().iter().zip(depths.remainder()) {
            let mut i = root as usize;
            for _ in 0..depth {
                i = step(i);
            }
            leaf(i);
        }
    }

    /// At load time, when the input width is declared.
    fn check_declared_width(&self, op: &str, shape: &[TDim]) -> TractResult<()> {
        match shape.last().map(|d| d.to_usize()) {
            Some(Ok(c)) => self.check_width(op, c),
            _ => Ok(()),
        }
    }

    fn check_width(&self, op: &str, c: usize) -> TractResult<()> {
        if c < self.n_features {
            bail!(
                "{op}: the model reads feature {} but the input has {c} columns",
                self.n_features - 1
            );
        }
        Ok(())
    }
}

/// The per-node attributes, parallel arrays in attribute order (one entry per node).
struct NodeAttrs {
    tree_ids: Vec<i64>,
    node_ids: Vec<i64>,
    features: Vec<i64>,
    yes_ids: Vec<i64>,
    no_ids: Vec<i64>,
    values: Vec<f32>,
    modes: Vec<Mode>,
    missing: Vec<i64>,
}

/// The leaf-weight attributes (`{prefix}_*`), parallel arrays with one entry per weight.
struct LeafAttrs {
    tree_ids: Vec<i64>,
    node_ids: Vec<i64>,
    targets: Vec<i64>,
    weights: Vec<f32>,
}

/// Where each node is: (tree, node id) -> attribute position, and the nodes of each tree,
/// trees in order of first appearance (the order onnxruntime sums them in).
struct NodeIndex {
    at: HashMap<(i64, i64), usize>,
    trees: Vec<(i64, Vec<usize>)>,
}

/// Children as attribute positions; which nodes some branch leads to.
struct Links {
    children: Vec<[usize; 2]>,
    referenced: Vec<bool>,
}

/// The weights of each leaf, by attribute position, in attribute order.
type LeafWeights = HashMap<usize, Vec<(u32, f32)>>;

/// Parses the node and leaf attributes shared by both operators. `prefix` is "target" or
/// "class".
fn parse_ensemble(node: &NodeProto, prefix: &str, n_targets: usize) -> TractResult<Ensemble> {
    refuse_double_attributes(node)?;
    let attrs = read_node_attrs(node)?;
    let leaves = read_leaf_attrs(node, prefix)?;
    let index = index_nodes(node, &attrs)?;
    let leaf_weights = group_leaf_weights(node, prefix, n_targets, &attrs, &index, &leaves)?;
    let links = link_children(node, &attrs, &index)?;
    let mut ensemble = Ensemble {
        nodes: Vec::with_capacity(attrs.modes.len()),
        modes: Vec::with_capacity(attrs.modes.len()),
        roots: Vec::with_capacity(index.trees.len()),
        depths: Vec::with_capacity(index.trees.len()),
        leaf_weights: Vec::with_capacity(attrs.modes.len()),
        weights: Vec::with_capacity(leaves.weights.len()),
        n_targets,
        n_features: 0,
        walk_kind: (MIXED, true),
    };
    lay_out_trees(node, &mut ensemble, &attrs, &index, &links, leaf_weights)?;
    ensemble.choose_walk();
    Ok(ensemble)
}

/// Refuses the `*_as_tensor` attributes (double precision): this walk is f32.
fn refuse_double_attributes(node: &NodeProto) -> TractResult<()> {
    let op = node.op_type.as_str();
    let name = node.name.as_str();
    for attr in [
        "nodes_values_as_tensor",
        "nodes_hitrates_as_tensor",
        "base_values_as_tensor",
        "target_weights_as_tensor",
        "class_weights_as_tensor",
    ] {
        if node.attribute.iter().any(|a| a.name == attr) {
            bail!(
                "{op} node {name:?}: double-precision attribute {attr} is not supported; \
                 export with float attributes"
            );
        }
    }
    Ok(())
}

/// Reads the `nodes_*` attributes, checking each has one entry per node.
fn read_node_attrs(node: &NodeProto) -> TractResult<NodeAttrs> {
    let op = node.op_type.as_str();
    let name = node.name.as_str();
    let tree_ids: Vec<i64> = node.get_attr_vec("nodes_treeids")?;
    let n = tree_ids.len();
    let ints = |attr: &str| -> TractResult<Vec<i64>> {
        let v: Vec<i64> = node.get_attr_vec(attr)?;
        node.expect_attr(attr, v.len() == n, || {
            format!("{n} entries (one per node), got {}", v.len())
        })?;
        Ok(v)
    };
    let node_ids = ints("nodes_nodeids")?;
    let features = ints("nodes_featureids")?;
    let yes_ids = ints("nodes_truenodeids")?;
    let no_ids = ints("nodes_falsenodeids")?;
    let values: Vec<f32> = node.get_attr_vec("nodes_values")?;
    node.expect_attr("nodes_values", values.len() == n, "one value per node")?;
    let modes: Vec<Mode> = node
        .get_attr_tvec::<&str>("nodes_modes")?
        .iter()
        .map(|s| {
            Mode::parse(s).ok_or_else(|| format_err!("{op} node {name:?}: unknown node mode {s:?}"))
        })
        .collect::<TractResult<_>>()?;
    node.expect_attr("nodes_modes", modes.len() == n, "one mode per node")?;
    let missing: Vec<i64> = node
        .get_attr_opt_vec("nodes_missing_value_tracks_true")?
        .unwrap_or_else(|| vec![0; n]);
    node.expect_attr(
        "nodes_missing_value_tracks_true",
        missing.len() == n,
        "one flag per node",
    )?;
    Ok(NodeAttrs {
        tree_ids,
        node_ids,
        features,
        yes_ids,
        no_ids,
        values,
        modes,
        missing,
    })
}

/// Reads the `{prefix}_*` leaf-weight attributes, checking each has one entry per weight.
fn read_leaf_attrs(node: &NodeProto, prefix: &str) -> TractResult<LeafAttrs> {
    let tree_ids: Vec<i64> = node.get_attr_vec(&format!("{prefix}_treeids"))?;
    let m = tree_ids.len();
    let leaf_ints = |attr: String| -> TractResult<Vec<i64>> {
        let v: Vec<i64> = node.get_attr_vec(&attr)?;
        node.expect_attr(&attr, v.len() == m, || {
            format!("{m} entries (one per leaf weight), got {}", v.len())
        })?;
        Ok(v)
    };
    let node_ids = leaf_ints(format!("{prefix}_nodeids"))?;
    let targets = leaf_ints(format!("{prefix}_ids"))?;
    let weights: Vec<f32> = node.get_attr_vec(&format!("{prefix}_weights"))?;
    node.expect_attr(
        &format!("{prefix}_weights"),
        weights.len() == m,
        "one weight per leaf weight",
    )?;
    Ok(LeafAttrs {
        tree_ids,
        node_ids,
        targets,
        weights,
    })
}

/// Indexes the nodes by (tree, node id), refusing a node listed twice, and groups them per
/// tree. One pass: loading stays linear in the node count.
fn index_nodes(node: &NodeProto, attrs: &NodeAttrs) -> TractResult<NodeIndex> {
    let op = node.op_type.as_str();
    let name = node.name.as_str();
    let (tree_ids, node_ids) = (&attrs.tree_ids, &attrs.node_ids);
    let n = tree_ids.len();
    let mut at: HashMap<(i64, i64), usize> = HashMap::with_capacity(n);
    let mut tree_slot: HashMap<i64, usize> = HashMap::new();
    let mut trees: Vec<(i64, Vec<usize>)> = Vec::new();
    for i in 0..n {
        if at.insert((tree_ids[i], node_ids[i]), i).is_some() {
            bail!(
                "{op} node {name:?}: tree {} has node {} twice",
                tree_ids[i],
                node_ids[i]
            );
        }
        let slot = *tree_slot.entry(tree_ids[i]).or_insert_with(|| {
            trees.push((tree_ids[i], Vec::new()));
            trees.len() - 1
        });
        trees[slot].1.push(i);
    }
    Ok(NodeIndex { at, trees })
}

/// Groups the leaf weights per node, refusing a weight on a node that does not exist or
/// for a target (class) out of range.
fn group_leaf_weights(
    node: &NodeProto,
    prefix: &str,
    n_targets: usize,
    attrs: &NodeAttrs,
    index: &NodeIndex,
    leaves: &LeafAttrs,
) -> TractResult<LeafWeights> {
    let op = node.op_type.as_str();
    let name = node.name.as_str();
    let mut leaf_weights: LeafWeights = HashMap::new();
    for j in 0..leaves.tree_ids.len() {
        let &i = index
            .at
            .get(&(leaves.tree_ids[j], leaves.node_ids[j]))
            .ok_or_else(|| {
                format_err!(
                    "{op} node {name:?}: a weight names node {} of tree {}, which does not exist",
                    leaves.node_ids[j],
                    leaves.tree_ids[j]
                )
            })?;
        // Weights on a branch node are ignored, as onnxruntime does (old converters wrote them).
        if attrs.modes[i] != Mode::Leaf {
            continue;
        }
        let target = usize::try_from(leaves.targets[j])
            .ok()
            .filter(|&t| t < n_targets)
            .ok_or_else(|| {
                format_err!(
                    "{op} node {name:?}: weight for {prefix} {} but there are {n_targets}",
                    leaves.targets[j]
                )
            })?;
        leaf_weights
            .entry(i)
            .or_default()
            .push((target as u32, leaves.weights[j]));
    }
    Ok(leaf_weights)
}

/// Resolves each branch's children to attribute positions, refusing a child that does not
/// exist in the branch's tree.
fn link_children(node: &NodeProto, attrs: &NodeAttrs, index: &NodeIndex) -> TractResult<Links> {
    let op = node.op_type.as_str();
    let name = node.name.as_str();
    let n = attrs.modes.len();
    let mut children = vec![[0usize; 2]; n];
    let mut referenced = vec![false; n];
    for (i, kids) in children.iter_mut().enumerate() {
        if attrs.modes[i] != Mode::Leaf {
            for (k, child) in [attrs.yes_ids[i], attrs.no_ids[i]].into_iter().enumerate() {
                match index.at.get(&(attrs.tree_ids[i], child)) {
                    Some(&c) => {
                        referenced[c] = true;
                        kids[k] = c;
                    }
                    None => bail!(
                        "{op} node {name:?}: node {} of tree {} branches to node {child}, \
                         which does not exist",
                        attrs.node_ids[i],
                        attrs.tree_ids[i]
                    ),
                }
            }
        }
    }
    Ok(Links {
        children,
        referenced,
    })
}

/// Appends every tree to `ensemble`, in order: its one root, checked for cycles, its depth,
/// its nodes placed. Then refuses weights left over (on a node no tree reaches).
fn lay_out_trees(
    node: &NodeProto,
    ensemble: &mut Ensemble,
    attrs: &NodeAttrs,
    index: &NodeIndex,
    links: &Links,
    mut leaf_weights: LeafWeights,
) -> TractResult<()> {
    let op = node.op_type.as_str();
    let name = node.name.as_str();
    let n = attrs.modes.len();
    // 0: not seen, 1: on the current path, 2: finished.
    let mut state = vec![0u8; n];
    let mut depth_of = vec![0u32; n];
    let mut placed: Vec<Option<u32>> = vec![None; n];
    for (tree, members) in &index.trees {
        let root = tree_root(node, *tree, members, &links.referenced)?;
        measure_tree(
            node,
            *tree,
            root,
            attrs,
            &links.children,
            &mut state,
            &mut depth_of,
        )?;
        place_tree(
            node,
            ensemble,
            &mut leaf_weights,
            attrs,
            links,
            &mut placed,
            root,
        )?;
        ensemble.roots.push(placed[root].unwrap_or_default());
        ensemble.depths.push(depth_of[root]);
    }
    // The lowest position, so the same model always names the same node.
    if let Some(&i) = leaf_weights.keys().min() {
        bail!(
            "{op} node {name:?}: node {} of tree {} has weights but is not a reachable leaf",
            attrs.node_ids[i],
            attrs.tree_ids[i]
        );
    }
    Ok(())
}

/// The one node of `members` that no branch leads to.
fn tree_root(
    node: &NodeProto,
    tree: i64,
    members: &[usize],
    referenced: &[bool],
) -> TractResult<usize> {
    let op = node.op_type.as_str();
    let name = node.name.as_str();
    let roots: Vec<usize> = members
        .iter()
        .copied()
        .filter(|&i| !referenced[i])
        .collect();
    let [root] = roots[..] else {
        bail!(
            "{op} node {name:?}: tree {tree} has {} roots (nodes no branch leads to); \
             a tree has exactly one",
            roots.len()
        );
    };
    Ok(root)
}

/// Refuses a cycle under `root` and records the depth of every node under it in `depth_of`.
fn measure_tree(
    node: &NodeProto,
    tree: i64,
    root: usize,
    attrs: &NodeAttrs,
    children: &[[usize; 2]],
    state: &mut [u8],
    depth_of: &mut [u32],
) -> TractResult<()> {
    let op = node.op_type.as_str();
    let name = node.name.as_str();
    // Cycles and depth: an iterative post-order walk (a hostile file cannot overflow our
    // stack). A node met again while still on the path is a cycle; one met again after it
    // finished is a shared subtree, which LightGBM's category splits produce and
    // onnxruntime accepts.
    let mut stack: Vec<(usize, bool)> = vec![(root, false)];
    while let Some((i, finished)) = stack.pop() {
        let leaf = attrs.modes[i] == Mode::Leaf;
        if finished {
            state[i] = 2;
            depth_of[i] = if leaf {
                0
            } else {
                1 + depth_of[children[i][0]].max(depth_of[children[i][1]])
            };
            continue;
        }
        match state[i] {
            2 => continue,
            1 => bail!(
                "{op} node {name:?}: tree {tree} has a cycle through node {}",
                attrs.node_ids[i]
            ),
            _ => {}
        }
        state[i] = 1;
        stack.push((i, true));
        if !leaf {
            for c in children[i] {
                if state[c] == 1 {
                    bail!(
                        "{op} node {name:?}: tree {tree} has a cycle through node {}",
                        attrs.node_ids[c]
                    );
                }
                if state[c] == 0 {
                    stack.push((c, false));
                }
            }
        }
    }
    Ok(())
}

/// A node waiting to be placed: its attribute position, (parent index, is the "yes" child).
type Pending = (usize, Option<(usize, bool)>);

/// Places the tree under `root` (already checked acyclic) into `ensemble`, recording each
/// node's index in `placed`.
fn place_tree(
    node: &NodeProto,
    ensemble: &mut Ensemble,
    leaf_weights: &mut LeafWeights,
    attrs: &NodeAttrs,
    links: &Links,
    placed: &mut [Option<u32>],
    root: usize,
) -> TractResult<()> {
    let op = node.op_type.as_str();
    let name = node.name.as_str();
    // Placement, depth-first with the "yes" subtree right after its parent; a shared node
    // is placed once and every parent points at it.
    let mut stack: Vec<Pending> = vec![(root, None)];
    while let Some((i, parent)) = stack.pop() {
        let index = match placed[i] {
            Some(index) => index,
            None => {
                let index = u32::try_from(ensemble.nodes.len())?;
                placed[i] = Some(index);
                place(ensemble, leaf_weights, attrs, i, index)
                    .map_err(|e| format_err!("{op} node {name:?}: {e}"))?;
                if attrs.modes[i] != Mode::Leaf {
                    let me = index as usize;
                    stack.push((links.children[i][1], Some((me, false))));
                    stack.push((links.children[i][0], Some((me, true))));
                }
                index
            }
        };
        if let Some((p, is_yes)) = parent {
            let p = &mut ensemble.nodes[p];
            if is_yes {
                p.yes = index;
            } else {
                p.no = index;
            }
        }
    }
    Ok(())
}

/// Appends attribute node `i` as ensemble node `index` (children patched in later).
fn place(
    ensemble: &mut Ensemble,
    leaf_weights: &mut LeafWeights,
    attrs: &NodeAttrs,
    i: usize,
    index: u32,
) -> TractResult<()> {
    if attrs.modes[i] == Mode::Leaf {
        let start = u32::try_from(ensemble.weights.len())?;
        if let Some(w) = leaf_weights.remove(&i) {
            ensemble.weights.extend(w);
        }
        let end = u32::try_from(ensemble.weights.len())?;
        ensemble.nodes.push(Node {
            threshold: 0.0,
            feature: 0,
            yes: index,
            no: index,
        });
        ensemble.leaf_weights.push((start, end));
        ensemble.modes.push(Mode::Leaf);
    } else {
        let feature = u32::try_from(attrs.features[i])
            .ok()
            .filter(|&f| f <= FEATURE)
            .ok_or_else(|| format_err!("bad feature index {}", attrs.features[i]))?;
        ensemble.n_features = ensemble.n_features.max(feature as usize + 1);
        ensemble.nodes.push(Node {
            threshold: attrs.values[i],
            feature: if attrs.missing[i] != 0 {
                feature | MISSING
            } else {
                feature
            },
            yes: 0,
            no: 0,
        });
        ensemble.leaf_weights.push((0, 0));
        ensemble.modes.push(attrs.modes[i]);
    }
    Ok(())
}

/// onnxruntime walks a double input against thresholds widened to double; this walk is f32,
/// and a value within f32 rounding of a threshold could take the other branch. Refused at load
/// rather than answered differently.
fn refuse_double(op: &str, inputs: &[DatumType]) -> TractResult<()> {
    if inputs.first() == Some(&DatumType::F64) {
        bail!(
            "{op}: double-precision (FP64) input is not supported; export the model with a float input"
        );
    }
    Ok(())
}

fn base_values(node: &NodeProto, n: usize) -> TractResult<Vec<f32>> {
    let v: Vec<f32> = node.get_attr_opt_vec("base_values")?.unwrap_or_default();
    node.expect_attr("base_values", v.is_empty() || v.len() == n, || {
        format!("none or {n}, got {}", v.len())
    })?;
    Ok(v)
}

#[derive(Debug)]
pub(crate) struct TreeRegressor {
    ensemble: Ensemble,
    aggregate: Aggregate,
    base: Vec<f32>,
    transform: PostTransform,
}

pub(crate) fn regressor(node: &NodeProto) -> TractResult<TreeRegressor> {
    let n_targets: i64 = node.get_attr_opt("n_targets")?.unwrap_or(1);
    let n_targets = usize::try_from(n_targets)
        .ok()
        .filter(|&n| (1..=1 << 16).contains(&n))
        .ok_or_else(|| format_err!("n_targets must be between 1 and 65536, got {n_targets}"))?;
    let aggregate = match node
        .get_attr_opt::<&str>("aggregate_function")?
        .unwrap_or("SUM")
    {
        "SUM" => Aggregate::Sum,
        "AVERAGE" => Aggregate::Average,
        "MIN" => Aggregate::Min,
        "MAX" => Aggregate::Max,
        other => bail!("unknown aggregate_function {other}"),
    };
    let transform = PostTransform::parse(
        "TreeEnsembleRegressor",
        &node.name,
        node.get_attr_opt("post_transform")?,
    )?;
    Ok(TreeRegressor {
        ensemble: parse_ensemble(node, "target", n_targets)?,
        aggregate,
        base: base_values(node, n_targets)?,
        transform,
    })
}

impl Kernel for TreeRegressor {
    fn name(&self) -> &'static str {
        "TreeEnsembleRegressor"
    }

    fn output_types(&self, inputs: &[DatumType]) -> TractResult<TVec<DatumType>> {
        refuse_double(self.name(), inputs)?;
        Ok(tvec!(DatumType::F32))
    }

    fn output_shapes(&self, inputs: &[TVec<TDim>]) -> TractResult<TVec<TVec<TDim>>> {
        self.ensemble
            .check_declared_width(self.name(), &inputs[0])?;
        let n = batch_dim(self.name(), &inputs[0])?;
        Ok(tvec!(tvec!(n, self.ensemble.n_targets.into())))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let rows = Rows::new(&inputs[0], self.name())?;
        self.ensemble.check_width(self.name(), rows.c)?;
        let x = rows.as_slice()?;
        let t = self.ensemble.n_targets;
        // Scores are written straight into the output tensor: no copy, one allocation.
        let mut output = Tensor::zero::<f32>(&[rows.n, t])?;
        let mut view = output.try_as_plain_ram_mut()?;
        let out = view.as_slice_mut::<f32>()?;
        let mut has: TVec<bool> = TVec::from_elem(false, t);
        let n_trees = self.ensemble.roots.len() as f32;
        let summing = matches!(self.aggregate, Aggregate::Sum | Aggregate::Average);
        for (row, scores) in x.chunks_exact(rows.c.max(1)).zip(out.chunks_exact_mut(t)) {
            if t == 1 && summing {
                // The usual regressor: one target, summed.
                let mut sum = 0f32;
                self.ensemble.visit_leaves(row, |leaf| {
                    for &(_, w) in leaf {
                        sum += w;
                    }
                });
                scores[0] = sum;
            } else {
                has.iter_mut().for_each(|h| *h = false);
                self.ensemble.visit_leaves(row, |leaf| {
                    for &(k, w) in leaf {
                        let (s, h) = (&mut scores[k as usize], &mut has[k as usize]);
                        *s = match self.aggregate {
                            Aggregate::Sum | Aggregate::Average => *s + w,
                            Aggregate::Min if *h && *s <= w => *s,
                            Aggregate::Max if *h && *s >= w => *s,
                            Aggregate::Min | Aggregate::Max => w,
                        };
                        *h = true;
                    }
                });
            }
            for (k, s) in scores.iter_mut().enumerate() {
                let base = self.base.get(k).copied().unwrap_or(0.0);
                *s = match self.aggregate {
                    Aggregate::Average => *s / n_trees + base,
                    _ => *s + base,
                };
            }
            // onnxruntime applies the transform only with two or more targets.
            if t >= 2 {
                self.transform.apply(scores);
            }
        }
        Ok(tvec!(output.into_tvalue()))
    }
}

#[derive(Debug)]
pub(crate) struct TreeClassifier {
    ensemble: Ensemble,
    labels: Vec<i64>,
    base: Vec<f32>,
    transform: PostTransform,
    /// Two classes and every weight for the same one: the other's score is derived.
    binary: bool,
    all_positive: bool,
}

pub(crate) fn classifier(node: &NodeProto) -> TractResult<TreeClassifier> {
    if node
        .get_attr_opt_tvec::<&str>("classlabels_strings")?
        .is_some()
    {
        bail!(
            "TreeEnsembleClassifier node {:?}: string class labels are not served (the \
             inference protocol output would be BYTES); train on integer labels",
            node.name
        );
    }
    let labels: Vec<i64> = node.get_attr_vec("classlabels_int64s")?;
    node.expect_attr(
        "classlabels_int64s",
        (2..=1 << 16).contains(&labels.len()),
        "between 2 and 65536 classes",
    )?;
    let transform = PostTransform::parse(
        "TreeEnsembleClassifier",
        &node.name,
        node.get_attr_opt("post_transform")?,
    )?;
    let ensemble = parse_ensemble(node, "class", labels.len())?;
    let mut classes: Vec<u32> = ensemble.weights.iter().map(|w| w.0).collect();
    classes.sort_unstable();
    classes.dedup();
    Ok(TreeClassifier {
        binary: labels.len() == 2 && classes.len() == 1,
        all_positive: ensemble.weights.iter().all(|w| w.1 >= 0.0),
        base: {
            // onnxruntime accepts one base value for a two-class model (added to class 0).
            let v: Vec<f32> = node.get_attr_opt_vec("base_values")?.unwrap_or_default();
            let ok = v.is_empty() || v.len() == labels.len() || (labels.len() == 2 && v.len() == 1);
            node.expect_attr("base_values", ok, || {
                format!("none or {} values, got {}", labels.len(), v.len())
            })?;
            v
        },
        ensemble,
        labels,
        transform,
    })
}

impl TreeClassifier {
    /// onnxruntime's label choice for two classes, and how it fills in the second score
    /// (`add`: 0/1 all weights positive, 2/3 mixed; -1 nothing).
    fn binary_label(&self, pos_weight: f32, add: &mut i32) -> i64 {
        if self.binary {
            let positive = if self.all_positive {
                pos_weight > 0.5
            } else {
                pos_weight > 0.0
            };
            *add = match (self.all_positive, positive) {
                (true, true) => 0,
                (true, false) => 1,
                (false, true) => 2,
                (false, false) => 3,
            };
            self.labels[usize::from(positive)]
        } else {
            // onnxruntime answers 1 / 0 here whatever the labels are; so do we.
            i64::from(pos_weight > 0.0)
        }
    }

    fn finalize(&self, scores: &mut [f32], has: &mut [bool]) -> i64 {
        if self.labels.len() > 2 {
            for (k, &b) in self.base.iter().enumerate() {
                scores[k] = if has[k] { scores[k] + b } else { b };
                has[k] = true;
            }
            let mut best: Option<usize> = None;
            for k in 0..scores.len() {
                if has[k] && best.is_none_or(|b| scores[k] > scores[b]) {
                    best = Some(k);
                }
            }
            self.transform.apply(scores);
            return self.labels[best.unwrap_or(0)];
        }
        let mut add = -1;
        let mut single = false;
        match self.base.len() {
            2 if has[1] => {
                scores[1] = self.base[1] + scores[0];
                scores[0] = -scores[1];
            }
            2 => {
                scores[1] += self.base[1];
                scores[0] += self.base[0];
            }
            _ => {
                if let Some(&b) = self.base.first() {
                    scores[0] += b;
                } else {
                    add = 3;
                }
                single = !has[1];
            }
        }
        let pos_weight = if !single && has[1] {
            scores[1]
        } else if has[0] {
            scores[0]
        } else {
            0.0
        };
        let label = self.binary_label(pos_weight, &mut add);
        if !single {
            self.transform.apply(scores);
            return label;
        }
        let s = scores[0];
        let logistic = self.transform == PostTransform::Logistic;
        let pair = match add {
            0 | 1 => [1.0 - s, s],
            2 | 3 if logistic => [super::kernel::logistic(-s), super::kernel::logistic(s)],
            2 | 3 => [-s, s],
            _ => [s, 0.0],
        };
        scores.copy_from_slice(&pair);
        label
    }
}

impl Kernel for TreeClassifier {
    fn name(&self) -> &'static str {
        "TreeEnsembleClassifier"
    }

    fn n_outputs(&self) -> usize {
        2
    }

    fn output_types(&self, inputs: &[DatumType]) -> TractResult<TVec<DatumType>> {
        refuse_double(self.name(), inputs)?;
        Ok(tvec!(DatumType::I64, DatumType::F32))
    }

    fn output_shapes(&self, inputs: &[TVec<TDim>]) -> TractResult<TVec<TVec<TDim>>> {
        self.ensemble
            .check_declared_width(self.name(), &inputs[0])?;
        let n = batch_dim(self.name(), &inputs[0])?;
        Ok(tvec!(tvec!(n.clone()), tvec!(n, self.labels.len().into())))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let rows = Rows::new(&inputs[0], self.name())?;
        self.ensemble.check_width(self.name(), rows.c)?;
        let x = rows.as_slice()?;
        let k = self.labels.len();
        let mut labels = Tensor::zero::<i64>(&[rows.n])?;
        let mut scores_out = Tensor::zero::<f32>(&[rows.n, k])?;
        let mut label_view = labels.try_as_plain_ram_mut()?;
        let label_slice = label_view.as_slice_mut::<i64>()?;
        let mut score_view = scores_out.try_as_plain_ram_mut()?;
        let out = score_view.as_slice_mut::<f32>()?;
        let mut has: TVec<bool> = TVec::from_elem(false, k);
        for ((row, scores), label) in x
            .chunks_exact(rows.c.max(1))
            .zip(out.chunks_exact_mut(k))
            .zip(label_slice.iter_mut())
        {
            has.iter_mut().for_each(|h| *h = false);
            self.ensemble.visit_leaves(row, |leaf| {
                for &(c, w) in leaf {
                    scores[c as usize] += w;
                    has[c as usize] = true;
                }
            });
            *label = self.finalize(scores, &mut has);
        }
        Ok(tvec!(labels.into_tvalue(), scores_out.into_tvalue()))
    }
}

//! A [`Solver`] that remembers answers by a canonical form of the query, so that queries
//! differing only in the constants they compare variables with are decided once.
//!
//! **Why renaming is sound.** Let `v` be a bit-vector variable that occurs in a query only
//! as one side of `v = c` or `v ≠ c` with `c` a constant. For any bijection `π` on the
//! values of `v`'s sort, `v = c` holds under an assignment `σ` exactly when `π(v) = π(c)`
//! holds under `π ∘ σ`. So replacing every constant compared with `v` by its image under
//! `π` gives an equisatisfiable query, and a model of the renamed query maps back to a
//! model of the original through `π⁻¹`. We take `π` to send the `n` distinct constants
//! compared with `v`, in order of first occurrence, to `0, 1, …, n−1`, and extend it to a
//! bijection on the rest of the sort (the two complements have the same size). Each
//! variable gets its own `π`: no atom relates two variables, so the renamings do not
//! interact. Variables used any other way (under a mask, compared with each other) keep
//! their constants.
//!
//! Undecided answers are cached too: asking again would only time out again. They stay
//! `Unknown`, and every query that maps to one is reported as undecided by its caller.

use super::solver::{Model, ModelValue, Outcome, Query, Solver, Sort, Term, VarIx};
use crate::ir::CmpOp;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap};

/// Answers queries through `inner`, once per canonical form.
pub struct CachingSolver<'a> {
    inner: &'a dyn Solver,
    memo: RefCell<HashMap<Query, Outcome>>,
    hits: Cell<usize>,
}

impl<'a> CachingSolver<'a> {
    pub fn new(inner: &'a dyn Solver) -> Self {
        CachingSolver {
            inner,
            memo: RefCell::new(HashMap::new()),
            hits: Cell::new(0),
        }
    }
    /// (queries answered from the cache, distinct queries sent to the inner solver)
    pub fn stats(&self) -> (usize, usize) {
        (self.hits.get(), self.memo.borrow().len())
    }
}

impl Solver for CachingSolver<'_> {
    fn solve(&self, q: &Query) -> Outcome {
        let (canon, renaming) = canonical(q);
        let cached = self.memo.borrow().get(&canon).cloned();
        let outcome = match cached {
            Some(o) => {
                self.hits.set(self.hits.get() + 1);
                o
            }
            None => {
                let o = self.inner.solve(&canon);
                self.memo.borrow_mut().insert(canon, o.clone());
                o
            }
        };
        match outcome {
            Outcome::Sat(m) => Outcome::Sat(renaming.back(q, m)),
            other => other,
        }
    }
}

/// Per variable, the original constants in order of first occurrence: the constant at
/// position `i` was renamed to `i`.
#[derive(Debug, Default)]
pub struct Renaming {
    constants: HashMap<VarIx, Vec<u64>>,
}

impl Renaming {
    /// Maps a model of the canonical query back to the original one.
    fn back(&self, q: &Query, mut model: Model) -> Model {
        for (v, originals) in &self.constants {
            let Some((name, Sort::Bits(width))) = q.vars.get(*v) else {
                continue;
            };
            if let Some(ModelValue::Bits(x)) = model.get(name).cloned() {
                let original = usize::try_from(x)
                    .ok()
                    .and_then(|i| originals.get(i).copied())
                    .unwrap_or_else(|| fresh(originals, *width));
                model.insert(name.clone(), ModelValue::Bits(original));
            }
        }
        model
    }
}

/// The smallest value of the sort that is none of `taken`: the image of any value outside
/// the renamed constants (the extension of the bijection is ours to choose).
fn fresh(taken: &[u64], width: u32) -> u64 {
    let taken: BTreeSet<u64> = taken.iter().copied().collect();
    let max = if width >= 64 {
        u64::MAX
    } else {
        (1u64 << width) - 1
    };
    (0..=max).find(|x| !taken.contains(x)).unwrap_or(0)
}

/// The query with every renamable variable's constants renamed, and how to undo it.
pub fn canonical(q: &Query) -> (Query, Renaming) {
    let mut renamable: Vec<bool> = q
        .vars
        .iter()
        .map(|(_, s)| matches!(s, Sort::Bits(_)))
        .collect();
    for f in &q.facts {
        disqualify(f, &mut renamable);
    }
    let mut renaming = Renaming::default();
    let facts = q
        .facts
        .iter()
        .map(|f| rename(f, &renamable, &mut renaming))
        .collect();
    (
        Query {
            vars: q.vars.clone(),
            facts,
        },
        renaming,
    )
}

/// `v = c`, `c = v`, `v ≠ c` or `c ≠ v`: the variable and the constant.
fn atom(t: &Term) -> Option<(VarIx, u32, u64)> {
    let Term::Cmp(CmpOp::Eq | CmpOp::Ne, a, b) = t else {
        return None;
    };
    match (a.as_ref(), b.as_ref()) {
        (Term::Var(v), Term::Bits { width, value })
        | (Term::Bits { width, value }, Term::Var(v)) => Some((*v, *width, *value)),
        _ => None,
    }
}

/// Marks variables that occur other than in an atom as not renamable.
fn disqualify(t: &Term, renamable: &mut [bool]) {
    if atom(t).is_some() {
        return;
    }
    match t {
        Term::Var(v) => {
            if let Some(r) = renamable.get_mut(*v) {
                *r = false;
            }
        }
        Term::Bool(_) | Term::Int(_) | Term::Bits { .. } => {}
        Term::Not(a) | Term::Neg(a) => disqualify(a, renamable),
        Term::And(xs) | Term::Or(xs) => xs.iter().for_each(|x| disqualify(x, renamable)),
        Term::Cmp(_, a, b) | Term::Arith(_, a, b) | Term::BitAnd(a, b) => {
            disqualify(a, renamable);
            disqualify(b, renamable);
        }
    }
}

fn rename(t: &Term, renamable: &[bool], renaming: &mut Renaming) -> Term {
    if let (Some((v, width, value)), Term::Cmp(op, _, _)) = (atom(t), t) {
        if renamable.get(v).copied().unwrap_or(false) {
            let seen = renaming.constants.entry(v).or_default();
            let index = match seen.iter().position(|c| *c == value) {
                Some(i) => i,
                None => {
                    seen.push(value);
                    seen.len() - 1
                }
            };
            return Term::cmp(
                *op,
                Term::Var(v),
                Term::Bits {
                    width,
                    value: index as u64,
                },
            );
        }
        return t.clone();
    }
    let r = |x: &Term, renaming: &mut Renaming| Box::new(rename(x, renamable, renaming));
    match t {
        Term::Bool(_) | Term::Int(_) | Term::Bits { .. } | Term::Var(_) => t.clone(),
        Term::Not(a) => Term::Not(r(a, renaming)),
        Term::Neg(a) => Term::Neg(r(a, renaming)),
        Term::And(xs) => Term::And(xs.iter().map(|x| rename(x, renamable, renaming)).collect()),
        Term::Or(xs) => Term::Or(xs.iter().map(|x| rename(x, renamable, renaming)).collect()),
        Term::Cmp(op, a, b) => Term::Cmp(*op, r(a, renaming), r(b, renaming)),
        Term::Arith(op, a, b) => Term::Arith(*op, r(a, renaming), r(b, renaming)),
        Term::BitAnd(a, b) => Term::BitAnd(r(a, renaming), r(b, renaming)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::z3::Z3Solver;

    fn q(port: u64, other: u64) -> Query {
        Query {
            vars: vec![
                ("port".into(), Sort::Bits(32)),
                ("tci".into(), Sort::Bits(16)),
            ],
            facts: vec![
                Term::eq_bits(0, 32, port),
                Term::cmp(
                    CmpOp::Ne,
                    Term::Var(0),
                    Term::Bits {
                        width: 32,
                        value: other,
                    },
                ),
                Term::cmp(
                    CmpOp::Eq,
                    Term::BitAnd(
                        Box::new(Term::Var(1)),
                        Box::new(Term::Bits {
                            width: 16,
                            value: 0x1fff,
                        }),
                    ),
                    Term::Bits {
                        width: 16,
                        value: 0,
                    },
                ),
            ],
        }
    }

    #[test]
    fn renamed_constants_share_one_answer_and_map_back() {
        let z3 = Z3Solver::new(5_000);
        let s = CachingSolver::new(&z3);
        let port = |o: Outcome| match o {
            Outcome::Sat(m) => m.get("port").cloned(),
            _ => None,
        };
        assert_eq!(port(s.solve(&q(7, 9))), Some(ModelValue::Bits(7)));
        assert_eq!(port(s.solve(&q(40, 3))), Some(ModelValue::Bits(40)));
        assert_eq!(s.stats(), (1, 1));
        // Same constant twice is a different shape: port = 5 and port ≠ 5.
        assert_eq!(s.solve(&q(5, 5)), Outcome::Unsat);
        assert_eq!(s.stats(), (1, 2));
    }

    #[test]
    fn masked_variables_keep_their_constants() {
        let (canon, _) = canonical(&q(7, 9));
        assert_eq!(canon.facts[0], Term::eq_bits(0, 32, 0));
        assert_eq!(canon.facts[2], q(7, 9).facts[2]);
    }

    #[test]
    fn values_outside_the_constants_map_to_fresh_ones() {
        // port ≠ 0 and port ≠ 1: the canonical model is some other value, which must map
        // back to neither original constant.
        let z3 = Z3Solver::new(5_000);
        let s = CachingSolver::new(&z3);
        let query = Query {
            vars: vec![("port".into(), Sort::Bits(32))],
            facts: vec![
                Term::cmp(
                    CmpOp::Ne,
                    Term::Var(0),
                    Term::Bits {
                        width: 32,
                        value: 0,
                    },
                ),
                Term::cmp(
                    CmpOp::Ne,
                    Term::Var(0),
                    Term::Bits {
                        width: 32,
                        value: 2,
                    },
                ),
            ],
        };
        let v = match s.solve(&query) {
            Outcome::Sat(m) => m.get("port").cloned(),
            _ => None,
        };
        assert!(
            matches!(v, Some(ModelValue::Bits(x)) if x != 0 && x != 2),
            "{v:?}"
        );
    }
}

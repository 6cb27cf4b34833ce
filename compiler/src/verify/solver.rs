//! The solver interface: a small quantifier-free logic over bounded integers, booleans and
//! fixed-width bit-vectors, and the trait the rest of the verifier uses to decide it.
//! Nothing outside `verify/z3.rs` knows which solver is behind the trait.

use crate::ir::{ArithOp, CmpOp};
use std::collections::BTreeMap;

/// A solver variable, by index into [`Query::vars`].
pub type VarIx = usize;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Sort {
    Bool,
    /// An integer known to lie in `lo..=hi`.
    Int {
        lo: i64,
        hi: i64,
    },
    /// A bit-vector of this many bits (1 to 64), e.g. a packet header field.
    Bits(u32),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Term {
    Bool(bool),
    Int(i64),
    /// A bit-vector constant: `value` in `width` bits (higher bits must be zero).
    Bits {
        width: u32,
        value: u64,
    },
    Var(VarIx),
    /// Bitwise and of two bit-vectors of one width (a masked match).
    BitAnd(Box<Term>, Box<Term>),
    Not(Box<Term>),
    And(Vec<Term>),
    Or(Vec<Term>),
    Cmp(CmpOp, Box<Term>, Box<Term>),
    Arith(ArithOp, Box<Term>, Box<Term>),
    Neg(Box<Term>),
}

impl Term {
    pub fn and(parts: Vec<Term>) -> Term {
        Term::And(parts)
    }
    pub fn negate(t: Term) -> Term {
        Term::Not(Box::new(t))
    }
    pub fn cmp(op: CmpOp, a: Term, b: Term) -> Term {
        Term::Cmp(op, Box::new(a), Box::new(b))
    }
    pub fn eq_int(v: VarIx, n: i64) -> Term {
        Term::cmp(CmpOp::Eq, Term::Var(v), Term::Int(n))
    }
    /// `v = value` for a bit-vector variable of `width` bits.
    pub fn eq_bits(v: VarIx, width: u32, value: u64) -> Term {
        Term::cmp(CmpOp::Eq, Term::Var(v), Term::Bits { width, value })
    }
    /// `a + b + ...` as a balanced tree (no deep recursion in the solver's encoder); 0 for
    /// none.
    pub fn sum(mut terms: Vec<Term>) -> Term {
        while terms.len() > 1 {
            let mut next = Vec::with_capacity(terms.len().div_ceil(2));
            let mut it = terms.into_iter();
            while let Some(a) = it.next() {
                next.push(match it.next() {
                    Some(b) => Term::Arith(ArithOp::Add, Box::new(a), Box::new(b)),
                    None => a,
                });
            }
            terms = next;
        }
        terms.pop().unwrap_or(Term::Int(0))
    }
    /// `a = b` for booleans: the two sides are equivalent.
    pub fn iff(a: Term, b: Term) -> Term {
        Term::cmp(CmpOp::Eq, a, b)
    }
}

/// Variables with their sorts and display names, and the facts to satisfy together.
/// Every variable's domain is asserted by the solver.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Query {
    pub vars: Vec<(String, Sort)>,
    pub facts: Vec<Term>,
}

/// A satisfying assignment, by variable name.
pub type Model = BTreeMap<String, ModelValue>;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(untagged)]
pub enum ModelValue {
    Bool(bool),
    Int(i64),
    Bits(u64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Sat(Model),
    Unsat,
    /// The solver gave up; the reason (a timeout, a resource limit) is reported.
    Unknown(String),
}

/// Decides queries. Implementations must honour their time limit and report `Unknown`
/// rather than guess.
pub trait Solver {
    fn solve(&self, q: &Query) -> Outcome;
}

/// The value of a term under a model of its query (`vars` the query's), or `None` where
/// the model leaves a variable out or the arithmetic leaves 64 bits. Lets one query
/// answer which of several disjuncts its model satisfies.
pub fn value_of(t: &Term, vars: &[(String, Sort)], model: &Model) -> Option<ModelValue> {
    let int = |t: &Term| match value_of(t, vars, model)? {
        ModelValue::Int(i) => Some(i),
        _ => None,
    };
    let boolean = |t: &Term| match value_of(t, vars, model)? {
        ModelValue::Bool(b) => Some(b),
        _ => None,
    };
    Some(match t {
        Term::Bool(b) => ModelValue::Bool(*b),
        Term::Int(i) => ModelValue::Int(*i),
        Term::Bits { value, .. } => ModelValue::Bits(*value),
        Term::Var(ix) => model.get(&vars.get(*ix)?.0)?.clone(),
        Term::BitAnd(a, b) => match (value_of(a, vars, model)?, value_of(b, vars, model)?) {
            (ModelValue::Bits(x), ModelValue::Bits(y)) => ModelValue::Bits(x & y),
            _ => return None,
        },
        Term::Not(a) => ModelValue::Bool(!boolean(a)?),
        Term::And(xs) => {
            let mut all = true;
            for x in xs {
                all &= boolean(x)?;
            }
            ModelValue::Bool(all)
        }
        Term::Or(xs) => {
            let mut any = false;
            for x in xs {
                any |= boolean(x)?;
            }
            ModelValue::Bool(any)
        }
        Term::Cmp(op, a, b) => {
            let (x, y) = (value_of(a, vars, model)?, value_of(b, vars, model)?);
            ModelValue::Bool(match (&x, &y) {
                (ModelValue::Int(x), ModelValue::Int(y)) => op.holds(x, y),
                (ModelValue::Bits(x), ModelValue::Bits(y)) => op.holds(x, y),
                (ModelValue::Bool(x), ModelValue::Bool(y)) => op.holds(x, y),
                _ => return None,
            })
        }
        Term::Arith(op, a, b) => {
            let (x, y) = (int(a)?, int(b)?);
            ModelValue::Int(match op {
                ArithOp::Add => x.checked_add(y)?,
                ArithOp::Sub => x.checked_sub(y)?,
                ArithOp::Mul => x.checked_mul(y)?,
            })
        }
        Term::Neg(a) => ModelValue::Int(int(a)?.checked_neg()?),
    })
}

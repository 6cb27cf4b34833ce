//! The Z3 implementation of [`Solver`]: a timeout on every check, domains of bounded
//! integers asserted as facts, bit-vectors as Z3 bit-vectors, one incremental solver
//! reused through push/pop.
//!
//! Creating a Z3 solver costs about as much as deciding one of our queries (parameter
//! and tactic set-up), so each `Z3Solver` keeps one and scopes every query in a
//! push/pop pair. Z3 contexts are not thread-safe; each thread gets one context, made on
//! first use and kept for the life of the process.

use super::solver::{Model, ModelValue, Outcome, Query, Solver, Sort, Term};
use crate::ir::{ArithOp, CmpOp};
use std::cell::RefCell;
use z3::ast::{Ast, Bool, Dynamic, Int, BV};

thread_local! {
    static CONTEXT: &'static z3::Context = {
        let mut cfg = z3::Config::new();
        cfg.set_model_generation(true);
        // One per thread, never freed: a solver borrows its context for its whole life.
        Box::leak(Box::new(z3::Context::new(&cfg)))
    };
}

pub struct Z3Solver {
    ctx: &'static z3::Context,
    solver: RefCell<z3::Solver<'static>>,
}

impl Z3Solver {
    /// A solver whose every check gives up after `timeout_ms` milliseconds.
    pub fn new(timeout_ms: u32) -> Self {
        let ctx = CONTEXT.with(|c| *c);
        let solver = z3::Solver::new(ctx);
        let mut params = z3::Params::new(ctx);
        params.set_u32("timeout", timeout_ms);
        solver.set_params(&params);
        Z3Solver {
            ctx,
            solver: RefCell::new(solver),
        }
    }
}

enum Val<'c> {
    B(Bool<'c>),
    I(Int<'c>),
    V(BV<'c>),
}

struct Enc<'c> {
    ctx: &'c z3::Context,
    vars: Vec<Dynamic<'c>>,
}

impl<'c> Enc<'c> {
    fn int(&self, t: &Term) -> Option<Int<'c>> {
        match self.term(t)? {
            Val::I(i) => Some(i),
            _ => None,
        }
    }
    fn boolean(&self, t: &Term) -> Option<Bool<'c>> {
        match self.term(t)? {
            Val::B(b) => Some(b),
            _ => None,
        }
    }
    fn bits(&self, t: &Term) -> Option<BV<'c>> {
        match self.term(t)? {
            Val::V(v) => Some(v),
            _ => None,
        }
    }
    fn term(&self, t: &Term) -> Option<Val<'c>> {
        let ctx = self.ctx;
        Some(match t {
            Term::Bool(b) => Val::B(Bool::from_bool(ctx, *b)),
            Term::Int(n) => Val::I(Int::from_i64(ctx, *n)),
            Term::Bits { width, value } => {
                if *width == 0 || *width > 64 || (*width < 64 && value >> width != 0) {
                    return None;
                }
                Val::V(BV::from_u64(ctx, *value, *width))
            }
            Term::Var(v) => {
                let d = self.vars.get(*v)?;
                if let Some(b) = d.as_bool() {
                    Val::B(b)
                } else if let Some(x) = d.as_bv() {
                    Val::V(x)
                } else {
                    Val::I(d.as_int()?)
                }
            }
            Term::BitAnd(a, b) => {
                let (x, y) = (self.bits(a)?, self.bits(b)?);
                if x.get_size() != y.get_size() {
                    return None;
                }
                Val::V(x.bvand(&y))
            }
            Term::Not(a) => Val::B(self.boolean(a)?.not()),
            Term::And(xs) | Term::Or(xs) => {
                let parts: Option<Vec<Bool<'c>>> = xs.iter().map(|x| self.boolean(x)).collect();
                let parts = parts?;
                let refs: Vec<&Bool<'c>> = parts.iter().collect();
                if matches!(t, Term::And(_)) {
                    Val::B(Bool::and(ctx, &refs))
                } else {
                    Val::B(Bool::or(ctx, &refs))
                }
            }
            Term::Cmp(op, a, b) => {
                let (x, y) = (self.term(a)?, self.term(b)?);
                Val::B(match (x, y) {
                    (Val::I(x), Val::I(y)) => match op {
                        CmpOp::Eq => x._eq(&y),
                        CmpOp::Ne => x._eq(&y).not(),
                        CmpOp::Lt => x.lt(&y),
                        CmpOp::Le => x.le(&y),
                        CmpOp::Gt => x.gt(&y),
                        CmpOp::Ge => x.ge(&y),
                    },
                    (Val::B(x), Val::B(y)) => match op {
                        CmpOp::Eq => x._eq(&y),
                        CmpOp::Ne => x._eq(&y).not(),
                        _ => return None,
                    },
                    // Header fields compare for equality only; widths must agree.
                    (Val::V(x), Val::V(y)) if x.get_size() == y.get_size() => match op {
                        CmpOp::Eq => x._eq(&y),
                        CmpOp::Ne => x._eq(&y).not(),
                        _ => return None,
                    },
                    _ => return None,
                })
            }
            Term::Arith(op, a, b) => {
                let (x, y) = (self.int(a)?, self.int(b)?);
                Val::I(match op {
                    ArithOp::Add => Int::add(ctx, &[&x, &y]),
                    ArithOp::Sub => Int::sub(ctx, &[&x, &y]),
                    ArithOp::Mul => Int::mul(ctx, &[&x, &y]),
                })
            }
            Term::Neg(a) => Val::I(self.int(a)?.unary_minus()),
        })
    }
}

impl Solver for Z3Solver {
    fn solve(&self, q: &Query) -> Outcome {
        let Ok(solver) = self.solver.try_borrow() else {
            return Outcome::Unknown("solver re-entered (an internal error)".into());
        };
        solver.push();
        let out = self.decide(&solver, q);
        solver.pop(1);
        out
    }
}

impl Z3Solver {
    fn decide(&self, solver: &z3::Solver<'static>, q: &Query) -> Outcome {
        let ctx = self.ctx;
        let mut enc = Enc {
            ctx,
            vars: Vec::with_capacity(q.vars.len()),
        };
        for (i, (_, sort)) in q.vars.iter().enumerate() {
            let name = format!("v{i}");
            match sort {
                Sort::Bool => enc
                    .vars
                    .push(Dynamic::from_ast(&Bool::new_const(ctx, name))),
                Sort::Int { lo, hi } => {
                    let v = Int::new_const(ctx, name);
                    solver.assert(&v.ge(&Int::from_i64(ctx, *lo)));
                    solver.assert(&v.le(&Int::from_i64(ctx, *hi)));
                    enc.vars.push(Dynamic::from_ast(&v));
                }
                Sort::Bits(width) => {
                    if *width == 0 || *width > 64 {
                        return Outcome::Unknown("ill-sorted query (an internal error)".into());
                    }
                    enc.vars
                        .push(Dynamic::from_ast(&BV::new_const(ctx, name, *width)));
                }
            }
        }
        for f in &q.facts {
            match enc.boolean(f) {
                Some(b) => solver.assert(&b),
                None => return Outcome::Unknown("ill-sorted query (an internal error)".into()),
            }
        }
        match solver.check() {
            z3::SatResult::Unsat => Outcome::Unsat,
            z3::SatResult::Unknown => Outcome::Unknown(
                solver
                    .get_reason_unknown()
                    .unwrap_or_else(|| "unknown".into()),
            ),
            z3::SatResult::Sat => {
                let Some(model) = solver.get_model() else {
                    return Outcome::Unknown("no model".into());
                };
                let mut out = Model::new();
                for (i, (name, sort)) in q.vars.iter().enumerate() {
                    let value = match sort {
                        Sort::Bool => enc.vars[i]
                            .as_bool()
                            .and_then(|b| model.eval(&b, true))
                            .and_then(|b| b.as_bool())
                            .map(ModelValue::Bool),
                        Sort::Int { .. } => enc.vars[i]
                            .as_int()
                            .and_then(|x| model.eval(&x, true))
                            .and_then(|x| x.as_i64())
                            .map(ModelValue::Int),
                        Sort::Bits(_) => enc.vars[i]
                            .as_bv()
                            .and_then(|x| model.eval(&x, true))
                            .and_then(|x| x.as_u64())
                            .map(ModelValue::Bits),
                    };
                    if let Some(v) = value {
                        out.insert(name.clone(), v);
                    }
                }
                Outcome::Sat(out)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decides_bounded_integers() {
        let s = Z3Solver::new(5_000);
        let x = 0;
        let q = Query {
            vars: vec![("x".into(), Sort::Int { lo: 0, hi: 10 })],
            facts: vec![Term::cmp(CmpOp::Gt, Term::Var(x), Term::Int(9))],
        };
        assert_eq!(
            s.solve(&q),
            Outcome::Sat([("x".to_string(), ModelValue::Int(10))].into())
        );
        let q = Query {
            vars: vec![("x".into(), Sort::Int { lo: 0, hi: 10 })],
            facts: vec![Term::cmp(CmpOp::Gt, Term::Var(x), Term::Int(10))],
        };
        assert_eq!(s.solve(&q), Outcome::Unsat);
    }

    #[test]
    fn decides_masked_bit_vectors() {
        let s = Z3Solver::new(5_000);
        // A 16-bit field whose low 13 bits are zero, and which is not zero.
        let masked = Term::BitAnd(
            Box::new(Term::Var(0)),
            Box::new(Term::Bits {
                width: 16,
                value: 0x1fff,
            }),
        );
        let q = Query {
            vars: vec![("tci".into(), Sort::Bits(16))],
            facts: vec![
                Term::cmp(
                    CmpOp::Eq,
                    masked.clone(),
                    Term::Bits {
                        width: 16,
                        value: 0,
                    },
                ),
                Term::cmp(
                    CmpOp::Ne,
                    Term::Var(0),
                    Term::Bits {
                        width: 16,
                        value: 0,
                    },
                ),
            ],
        };
        let v = match s.solve(&q) {
            Outcome::Sat(m) => m.get("tci").cloned(),
            _ => None,
        };
        assert!(
            matches!(v, Some(ModelValue::Bits(x)) if x != 0 && x & 0x1fff == 0),
            "{v:?}"
        );
        // 48-bit values round-trip, and mixing widths is refused, never guessed.
        let q = Query {
            vars: vec![("mac".into(), Sort::Bits(48))],
            facts: vec![Term::eq_bits(0, 48, 0xffff_ffff_fffe)],
        };
        assert_eq!(
            s.solve(&q),
            Outcome::Sat([("mac".to_string(), ModelValue::Bits(0xffff_ffff_fffe))].into())
        );
        let q = Query {
            vars: vec![("mac".into(), Sort::Bits(48))],
            facts: vec![Term::eq_bits(0, 32, 1)],
        };
        assert!(matches!(s.solve(&q), Outcome::Unknown(_)));
    }
}

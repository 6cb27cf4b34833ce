//! Evaluation of the compiled expression IR (guards and rule conditions) over a site's
//! current values, reading histories, device states and the time of day, with the
//! verifier's semantics (`docs/verification.md`, "Encoding"):
//!
//! - integers are 64-bit and exact: `bundle.rs` refused any expression whose declared
//!   ranges could overflow, so `+ - *` here never wrap (an overflow is still an error,
//!   never a wrong value);
//! - enum values are member indices, compared with `==`/`!=`;
//! - `avg(x, last N)` is the mean of the last N readings rounded down (towards negative
//!   infinity), `sum` their sum, `min`/`max` the extremes; the current reading is the
//!   newest of the window;
//! - `clock in from..to` holds for `from <= minute < to`, or, when `from > to`, for
//!   `minute >= from or minute < to` (past midnight).
//!
//! **Unknown values.** A variable the device has not reported yet, and an aggregate over
//! fewer readings than its window, have no value. The verifier only assumes a value lies
//! in its declared range and, for an aggregate, that it is bracketed by the window's
//! readings; an aggregate over a shorter history would break that (a `sum` of 3 readings
//! is not within `N·lo .. N·hi` of a window of 10), so it is unknown instead. Unknowns
//! propagate through `not`, comparisons and arithmetic; `and` is false as soon as one
//! operand is false and `or` true as soon as one is true (Kleene's logic). A guard or a
//! condition *holds* only when it evaluates to a known `true`: then it is true whatever
//! the unknowns are, so every firing is one the verifier's model allows.

use crate::manifest::{AggFunc, ArithOp, CmpOp, Expr, ExprKind, VarRef};

/// A value: booleans, and integers (enum values as member indices).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value {
    Bool(bool),
    Int(i64),
}

/// What an expression can read.
pub trait Env {
    /// The current value of a variable, if it has been reported.
    fn value(&self, var: VarRef) -> Option<Value>;
    /// The last `n` readings of an integer variable; `None` when fewer than `n` have been
    /// reported.
    fn window(&self, var: VarRef, n: usize) -> Option<impl Iterator<Item = i64> + '_>;
    /// The current state of a site device.
    fn state(&self, device: u32) -> Option<u32>;
    /// Minutes since local midnight, `0..1440`.
    fn minute_of_day(&self) -> u16;
}

/// An expression that cannot be evaluated. A checked bundle never produces one; the
/// engine reports it and treats the condition as not holding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    #[error("{0} is not of the type the expression needs")]
    Type(&'static str),
    #[error("integer overflow in `{0}`")]
    Overflow(&'static str),
    #[error("device {0} does not exist")]
    NoDevice(u32),
}

/// A value, or `None` when it depends on values not known yet.
pub type Eval = Result<Option<Value>, EvalError>;

/// Whether a condition holds: a known `true`.
pub fn holds<E: Env>(e: &Expr, env: &E) -> Result<bool, EvalError> {
    Ok(matches!(eval(e, env)?, Some(Value::Bool(true))))
}

fn boolean(v: Option<Value>, what: &'static str) -> Result<Option<bool>, EvalError> {
    match v {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(b)),
        Some(Value::Int(_)) => Err(EvalError::Type(what)),
    }
}

fn integer(v: Option<Value>, what: &'static str) -> Result<Option<i64>, EvalError> {
    match v {
        None => Ok(None),
        Some(Value::Int(i)) => Ok(Some(i)),
        Some(Value::Bool(_)) => Err(EvalError::Type(what)),
    }
}

/// Whether minute `m` of the day lies in `from..to` (wrapping past midnight when
/// `from > to`; an empty window `from == to` holds nowhere).
pub fn in_window(m: u16, from: u16, to: u16) -> bool {
    if from <= to {
        from <= m && m < to
    } else {
        m >= from || m < to
    }
}

/// Evaluates an expression.
pub fn eval<E: Env>(e: &Expr, env: &E) -> Eval {
    Ok(match &e.kind {
        ExprKind::Bool { value } => Some(Value::Bool(*value)),
        ExprKind::Int { value } => Some(Value::Int(*value)),
        ExprKind::Var { var } => env.value(*var),
        ExprKind::Aggregate { func, var, last } => {
            let n = usize::try_from(*last).map_err(|_| EvalError::Overflow("window"))?;
            match env.window(*var, n) {
                None => None,
                Some(w) => Some(Value::Int(aggregate(*func, w, n)?)),
            }
        }
        ExprKind::InState { device, state } => {
            let s = env.state(*device).ok_or(EvalError::NoDevice(*device))?;
            Some(Value::Bool(s == *state))
        }
        ExprKind::Clock { from, to } => Some(Value::Bool(
            from != to && in_window(env.minute_of_day(), *from, *to),
        )),
        ExprKind::Not { arg } => {
            boolean(eval(arg, env)?, "the operand of `not`")?.map(|b| Value::Bool(!b))
        }
        ExprKind::Neg { arg } => match integer(eval(arg, env)?, "the operand of `-`")? {
            None => None,
            Some(i) => Some(Value::Int(i.checked_neg().ok_or(EvalError::Overflow("-"))?)),
        },
        ExprKind::And { args } => {
            let mut unknown = false;
            for a in args {
                match boolean(eval(a, env)?, "an operand of `and`")? {
                    Some(false) => return Ok(Some(Value::Bool(false))),
                    Some(true) => {}
                    None => unknown = true,
                }
            }
            (!unknown).then_some(Value::Bool(true))
        }
        ExprKind::Or { args } => {
            let mut unknown = false;
            for a in args {
                match boolean(eval(a, env)?, "an operand of `or`")? {
                    Some(true) => return Ok(Some(Value::Bool(true))),
                    Some(false) => {}
                    None => unknown = true,
                }
            }
            (!unknown).then_some(Value::Bool(false))
        }
        ExprKind::Cmp { cmp, lhs, rhs } => {
            let (l, r) = (eval(lhs, env)?, eval(rhs, env)?);
            match (l, r) {
                (None, _) | (_, None) => None,
                (Some(Value::Int(a)), Some(Value::Int(b))) => Some(Value::Bool(cmp.holds(&a, &b))),
                (Some(Value::Bool(a)), Some(Value::Bool(b))) => Some(Value::Bool(match cmp {
                    CmpOp::Eq => a == b,
                    CmpOp::Ne => a != b,
                    _ => return Err(EvalError::Type("an ordered comparison of booleans")),
                })),
                _ => return Err(EvalError::Type("a comparison of a boolean with an integer")),
            }
        }
        // Known only when every condition is: a count that may be off is not a count.
        ExprKind::Count { args } => {
            let mut n: i64 = 0;
            let mut unknown = false;
            for a in args {
                match boolean(eval(a, env)?, "an operand of `count`")? {
                    Some(true) => n = n.checked_add(1).ok_or(EvalError::Overflow("count"))?,
                    Some(false) => {}
                    None => unknown = true,
                }
            }
            (!unknown).then_some(Value::Int(n))
        }
        ExprKind::Arith { arith, lhs, rhs } => {
            let l = integer(eval(lhs, env)?, "an operand of arithmetic")?;
            let r = integer(eval(rhs, env)?, "an operand of arithmetic")?;
            match (l, r) {
                (Some(a), Some(b)) => Some(Value::Int(match arith {
                    ArithOp::Add => a.checked_add(b).ok_or(EvalError::Overflow("+"))?,
                    ArithOp::Sub => a.checked_sub(b).ok_or(EvalError::Overflow("-"))?,
                    ArithOp::Mul => a.checked_mul(b).ok_or(EvalError::Overflow("*"))?,
                })),
                _ => None,
            }
        }
    })
}

/// An aggregate over a full window of `n` readings.
fn aggregate(func: AggFunc, window: impl Iterator<Item = i64>, n: usize) -> Result<i64, EvalError> {
    let (mut sum, mut lo, mut hi) = (0i128, i64::MAX, i64::MIN);
    for x in window {
        sum += i128::from(x);
        lo = lo.min(x);
        hi = hi.max(x);
    }
    let overflow = || EvalError::Overflow(func.name());
    Ok(match func {
        AggFunc::Min => lo,
        AggFunc::Max => hi,
        AggFunc::Sum => i64::try_from(sum).map_err(|_| overflow())?,
        AggFunc::Avg => {
            let n = i128::try_from(n).map_err(|_| overflow())?;
            if n == 0 {
                return Err(overflow());
            }
            i64::try_from(sum.div_euclid(n)).map_err(|_| overflow())?
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::manifest::Ty;

    /// Variables 0.. of device 0 (or of the guard's device), their histories (oldest
    /// first), device states and the minute of the day.
    #[derive(Default)]
    struct TestEnv {
        values: Vec<Option<Value>>,
        history: Vec<Vec<i64>>,
        states: Vec<u32>,
        minute: u16,
    }

    impl Env for TestEnv {
        fn value(&self, var: VarRef) -> Option<Value> {
            self.values.get(var.var as usize).copied().flatten()
        }
        fn window(&self, var: VarRef, n: usize) -> Option<impl Iterator<Item = i64> + '_> {
            let h = self.history.get(var.var as usize)?;
            (h.len() >= n).then(|| h[h.len() - n..].iter().copied())
        }
        fn state(&self, device: u32) -> Option<u32> {
            self.states.get(device as usize).copied()
        }
        fn minute_of_day(&self) -> u16 {
            self.minute
        }
    }

    fn node(kind: ExprKind, ty: Ty) -> Expr {
        Expr { kind, ty }
    }
    fn int(v: i64) -> Expr {
        node(ExprKind::Int { value: v }, Ty::Int { lo: v, hi: v })
    }
    fn boolean(v: bool) -> Expr {
        node(ExprKind::Bool { value: v }, Ty::Bool)
    }
    fn var(i: u32) -> Expr {
        node(
            ExprKind::Var {
                var: VarRef {
                    device: None,
                    var: i,
                },
            },
            Ty::Int {
                lo: -1000,
                hi: 1000,
            },
        )
    }
    fn agg(func: AggFunc, i: u32, last: u32) -> Expr {
        node(
            ExprKind::Aggregate {
                func,
                var: VarRef {
                    device: None,
                    var: i,
                },
                last,
            },
            Ty::Int {
                lo: -1000,
                hi: 1000,
            },
        )
    }
    fn not(a: Expr) -> Expr {
        node(ExprKind::Not { arg: Box::new(a) }, Ty::Bool)
    }
    fn neg(a: Expr) -> Expr {
        node(
            ExprKind::Neg { arg: Box::new(a) },
            Ty::Int {
                lo: -1000,
                hi: 1000,
            },
        )
    }
    fn and(args: Vec<Expr>) -> Expr {
        node(ExprKind::And { args }, Ty::Bool)
    }
    fn or(args: Vec<Expr>) -> Expr {
        node(ExprKind::Or { args }, Ty::Bool)
    }
    fn cmp(op: CmpOp, l: Expr, r: Expr) -> Expr {
        node(
            ExprKind::Cmp {
                cmp: op,
                lhs: Box::new(l),
                rhs: Box::new(r),
            },
            Ty::Bool,
        )
    }
    fn arith(op: ArithOp, l: Expr, r: Expr) -> Expr {
        node(
            ExprKind::Arith {
                arith: op,
                lhs: Box::new(l),
                rhs: Box::new(r),
            },
            Ty::Int {
                lo: -1000,
                hi: 1000,
            },
        )
    }
    fn clock(from: u16, to: u16) -> Expr {
        node(ExprKind::Clock { from, to }, Ty::Bool)
    }
    fn instate(device: u32, state: u32) -> Expr {
        node(ExprKind::InState { device, state }, Ty::Bool)
    }

    fn env() -> TestEnv {
        TestEnv::default()
    }
    fn ev(e: &Expr, env: &TestEnv) -> Option<Value> {
        eval(e, env).unwrap()
    }
    const T: Option<Value> = Some(Value::Bool(true));
    const F: Option<Value> = Some(Value::Bool(false));
    fn i(v: i64) -> Option<Value> {
        Some(Value::Int(v))
    }

    #[test]
    fn literals_and_variables() {
        let e = TestEnv {
            values: vec![Some(Value::Int(7)), None, Some(Value::Bool(true))],
            ..env()
        };
        assert_eq!(ev(&int(-3), &e), i(-3));
        assert_eq!(ev(&boolean(false), &e), F);
        assert_eq!(ev(&var(0), &e), i(7));
        assert_eq!(ev(&var(1), &e), None, "never reported");
        assert_eq!(ev(&var(2), &e), T);
    }

    #[test]
    fn not_and_neg() {
        let e = env();
        assert_eq!(ev(&not(boolean(true)), &e), F);
        assert_eq!(ev(&not(boolean(false)), &e), T);
        assert_eq!(ev(&not(var(0)), &e), None);
        assert_eq!(ev(&neg(int(5)), &e), i(-5));
        assert_eq!(ev(&neg(int(-5)), &e), i(5));
        assert_eq!(ev(&neg(var(0)), &e), None);
        assert_eq!(eval(&neg(int(i64::MIN)), &e), Err(EvalError::Overflow("-")));
    }

    #[test]
    fn and_or_are_kleene() {
        let e = env(); // var 0 unknown
        let u = || cmp(CmpOp::Gt, var(0), int(1));
        assert_eq!(ev(&and(vec![boolean(true), boolean(true)]), &e), T);
        assert_eq!(ev(&and(vec![boolean(true), boolean(false)]), &e), F);
        assert_eq!(
            ev(&and(vec![u(), boolean(false)]), &e),
            F,
            "false whatever the unknown"
        );
        assert_eq!(ev(&and(vec![u(), boolean(true)]), &e), None);
        assert_eq!(ev(&or(vec![boolean(false), boolean(false)]), &e), F);
        assert_eq!(ev(&or(vec![boolean(false), boolean(true)]), &e), T);
        assert_eq!(
            ev(&or(vec![u(), boolean(true)]), &e),
            T,
            "true whatever the unknown"
        );
        assert_eq!(ev(&or(vec![u(), boolean(false)]), &e), None);
        assert_eq!(ev(&and(vec![]), &e), T);
        assert_eq!(ev(&or(vec![]), &e), F);
        // A condition that is unknown does not hold, and neither does its negation.
        assert!(!holds(&u(), &e).unwrap());
        assert!(!holds(&not(u()), &e).unwrap());
    }

    #[test]
    fn count_is_known_only_when_every_condition_is() {
        let e = env(); // var 0 unknown
        let u = || cmp(CmpOp::Gt, var(0), int(1));
        let count = |args: Vec<Expr>| {
            let hi = i64::try_from(args.len()).unwrap();
            node(ExprKind::Count { args }, Ty::Int { lo: 0, hi })
        };
        assert_eq!(ev(&count(vec![]), &e), i(0));
        assert_eq!(
            ev(
                &count(vec![boolean(true), boolean(false), boolean(true)]),
                &e
            ),
            i(2)
        );
        assert_eq!(ev(&count(vec![boolean(true), u()]), &e), None);
        // So a comparison of it does not hold, and neither does its negation.
        let at_least_one = cmp(CmpOp::Ge, count(vec![boolean(true), u()]), int(1));
        assert!(!holds(&at_least_one, &e).unwrap());
        assert!(!holds(&not(at_least_one), &e).unwrap());
        assert!(eval(&count(vec![int(1)]), &e).is_err());
    }

    #[test]
    fn comparisons() {
        let e = env();
        let c = |op, a, b| ev(&cmp(op, int(a), int(b)), &e);
        assert_eq!(c(CmpOp::Eq, 3, 3), T);
        assert_eq!(c(CmpOp::Eq, 3, 4), F);
        assert_eq!(c(CmpOp::Ne, 3, 4), T);
        assert_eq!(c(CmpOp::Ne, 3, 3), F);
        assert_eq!(c(CmpOp::Lt, 3, 4), T);
        assert_eq!(c(CmpOp::Lt, 4, 4), F);
        assert_eq!(c(CmpOp::Le, 4, 4), T);
        assert_eq!(c(CmpOp::Le, 5, 4), F);
        assert_eq!(c(CmpOp::Gt, 5, 4), T);
        assert_eq!(c(CmpOp::Gt, 4, 4), F);
        assert_eq!(c(CmpOp::Ge, 4, 4), T);
        assert_eq!(c(CmpOp::Ge, 3, 4), F);
        assert_eq!(ev(&cmp(CmpOp::Eq, boolean(true), boolean(true)), &e), T);
        assert_eq!(ev(&cmp(CmpOp::Ne, boolean(true), boolean(false)), &e), T);
        assert_eq!(ev(&cmp(CmpOp::Lt, var(0), int(1)), &e), None);
        assert!(eval(&cmp(CmpOp::Lt, boolean(true), boolean(false)), &e).is_err());
        assert!(eval(&cmp(CmpOp::Eq, boolean(true), int(1)), &e).is_err());
    }

    #[test]
    fn enums_compare_by_member_index() {
        // `mode != heat` with mode = cool (members off, heat, cool).
        let members = vec!["off".to_string(), "heat".to_string(), "cool".to_string()];
        let mode = node(
            ExprKind::Var {
                var: VarRef {
                    device: None,
                    var: 0,
                },
            },
            Ty::Enum {
                members: members.clone(),
            },
        );
        let heat = node(ExprKind::Int { value: 1 }, Ty::Enum { members });
        let e = TestEnv {
            values: vec![Some(Value::Int(2))],
            ..env()
        };
        assert_eq!(ev(&cmp(CmpOp::Ne, mode.clone(), heat.clone()), &e), T);
        assert_eq!(ev(&cmp(CmpOp::Eq, mode, heat), &e), F);
    }

    #[test]
    fn integer_arithmetic() {
        let e = env();
        assert_eq!(ev(&arith(ArithOp::Add, int(2), int(3)), &e), i(5));
        assert_eq!(ev(&arith(ArithOp::Sub, int(2), int(3)), &e), i(-1));
        assert_eq!(ev(&arith(ArithOp::Mul, int(-4), int(3)), &e), i(-12));
        assert_eq!(ev(&arith(ArithOp::Add, var(0), int(3)), &e), None);
        assert_eq!(
            eval(&arith(ArithOp::Mul, int(i64::MAX), int(2)), &e),
            Err(EvalError::Overflow("*"))
        );
        assert_eq!(
            eval(&arith(ArithOp::Add, int(i64::MAX), int(1)), &e),
            Err(EvalError::Overflow("+"))
        );
    }

    #[test]
    fn aggregates_over_the_last_n_readings() {
        let e = TestEnv {
            values: vec![Some(Value::Int(4))],
            history: vec![vec![100, 1, -2, 6, 4]],
            ..env()
        };
        // The window is the newest three: -2, 6, 4 (the first two are older).
        assert_eq!(ev(&agg(AggFunc::Sum, 0, 3), &e), i(8));
        assert_eq!(ev(&agg(AggFunc::Min, 0, 3), &e), i(-2));
        assert_eq!(ev(&agg(AggFunc::Max, 0, 3), &e), i(6));
        assert_eq!(ev(&agg(AggFunc::Avg, 0, 3), &e), i(2), "8 / 3 rounds down");
        assert_eq!(
            ev(&agg(AggFunc::Avg, 0, 1), &e),
            i(4),
            "last 1 is the reading"
        );
        assert_eq!(ev(&agg(AggFunc::Sum, 0, 5), &e), i(109));
    }

    #[test]
    fn avg_rounds_down_also_below_zero() {
        let e = TestEnv {
            history: vec![vec![-1, -2]],
            ..env()
        };
        // -3 / 2 = -1.5: rounded down is -2 (not -1, as truncation would give).
        assert_eq!(ev(&agg(AggFunc::Avg, 0, 2), &e), i(-2));
        let e = TestEnv {
            history: vec![vec![1, 2]],
            ..env()
        };
        assert_eq!(ev(&agg(AggFunc::Avg, 0, 2), &e), i(1));
    }

    #[test]
    fn aggregates_need_a_full_window() {
        let e = TestEnv {
            history: vec![vec![5, 5]],
            ..env()
        };
        for f in [AggFunc::Avg, AggFunc::Sum, AggFunc::Min, AggFunc::Max] {
            assert_eq!(ev(&agg(f, 0, 3), &e), None, "{f:?} over 2 of 3 readings");
        }
        // ... and a condition on it does not hold (nor does its negation).
        let c = cmp(CmpOp::Lt, agg(AggFunc::Sum, 0, 3), int(100));
        assert!(!holds(&c, &e).unwrap());
        assert!(!holds(&not(c), &e).unwrap());
    }

    #[test]
    fn clock_windows_and_midnight() {
        let at = |m: u16| TestEnv { minute: m, ..env() };
        let day = clock(9 * 60, 17 * 60); // 09:00..17:00
        assert_eq!(ev(&day, &at(9 * 60)), T, "from is included");
        assert_eq!(ev(&day, &at(17 * 60 - 1)), T);
        assert_eq!(ev(&day, &at(17 * 60)), F, "to is excluded");
        assert_eq!(ev(&day, &at(8 * 60 + 59)), F);
        let night = clock(20 * 60, 6 * 60); // 20:00..06:00 wraps
        assert_eq!(ev(&night, &at(20 * 60)), T);
        assert_eq!(ev(&night, &at(23 * 60 + 59)), T);
        assert_eq!(ev(&night, &at(0)), T, "midnight is inside");
        assert_eq!(ev(&night, &at(6 * 60 - 1)), T);
        assert_eq!(ev(&night, &at(6 * 60)), F);
        assert_eq!(ev(&night, &at(12 * 60)), F);
        assert_eq!(ev(&night, &at(20 * 60 - 1)), F);
    }

    #[test]
    fn device_states() {
        let e = TestEnv {
            states: vec![0, 2],
            ..env()
        };
        assert_eq!(ev(&instate(1, 2), &e), T);
        assert_eq!(ev(&instate(1, 0), &e), F);
        assert_eq!(ev(&instate(0, 0), &e), T);
        assert_eq!(eval(&instate(5, 0), &e), Err(EvalError::NoDevice(5)));
    }

    #[test]
    fn type_errors_are_errors_not_values() {
        let e = TestEnv {
            values: vec![Some(Value::Int(1))],
            ..env()
        };
        assert!(eval(&not(int(1)), &e).is_err());
        assert!(eval(&and(vec![var(0)]), &e).is_err());
        assert!(eval(&neg(boolean(true)), &e).is_err());
    }
}

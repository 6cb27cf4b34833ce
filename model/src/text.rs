//! The compiled IR back as policy text, for people: expressions with names instead of
//! indices (`temperature > 35`, `hall_cam in normal and not lobby_light.on`) and
//! transitions' triggers with their guards.

use crate::manifest::{
    Action, AggFunc, ArithOp, CmpOp, Expr, ExprKind, Manifest, Trigger, Ty, VarRef,
};

/// Names for the indices of one manifest. `this_type` is the device type whose guard is
/// printed (its variables appear bare); `None` in rules.
pub struct Names<'a> {
    pub manifest: &'a Manifest,
    pub types: &'a [usize],
    pub this_type: Option<usize>,
}

impl Names<'_> {
    fn device(&self, d: u32) -> String {
        self.manifest
            .devices
            .get(d as usize)
            .map_or_else(|| format!("device#{d}"), |d| d.name.clone())
    }

    fn type_of(&self, device: Option<u32>) -> Option<usize> {
        match device {
            None => self.this_type,
            Some(d) => self.types.get(d as usize).copied(),
        }
    }

    fn var(&self, r: VarRef) -> String {
        let name = self
            .type_of(r.device)
            .and_then(|t| self.manifest.device_types.get(t))
            .and_then(|t| t.vars.get(r.var as usize))
            .map_or_else(|| format!("var#{}", r.var), |v| v.name.clone());
        match r.device {
            None => name,
            Some(d) => format!("{}.{name}", self.device(d)),
        }
    }

    fn state(&self, d: u32, s: u32) -> String {
        self.type_of(Some(d))
            .and_then(|t| self.manifest.device_types.get(t))
            .and_then(|t| t.states.get(s as usize))
            .map_or_else(|| format!("state#{s}"), Clone::clone)
    }

    /// A trigger as written, with its guard: `when temperature > 35 for 30s`.
    pub fn trigger(&self, t: &Trigger) -> String {
        match t {
            Trigger::When { guard, hold_ms } => {
                let hold = hold_ms.map_or(String::new(), |h| {
                    format!(" for {}", crate::manifest::duration(h))
                });
                format!("when {}{hold}", self.expr(guard))
            }
            other => other.to_string(),
        }
    }

    /// A rule's action as written: `cam -> attack`, `escalate cam to attack`,
    /// `light.turn_on`, `raise overheat on thermo`.
    pub fn action(&self, a: &Action) -> String {
        match a {
            Action::Goto { device, state } => {
                format!(
                    "{} -> {}",
                    self.device(*device),
                    self.state(*device, *state)
                )
            }
            Action::Escalate { device, state } => format!(
                "escalate {} to {}",
                self.device(*device),
                self.state(*device, *state)
            ),
            Action::Command { device, command } => {
                format!("{}.{command}", self.device(*device))
            }
            Action::Raise { device, alert } => {
                format!("raise {alert} on {}", self.device(*device))
            }
        }
    }

    /// An expression in the language's syntax, parenthesised only where needed.
    pub fn expr(&self, e: &Expr) -> String {
        match &e.kind {
            ExprKind::Bool { value } => value.to_string(),
            ExprKind::Int { value } => match &e.ty {
                Ty::Enum { members } => usize::try_from(*value)
                    .ok()
                    .and_then(|i| members.get(i))
                    .map_or_else(|| value.to_string(), Clone::clone),
                _ => value.to_string(),
            },
            ExprKind::Var { var } => self.var(*var),
            ExprKind::Aggregate { func, var, last } => {
                let f = match func {
                    AggFunc::Avg => "avg",
                    AggFunc::Sum => "sum",
                    AggFunc::Min => "min",
                    AggFunc::Max => "max",
                };
                format!("{f}({}, last {last})", self.var(*var))
            }
            ExprKind::InState { device, state } => {
                format!(
                    "{} in {}",
                    self.device(*device),
                    self.state(*device, *state)
                )
            }
            ExprKind::Clock { from, to } => format!(
                "clock in {:02}:{:02}..{:02}:{:02}",
                from / 60,
                from % 60,
                to / 60,
                to % 60
            ),
            ExprKind::Not { arg } => format!("not {}", self.operand(arg, 3)),
            ExprKind::Neg { arg } => format!("-{}", self.operand(arg, 7)),
            ExprKind::And { args } => self.join(args, " and ", 2),
            ExprKind::Or { args } => self.join(args, " or ", 1),
            ExprKind::Cmp { cmp, lhs, rhs } => {
                let op = match cmp {
                    CmpOp::Eq => "==",
                    CmpOp::Ne => "!=",
                    CmpOp::Lt => "<",
                    CmpOp::Le => "<=",
                    CmpOp::Gt => ">",
                    CmpOp::Ge => ">=",
                };
                format!("{} {op} {}", self.operand(lhs, 5), self.operand(rhs, 5))
            }
            // The group and its name are expanded away: the conditions counted, listed.
            ExprKind::Count { args } => format!("count({})", self.join(args, ", ", 0)),
            ExprKind::Arith { arith, lhs, rhs } => {
                let (op, p) = match arith {
                    ArithOp::Add => ("+", 5),
                    ArithOp::Sub => ("-", 5),
                    ArithOp::Mul => ("*", 6),
                };
                // Left-associative: the right operand of `-` needs parentheses at `-`.
                format!("{} {op} {}", self.operand(lhs, p), self.operand(rhs, p + 1))
            }
        }
    }

    fn join(&self, args: &[Expr], sep: &str, p: u8) -> String {
        args.iter()
            .map(|a| self.operand(a, p + 1))
            .collect::<Vec<_>>()
            .join(sep)
    }

    /// `e`, in parentheses when it binds more loosely than `min`.
    fn operand(&self, e: &Expr, min: u8) -> String {
        let text = self.expr(e);
        if precedence(e) < min {
            format!("({text})")
        } else {
            text
        }
    }
}

/// Loosest first: `or` 1, `and` 2, `not` 3, comparisons 4, `+ -` 5, `*` 6, unary `-` 7,
/// atoms 8.
fn precedence(e: &Expr) -> u8 {
    match &e.kind {
        ExprKind::Or { args } if args.len() > 1 => 1,
        ExprKind::And { args } if args.len() > 1 => 2,
        ExprKind::Not { .. } => 3,
        ExprKind::Cmp { .. } => 4,
        ExprKind::Arith {
            arith: ArithOp::Add | ArithOp::Sub,
            ..
        } => 5,
        ExprKind::Arith {
            arith: ArithOp::Mul,
            ..
        } => 6,
        ExprKind::Neg { .. } => 7,
        // Atoms, `dev in state` and `clock in ...` included (as in the grammar).
        _ => 8,
    }
}

/// The Levenshtein distance of two short strings, in characters: the "did you mean" of
/// every message (the compiler's, the engine's, `kalkic explain`'s) is measured with it.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::edit_distance;

    #[test]
    fn edit_distances() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "ids"), 3);
        assert_eq!(edit_distance("K118", "K116"), 1);
        assert_eq!(edit_distance("µbox", "mbox"), 1);
        assert_eq!(edit_distance("same", "same"), 0);
    }
}

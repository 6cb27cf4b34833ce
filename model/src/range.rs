//! Exact integer bounds: the one definition of the range of `+`, `-`, `*`, unary `-` and
//! `sum(x, last N)` over declared ranges. The compiler's type checker refuses a policy
//! whose bounds leave 64 bits (K114) and the bundle loader a bundle (S1xx) by these same
//! functions, so the node never sees a bundle it would refuse.
//!
//! Bounds are computed in 128 bits, where operations on 64-bit bounds cannot overflow.

use crate::manifest::ArithOp;

/// The lowest and highest value of an integer expression, exact.
pub type Bounds = (i128, i128);

/// `a OP b` for `a` in `a.0..=a.1` and `b` in `b.0..=b.1`.
pub fn arith(op: ArithOp, a: (i64, i64), b: (i64, i64)) -> Bounds {
    let (al, ah, bl, bh) = (
        i128::from(a.0),
        i128::from(a.1),
        i128::from(b.0),
        i128::from(b.1),
    );
    match op {
        ArithOp::Add => (al + bl, ah + bh),
        ArithOp::Sub => (al - bh, ah - bl),
        ArithOp::Mul => {
            let c = [al * bl, al * bh, ah * bl, ah * bh];
            let lo = c.iter().copied().min().unwrap_or(0);
            let hi = c.iter().copied().max().unwrap_or(0);
            (lo, hi)
        }
    }
}

/// `-a`.
pub fn neg(a: (i64, i64)) -> Bounds {
    (-i128::from(a.1), -i128::from(a.0))
}

/// `sum(x, last n)` for readings of `x` in `x.0..=x.1`.
pub fn sum(x: (i64, i64), n: u32) -> Bounds {
    let n = i128::from(n);
    (i128::from(x.0) * n, i128::from(x.1) * n)
}

/// The bounds as 64-bit integers, if every value fits.
pub fn fits(b: Bounds) -> Option<(i64, i64)> {
    Some((i64::try_from(b.0).ok()?, i64::try_from(b.1).ok()?))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn bounds_are_exact_at_the_edges_of_64_bits() {
        let all = (i64::MIN, i64::MAX);
        assert_eq!(
            fits(arith(ArithOp::Add, (0, i64::MAX), (0, 0))),
            Some((0, i64::MAX))
        );
        assert_eq!(fits(arith(ArithOp::Add, (0, i64::MAX), (0, 1))), None);
        assert_eq!(
            fits(arith(ArithOp::Sub, (0, 0), (0, i64::MAX))),
            Some((-i64::MAX, 0))
        );
        assert_eq!(fits(neg((i64::MIN, 0))), None);
        assert_eq!(fits(neg((-i64::MAX, 0))), Some((0, i64::MAX)));
        assert_eq!(arith(ArithOp::Mul, (-3, 2), (-5, 7)), (-21, 15));
        assert_eq!(fits(arith(ArithOp::Mul, all, all)), None);
        assert_eq!(sum((-2, 5), 10), (-20, 50));
        assert_eq!(fits(sum((0, i64::MAX / 2 + 1), 2)), None);
    }
}

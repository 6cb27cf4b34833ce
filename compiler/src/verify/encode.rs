//! Encodes typed expressions as solver terms over one vocabulary of variables: sensed
//! values, aggregates over recent readings, device states and the clock.
//!
//! Aggregates are abstracted soundly: `avg|min|max(x, last N)` become fresh variables
//! tied to the window's minimum and maximum, which bracket the current reading `x`;
//! `sum(x, last N)` lies between `N·min` and `N·max`. Every real history of readings
//! satisfies these constraints, so "unsatisfiable" is a proof and "satisfiable" is a
//! possibility the runtime may meet.

use super::solver::{Model, ModelValue, Query, Sort, Term, VarIx};
use crate::ir::{
    AggFunc, ArithOp, CmpOp, DeviceId, DeviceType, Expr, ExprKind, Model as Policy, Site, StateId,
    VarRef, VarType,
};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Key {
    /// A sensed value (device `None`: the type under analysis).
    Var(VarRef),
    Agg(AggFunc, VarRef, u32),
    /// Lowest and highest reading of a window (helpers for aggregates, not shown).
    WinLo(VarRef, u32),
    WinHi(VarRef, u32),
    /// The sum of a window's readings: what ties `sum` and `avg` of one window together.
    WinSum(VarRef, u32),
    /// The current state of a site device, as its index.
    State(DeviceId),
    /// Minutes since midnight.
    Clock,
}

#[derive(Debug, Clone)]
enum Shown {
    Plain,
    Enum(Vec<String>),
    States(Vec<String>),
    Clock,
    Hidden,
}

/// A growing set of solver variables for one query family.
pub struct Vocab<'m> {
    policy: &'m Policy,
    site: Option<&'m Site>,
    /// The type whose own variables `VarRef { device: None }` name.
    ty: Option<&'m DeviceType>,
    /// In a site, the device that a type's guard is instantiated for.
    this_device: Option<DeviceId>,
    keys: HashMap<Key, VarIx>,
    shown: Vec<Shown>,
    pub query: Query,
}

impl<'m> Vocab<'m> {
    /// For guards of one device type.
    pub fn for_type(policy: &'m Policy, ty: &'m DeviceType) -> Self {
        Self::new(policy, None, Some(ty))
    }

    /// For rule conditions of a site; a type's guard can be added for one device with
    /// [`Vocab::encode_for`].
    pub fn for_site(policy: &'m Policy, site: &'m Site) -> Self {
        Self::new(policy, Some(site), None)
    }

    fn new(policy: &'m Policy, site: Option<&'m Site>, ty: Option<&'m DeviceType>) -> Self {
        Vocab {
            policy,
            site,
            ty,
            this_device: None,
            keys: HashMap::new(),
            shown: Vec::new(),
            query: Query::default(),
        }
    }

    fn device_type_of(&self, device: Option<DeviceId>) -> Option<&'m DeviceType> {
        match device {
            None => self.ty,
            Some(d) => {
                let site = self.site?;
                Some(self.policy.device_type(site.devices.get(d.index())?.ty))
            }
        }
    }

    fn resolve(&self, r: VarRef) -> VarRef {
        match (r.device, self.this_device) {
            (None, Some(d)) => VarRef {
                device: Some(d),
                var: r.var,
            },
            _ => r,
        }
    }

    fn var_name(&self, r: VarRef) -> String {
        let var = self
            .device_type_of(r.device)
            .and_then(|t| t.vars.get(r.var.index()))
            .map_or("?", |v| v.name.as_str());
        match (r.device, self.site) {
            (Some(d), Some(site)) => {
                format!(
                    "{}.{var}",
                    site.devices.get(d.index()).map_or("?", |x| x.name.as_str())
                )
            }
            _ => var.to_string(),
        }
    }

    fn var_type(&self, r: VarRef) -> VarType {
        self.device_type_of(r.device)
            .and_then(|t| t.vars.get(r.var.index()))
            .map_or(VarType::Bool, |v| v.ty.clone())
    }

    fn add(&mut self, key: Key, name: String, sort: Sort, shown: Shown) -> VarIx {
        let ix = self.query.vars.len();
        self.query.vars.push((name, sort));
        self.shown.push(shown);
        self.keys.insert(key, ix);
        ix
    }

    /// The solver variable for a key, created (with its constraints) on first use.
    pub fn key(&mut self, key: Key) -> VarIx {
        if let Some(&ix) = self.keys.get(&key) {
            return ix;
        }
        match key {
            Key::Var(r) => {
                let name = self.var_name(r);
                match self.var_type(r) {
                    VarType::Bool => self.add(key, name, Sort::Bool, Shown::Plain),
                    VarType::Int { lo, hi } => {
                        self.add(key, name, Sort::Int { lo, hi }, Shown::Plain)
                    }
                    VarType::Enum { members } => {
                        let hi = i64::try_from(members.len()).unwrap_or(1) - 1;
                        self.add(key, name, Sort::Int { lo: 0, hi }, Shown::Enum(members))
                    }
                }
            }
            Key::WinLo(r, n) | Key::WinHi(r, n) => {
                let (lo, hi) = match self.var_type(r) {
                    VarType::Int { lo, hi } => (lo, hi),
                    _ => (0, 0),
                };
                let side = if matches!(key, Key::WinLo(..)) {
                    "min"
                } else {
                    "max"
                };
                let name = format!("{side}({}, last {n})", self.var_name(r));
                let ix = self.add(key, name, Sort::Int { lo, hi }, Shown::Hidden);
                // The current reading is the newest of the window.
                let x = self.key(Key::Var(r));
                let op = if side == "min" { CmpOp::Le } else { CmpOp::Ge };
                self.query
                    .facts
                    .push(Term::cmp(op, Term::Var(ix), Term::Var(x)));
                if n == 1 {
                    self.query
                        .facts
                        .push(Term::cmp(CmpOp::Eq, Term::Var(ix), Term::Var(x)));
                }
                ix
            }
            Key::WinSum(r, n) => {
                let (lo, hi) = match self.var_type(r) {
                    VarType::Int { lo, hi } => (lo, hi),
                    _ => (0, 0),
                };
                let wlo = self.key(Key::WinLo(r, n));
                let whi = self.key(Key::WinHi(r, n));
                let x = self.key(Key::Var(r));
                let name = format!("sum({}, last {n})", self.var_name(r));
                // Within 64 bits: typeck refuses a window whose sum could leave them (K114).
                let big = i64::from(n);
                let sort = Sort::Int {
                    lo: lo.saturating_mul(big),
                    hi: hi.saturating_mul(big),
                };
                let ix = self.add(key, name, sort, Shown::Hidden);
                let sum = Term::Var(ix);
                let times = |k: i64, w: usize| {
                    Term::Arith(ArithOp::Mul, Box::new(Term::Int(k)), Box::new(Term::Var(w)))
                };
                let plus = |a: Term, b: Term| Term::Arith(ArithOp::Add, Box::new(a), Box::new(b));
                // The window holds the current reading, its lowest and its highest (the
                // same reading for more than one of them only when they are equal); the
                // other readings lie between the lowest and the highest. So the sum is at
                // least the current reading plus n-1 lowest ones, and at least the lowest
                // plus the highest plus n-2 lowest ones; at most the same with highest.
                let mut facts = vec![
                    Term::cmp(
                        CmpOp::Ge,
                        sum.clone(),
                        plus(Term::Var(x), times(big - 1, wlo)),
                    ),
                    Term::cmp(
                        CmpOp::Le,
                        sum.clone(),
                        plus(Term::Var(x), times(big - 1, whi)),
                    ),
                ];
                if n >= 2 {
                    let ends = || plus(Term::Var(wlo), Term::Var(whi));
                    facts.push(Term::cmp(
                        CmpOp::Ge,
                        sum.clone(),
                        plus(ends(), times(big - 2, wlo)),
                    ));
                    facts.push(Term::cmp(CmpOp::Le, sum, plus(ends(), times(big - 2, whi))));
                }
                self.query.facts.extend(facts);
                ix
            }
            Key::Agg(f, r, n) => {
                let (lo, hi) = match self.var_type(r) {
                    VarType::Int { lo, hi } => (lo, hi),
                    _ => (0, 0),
                };
                let fname = match f {
                    AggFunc::Avg => "avg",
                    AggFunc::Sum => "sum",
                    AggFunc::Min => "min",
                    AggFunc::Max => "max",
                };
                let wlo = self.key(Key::WinLo(r, n));
                let whi = self.key(Key::WinHi(r, n));
                let name = format!("{fname}({}, last {n})", self.var_name(r));
                let big = i64::from(n);
                let sort = match f {
                    AggFunc::Sum => Sort::Int {
                        lo: lo.saturating_mul(big),
                        hi: hi.saturating_mul(big),
                    },
                    _ => Sort::Int { lo, hi },
                };
                let ix = self.add(key, name, sort, Shown::Plain);
                let v = Term::Var(ix);
                let facts = match f {
                    AggFunc::Min => vec![Term::cmp(CmpOp::Eq, v, Term::Var(wlo))],
                    AggFunc::Max => vec![Term::cmp(CmpOp::Eq, v, Term::Var(whi))],
                    AggFunc::Avg => {
                        // The engine's mean rounds down: n·avg ≤ sum ≤ n·avg + n - 1. With
                        // the window's sum shared, a `sum` and an `avg` of one window
                        // agree (a guard needing both far apart is dead, not satisfiable).
                        let sum = Term::Var(self.key(Key::WinSum(r, n)));
                        let scaled = Term::Arith(
                            ArithOp::Mul,
                            Box::new(Term::Int(big)),
                            Box::new(v.clone()),
                        );
                        vec![
                            Term::cmp(CmpOp::Ge, v.clone(), Term::Var(wlo)),
                            Term::cmp(CmpOp::Le, v, Term::Var(whi)),
                            Term::cmp(CmpOp::Le, scaled.clone(), sum.clone()),
                            Term::cmp(
                                CmpOp::Le,
                                sum,
                                Term::Arith(
                                    ArithOp::Add,
                                    Box::new(scaled),
                                    Box::new(Term::Int(big - 1)),
                                ),
                            ),
                        ]
                    }
                    AggFunc::Sum => {
                        let sum = Term::Var(self.key(Key::WinSum(r, n)));
                        vec![Term::cmp(CmpOp::Eq, v, sum)]
                    }
                };
                self.query.facts.extend(facts);
                ix
            }
            Key::State(d) => {
                let (name, states) = match self.site.and_then(|s| s.devices.get(d.index())) {
                    Some(dev) => {
                        let states: Vec<String> = self
                            .policy
                            .device_type(dev.ty)
                            .states
                            .iter()
                            .map(|s| s.name.clone())
                            .collect();
                        (format!("{}.state", dev.name), states)
                    }
                    None => ("?.state".into(), vec![]),
                };
                let hi = i64::try_from(states.len()).unwrap_or(1) - 1;
                self.add(key, name, Sort::Int { lo: 0, hi }, Shown::States(states))
            }
            Key::Clock => self.add(
                key,
                "clock".into(),
                Sort::Int {
                    lo: 0,
                    hi: 24 * 60 - 1,
                },
                Shown::Clock,
            ),
        }
    }

    pub fn state_is(&mut self, d: DeviceId, s: StateId) -> Term {
        let ix = self.key(Key::State(d));
        Term::eq_int(ix, i64::try_from(s.index()).unwrap_or(i64::MAX))
    }

    pub fn encode(&mut self, e: &Expr) -> Term {
        match &e.kind {
            ExprKind::Bool { value } => Term::Bool(*value),
            ExprKind::Int { value } => Term::Int(*value),
            ExprKind::Var { var } => {
                let r = self.resolve(*var);
                Term::Var(self.key(Key::Var(r)))
            }
            ExprKind::Aggregate { func, var, last } => {
                let r = self.resolve(*var);
                Term::Var(self.key(Key::Agg(*func, r, *last)))
            }
            ExprKind::InState { device, state } => self.state_is(*device, *state),
            ExprKind::Clock { from, to } => {
                let c = Term::Var(self.key(Key::Clock));
                let ge = Term::cmp(CmpOp::Ge, c.clone(), Term::Int(i64::from(*from)));
                let lt = Term::cmp(CmpOp::Lt, c, Term::Int(i64::from(*to)));
                if from < to {
                    Term::And(vec![ge, lt])
                } else {
                    Term::Or(vec![ge, lt])
                }
            }
            ExprKind::Not { arg } => Term::negate(self.encode(arg)),
            ExprKind::Neg { arg } => Term::Neg(Box::new(self.encode(arg))),
            ExprKind::And { args } => Term::And(args.iter().map(|a| self.encode(a)).collect()),
            ExprKind::Or { args } => Term::Or(args.iter().map(|a| self.encode(a)).collect()),
            ExprKind::Cmp { cmp, lhs, rhs } => {
                let (a, b) = (self.encode(lhs), self.encode(rhs));
                Term::cmp(*cmp, a, b)
            }
            ExprKind::Arith { arith, lhs, rhs } => {
                let (a, b) = (self.encode(lhs), self.encode(rhs));
                Term::Arith(*arith, Box::new(a), Box::new(b))
            }
            ExprKind::Count { args } => {
                let ones: Vec<Term> = args.iter().map(|a| self.one_if(a)).collect();
                Term::sum(ones)
            }
        }
    }

    /// A fresh 0..=1 variable that is 1 exactly when `e` holds (a count's term).
    fn one_if(&mut self, e: &Expr) -> Term {
        let cond = self.encode(e);
        let ix = self.query.vars.len();
        self.query
            .vars
            .push((format!("#count{ix}"), Sort::Int { lo: 0, hi: 1 }));
        self.shown.push(Shown::Hidden);
        self.query.facts.push(Term::iff(cond, Term::eq_int(ix, 1)));
        Term::Var(ix)
    }

    /// Encodes a type's guard as read by one site device.
    pub fn encode_for(&mut self, device: DeviceId, e: &Expr) -> Term {
        let saved = self.this_device.replace(device);
        let t = self.encode(e);
        self.this_device = saved;
        t
    }

    /// Ties every window used so far to its current reading (lowest = highest = current):
    /// a model of the query is then met by sending the same reading as many times as the
    /// window is long. What witness replay (`verify::replay`) asks for.
    pub fn steady(&mut self) {
        let windows: Vec<(VarIx, VarRef)> = self
            .keys
            .iter()
            .filter_map(|(k, &ix)| match k {
                Key::WinLo(r, _) | Key::WinHi(r, _) => Some((ix, *r)),
                _ => None,
            })
            .collect();
        for (ix, r) in windows {
            let x = self.key(Key::Var(r));
            self.query
                .facts
                .push(Term::cmp(CmpOp::Eq, Term::Var(ix), Term::Var(x)));
        }
    }

    /// The sensed values of a model, per site device, as a reading spells them (enum
    /// members by name), with the longest window the query reads of each device's
    /// values. Values of the type under analysis (no device) are under `None`.
    pub fn readings(&self, model: &Model) -> BTreeMap<Option<DeviceId>, Reading> {
        let mut out: BTreeMap<Option<DeviceId>, Reading> = BTreeMap::new();
        for (key, &ix) in &self.keys {
            match key {
                Key::Var(r) => {
                    let Some(var) = self
                        .device_type_of(r.device)
                        .and_then(|t| t.vars.get(r.var.index()))
                    else {
                        continue;
                    };
                    let value = match (model.get(&self.query.vars[ix].0), &var.ty) {
                        (Some(ModelValue::Bool(b)), _) => json!(b),
                        (Some(ModelValue::Int(i)), VarType::Enum { members }) => {
                            match usize::try_from(*i).ok().and_then(|i| members.get(i)) {
                                Some(m) => json!(m),
                                None => continue,
                            }
                        }
                        (Some(ModelValue::Int(i)), _) => json!(i),
                        _ => continue,
                    };
                    let entry = out.entry(r.device).or_default();
                    entry.values.insert(var.name.clone(), value);
                    entry.repeat = entry.repeat.max(1);
                }
                Key::WinLo(r, n) | Key::WinHi(r, n) | Key::WinSum(r, n) | Key::Agg(_, r, n) => {
                    let entry = out.entry(r.device).or_default();
                    entry.repeat = entry.repeat.max(*n);
                }
                Key::State(_) | Key::Clock => {}
            }
        }
        out
    }

    /// The minute of the day of a model, if the query reads the clock.
    pub fn minute(&self, model: &Model) -> Option<u16> {
        let ix = *self.keys.get(&Key::Clock)?;
        match model.get(&self.query.vars[ix].0)? {
            ModelValue::Int(m) => u16::try_from(*m).ok(),
            _ => None,
        }
    }

    /// A model as JSON, with enum members, state names and times of day spelled out and
    /// helper variables left out. Sorted by name.
    pub fn describe(&self, model: &Model) -> Value {
        let mut out = Map::new();
        for (ix, (name, _)) in self.query.vars.iter().enumerate() {
            let Some(v) = model.get(name) else { continue };
            let shown = match (&self.shown[ix], v) {
                (Shown::Hidden, _) => continue,
                (Shown::Enum(m) | Shown::States(m), ModelValue::Int(i)) => usize::try_from(*i)
                    .ok()
                    .and_then(|i| m.get(i))
                    .map_or(json!(i), |s| json!(s)),
                (Shown::Clock, ModelValue::Int(i)) => json!(format!("{:02}:{:02}", i / 60, i % 60)),
                (_, ModelValue::Int(i)) => json!(i),
                (_, ModelValue::Bool(b)) => json!(b),
                (_, ModelValue::Bits(x)) => json!(x),
            };
            out.insert(name.clone(), shown);
        }
        Value::Object(out)
    }
}

/// One device's values in a model ([`Vocab::readings`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reading {
    pub values: BTreeMap<String, Value>,
    /// How many times to send it so that every window the query reads holds it only.
    pub repeat: u32,
}

/// `a = 1, b = true` for messages.
pub fn inline(values: &Value) -> String {
    match values {
        Value::Object(m) if !m.is_empty() => m
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => format!("{k} = {s}"),
                other => format!("{k} = {other}"),
            })
            .collect::<Vec<_>>()
            .join(", "),
        _ => "any values".into(),
    }
}

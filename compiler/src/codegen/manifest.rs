//! The typed model's parts that go into a bundle, lowered into the manifest's types
//! (`kalki_model::manifest`, the types the shim reads): indices kept, source locations
//! dropped (they mean nothing on a node without the sources). Pure and total. The leaves
//! (`Ty`, `VarType`, the operators, `UmboxMode`, `UnknownHosts`) are already the
//! manifest's own types; the nodes that carry locations are rebuilt here.

use crate::ir;
use kalki_model::manifest as m;

pub fn var(v: &ir::Var) -> m::Var {
    m::Var {
        name: v.name.clone(),
        ty: v.ty.clone(),
    }
}

pub fn device_type(ty: &ir::DeviceType) -> m::DeviceType {
    m::DeviceType {
        name: ty.name.clone(),
        vars: ty.vars.iter().map(var).collect(),
        commands: ty.commands.clone(),
        alerts: ty.alerts.clone(),
        states: ty.states.iter().map(|s| s.name.clone()).collect(),
        initial: ty.initial.0,
        transitions: ty.transitions.iter().map(transition).collect(),
    }
}

pub fn transition(t: &ir::Transition) -> m::Transition {
    m::Transition {
        from: t.from.0,
        to: t.to.0,
        trigger: match &t.trigger {
            ir::Trigger::Alert { alert, count, .. } => m::Trigger::Alert {
                alert: alert.clone(),
                count: *count,
            },
            ir::Trigger::When { guard, hold_ms } => m::Trigger::When {
                guard: expr(guard),
                hold_ms: *hold_ms,
            },
            ir::Trigger::Quiet { after_ms } => m::Trigger::Quiet {
                after_ms: *after_ms,
            },
            ir::Trigger::Silent { after_ms } => m::Trigger::Silent {
                after_ms: *after_ms,
            },
            ir::Trigger::Operator { action } => m::Trigger::Operator {
                action: action.clone(),
            },
        },
    }
}

pub fn rule(r: &ir::Rule) -> m::Rule {
    m::Rule {
        name: r.name.clone(),
        edge: r.edge,
        cond: expr(&r.cond),
        actions: r
            .actions
            .iter()
            .map(|a| match a {
                ir::Action::Goto { device, state, .. } => m::Action::Goto {
                    device: device.0,
                    state: state.0,
                },
                ir::Action::Command {
                    device, command, ..
                } => m::Action::Command {
                    device: device.0,
                    command: command.clone(),
                },
                ir::Action::Raise { device, alert, .. } => m::Action::Raise {
                    device: device.0,
                    alert: alert.clone(),
                },
                ir::Action::Escalate { device, state, .. } => m::Action::Escalate {
                    device: device.0,
                    state: state.0,
                },
            })
            .collect(),
    }
}

/// Recursive, like the verifier's encoding: typing bounds the nesting (K113).
pub fn expr(e: &ir::Expr) -> m::Expr {
    let boxed = |e: &ir::Expr| Box::new(expr(e));
    let kind = match &e.kind {
        ir::ExprKind::Bool { value } => m::ExprKind::Bool { value: *value },
        ir::ExprKind::Int { value } => m::ExprKind::Int { value: *value },
        ir::ExprKind::Var { var } => m::ExprKind::Var { var: var_ref(*var) },
        ir::ExprKind::Aggregate { func, var, last } => m::ExprKind::Aggregate {
            func: *func,
            var: var_ref(*var),
            last: *last,
        },
        ir::ExprKind::InState { device, state } => m::ExprKind::InState {
            device: device.0,
            state: state.0,
        },
        ir::ExprKind::Clock { from, to } => m::ExprKind::Clock {
            from: *from,
            to: *to,
        },
        ir::ExprKind::Not { arg } => m::ExprKind::Not { arg: boxed(arg) },
        ir::ExprKind::Neg { arg } => m::ExprKind::Neg { arg: boxed(arg) },
        ir::ExprKind::And { args } => m::ExprKind::And {
            args: args.iter().map(expr).collect(),
        },
        ir::ExprKind::Or { args } => m::ExprKind::Or {
            args: args.iter().map(expr).collect(),
        },
        ir::ExprKind::Cmp { cmp, lhs, rhs } => m::ExprKind::Cmp {
            cmp: *cmp,
            lhs: boxed(lhs),
            rhs: boxed(rhs),
        },
        ir::ExprKind::Count { args } => m::ExprKind::Count {
            args: args.iter().map(expr).collect(),
        },
        ir::ExprKind::Arith { arith, lhs, rhs } => m::ExprKind::Arith {
            arith: *arith,
            lhs: boxed(lhs),
            rhs: boxed(rhs),
        },
    };
    m::Expr {
        kind,
        ty: e.ty.clone(),
    }
}

fn var_ref(r: ir::VarRef) -> m::VarRef {
    m::VarRef {
        device: r.device.map(|d| d.0),
        var: r.var.0,
    }
}

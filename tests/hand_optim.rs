//! The hand-designed optimizers against torch.optim, step for step.
//!
//! `benchmarks/reference/hand_fixture.py` (run by hand with PyTorch, never
//! in CI) wrote `tests/fixtures/hand_optim.json`: a float64 theta_0, twelve
//! gradients independent of theta, and for each optimizer at two learning
//! rates torch.optim's theta after every step. Feeding the same gradients to
//! `HandConfig::step` must give every coordinate of every step within 1e-12
//! relative of torch's. The remaining tests pin properties that no typo in
//! a formula keeps by accident.

use fewshot::model::hand::{lr_grid, HandConfig, HandKind};
use serde::Deserialize;

/// Relative tolerance against torch, in float64. The rules compute in
/// torch's order of operations with its fused multiply-adds, and reproduce
/// the present fixture bit for bit; the margin is for torch builds that
/// contract differently or a C `pow` that rounds differently (a few ulps).
const TOL: f64 = 1e-12;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Fixture {
    torch: String,
    theta0: Vec<f64>,
    grads: Vec<Vec<f64>>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    kind: HandKind,
    lr: f64,
    params: Params,
    thetas: Vec<Vec<f64>>,
}

/// torch.optim's constructor defaults as the fixture recorded them (each
/// optimizer has only some of these).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    momentum: Option<f64>,
    dampening: Option<f64>,
    nesterov: Option<bool>,
    alpha: Option<f64>,
    eps: Option<f64>,
    centered: Option<bool>,
    betas: Option<[f64; 2]>,
    amsgrad: Option<bool>,
    weight_decay: f64,
    maximize: bool,
}

fn fixture() -> Fixture {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hand_optim.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The configuration torch ran, from what the fixture recorded; panics on
/// any torch option the hand rules do not implement.
fn config_of(case: &Case) -> HandConfig {
    let p = &case.params;
    let name = format!("{} lr={}", case.kind, case.lr);
    assert_eq!(p.weight_decay, 0.0, "{name}: weight decay");
    assert!(!p.maximize, "{name}: maximize");
    assert_eq!(p.dampening.unwrap_or(0.0), 0.0, "{name}: dampening");
    assert!(!p.centered.unwrap_or(false), "{name}: centered");
    assert!(!p.amsgrad.unwrap_or(false), "{name}: amsgrad");
    assert_eq!(
        p.nesterov.unwrap_or(false),
        case.kind == HandKind::Nesterov,
        "{name}: nesterov"
    );
    let mut config = HandConfig::new(case.kind).with_lr(case.lr);
    match case.kind {
        HandKind::Sgd => assert_eq!(p.momentum, Some(0.0), "{name}: momentum"),
        HandKind::Momentum | HandKind::Nesterov => config.momentum = p.momentum.unwrap(),
        HandKind::RmsProp => {
            assert_eq!(p.momentum, Some(0.0), "{name}: momentum");
            config.alpha = p.alpha.unwrap();
            config.eps = p.eps.unwrap();
        }
        HandKind::Adam => {
            [config.beta1, config.beta2] = p.betas.unwrap();
            config.eps = p.eps.unwrap();
        }
    }
    config
}

/// Runs `config` from theta_0 over the gradients: theta after each step.
fn trajectory(config: &HandConfig, theta0: &[f64], grads: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let mut state = config.start(theta0.len());
    let mut theta = theta0.to_vec();
    grads
        .iter()
        .map(|g| {
            config.step(&mut state, &mut theta, g);
            theta.clone()
        })
        .collect()
}

fn rel_dev(ours: f64, torch: f64) -> f64 {
    if ours == torch {
        0.0
    } else {
        (ours - torch).abs() / torch.abs()
    }
}

#[test]
fn every_step_matches_torch() {
    let f = fixture();
    assert_eq!(f.theta0.len(), 7);
    assert_eq!(f.grads.len(), 12);
    assert!(f.grads.iter().all(|g| g.len() == f.theta0.len()));
    for kind in HandKind::ALL {
        assert_eq!(
            f.cases.iter().filter(|c| c.kind == kind).count(),
            2,
            "{kind}: the fixture should hold two learning rates"
        );
    }
    eprintln!("fixture from torch {}", f.torch);
    for case in &f.cases {
        let config = config_of(case);
        let ours = trajectory(&config, &f.theta0, &f.grads);
        assert_eq!(
            case.thetas.len(),
            ours.len(),
            "{} lr={}",
            case.kind,
            case.lr
        );
        let (mut worst, mut exact) = (0.0_f64, 0usize);
        for (step, (ours, torch)) in ours.iter().zip(&case.thetas).enumerate() {
            for (i, (&o, &t)) in ours.iter().zip(torch).enumerate() {
                let dev = rel_dev(o, t);
                assert!(
                    dev <= TOL,
                    "{} lr={} step {} coordinate {i}: ours {o:e}, torch {t:e} (relative {dev:e})",
                    case.kind,
                    case.lr,
                    step + 1,
                );
                worst = worst.max(dev);
                exact += usize::from(o == t);
            }
        }
        eprintln!(
            "{:>8} lr={:<5} max relative deviation {worst:.3e}, {exact}/{} values bit-identical",
            case.kind.name(),
            case.lr,
            ours.len() * f.theta0.len()
        );
    }
}

#[test]
fn defaults_are_torch_defaults() {
    // The fixture constructs torch.optim with only lr (and momentum 0.9,
    // nesterov for the SGD variants) and records its defaults.
    for case in &fixture().cases {
        assert_eq!(
            config_of(case),
            HandConfig::new(case.kind).with_lr(case.lr),
            "{} lr={}",
            case.kind,
            case.lr
        );
    }
    assert_eq!(HandConfig::default(), HandConfig::new(HandKind::Adam));
    let lrs: Vec<f64> = HandKind::ALL
        .iter()
        .map(|k| HandConfig::new(*k).lr)
        .collect();
    assert_eq!(lrs, [1e-3, 1e-3, 1e-3, 1e-2, 1e-3]);
}

#[test]
fn momentum_first_step_is_sgd_step() {
    let f = fixture();
    for lr in [1e-2, 0.3] {
        let sgd = trajectory(
            &HandConfig::new(HandKind::Sgd).with_lr(lr),
            &f.theta0,
            &f.grads,
        );
        let momentum = trajectory(
            &HandConfig::new(HandKind::Momentum).with_lr(lr),
            &f.theta0,
            &f.grads,
        );
        assert_eq!(
            momentum[0], sgd[0],
            "lr={lr}: the buffer starts as the gradient"
        );
        assert_ne!(
            momentum[1], sgd[1],
            "lr={lr}: momentum carries from step 2 on"
        );
    }
}

#[test]
fn nesterov_differs_from_momentum_from_step_two() {
    let f = fixture();
    let lr = 0.1;
    let momentum = trajectory(
        &HandConfig::new(HandKind::Momentum).with_lr(lr),
        &f.theta0,
        &f.grads,
    );
    let nesterov = trajectory(
        &HandConfig::new(HandKind::Nesterov).with_lr(lr),
        &f.theta0,
        &f.grads,
    );
    // Step 1: momentum moves by lr g, Nesterov by lr (1 + mu) g.
    let mu = HandConfig::new(HandKind::Nesterov).momentum;
    for i in 0..f.theta0.len() {
        let moved = f.theta0[i] - nesterov[0][i];
        let expected = lr * (1.0 + mu) * f.grads[0][i];
        assert!(
            (moved - expected).abs() <= 1e-14 * (1.0 + expected.abs()),
            "coordinate {i}"
        );
        let moved = f.theta0[i] - momentum[0][i];
        assert!(
            (moved - lr * f.grads[0][i]).abs() <= 1e-14 * (1.0 + moved.abs()),
            "coordinate {i}"
        );
    }
    // From step 2 on, every step differs in every coordinate whose gradient
    // is not zero.
    for step in 1..f.grads.len() {
        for i in 0..f.theta0.len() {
            let d_momentum = momentum[step][i] - momentum[step - 1][i];
            let d_nesterov = nesterov[step][i] - nesterov[step - 1][i];
            assert!(
                (d_momentum - d_nesterov).abs() > 1e-6 * d_momentum.abs(),
                "step {}, coordinate {i}: {d_momentum:e} vs {d_nesterov:e}",
                step + 1
            );
        }
    }
}

#[test]
fn adaptive_rules_divide_by_eps_where_the_gradient_was_zero() {
    // The fixture's first gradient has an exact zero at coordinate 0: the
    // adaptive rules then divide 0 by eps and leave it where it is.
    let f = fixture();
    assert_eq!(f.grads[0][0], 0.0);
    for kind in [HandKind::RmsProp, HandKind::Adam] {
        let thetas = trajectory(&HandConfig::new(kind).with_lr(0.3), &f.theta0, &f.grads);
        assert_eq!(thetas[0][0], f.theta0[0], "{kind}");
    }
}

#[test]
fn lr_grid_is_half_decades_from_1e_4_to_3() {
    let grid = lr_grid();
    assert_eq!(
        grid,
        [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0]
    );
    for pair in grid.windows(2) {
        let ratio = pair[1] / pair[0];
        assert!(
            (ratio - 3.0).abs() < 1e-12 || (ratio - 10.0 / 3.0).abs() < 1e-12,
            "{pair:?}"
        );
    }
    for (i, lr) in grid.iter().enumerate() {
        // Every other value is a power of ten: 10^(i/2 - 4).
        if i % 2 == 0 {
            assert_eq!(*lr, 10f64.powi(i as i32 / 2 - 4), "grid[{i}]");
        }
    }
}

#!/usr/bin/env python3
"""The hand-designed optimizers as torch.optim runs them: a fixture for
`tests/hand_optim.rs`, which requires `fewshot::model::hand` to match it.

Run by hand, never by CI (PyTorch is not a dependency of fewshot):

    pip install torch numpy
    python3 benchmarks/reference/hand_fixture.py   # writes tests/fixtures/hand_optim.json

Twelve gradients of a 7-coordinate parameter are drawn once from a seeded
numpy generator (coordinate scales from 1e-3 to 10, one exact zero so that
eps is what the adaptive methods divide by), independent of theta so that the
Rust test feeds the same sequence. Each of the five optimizers runs at two
learning rates in float64 from the same theta_0, through torch.optim's
single-tensor path (`foreach=False`, as on CPU by default), and theta after
every step is recorded. Everything else is torch.optim's default, and the
fixture records those defaults (`params`) so that the test also checks that
`HandConfig::new` equals them.

JSON floats are written with repr (shortest round trip), so the Rust side
reads exactly the float64 values torch used and produced.
"""

import json
import os

import numpy as np
import torch

OUT = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "fixtures", "hand_optim.json"
)
SEED = 2016
N, STEPS = 7, 12
LRS = [1e-2, 3e-1]


def draw():
    rng = np.random.default_rng(SEED)
    theta0 = rng.normal(size=N)
    scales = 10.0 ** np.linspace(-3.0, 1.0, N)
    grads = rng.normal(size=(STEPS, N)) * scales
    grads[0, 0] = 0.0
    return theta0.tolist(), grads.tolist()


def make(kind, params, lr):
    """torch.optim for `kind`, and the defaults it runs with that matter."""
    if kind == "sgd":
        opt = torch.optim.SGD(params, lr=lr, foreach=False)
        keys = ["momentum", "dampening", "nesterov"]
    elif kind == "momentum":
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9, foreach=False)
        keys = ["momentum", "dampening", "nesterov"]
    elif kind == "nesterov":
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, foreach=False)
        keys = ["momentum", "dampening", "nesterov"]
    elif kind == "rmsprop":
        opt = torch.optim.RMSprop(params, lr=lr, foreach=False)
        keys = ["alpha", "eps", "momentum", "centered"]
    elif kind == "adam":
        opt = torch.optim.Adam(params, lr=lr, foreach=False)
        keys = ["betas", "eps", "amsgrad"]
    else:
        raise ValueError(kind)
    return opt, {k: opt.defaults[k] for k in keys + ["weight_decay", "maximize"]}


def run(kind, lr, theta0, grads):
    theta = torch.tensor(theta0, dtype=torch.float64, requires_grad=True)
    opt, params = make(kind, [theta], lr)
    thetas = []
    for g in grads:
        theta.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        thetas.append(theta.detach().tolist())
    params = {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}
    return {"kind": kind, "lr": lr, "params": params, "thetas": thetas}


def main():
    print(f"torch {torch.__version__}")
    theta0, grads = draw()
    cases = [
        run(kind, lr, theta0, grads)
        for kind in ["sgd", "momentum", "nesterov", "rmsprop", "adam"]
        for lr in LRS
    ]
    fixture = {"torch": torch.__version__, "theta0": theta0, "grads": grads, "cases": cases}
    with open(OUT, "w") as f:
        json.dump(fixture, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {os.path.normpath(OUT)} ({len(cases)} cases, {STEPS} steps)")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""PyTorch timings of exactly fewshot's shapes, for the side-by-side in
docs/perf.md. Run by hand (PyTorch is not a dependency of fewshot); the
driver `side_by_side.py` runs every case in its own process next to
`bench perf` and prints the ratios.

    python3 benchmarks/reference/perf_torch.py CASE [--reps N] [--device cuda]

prints one JSON line {"case", "ms", "peak_mib"} for CASE:

- learner-omniglot-5 / -75, learner-mini-5 / -75: forward + backward of the
  conv-4 learner (stride-2 Omniglot 28x28, 64 channels; max-pool
  mini-ImageNet 84x84, 32 channels) with train-mode batch norm and the mean
  cross-entropy, on a batch of 5 or 75 images.
- fomaml-task, maml-task: one Omniglot 5-way 1-shot 15-query task of MAML
  as fewshot's comparison benchmark runs it (one inner SGD step, lr 0.4, on
  the 5 support images; the query loss with query statistics; first-order:
  the adapted parameters are leaves; second order: create_graph).
- reptile-task: one Omniglot Reptile task as fewshot's comparison
  benchmark runs it (5-way, 10 shots = 50 images, 5 inner Adam steps on
  mini-batches of 10 with the summed loss; the outer interpolation is
  negligible).
- meta-lstm-10, meta-lstm-20: one meta-learner-LSTM episode on the Omniglot
  learner (113,221 coordinates), T = 10 or 20 updates on the support set,
  the query loss and its meta-gradient, the same equations as
  fixtures.py's meta_lstm_fixture (no second derivatives).
- fomaml-task-mini, reptile-task-mini, meta-lstm-mini: the same on
  mini-ImageNet 5-way 1-shot as its benchmark runs them (FOMAML: 5 inner
  SGD steps, lr 0.01; Reptile: 15 shots, 8 inner Adam steps on
  mini-batches of 10; meta-LSTM: T = 12 on the 32,901-coordinate learner).
- lstm-opt-quadratic, lstm-opt-mnist, two-level-quadratic,
  two-level-mnist: one meta-training step of a learned optimiser as `bench
  perf optimizers` times it: one fresh problem (quadratic-10d: 128 10-d
  Gaussian quadratics, 1,280 coordinates; mnist-mlp: the 784-20-10 sigmoid
  MLP, 15,910 coordinates, the mean cross-entropy on a minibatch of 128
  drawn with replacement per evaluation from a fixed random [8000, 784]
  "dataset") of T = 100 steps in 5 truncated unrolls of 20, each from the
  carried (detached) theta and states: 20 steps of f(theta_t), its
  gradient as a constant, preprocess (p = 10) into a two-layer 20-unit
  coordinate-wise LSTM, read-out 20 -> 1 times 0.1 (lstm-optimizer:
  theta + update; two-level: the candidate z_t of Ravi & Larochelle's
  gated cell over [h_t, theta_{t-1}, previous pre-gate]), then the sum of
  the 21 losses backward and one Adam step (lr 0.001) on the optimiser.

Float32, torch.set_num_threads(2) (the project's 2-core machine), one
warm-up repetition, then the median of --reps. Peak memory is the process's
peak resident set (ru_maxrss) after the case, so run one case per process.
With --device cuda (the GPU check, scripts/gpu-check.sh) every tensor is
created on the GPU, each repetition ends with torch.cuda.synchronize(),
the thread count is left at PyTorch's default, and the peak is the GPU's
(torch.cuda.max_memory_allocated).
"""

import argparse
import json
import os
import resource
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fixtures  # noqa: E402  (its Net and preprocess; it sets float64)
from fixtures import Net, preprocess  # noqa: E402

torch.set_default_dtype(torch.float32)


DEVICE = "cpu"


def generator():
    # On a GPU the generator lives there too, so that the cases' random
    # tensors are created on the device (torch.set_default_device).
    return torch.Generator(device=DEVICE).manual_seed(0)


def params(net, gen):
    return {k: v.float() for k, v in net.init(gen).items()}


def leaves(p):
    return {k: v.detach().clone().requires_grad_(True) for k, v in p.items()}


def images(gen, n, cin, size):
    return torch.randn(n, cin, size, size, generator=gen)


def labels(ways, per):
    return torch.arange(ways).repeat_interleave(per)


def learner_case(form, batch):
    gen = generator()
    net = net_for(form)
    p = params(net, gen)
    x = images(gen, batch, net.cin, net.size)
    y = labels(5, batch // 5) if batch % 5 == 0 else torch.zeros(batch, dtype=torch.long)

    def run():
        pl = leaves(p)
        loss = F.cross_entropy(net.forward(pl, x), y)
        torch.autograd.grad(loss, list(pl.values()))

    return run


def net_for(form):
    """The comparison benchmarks' learners: Omniglot's stride-2 conv-4 at
    28x28 with 64 channels, mini-ImageNet's max-pool conv-4 at 84x84 with
    32 channels (5 ways)."""
    return Net(1, 28, 64, 5, "stride2") if form == "omniglot" else Net(3, 84, 32, 5, "maxpool")


def maml_case(second_order, form="omniglot", steps=1, lr=0.4):
    gen = generator()
    net = net_for(form)
    p = params(net, gen)
    sx, sy = images(gen, 5, net.cin, net.size), labels(5, 1)
    qx, qy = images(gen, 75, net.cin, net.size), labels(5, 15)

    def run():
        pl = leaves(p)
        names = list(pl)
        adapted = pl
        for _ in range(steps):
            loss = F.cross_entropy(net.forward(adapted, sx), sy)
            gs = torch.autograd.grad(loss, [adapted[k] for k in names], create_graph=second_order)
            adapted = {k: adapted[k] - lr * g for k, g in zip(names, gs)}
            if not second_order:
                adapted = leaves(adapted)
        qloss = F.cross_entropy(net.forward(adapted, qx), qy)
        wrt = [pl[k] for k in names] if second_order else [adapted[k] for k in names]
        torch.autograd.grad(qloss, wrt)

    return run


def reptile_case(form="omniglot", shots=10, iters=5, batch=10):
    gen = generator()
    net = net_for(form)
    p = params(net, gen)
    names = net.names()
    n = 5 * shots
    x, y = images(gen, n, net.cin, net.size), labels(5, shots)
    m = {k: torch.zeros_like(v) for k, v in p.items()}
    v = {k: torch.zeros_like(t) for k, t in p.items()}

    def run():
        w = {k: t.clone() for k, t in p.items()}
        # Mini-batches cycle through reshuffled copies of the samples
        # (as the reference's _mini_batches and fewshot's inner loop).
        order = torch.cat([torch.randperm(n, generator=gen) for _ in range(-(-iters * batch // n))])
        for it in range(iters):
            idx = order[batch * it:batch * it + batch]
            wl = leaves(w)
            loss = F.cross_entropy(net.forward(wl, x[idx]), y[idx], reduction="sum")
            gs = torch.autograd.grad(loss, [wl[k] for k in names])
            with torch.no_grad():
                for k, g in zip(names, gs):
                    m[k] = 0.0 * m[k] + g
                    v[k] = 0.999 * v[k] + 0.001 * g * g
                    w[k] = w[k] - 1e-3 * m[k] / (v[k].sqrt() + 1e-8)
        return w

    return run


def meta_lstm_case(T, form="omniglot"):
    gen = generator()
    net = net_for(form)
    p0 = params(net, gen)
    names = net.names()
    sx, sy = images(gen, 5, net.cin, net.size), labels(5, 1)
    qx, qy = images(gen, 75, net.cin, net.size), labels(5, 15)
    n = sum(v.numel() for v in p0.values())
    H = 20
    u = lambda *s, lo=-0.01, hi=0.01: lo + (hi - lo) * torch.rand(*s, generator=gen)
    mp = {
        "lstm.w_ih": u(4 * H, 4), "lstm.w_hh": u(4 * H, H), "lstm.b": u(4 * H),
        "cell.w_f": u(1, H + 2), "cell.w_i": u(1, H + 2),
        "cell.b_f": u(1, 1, lo=4.0, hi=5.0), "cell.b_i": u(1, 1, lo=-5.0, hi=-4.0),
        "theta0": torch.cat([p0[k].reshape(-1) for k in names]).reshape(1, n),
    }
    zeros_b = torch.zeros(4 * H)

    def unflat(v):
        out, off = {}, 0
        for k in names:
            m = p0[k].numel()
            out[k] = v[off:off + m].reshape(p0[k].shape)
            off += m
        return out

    def run():
        ml = leaves(mp)
        theta = ml["theta0"]
        h = torch.zeros(n, H)
        c = torch.zeros(n, H)
        f_prev = torch.zeros(1, n)
        i_prev = torch.zeros(1, n)
        wf, wi = ml["cell.w_f"], ml["cell.w_i"]
        for _ in range(T):
            pt = leaves(unflat(theta.detach().reshape(-1)))
            loss = F.cross_entropy(net.forward(pt, sx), sy)
            g = torch.autograd.grad(loss, [pt[k] for k in names])
            grad = torch.cat([x.reshape(-1) for x in g]).reshape(1, n) / sx.shape[0]
            ga, gb = preprocess(grad)
            la, lb = preprocess(loss.detach().reshape(1, 1))
            xin = torch.cat([ga, gb, la.expand(1, n), lb.expand(1, n)], 0).t()
            h, c = torch.lstm_cell(xin, (h, c), ml["lstm.w_ih"], ml["lstm.w_hh"], ml["lstm.b"], zeros_b)
            ht = h.t()
            f_pre = wf[:, :H] @ ht + wf[:, H:H + 1] * theta + wf[:, H + 1:] * f_prev + ml["cell.b_f"]
            i_pre = wi[:, :H] @ ht + wi[:, H:H + 1] * theta + wi[:, H + 1:] * i_prev + ml["cell.b_i"]
            theta = torch.sigmoid(f_pre) * theta - torch.sigmoid(i_pre) * grad
            f_prev, i_prev = f_pre, i_pre
        qloss = F.cross_entropy(net.forward(unflat(theta.reshape(-1)), qx), qy)
        torch.autograd.grad(qloss, list(ml.values()))

    return run


def opt_problem(kind, gen):
    """A learned-optimiser benchmark's problem family: returns (n, draw)
    where draw() gives a fresh problem (theta_0, f)."""
    if kind == "quadratic":
        nf, d = 128, 10

        def draw():
            w = torch.randn(nf, d, d, generator=gen)
            y = torch.randn(nf, d, generator=gen)

            def f(theta):
                r = torch.bmm(w, theta.reshape(nf, d, 1)).reshape(nf, d) - y
                return (r * r).sum(1).mean()

            return 0.01 * torch.randn(nf * d, generator=gen), f

        return nf * d, draw
    # mnist-mlp: 784-20-10 sigmoid MLP; a fixed random "dataset" (timing only).
    x_all = torch.rand(8000, 784, generator=gen)
    y_all = torch.randint(10, (8000,), generator=gen)
    shapes = [(20, 784), (20,), (10, 20), (10,)]
    sizes = [torch.Size(s).numel() for s in shapes]
    n = sum(sizes)

    def f(theta):
        w1, b1, w2, b2 = (t.reshape(s) for t, s in zip(torch.split(theta, sizes), shapes))
        idx = torch.randint(8000, (128,), generator=gen)
        h = torch.sigmoid(F.linear(x_all[idx], w1, b1))
        return F.cross_entropy(F.linear(h, w2, b2), y_all[idx])

    def draw():
        return 0.01 * torch.randn(n, generator=gen), f

    return n, draw


def learned_opt_case(kind, two_level, T=100, unroll=20):
    gen = generator()
    torch.manual_seed(0)  # the modules' default initialisation
    n, draw = opt_problem(kind, gen)
    H = 20
    l1, l2, out = torch.nn.LSTMCell(2, H), torch.nn.LSTMCell(H, H), torch.nn.Linear(H, 1)
    u = lambda *s, lo=-0.01, hi=0.01: lo + (hi - lo) * torch.rand(*s, generator=gen)
    cell = {
        "w_f": u(H + 2), "w_i": u(H + 2),
        "b_f": u(1, lo=4.0, hi=5.0), "b_i": u(1, lo=-5.0, hi=-4.0),
    }
    cell = {k: v.requires_grad_(True) for k, v in cell.items()}
    weights = [*l1.parameters(), *l2.parameters(), *out.parameters()]
    if two_level:
        weights += list(cell.values())
    opt = torch.optim.Adam(weights, lr=1e-3)

    def run():
        theta, f = draw()
        z = torch.zeros(n, H)
        s1, s2 = (z, z), (z, z)
        f_prev = i_prev = torch.zeros(n)
        for _ in range(T // unroll):
            theta = theta.detach().requires_grad_(True)
            s1 = tuple(t.detach() for t in s1)
            s2 = tuple(t.detach() for t in s2)
            f_prev, i_prev = f_prev.detach(), i_prev.detach()
            meta_loss = 0.0
            for _ in range(unroll):
                loss = f(theta)
                meta_loss = meta_loss + loss
                (g,) = torch.autograd.grad(loss, theta, retain_graph=True)
                ga, gb = preprocess(g.detach())
                s1 = l1(torch.stack([ga, gb], 1), s1)
                s2 = l2(s1[0], s2)
                step = 0.1 * out(s2[0]).reshape(n)
                if two_level:
                    h = s2[0]
                    wf, wi = cell["w_f"], cell["w_i"]
                    f_pre = h @ wf[:H] + wf[H] * theta + wf[H + 1] * f_prev + cell["b_f"]
                    i_pre = h @ wi[:H] + wi[H] * theta + wi[H + 1] * i_prev + cell["b_i"]
                    theta = torch.sigmoid(f_pre) * theta + torch.sigmoid(i_pre) * step
                    f_prev, i_prev = f_pre, i_pre
                else:
                    theta = theta + step
            meta_loss = meta_loss + f(theta)
            opt.zero_grad()
            meta_loss.backward()
            opt.step()

    return run


CASES = {
    "learner-omniglot-5": lambda: learner_case("omniglot", 5),
    "learner-omniglot-75": lambda: learner_case("omniglot", 75),
    "learner-mini-5": lambda: learner_case("mini", 5),
    "learner-mini-75": lambda: learner_case("mini", 75),
    "fomaml-task": lambda: maml_case(False),
    "maml-task": lambda: maml_case(True),
    "reptile-task": reptile_case,
    "meta-lstm-10": lambda: meta_lstm_case(10),
    "meta-lstm-20": lambda: meta_lstm_case(20),
    # mini-ImageNet 5-way 1-shot as its benchmark runs each algorithm:
    # FOMAML 5 inner SGD steps at lr 0.01; Reptile 15 shots, 8 Adam steps
    # on mini-batches of 10; the meta-LSTM 12 updates.
    "fomaml-task-mini": lambda: maml_case(False, "mini", steps=5, lr=0.01),
    "reptile-task-mini": lambda: reptile_case("mini", shots=15, iters=8),
    "meta-lstm-mini": lambda: meta_lstm_case(12, "mini"),
    # learned optimisers, one meta-training step (T = 100, unrolls of 20)
    "lstm-opt-quadratic": lambda: learned_opt_case("quadratic", False),
    "lstm-opt-mnist": lambda: learned_opt_case("mnist", False),
    "two-level-quadratic": lambda: learned_opt_case("quadratic", True),
    "two-level-mnist": lambda: learned_opt_case("mnist", True),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("case", choices=sorted(CASES))
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    a = ap.parse_args()
    global DEVICE
    DEVICE = a.device
    cuda = DEVICE.startswith("cuda")
    if cuda:
        torch.set_default_device(DEVICE)
    else:
        torch.set_num_threads(2)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    run = CASES[a.case]()
    run()  # warm-up
    sync()
    times = []
    for _ in range(a.reps):
        t = time.perf_counter()
        run()
        sync()
        times.append(1e3 * (time.perf_counter() - t))
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"case": a.case, "ms": statistics.median(times), "peak_mib": round(peak),
                      "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "device": DEVICE}))


if __name__ == "__main__":
    main()

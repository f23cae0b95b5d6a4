#!/usr/bin/env python3
"""Cross-framework numeric fixtures: PyTorch computes what fewshot computes.

Run by hand, never by CI (PyTorch is not a dependency of fewshot):

    pip install torch safetensors numpy
    python3 benchmarks/reference/fixtures.py          # writes tests/fixtures/*.safetensors

Each fixture holds fixed inputs and parameters and PyTorch's outputs. Inputs
and parameters are drawn, rounded to float32, and the computation runs in
float64; everything is stored as float32 to keep the files small
(`tests/fixtures.rs` checks fewshot in float64 and in float32 against them):

- learner-*.safetensors: forward logits, mean cross-entropy and parameter
  gradients of the conv-4 learner in train-mode batch norm, for the shared
  learner (stride-2 and max-pool forms) and the reference variants (MAML's
  network: TF SAME padding, no batch-norm scale, eps 1e-3, mean-pooled
  head; Reptile's mini-ImageNet pooling with SAME padding), plus the
  support-statistics and running-statistics predictions.
- maml.safetensors: one MAML inner step on the reference network with the
  reference's loss (sum(CE)/K), batch-norm offset outer-only, query batch
  statistics, and the first- and second-order meta-gradient of one task.
- meta_lstm.safetensors: three meta-learner-LSTM updates (preprocessing,
  the 4->20 LSTM, the meta-LSTM cell with pre-sigmoid feedback, the learner
  gradient divided by the batch size) and the meta-gradient of the query
  loss with the learner's gradients and losses held constant.
- reptile.safetensors: one Reptile outer step over two tasks with inner
  Adam (beta1 = 0, epsilon-hat form as TensorFlow's AdamOptimizer, state
  persisting across tasks) on the summed mini-batch loss.

The functions below are written from the reference codes (cited in
docs/fidelity.md), with PyTorch's own ops (conv2d, batch_norm, max_pool2d,
lstm_cell, cross_entropy, autograd) doing the arithmetic.
"""

import math
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

torch.set_default_dtype(torch.float64)
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "fixtures")


# ---------------------------------------------------------------- learner

class Net:
    """The conv-4 learner, functional over a dict of named parameters."""

    def __init__(self, cin, size, hidden, ways, downsample, eps=1e-5, head="flatten",
                 bn_scale=True, padding="torch", pool_padding="valid"):
        self.cin, self.size, self.hidden, self.ways = cin, size, hidden, ways
        self.downsample, self.eps, self.head = downsample, eps, head
        self.bn_scale, self.padding, self.pool_padding = bn_scale, padding, pool_padding

    def names(self):
        out = []
        for i in range(1, 5):
            out += [f"conv{i}.weight", f"conv{i}.bias"]
            if self.bn_scale:
                out.append(f"bn{i}.gamma")
            out.append(f"bn{i}.beta")
        return out + ["head.weight", "head.bias"]

    def feature_side(self):
        s = self.size
        for _ in range(4):
            if self.downsample == "stride2":
                s = (s - 1) // 2 + 1
            elif self.pool_padding == "same":
                s = (s + 1) // 2
            else:
                s = s // 2
        return s

    def features(self):
        return self.hidden if self.head == "mean-pool" else self.hidden * self.feature_side() ** 2

    def init(self, gen):
        p = {}
        cin = self.cin
        for i in range(1, 5):
            p[f"conv{i}.weight"] = torch.randn(self.hidden, cin, 3, 3, generator=gen) * (1.0 / math.sqrt(cin * 9))
            p[f"conv{i}.bias"] = torch.randn(self.hidden, generator=gen) * 0.1
            if self.bn_scale:
                p[f"bn{i}.gamma"] = 1.0 + 0.2 * torch.randn(self.hidden, generator=gen)
            p[f"bn{i}.beta"] = 0.1 * torch.randn(self.hidden, generator=gen)
            cin = self.hidden
        f = self.features()
        p["head.weight"] = torch.randn(self.ways, f, generator=gen) / math.sqrt(f)
        p["head.bias"] = 0.1 * torch.randn(self.ways, generator=gen)
        return {k: r32(v) for k, v in p.items()}

    def conv(self, x, w, b):
        stride = 2 if self.downsample == "stride2" else 1
        if self.padding == "tf-same":
            # TensorFlow SAME: total pad max((out-1)*s + k - in, 0), the odd
            # pixel at the bottom/right.
            pads = []
            for n in (x.shape[3], x.shape[2]):
                out = -(-n // stride)
                total = max((out - 1) * stride + 3 - n, 0)
                pads += [total // 2, total - total // 2]
            return F.conv2d(F.pad(x, pads), w, b, stride=stride, padding=0)
        return F.conv2d(x, w, b, stride=stride, padding=1)

    def forward(self, p, x, stats=None, running=None, momentum=0.1, collect=None):
        """Logits. `stats`: per-layer (mean, var) to normalise with (eval
        mode); `running`: per-layer [mean, var] buffers updated in train
        mode with `momentum`; `collect`: list receiving the batch stats."""
        h = x
        for i in range(1, 5):
            h = self.conv(h, p[f"conv{i}.weight"], p[f"conv{i}.bias"])
            g = p.get(f"bn{i}.gamma")
            b = p[f"bn{i}.beta"]
            if collect is not None:
                collect.append((h.mean((0, 2, 3)), h.var((0, 2, 3), unbiased=False)))
            if stats is not None:
                m, v = stats[i - 1]
                h = F.batch_norm(h, m, v, g, b, training=False, eps=self.eps)
            elif running is not None:
                rm, rv = running[i - 1]
                h = F.batch_norm(h, rm, rv, g, b, training=True, momentum=momentum, eps=self.eps)
            else:
                h = F.batch_norm(h, None, None, g, b, training=True, eps=self.eps)
            h = F.relu(h)
            if self.downsample == "maxpool":
                h = F.max_pool2d(h, 2, ceil_mode=self.pool_padding == "same")
        if self.head == "mean-pool":
            f = h.mean((2, 3))
        else:
            f = h.reshape(h.shape[0], -1)
        return f @ p["head.weight"].t() + p["head.bias"]


def r32(t):
    """Round to float32 (what the fixture file stores), keep float64."""
    return t.float().double()


def leaves(p):
    return {k: v.detach().clone().requires_grad_(True) for k, v in p.items()}


def flat(net, p):
    return torch.cat([p[n].reshape(-1) for n in net.names()])


def unflat(net, v, like):
    out, off = {}, 0
    for n in net.names():
        k = like[n].numel()
        out[n] = v[off:off + k].reshape(like[n].shape)
        off += k
    return out


def episode(gen, cin, size, ways, shots, queries):
    sx = r32(torch.rand(ways * shots, cin, size, size, generator=gen))
    qx = r32(torch.rand(ways * queries, cin, size, size, generator=gen))
    sy = torch.arange(ways).repeat_interleave(shots)
    qy = torch.arange(ways).repeat_interleave(queries)
    return sx, sy, qx, qy


def ep_tensors(prefix, e):
    sx, sy, qx, qy = e
    return {f"{prefix}support_x": sx, f"{prefix}support_y": sy.to(torch.int64),
            f"{prefix}query_x": qx, f"{prefix}query_y": qy.to(torch.int64)}


def learner_fixture(name, net, gen, batch, momentum=0.9):
    p = net.init(gen)
    x = r32(torch.rand(batch, net.cin, net.size, net.size, generator=gen))
    y = torch.arange(batch) % net.ways
    q = r32(torch.rand(batch + 1, net.cin, net.size, net.size, generator=gen))
    pl = leaves(p)
    logits = net.forward(pl, x)
    loss = F.cross_entropy(logits, y)
    grads = torch.autograd.grad(loss, [pl[n] for n in net.names()])
    t = {"x": x, "y": y.to(torch.int64), "q": q, "logits": logits.detach(), "loss": loss.detach().reshape(1)}
    for n, g in zip(net.names(), grads):
        t["param." + n] = p[n]
        t["grad." + n] = g
    with torch.no_grad():
        # Non-transductive prediction of q with x's statistics.
        stats = []
        net.forward(p, x, collect=stats)
        t["pred_support_stats"] = net.forward(p, q, stats=stats)
        # Running statistics over two train-mode passes (x, then x[:-1]),
        # reset to (0, 1) first, then q in eval mode with them.
        running = [[torch.zeros(net.hidden), torch.ones(net.hidden)] for _ in range(4)]
        net.forward(p, x, running=running, momentum=momentum)
        net.forward(p, x[:-1], running=running, momentum=momentum)
        t["pred_running"] = net.forward(p, q, stats=[tuple(r) for r in running])
        t["momentum"] = torch.tensor([momentum])
        for i, (m, v) in enumerate(running):
            t[f"running.{i}.mean"] = m
            t[f"running.{i}.var"] = v
    save(name, t)


# ---------------------------------------------------------------- MAML

def maml_fixture(gen):
    # The reference network (cbfinn/maml): TF SAME stride 2, no BN scale,
    # eps 1e-3, mean-pooled head; 5-way 1-shot, K queries per class.
    net = Net(1, 28, 8, 5, "stride2", eps=1e-3, head="mean-pool", bn_scale=False, padding="tf-same")
    p = net.init(gen)
    sx, sy, qx, qy = e = episode(gen, 1, 28, 5, 1, 1)
    K, lr = 1, 0.4
    names = net.names()
    inner = [n for n in names if not n.startswith("bn")]  # BN offset outer-only

    def xent(logits, y):  # utils.py xent: CE / update_batch_size, summed
        return F.cross_entropy(logits, y, reduction="sum") / K

    out = ep_tensors("", e)
    for n in names:
        out["param." + n] = p[n]
    for order in ("first", "second"):
        pl = leaves(p)
        loss_a = xent(net.forward(pl, sx), sy)
        ga = torch.autograd.grad(loss_a, [pl[n] for n in inner], create_graph=order == "second")
        if order == "first":
            ga = [g.detach() for g in ga]
        fast = dict(pl)
        for n, g in zip(inner, ga):
            fast[n] = pl[n] - lr * g
        if order == "first":
            fast = {n: (t.detach().requires_grad_(True) if n in inner else t) for n, t in fast.items()}
        logits_b = net.forward(fast, qx)  # query batch statistics
        loss_b = xent(logits_b, qy)
        wrt = [fast[n] if order == "first" else pl[n] for n in names]
        gb = torch.autograd.grad(loss_b, wrt)
        for n, g in zip(names, gb):
            out[f"{order}.grad.{n}"] = g
        out[f"{order}.query_loss"] = loss_b.detach().reshape(1)
        if order == "first":
            for n in names:
                out["adapted." + n] = fast[n].detach()
    save("maml", out)


# ---------------------------------------------------------------- meta-LSTM

def preprocess(x, p=10.0):
    # lstm-helper.lua preProc1/preProc2, strict `>` (torch.gt)
    ind = x.abs() > math.exp(-p)
    a = torch.where(ind, torch.log(x.abs().clamp_min(1e-300)) / p, torch.full_like(x, -1.0))
    b = torch.where(ind, torch.sign(x), math.exp(p) * x)
    return a, b


def meta_lstm_fixture(gen):
    net = Net(3, 16, 4, 3, "maxpool", eps=1e-3)
    p0 = net.init(gen)
    sx, sy, qx, qy = e = episode(gen, 3, 16, 3, 2, 2)
    n = sum(v.numel() for v in p0.values())
    H, T = 20, 3
    u = lambda *s, lo=-0.01, hi=0.01: lo + (hi - lo) * torch.rand(*s, generator=gen)
    # Larger than the reference's U(-0.01, 0.01) so every path matters.
    mp = {k: r32(v) for k, v in {
        "lstm.w_ih": u(4 * H, 4, lo=-0.5, hi=0.5),
        "lstm.w_hh": u(4 * H, H, lo=-0.3, hi=0.3),
        "lstm.b": u(4 * H, 1, lo=-0.3, hi=0.3),
        "cell.w_f": u(1, H + 2, lo=-0.3, hi=0.3),
        "cell.w_i": u(1, H + 2, lo=-0.3, hi=0.3),
        "cell.b_f": u(1, 1, lo=2.0, hi=3.0),
        "cell.b_i": u(1, 1, lo=-2.0, hi=-1.0),
        "theta0": flat(net, p0).reshape(1, n),
    }.items()}
    ml = leaves(mp)
    theta = ml["theta0"]
    h = torch.zeros(n, H)
    c = torch.zeros(n, H)
    f_prev = torch.zeros(1, n)
    i_prev = torch.zeros(1, n)
    out = ep_tensors("", e)
    for k, v in mp.items():
        out["meta." + k] = v
    B = sx.shape[0]
    for t in range(T):
        # Learner loss and gradient at a detached theta (no second order),
        # gradient divided by the batch size (meta-learner-lstm.lua:64).
        pt = leaves(unflat(net, theta.detach().reshape(-1), p0))
        loss = F.cross_entropy(net.forward(pt, sx), sy)
        g = torch.autograd.grad(loss, [pt[m] for m in net.names()])
        grad = torch.cat([x.reshape(-1) for x in g]).reshape(1, n) / B
        ga, gb = preprocess(grad)
        la, lb = preprocess(loss.detach().reshape(1, 1))
        # fewshot's input order (grad, loss); the reference's is (loss, grad).
        xin = torch.cat([ga, gb, la.expand(1, n), lb.expand(1, n)], 0).t()  # [n, 4]
        h, c = torch.lstm_cell(xin, (h, c), ml["lstm.w_ih"], ml["lstm.w_hh"], ml["lstm.b"].reshape(-1),
                               torch.zeros(4 * H))
        ht = h.t()  # [H, n]
        wf, wi = ml["cell.w_f"], ml["cell.w_i"]
        f_pre = wf[:, :H] @ ht + wf[:, H:H + 1] * theta + wf[:, H + 1:] * f_prev + ml["cell.b_f"]
        i_pre = wi[:, :H] @ ht + wi[:, H:H + 1] * theta + wi[:, H + 1:] * i_prev + ml["cell.b_i"]
        theta = torch.sigmoid(f_pre) * theta - torch.sigmoid(i_pre) * grad
        f_prev, i_prev = f_pre, i_pre
        out[f"step{t + 1}.grad"] = grad.detach()
        out[f"step{t + 1}.loss"] = loss.detach().reshape(1)
        out[f"step{t + 1}.forget"] = torch.sigmoid(f_pre).detach()
        out[f"step{t + 1}.input"] = torch.sigmoid(i_pre).detach()
        out[f"step{t + 1}.theta"] = theta.detach()
    logits = net.forward(unflat(net, theta.reshape(-1), p0), qx)  # query statistics
    qloss = F.cross_entropy(logits, qy)
    gm = torch.autograd.grad(qloss, [ml[k] for k in mp])
    out["query_loss"] = qloss.detach().reshape(1)
    for k, gk in zip(mp, gm):
        out["metagrad." + k] = gk
    save("meta_lstm", out)


# ---------------------------------------------------------------- Reptile

def reptile_fixture(gen):
    net = Net(1, 28, 8, 5, "stride2")
    p = net.init(gen)
    names = net.names()
    lr, b1, b2, eps, iters, eps_outer = 1e-3, 0.0, 0.999, 1e-8, 3, 0.7
    tasks = [episode(gen, 1, 28, 5, 2, 0) for _ in range(2)]
    m = {k: torch.zeros_like(v) for k, v in p.items()}
    v = {k: torch.zeros_like(x) for k, x in p.items()}
    step = 0
    adapted = []
    out = {}
    for j, (sx, sy, _, _) in enumerate(tasks):
        out.update(ep_tensors(f"task{j}.", tasks[j]))
        w = {k: t.clone() for k, t in p.items()}  # model variables reset per task
        for _ in range(iters):
            # The whole support set is the mini-batch (inner_batch = N*K).
            wl = leaves(w)
            # models.py: unreduced CE vector, so minimize() uses its sum.
            loss = F.cross_entropy(net.forward(wl, sx), sy, reduction="sum")
            gs = torch.autograd.grad(loss, [wl[k] for k in names])
            step += 1  # the Adam step count persists across tasks
            lr_t = lr * math.sqrt(1 - b2 ** step) / (1 - b1 ** step)
            for k, g in zip(names, gs):
                m[k] = b1 * m[k] + (1 - b1) * g
                v[k] = b2 * v[k] + (1 - b2) * g * g
                w[k] = w[k] - lr_t * m[k] / (v[k].sqrt() + eps)  # TF AdamOptimizer
        adapted.append(w)
    for k in names:
        mean = sum(a[k] for a in adapted) / len(adapted)
        out["param." + k] = p[k]
        out["task0.adapted." + k] = adapted[0][k]
        out["new." + k] = p[k] + eps_outer * (mean - p[k])
        out["adam.v." + k] = v[k]
    out["meta_step"] = torch.tensor([eps_outer])
    save("reptile", out)


def save(name, tensors):
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, f"{name}.safetensors")
    store = {k: (t.detach().float() if t.is_floating_point() else t).contiguous() for k, t in tensors.items()}
    save_file(store, path,
              metadata={"generator": "benchmarks/reference/fixtures.py", "torch": torch.__version__})
    print(f"{path}: {os.path.getsize(path) / 1024:.0f} KiB")


def main():
    gen = torch.Generator().manual_seed(20261128)
    learner_fixture("learner-omniglot", Net(1, 28, 8, 5, "stride2"), gen, 6)
    learner_fixture("learner-omniglot-maml", Net(1, 28, 8, 5, "stride2", eps=1e-3, head="mean-pool",
                                                 bn_scale=False, padding="tf-same"), gen, 6)
    # 22 -> 11 -> 5 -> 2 -> 1 (valid) or 22 -> 11 -> 6 -> 3 -> 2 (same): odd sizes.
    learner_fixture("learner-miniimagenet", Net(3, 22, 8, 5, "maxpool"), gen, 4)
    learner_fixture("learner-miniimagenet-reptile", Net(3, 22, 8, 5, "maxpool", eps=1e-3,
                                                        pool_padding="same"), gen, 4)
    maml_fixture(gen)
    meta_lstm_fixture(gen)
    reptile_fixture(gen)
    return 0


if __name__ == "__main__":
    sys.exit(main())

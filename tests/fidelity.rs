//! Fidelity options: the reference setups resolve to the reference values,
//! the published defaults per setting, the batch-norm protocols, and the
//! reference network options. The numbers themselves are checked against
//! PyTorch in `tests/fixtures.rs`; docs/fidelity.md cites every choice.

mod common;

use candle_core::{DType, Device, Tensor};
use fewshot::algo::maml::{Maml, MamlConfig};
use fewshot::algo::{sgd_adapt, Adapted, Algorithm, Context};
use fewshot::data::sampler::{Batch, EpisodeSpec};
use fewshot::model::learner::{Head, Init, Learner, Padding, PoolPadding};
use fewshot::model::norm::{EvalStats, NormProtocol, TrainStats};
use fewshot::rng::Rng;
use fewshot::spec::{Benchmark, Select};

fn parse(yaml: &str) -> fewshot::Result<Benchmark> {
    Benchmark::parse(yaml, "bench.yaml")
}

fn bench(dataset: &str, ways: usize, shots: usize, algo: &str) -> Benchmark {
    parse(&format!(
        "name: t\ndataset: {dataset}\nepisode: {{ways: {ways}, shots: {shots}, queries: 2}}\n\
         budget: {{meta_steps: 1}}\nalgorithms:\n  - {{algorithm: {algo}}}\n"
    ))
    .unwrap()
}

fn cfg(b: &Benchmark, key: &str) -> fewshot::yaml::Value {
    b.algorithms[0].config[key].clone()
}

#[test]
fn reference_setups_resolve_to_the_reference_values() {
    let dir = common::repo_root().join("benchmarks/reference");
    let load = |n: &str| {
        Benchmark::load(dir.join(format!("{n}.yaml")).to_str().unwrap())
            .unwrap_or_else(|e| panic!("{n}: {e}"))
            .0
    };
    // MAML, cbfinn/maml.
    let m = load("maml-omniglot-5way1shot");
    assert_eq!(m.learner.head, Head::MeanPool);
    assert!(!m.learner.bn_scale);
    assert_eq!(m.learner.bn_eps, 1e-3);
    assert_eq!(m.learner.padding, Padding::TfSame);
    assert_eq!(m.learner.init, Init::Maml);
    assert_eq!(m.batch_norm.eval, EvalStats::Query);
    assert!(m.transductive);
    assert_eq!(m.select, Select::Final);
    assert_eq!(cfg(&m, "loss").as_str(), Some("per-shot"));
    assert_eq!(cfg(&m, "adapt_bn").as_bool(), Some(false));
    assert_eq!(cfg(&m, "first_order").as_bool(), Some(false));
    assert_eq!(cfg(&m, "train_queries").as_u64(), Some(1));
    assert!(cfg(&m, "clip_value").is_null());
    let m = load("maml-miniimagenet-5way1shot");
    assert_eq!(cfg(&m, "clip_value").as_f64(), Some(10.0));
    assert_eq!(cfg(&m, "train_queries").as_u64(), Some(15));
    assert_eq!(m.episode.queries, 1);
    // Reptile, openai/supervised-reptile.
    let r = load("reptile-omniglot-5way1shot");
    assert_eq!(r.batch_norm.eval, EvalStats::SupportPlusOne);
    assert!(!r.transductive);
    assert_eq!(r.learner.init, Init::Glorot);
    assert_eq!(cfg(&r, "inner_loss").as_str(), Some("sum"));
    let r = load("reptile-miniimagenet-5way1shot");
    assert_eq!(r.learner.pool_padding, PoolPadding::Same);
    assert_eq!(r.learner.features(), 32 * 6 * 6, "models.py: 1152 features");
    // Meta-LSTM, twitter-research/meta-learning-lstm.
    for (k, steps, momentum, episodes) in [(1, 12, 0.9, 75_000), (5, 8, 0.95, 50_000)] {
        let l = load(&format!("meta-lstm-miniimagenet-5way{k}shot"));
        assert_eq!(cfg(&l, "steps").as_u64(), Some(steps));
        assert_eq!(cfg(&l, "grad_div_batch").as_bool(), Some(true));
        assert_eq!(l.batch_norm.eval, EvalStats::Running);
        assert_eq!(l.batch_norm.meta_train, TrainStats::Query);
        assert_eq!(l.batch_norm.momentum, momentum);
        assert_eq!(l.learner.bn_eps, 1e-3);
        assert_eq!(l.learner.init, Init::Torch7);
        assert_eq!(l.budget.episodes, Some(episodes));
        assert_eq!(l.select, Select::Final);
    }
    // Every file in the folder parses, and is named after its file.
    assert!(common::load_benchmarks(&dir).len() >= 6);
}

#[test]
fn published_defaults_follow_the_setting() {
    // Reptile README.md:35-56, one command per setting.
    let r = bench("omniglot", 20, 1, "reptile");
    assert_eq!(cfg(&r, "inner_batch").as_u64(), Some(20));
    assert_eq!(cfg(&r, "inner_iters").as_u64(), Some(10));
    assert_eq!(cfg(&r, "inner_lr").as_f64(), Some(5e-4));
    assert_eq!(cfg(&r, "eval_inner_batch").as_u64(), Some(10));
    let r = bench("omniglot", 5, 5, "reptile");
    assert_eq!(cfg(&r, "eval_inner_batch").as_u64(), Some(5));
    assert_eq!(cfg(&r, "inner_iters").as_u64(), Some(5));
    let r = bench("mini-imagenet", 5, 5, "reptile");
    assert_eq!(cfg(&r, "eval_inner_batch").as_u64(), Some(15));
    assert_eq!(cfg(&r, "inner_iters").as_u64(), Some(8));
    assert_eq!(cfg(&r, "train_shots").as_u64(), Some(15));
    // Meta-LSTM: nEpochs 12 (1-shot), 8 (5-shot); 10 on Omniglot.
    assert_eq!(
        cfg(&bench("mini-imagenet", 5, 1, "meta-lstm"), "steps").as_u64(),
        Some(12)
    );
    assert_eq!(
        cfg(&bench("mini-imagenet", 5, 5, "meta-lstm"), "steps").as_u64(),
        Some(8)
    );
    assert_eq!(
        cfg(&bench("omniglot", 5, 1, "meta-lstm"), "steps").as_u64(),
        Some(10)
    );
    // MAML: clip 10 on mini-ImageNet only; mean loss and inner BN by default.
    let m = bench("mini-imagenet", 5, 1, "maml");
    assert_eq!(cfg(&m, "clip_value").as_f64(), Some(10.0));
    assert_eq!(cfg(&m, "meta_batch").as_u64(), Some(4));
    let m = bench("omniglot", 5, 1, "maml");
    assert!(cfg(&m, "clip_value").is_null());
    assert_eq!(cfg(&m, "loss").as_str(), Some("mean"));
    assert_eq!(cfg(&m, "train_queries").as_u64(), Some(2));
    // Batch norm: query statistics in meta-training, support at test.
    assert_eq!(m.batch_norm.meta_train, TrainStats::Query);
    assert_eq!(m.batch_norm.eval, EvalStats::Support);
    assert_eq!(m.select, Select::Best);
}

const BASE: &str = "name: t\ndataset: omniglot\nepisode: {ways: 5, shots: 1, queries: 2}\n\
                    budget: {meta_steps: 1}\nalgorithms:\n  - {algorithm: maml}\n";

#[test]
fn protocol_and_learner_errors_name_the_field() {
    let err = |extra: &str| parse(&format!("{BASE}{extra}\n")).unwrap_err().to_string();
    let e = err("transductive: true\nbatch_norm: {eval: support}");
    assert!(
        e.contains("batch_norm.eval") && e.contains("contradicts"),
        "{e}"
    );
    let e = err("batch_norm: {eval: running, momentum: 0}");
    assert!(e.contains("batch_norm.momentum"), "{e}");
    let e = err("batch_norm: {eval: sometimes}");
    assert!(
        e.contains("sometimes") && e.contains("support-plus-one"),
        "{e}"
    );
    let e = err("batch_norm: {meta_train: query, evaluation: query}");
    assert!(e.contains("evaluation"), "{e}");
    let e = err("learner: {bn_eps: -1}");
    assert!(e.contains("learner") && e.contains("bn_eps"), "{e}");
    let e = err("learner: {head: global}");
    assert!(e.contains("global") && e.contains("mean-pool"), "{e}");
    let e = err("select: last");
    assert!(e.contains("last") && e.contains("final"), "{e}");
    // Consistent shorthand and block are accepted.
    let b = parse(&format!(
        "{BASE}transductive: true\nbatch_norm: {{eval: query}}\n"
    ))
    .unwrap();
    assert!(b.transductive);
}

fn tiny() -> Learner {
    Learner {
        in_channels: 1,
        image_size: 8,
        hidden: 3,
        ..Learner::omniglot(3, 8)
    }
}

fn ctx(l: Learner, norm: NormProtocol) -> Context {
    Context {
        dataset: "omniglot".into(),
        spec: EpisodeSpec {
            ways: 3,
            shots: 2,
            queries: 2,
        },
        learner: l,
        norm,
        run_seed: 3,
        episode_seed: 3,
        device: Device::Cpu,
    }
}

fn norm(meta_train: TrainStats, eval: EvalStats) -> NormProtocol {
    NormProtocol {
        meta_train,
        eval,
        momentum: 0.9,
    }
}

fn batch(l: &Learner, seed: u64) -> Batch {
    let mut rng = Rng::new(seed);
    let s = l.image_size;
    let mut img = |n: usize| {
        let v: Vec<f32> = (0..n * s * s).map(|_| rng.normal() as f32).collect();
        Tensor::from_vec(v, (n, 1, s, s), &Device::Cpu).unwrap()
    };
    let labels = |k: usize| {
        Tensor::new(
            (0..3 * k).map(|i| (i / k) as u32).collect::<Vec<_>>(),
            &Device::Cpu,
        )
        .unwrap()
    };
    Batch {
        id: Default::default(),
        support_x: img(6),
        support_y: labels(2),
        query_x: img(6),
        query_y: labels(2),
    }
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn support_plus_one_predicts_each_query_with_the_support_set() {
    let l = tiny();
    let p = l.init(&mut Rng::new(1), &Device::Cpu).unwrap();
    let b = batch(&l, 2);
    let a = Adapted {
        params: p.clone(),
        running: None,
    };
    let c = ctx(
        l.clone(),
        norm(TrainStats::Query, EvalStats::SupportPlusOne),
    );
    let got = c.predict_eval(&a, &b.support_x, &b.query_x).unwrap();
    for j in 0..6 {
        let x = Tensor::cat(&[&b.support_x, &b.query_x.narrow(0, j, 1).unwrap()], 0).unwrap();
        let want = l.forward(&p, &x).unwrap().narrow(0, 6, 1).unwrap();
        assert!(
            max_diff(&got.narrow(0, j, 1).unwrap(), &want) < 1e-6,
            "query {j}"
        );
    }
    // And it is a different protocol from the support statistics alone.
    let c = ctx(l.clone(), norm(TrainStats::Query, EvalStats::Support));
    let support = c.predict_eval(&a, &b.support_x, &b.query_x).unwrap();
    assert!(max_diff(&got, &support) > 1e-4);
}

#[test]
fn running_statistics_come_from_the_adaptation_passes() {
    let l = tiny();
    let b = batch(&l, 4);
    let c = ctx(l.clone(), norm(TrainStats::Query, EvalStats::Running));
    let m = Maml::new(
        MamlConfig {
            first_order: Some(true),
            inner_steps_test: Some(2),
            ..Default::default()
        }
        .resolve(&c)
        .unwrap(),
        &c,
    )
    .unwrap();
    let a = m.adapt(&b.support_x, &b.support_y, b.id).unwrap();
    let r = a.running.as_ref().expect("running statistics recorded");
    let got = r.to_vecs().unwrap();
    // By hand: two SGD passes from theta, statistics of each pass folded in
    // with momentum 0.9 from (0, 1), unbiased variance.
    let step = m.inner_step(6);
    let (_, _, s1) = l
        .loss_and_grad(&m.theta, &b.support_x, &b.support_y)
        .unwrap();
    let p1 = sgd_adapt(&l, &m.theta, &b.support_x, &b.support_y, &step, 1, None).unwrap();
    let (_, _, s2) = l.loss_and_grad(&p1, &b.support_x, &b.support_y).unwrap();
    for layer in 0..4 {
        let v = |s: &fewshot::model::kernels::batch_norm::BnStats, var: bool| -> Vec<f32> {
            let t = if var { &s.var } else { &s.mean };
            t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        let n = s1[layer].count as f32;
        for ch in 0..3 {
            let mean = 0.1 * 0.9 * v(&s1[layer], false)[ch] + 0.9 * v(&s2[layer], false)[ch];
            let var = 0.01
                + 0.1 * 0.9 * v(&s1[layer], true)[ch] * n / (n - 1.0)
                + 0.9 * v(&s2[layer], true)[ch] * n / (n - 1.0);
            assert!((got[layer].0[ch] - mean).abs() < 1e-5, "layer {layer} mean");
            assert!(
                (got[layer].1[ch] - var).abs() < 1e-4 * var.abs().max(1.0),
                "layer {layer} var"
            );
        }
    }
    // The evaluation uses them; without them it is an error naming the field.
    assert!(m.evaluate(&b).unwrap().accuracy >= 0.0);
    let bare = Adapted {
        params: a.params.clone(),
        running: None,
    };
    let e = c
        .predict_eval(&bare, &b.support_x, &b.query_x)
        .unwrap_err()
        .to_string();
    assert!(e.contains("batch_norm.eval"), "{e}");
}

#[test]
fn meta_training_query_statistics_are_the_query_batchs_own() {
    let l = tiny();
    let p = l.init(&mut Rng::new(5), &Device::Cpu).unwrap();
    let b = batch(&l, 6);
    let q = ctx(l.clone(), norm(TrainStats::Query, EvalStats::Support));
    let s = ctx(l.clone(), norm(TrainStats::Support, EvalStats::Support));
    let via_query = q.predict_train(&p, &b.support_x, &b.query_x).unwrap();
    assert!(max_diff(&via_query, &l.forward(&p, &b.query_x).unwrap()) < 1e-7);
    let via_support = s.predict_train(&p, &b.support_x, &b.query_x).unwrap();
    assert!(max_diff(&via_query, &via_support) > 1e-4);
    // And the MAML meta-gradient follows the protocol.
    let mk = |c: &Context| {
        let m = Maml::new(
            MamlConfig {
                first_order: Some(true),
                ..Default::default()
            }
            .resolve(c)
            .unwrap(),
            c,
        )
        .unwrap();
        m.task_gradient(&m.theta, &b).unwrap().0
    };
    let d = mk(&q)
        .zip_map(&mk(&s), |a, b| a - b)
        .unwrap()
        .sum_sq()
        .unwrap();
    assert!(d > 1e-8);
}

#[test]
fn maml_reference_options_change_the_inner_step_as_documented() {
    let l = Learner {
        bn_scale: false,
        head: Head::MeanPool,
        ..tiny()
    };
    // No gamma: conv weight, conv bias, beta per block; mean-pooled head.
    assert_eq!(l.param_names().len(), 4 * 3 + 2);
    assert_eq!(l.features(), 3);
    let c = ctx(l.clone(), norm(TrainStats::Query, EvalStats::Query));
    let b = batch(&l, 8);
    let m = Maml::new(
        MamlConfig {
            first_order: Some(true),
            inner_lr: Some(0.1),
            loss: Some(fewshot::algo::maml::LossScale::PerShot),
            adapt_bn: Some(false),
            ..Default::default()
        }
        .resolve(&c)
        .unwrap(),
        &c,
    )
    .unwrap();
    let step = m.inner_step(6);
    // sum(CE)/K over N*K = 6 examples, K = 2: 3 x the mean loss.
    assert_eq!(step.loss_scale, 3.0);
    let adapted = sgd_adapt(&l, &m.theta, &b.support_x, &b.support_y, &step, 1, None).unwrap();
    let (_, g, _) = l
        .loss_and_grad(&m.theta, &b.support_x, &b.support_y)
        .unwrap();
    for (i, n) in l.param_names().iter().enumerate() {
        let want = if n.starts_with("bn") {
            m.theta.tensors[i].clone()
        } else {
            (&m.theta.tensors[i] - (&g.tensors[i] * 0.3).unwrap()).unwrap()
        };
        assert!(max_diff(&adapted.tensors[i], &want) < 1e-6, "{n}");
    }
    // Batch-norm offsets still get a meta-gradient (outer-only).
    let (mg, _) = m.task_gradient(&m.theta, &b).unwrap();
    let beta = mg
        .get("bn1.beta")
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap();
    assert!(beta.to_scalar::<f32>().unwrap() > 0.0);
}

#[test]
fn reference_learner_options_have_the_reference_shapes() {
    // MAML's Omniglot network: 28 -> 14 -> 7 -> 4 -> 2 with TF SAME.
    let l = Learner {
        padding: Padding::TfSame,
        head: Head::MeanPool,
        bn_scale: false,
        init: Init::Maml,
        ..Learner::omniglot(5, 28)
    };
    let p = l.init(&mut Rng::new(0), &Device::Cpu).unwrap();
    let x = Tensor::zeros((2, 1, 28, 28), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(l.forward(&p, &x).unwrap().dims(), &[2, 5]);
    // Head N(0, 1) after the mean-pool (maml.py:206), zero biases.
    let w = p
        .get("head.weight")
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let sd = (w.iter().map(|v| v * v).sum::<f32>() / w.len() as f32).sqrt();
    assert!((0.6..1.5).contains(&sd), "head std {sd}");
    assert_eq!(
        p.get("conv1.bias")
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap(),
        0.0
    );
    // Torch7: batch-norm scale U(0, 1).
    let l7 = Learner {
        init: Init::Torch7,
        ..Learner::mini_imagenet(5, 84)
    };
    let p7 = l7.init(&mut Rng::new(0), &Device::Cpu).unwrap();
    let g = p7.get("bn1.gamma").unwrap().to_vec1::<f32>().unwrap();
    assert!(g.iter().all(|v| (0.0..1.0).contains(v)) && g.iter().any(|v| *v < 0.5));
    // Reptile's mini-ImageNet pooling: 84 -> 42 -> 21 -> 11 -> 6.
    let lr = Learner {
        pool_padding: PoolPadding::Same,
        ..Learner::mini_imagenet(5, 84)
    };
    assert_eq!(lr.feature_side(), 6);
    let pr = lr.init(&mut Rng::new(0), &Device::Cpu).unwrap();
    let x = Tensor::zeros((1, 3, 84, 84), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(lr.forward(&pr, &x).unwrap().dims(), &[1, 5]);
}

//! An ordered, named collection of parameter tensors.
//!
//! Learners are functional: `forward(params, x)` takes the parameters it
//! uses, so an inner loop returns new [`Params`] instead of mutating shared
//! state. Parameters flatten to one vector and back (the meta-learner LSTM
//! treats every coordinate alike) and save to safetensors by name.

use std::collections::HashMap;

use candle_core::{backprop::GradStore, DType, Tensor, Var};

use crate::error::{Error, Result};

/// Named parameter tensors in a fixed order.
#[derive(Debug, Clone)]
pub struct Params {
    pub names: Vec<String>,
    pub tensors: Vec<Tensor>,
}

impl Params {
    pub fn new(names: Vec<String>, tensors: Vec<Tensor>) -> Self {
        assert_eq!(names.len(), tensors.len());
        Params { names, tensors }
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.names
            .iter()
            .position(|n| n == name)
            .map(|i| &self.tensors[i])
            .ok_or_else(|| {
                Error::invalid(
                    "parameter",
                    name,
                    format!("one of {}", self.names.join(", ")),
                )
            })
    }

    /// Total number of scalars.
    pub fn numel(&self) -> usize {
        self.tensors.iter().map(|t| t.elem_count()).sum()
    }

    /// Number of scalars in each tensor.
    pub fn sizes(&self) -> Vec<usize> {
        self.tensors.iter().map(|t| t.elem_count()).collect()
    }

    /// All coordinates as one vector, tensors in order, each row-major.
    pub fn flatten(&self) -> Result<Tensor> {
        let flat: Vec<Tensor> = self
            .tensors
            .iter()
            .map(|t| t.flatten_all())
            .collect::<candle_core::Result<_>>()?;
        Ok(Tensor::cat(&flat, 0)?)
    }

    /// Inverse of [`Params::flatten`], with `self` giving names and shapes.
    pub fn unflatten_like(&self, flat: &Tensor) -> Result<Params> {
        if flat.elem_count() != self.numel() {
            return Err(Error::invalid(
                "flat parameter vector",
                flat.elem_count(),
                format!("exactly {} elements", self.numel()),
            ));
        }
        let mut off = 0;
        let mut tensors = Vec::with_capacity(self.len());
        for t in &self.tensors {
            let n = t.elem_count();
            tensors.push(flat.narrow(0, off, n)?.reshape(t.shape())?);
            off += n;
        }
        Ok(Params::new(self.names.clone(), tensors))
    }

    /// Apply `f` to every tensor.
    pub fn map(&self, f: impl Fn(&Tensor) -> candle_core::Result<Tensor>) -> Result<Params> {
        let tensors = self
            .tensors
            .iter()
            .map(f)
            .collect::<candle_core::Result<_>>()?;
        Ok(Params::new(self.names.clone(), tensors))
    }

    /// Apply `f` to matching pairs of tensors.
    pub fn zip_map(
        &self,
        other: &Params,
        f: impl Fn(&Tensor, &Tensor) -> candle_core::Result<Tensor>,
    ) -> Result<Params> {
        let tensors = self
            .tensors
            .iter()
            .zip(&other.tensors)
            .map(|(a, b)| f(a, b))
            .collect::<candle_core::Result<_>>()?;
        Ok(Params::new(self.names.clone(), tensors))
    }

    /// Copies cut from any autograd graph.
    pub fn detach(&self) -> Params {
        Params::new(
            self.names.clone(),
            self.tensors.iter().map(|t| t.detach()).collect(),
        )
    }

    /// Fresh autograd leaves holding copies of these values.
    pub fn to_vars(&self) -> Result<Vec<Var>> {
        Ok(self
            .tensors
            .iter()
            .map(Var::from_tensor)
            .collect::<candle_core::Result<_>>()?)
    }

    /// Parameters viewed through autograd leaves.
    pub fn from_vars(names: &[String], vars: &[Var]) -> Params {
        Params::new(
            names.to_vec(),
            vars.iter().map(|v| v.as_tensor().clone()).collect(),
        )
    }

    /// Gradients of `self`'s tensors in `store` (zeros where absent).
    pub fn grads(&self, store: &GradStore) -> Result<Params> {
        self.map(|t| match store.get(t) {
            Some(g) => Ok(g.clone()),
            None => t.zeros_like(),
        })
    }

    /// Sum of squares of all coordinates.
    pub fn sum_sq(&self) -> Result<f64> {
        let mut s = 0f64;
        for t in &self.tensors {
            s += t
                .sqr()?
                .sum_all()?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?;
        }
        Ok(s)
    }

    /// True if every coordinate is finite (0 * x is 0 for finite x and NaN
    /// for infinities and NaN; squaring would overflow on large finite values).
    pub fn all_finite(&self) -> Result<bool> {
        for t in &self.tensors {
            let z = (t * 0.0)?
                .sum_all()?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?;
            if z != 0.0 {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Tensors by `prefix + name`, for safetensors.
    pub fn to_named(&self, prefix: &str) -> HashMap<String, Tensor> {
        self.names
            .iter()
            .zip(&self.tensors)
            .map(|(n, t)| (format!("{prefix}{n}"), t.clone()))
            .collect()
    }

    /// Read back tensors saved with [`Params::to_named`], names and shapes
    /// taken from `self`.
    pub fn from_named_like(&self, prefix: &str, map: &HashMap<String, Tensor>) -> Result<Params> {
        let mut tensors = Vec::with_capacity(self.len());
        for (n, t) in self.names.iter().zip(&self.tensors) {
            let key = format!("{prefix}{n}");
            let v = map.get(&key).ok_or_else(|| Error::Config {
                source_name: "checkpoint".into(),
                reason: format!("tensor {key} missing"),
            })?;
            if v.dims() != t.dims() {
                return Err(Error::Config {
                    source_name: "checkpoint".into(),
                    reason: format!(
                        "tensor {key} has shape {:?}, expected {:?}",
                        v.dims(),
                        t.dims()
                    ),
                });
            }
            tensors.push(v.to_dtype(t.dtype())?.to_device(t.device())?);
        }
        Ok(Params::new(self.names.clone(), tensors))
    }

    /// Cast every tensor (float64 gradient checks).
    pub fn to_dtype(&self, dtype: DType) -> Result<Params> {
        self.map(|t| t.to_dtype(dtype))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn flatten_unflatten_is_identity() {
        let d = Device::Cpu;
        let p = Params::new(
            vec!["a".into(), "b".into()],
            vec![
                Tensor::arange(0f32, 6., &d)
                    .unwrap()
                    .reshape((2, 3))
                    .unwrap(),
                Tensor::arange(6f32, 10., &d)
                    .unwrap()
                    .reshape((4, 1))
                    .unwrap(),
            ],
        );
        let flat = p.flatten().unwrap();
        assert_eq!(
            flat.to_vec1::<f32>().unwrap(),
            (0..10).map(|x| x as f32).collect::<Vec<_>>()
        );
        let q = p.unflatten_like(&flat).unwrap();
        for (x, y) in p.tensors.iter().zip(&q.tensors) {
            assert_eq!(x.dims(), y.dims());
            assert_eq!(
                x.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                y.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            );
        }
        assert!(p.unflatten_like(&flat.narrow(0, 0, 9).unwrap()).is_err());
    }
}

//! What a training step minimises: the I-JEPA prediction loss, and the follow-up methods'
//! options on top of it (all off in [`Objective::official`]):
//!
//! - the loss between prediction and target: smooth-L1 (official), L2 (the paper), L1
//!   (V-JEPA 2), see [`super::loss`];
//! - the targets' normalisation: layer norm (official), DynTanh, none;
//! - targets averaged over the target encoder's last blocks (data2vec's targets, Baevski et
//!   al. 2022) instead of its last block alone;
//! - StoP noise on the target queries' positions (Bar et al. 2024), see
//!   [`crate::model::predictor`];
//! - SIGReg (LeJEPA) and VICReg's variance and covariance terms (C-JEPA) on the context
//!   encoder's features, average-pooled per image or token by token (optionally each token
//!   centred on the batch's mean token at its position), directly or behind VICReg's
//!   expander ([`crate::model::Predictor::regularised_features`]), each added to the loss
//!   with its weight: `loss = prediction + λ_sig SIGReg + λ_var v + λ_cov c`;
//! - VICReg's invariance term across two views: the mean of the context tokens of view A
//!   against the mean of the target encoder's tokens of a second crop B of the same image
//!   (no gradient through B, as every I-JEPA target), `+ λ_inv s`;
//! - the same targets predicted a second time from each context block's mean token alone
//!   (this project's option, see [`crate::model::Predictor::forward_pooled`]),
//!   `+ λ_pool loss(pred(mean z), targets)`, or from the mean token of the context encoder's
//!   pass over the whole image ([`PooledView::Full`]: the feature the evaluation pools must
//!   then hold what the target blocks hold);
//! - MSN's prototype term (Assran et al. 2022) across the same two views as the invariance
//!   term: the mean context token (through the invariance head when there is one) and the
//!   target encoder's mean token assigned to the same learned prototypes, see
//!   [`super::msn`], `+ λ_msn msn`.
//!
//! The random parts of a step (StoP's noise, SIGReg's directions) come from streams keyed by
//! the run's seed, the step and the replica ([`StepKey`]), so that a resumed run and a
//! data-parallel run draw the same numbers as an uninterrupted single process.

use burn::tensor::{Tensor, TensorData};
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use crate::model::MaskIndices;
use crate::rng::{self, Expansion, Rng};

use super::loss::{LossKind, TargetNorm};
use super::{msn, sigreg, vicreg};

/// Which context features the regularisers see.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegFeatures {
    /// One vector per image and context block: the mean of its context tokens (what the
    /// evaluation protocol pools).
    #[default]
    Pooled,
    /// Every context token on its own.
    Tokens,
    /// Every context token, first centred on the batch's mean token at its grid position
    /// (see [`vicreg::centre_by_position`]): the spread the terms ask for must then come from
    /// the images, not from where the tokens sit, which the mean over positions cancels.
    TokensByPosition,
    /// Both: the terms on every token plus the terms on the per-image means (with a
    /// cross-view invariance term the means need their own spread, or they can agree by
    /// all being the same while the tokens still vary by position).
    Both,
}

/// What the pooled prediction's mean token is taken over.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PooledView {
    /// Each context block's tokens (no extra pass).
    #[default]
    Context,
    /// The context encoder's tokens of the whole, unmasked image (one more pass of the
    /// encoder, with gradients): the mean the evaluation reads, up to the EMA.
    Full,
}

/// SIGReg's random directions per step unless configured (LeJEPA uses a few hundred).
pub const DEFAULT_PROJECTIONS: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Objective {
    pub loss: LossKind,
    pub target_norm: TargetNorm,
    /// Blocks of the target encoder averaged into the targets (1: the last one, official).
    pub target_layers: usize,
    /// StoP's σ (variance of the position noise); 0 is off.
    pub stop_sigma: f64,
    pub sigreg_weight: f64,
    pub sigreg_projections: usize,
    pub vicreg_variance_weight: f64,
    pub vicreg_covariance_weight: f64,
    pub features: RegFeatures,
    /// VICReg's invariance term across views; 0 is off.
    pub invariance_weight: f64,
    /// The prediction of the targets from the mean context token alone; 0 is off.
    pub pooled_prediction_weight: f64,
    pub pooled_prediction_view: PooledView,
    /// MSN's prototype term across views; 0 is off.
    pub msn_weight: f64,
    pub msn_temperatures: msn::Temperatures,
    /// MSN's λ of the mean-entropy maximisation.
    pub msn_me_max_weight: f64,
}

impl Objective {
    /// The official objective with the given loss.
    pub fn official(loss: LossKind) -> Self {
        Self {
            loss,
            target_norm: TargetNorm::LayerNorm,
            target_layers: 1,
            stop_sigma: 0.0,
            sigreg_weight: 0.0,
            sigreg_projections: DEFAULT_PROJECTIONS,
            vicreg_variance_weight: 0.0,
            vicreg_covariance_weight: 0.0,
            features: RegFeatures::Pooled,
            invariance_weight: 0.0,
            pooled_prediction_weight: 0.0,
            pooled_prediction_view: PooledView::Context,
            msn_weight: 0.0,
            msn_temperatures: msn::DEFAULT_TEMPERATURES,
            msn_me_max_weight: msn::DEFAULT_ME_MAX,
        }
    }

    /// Whether a term compares the context with the target encoder's mean token of a view.
    pub fn needs_view(&self) -> bool {
        self.invariance_weight > 0.0 || self.msn_weight > 0.0
    }

    fn regularised(&self) -> bool {
        self.sigreg_weight > 0.0
            || self.vicreg_variance_weight > 0.0
            || self.vicreg_covariance_weight > 0.0
    }

    /// The regularisers' weighted sum on the context encoder's output `z`
    /// (`[nenc*B, K_enc, D]`, the real tokens of the context masks `context`, whose positions
    /// [`RegFeatures::TokensByPosition`] reads); `None` when they are all off.
    pub fn regulariser<B: crate::ops::IjepaBackend>(
        &self,
        z: Tensor<B, 3>,
        context: &MaskIndices,
        key: StepKey,
    ) -> Option<Tensor<B, 1>> {
        if !self.regularised() {
            return None;
        }
        let [rows, k, d] = z.dims();
        let pooled = || z.clone().mean_dim(1).reshape([rows, d]);
        let tokens = || z.clone().reshape([rows * k, d]);
        match self.features {
            RegFeatures::Pooled => Some(self.terms(pooled(), key)),
            RegFeatures::Tokens => Some(self.terms(tokens(), key)),
            RegFeatures::TokensByPosition => {
                let centred = vicreg::centre_by_position(z, &context.real_positions());
                Some(self.terms(centred.reshape([rows * k, d]), key))
            }
            RegFeatures::Both => Some(self.terms(tokens(), key) + self.terms(pooled(), key)),
        }
    }

    /// The weighted sum of the regularisers on the rows of `feats` (`[N, D]`).
    fn terms<B: crate::ops::IjepaBackend>(
        &self,
        feats: Tensor<B, 2>,
        key: StepKey,
    ) -> Tensor<B, 1> {
        let [_, d] = feats.dims();
        let mut terms = Vec::new();
        if self.sigreg_weight > 0.0 {
            let m = self.sigreg_projections;
            let dirs = Tensor::from_data(
                TensorData::new(
                    sigreg::directions(d, m, &mut key.rng(SIGREG_DOMAIN)),
                    [d, m],
                ),
                &feats.device(),
            );
            terms.push(sigreg::sigreg(feats.clone(), dirs).mul_scalar(self.sigreg_weight));
        }
        if self.vicreg_variance_weight > 0.0 {
            terms.push(vicreg::variance(feats.clone()).mul_scalar(self.vicreg_variance_weight));
        }
        if self.vicreg_covariance_weight > 0.0 {
            terms.push(vicreg::covariance(feats).mul_scalar(self.vicreg_covariance_weight));
        }
        terms
            .into_iter()
            .reduce(|a, b| a + b)
            .expect("regularised() checked that a term is on")
    }

    /// The weighted invariance term between the context encoder's output `z`
    /// (`[nenc*B, K_enc, D]`, mask-major rows; or its image-level features `[nenc*B, 1, D]`,
    /// see [`crate::model::Predictor::invariance_features`]) and the pooled features of the other view
    /// `view` (`[B, 1, D]`), each image's view repeated for each of its context blocks.
    pub fn invariance<B: burn::tensor::backend::Backend>(
        &self,
        z: Tensor<B, 3>,
        view: Tensor<B, 3>,
        nenc: usize,
    ) -> Tensor<B, 1> {
        let (pooled, view) = image_pairs(z, view, nenc);
        vicreg::invariance(pooled, view).mul_scalar(self.invariance_weight)
    }

    /// The weighted MSN term between the context's image features `z` (`[nenc*B, K, D]`, or
    /// `[nenc*B, 1, D]` as in [`Self::invariance`], pooled here) and the other view's
    /// pooled target features `view` (`[B, 1, D]`), with the prototypes `[K, D]`.
    pub fn msn<B: burn::tensor::backend::Backend>(
        &self,
        z: Tensor<B, 3>,
        view: Tensor<B, 3>,
        prototypes: Tensor<B, 2>,
        nenc: usize,
    ) -> Tensor<B, 1> {
        let (pooled, view) = image_pairs(z, view, nenc);
        msn::msn(
            pooled,
            view,
            prototypes,
            self.msn_temperatures,
            self.msn_me_max_weight,
        )
        .mul_scalar(self.msn_weight)
    }

    /// StoP's noise for `rows x k` target queries in width `d`, N(0, σ I); `None` when off.
    pub fn stop_noise<B: crate::ops::IjepaBackend>(
        &self,
        [rows, k, d]: [usize; 3],
        key: StepKey,
        device: &B::Device,
    ) -> Option<Tensor<B, 3>> {
        if self.stop_sigma <= 0.0 {
            return None;
        }
        let std = self.stop_sigma.sqrt();
        let mut rng = key.rng(STOP_DOMAIN);
        let v: Vec<f32> = (0..rows * k * d)
            .map(|_| {
                let g: f64 = StandardNormal.sample(&mut rng);
                (std * g) as f32
            })
            .collect();
        Some(Tensor::from_data(TensorData::new(v, [rows, k, d]), device))
    }
}

/// The rows the cross-view terms compare: each context block's mean `[nenc*B, D]` (from
/// `z [nenc*B, K, D]`, mask-major) beside its image's view `[B, 1, D]`, repeated per block.
fn image_pairs<B: burn::tensor::backend::Backend>(
    z: Tensor<B, 3>,
    view: Tensor<B, 3>,
    nenc: usize,
) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let [rows, _, d] = z.dims();
    let [b, _, _] = view.dims();
    let pooled = z.mean_dim(1).reshape([rows, d]);
    (pooled, Tensor::cat(vec![view.reshape([b, d]); nenc], 0))
}

/// Names the random streams of one step of one replica: `(seed, step, replica)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StepKey {
    pub seed: u64,
    pub step: u64,
    pub replica: u64,
}

/// Stream domains ([`crate::rng::keyed`], counter expansion).
pub const STOP_DOMAIN: u64 = u64::from_le_bytes(*b"IJEPAstp");
pub const SIGREG_DOMAIN: u64 = u64::from_le_bytes(*b"IJEPAsig");

impl StepKey {
    fn rng(&self, domain: u64) -> Rng {
        rng::keyed(
            &[domain, self.seed, self.step, self.replica],
            Expansion::Counter,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Cpu;

    /// One context mask of the first `k` positions for each of `batch` images.
    fn context(batch: usize, k: usize) -> MaskIndices {
        MaskIndices::new(&[vec![(0..k).collect(); batch]], k).unwrap()
    }

    #[test]
    fn official_objective_adds_nothing() {
        let o = Objective::official(LossKind::SmoothL1);
        let z = Tensor::<Cpu, 3>::ones([2, 3, 4], &Default::default());
        let key = StepKey::default();
        assert!(o.regulariser(z, &context(2, 3), key).is_none());
        assert!(
            o.stop_noise::<Cpu>([2, 3, 4], key, &Default::default())
                .is_none()
        );
    }

    /// The regulariser is the weighted sum of the terms on the pooled or token features.
    #[test]
    fn regulariser_is_the_weighted_sum() {
        let device = Default::default();
        let v: Vec<f32> = (0..2 * 3 * 4)
            .map(|i| ((i * 37 % 11) as f32) / 5.0 - 1.0)
            .collect();
        let z = Tensor::<Cpu, 3>::from_data(TensorData::new(v, [2, 3, 4]), &device);
        let scalar = |t: Tensor<Cpu, 1>| -> f64 { t.into_scalar().into() };
        let o = Objective {
            sigreg_weight: 0.5,
            sigreg_projections: 8,
            vicreg_variance_weight: 2.0,
            vicreg_covariance_weight: 3.0,
            features: RegFeatures::Tokens,
            ..Objective::official(LossKind::SmoothL1)
        };
        let tokens = z.clone().reshape([6, 4]);
        let key = StepKey {
            seed: 7,
            step: 3,
            replica: 1,
        };
        let dirs = Tensor::from_data(
            TensorData::new(
                sigreg::directions(4, 8, &mut key.rng(SIGREG_DOMAIN)),
                [4, 8],
            ),
            &device,
        );
        let want = 0.5 * scalar(sigreg::sigreg(tokens.clone(), dirs))
            + 2.0 * scalar(vicreg::variance(tokens.clone()))
            + 3.0 * scalar(vicreg::covariance(tokens));
        let got = scalar(o.regulariser(z.clone(), &context(2, 3), key).unwrap());
        assert!(
            (got - want).abs() < 1e-5 * want.abs().max(1.0),
            "{got} vs {want}"
        );
        let pooled = Objective {
            features: RegFeatures::Pooled,
            sigreg_weight: 0.0,
            ..o
        };
        let p = z.clone().mean_dim(1).reshape([2, 4]);
        let want = 2.0 * scalar(vicreg::variance(p.clone())) + 3.0 * scalar(vicreg::covariance(p));
        let got = scalar(pooled.regulariser(z.clone(), &context(2, 3), key).unwrap());
        assert!(
            (got - want).abs() < 1e-5 * want.abs().max(1.0),
            "{got} vs {want}"
        );
        let both = Objective {
            features: RegFeatures::Both,
            ..pooled
        };
        let tokens = z.clone().reshape([6, 4]);
        let want = want
            + 2.0 * scalar(vicreg::variance(tokens.clone()))
            + 3.0 * scalar(vicreg::covariance(tokens));
        let got = scalar(both.regulariser(z, &context(2, 3), key).unwrap());
        assert!(
            (got - want).abs() < 1e-5 * want.abs().max(1.0),
            "{got} vs {want}"
        );
    }

    /// The invariance term against f64 from its definition: each context block's mean token
    /// against its image's pooled view, rows mask-major (`nenc` blocks of `B` images).
    #[test]
    fn invariance_pairs_each_context_block_with_its_image_view() {
        let (nenc, b, k, d) = (2, 3, 4, 5);
        let z: Vec<f64> = (0..nenc * b * k * d)
            .map(|i| ((i * 7919 % 97) as f64) / 40.0 - 1.1)
            .collect();
        let view: Vec<f64> = (0..b * d)
            .map(|i| ((i * 13 % 11) as f64) / 6.0 - 0.8)
            .collect();
        let mut want = 0.0;
        for row in 0..nenc * b {
            let image = row % b;
            for j in 0..d {
                let mean = (0..k).map(|t| z[(row * k + t) * d + j]).sum::<f64>() / k as f64;
                want += (mean - view[image * d + j]).powi(2);
            }
        }
        want *= 0.7 / (nenc * b * d) as f64;
        let device = Default::default();
        let f32s = |v: &[f64]| v.iter().map(|x| *x as f32).collect::<Vec<f32>>();
        let zt = Tensor::<Cpu, 3>::from_data(TensorData::new(f32s(&z), [nenc * b, k, d]), &device);
        let vt = Tensor::<Cpu, 3>::from_data(TensorData::new(f32s(&view), [b, 1, d]), &device);
        let o = Objective {
            invariance_weight: 0.7,
            ..Objective::official(LossKind::SmoothL1)
        };
        let got: f64 = o.invariance(zt, vt, nenc).into_scalar().into();
        assert!(want > 0.1, "the case should not be trivial: {want}");
        assert!((got - want).abs() < 1e-5 * want, "{got} vs {want}");
    }

    #[test]
    fn stop_noise_has_the_asked_variance_and_is_reproducible() {
        let o = Objective {
            stop_sigma: 0.25,
            ..Objective::official(LossKind::SmoothL1)
        };
        let device = Default::default();
        let key = |step| StepKey {
            seed: 0,
            step,
            replica: 0,
        };
        let a = o.stop_noise::<Cpu>([8, 10, 50], key(3), &device).unwrap();
        let b = o.stop_noise::<Cpu>([8, 10, 50], key(3), &device).unwrap();
        let c = o.stop_noise::<Cpu>([8, 10, 50], key(4), &device).unwrap();
        assert_ne!(
            c.into_data().to_vec::<f32>().unwrap(),
            b.clone().into_data().to_vec::<f32>().unwrap()
        );
        let (a, b) = (
            a.into_data().to_vec::<f32>().unwrap(),
            b.into_data().to_vec::<f32>().unwrap(),
        );
        assert_eq!(a, b);
        let n = a.len() as f64;
        let mean = a.iter().map(|v| f64::from(*v)).sum::<f64>() / n;
        let var = a
            .iter()
            .map(|v| (f64::from(*v) - mean).powi(2))
            .sum::<f64>()
            / n;
        assert!(
            mean.abs() < 0.02 && (var - 0.25).abs() < 0.02,
            "{mean} {var}"
        );
    }
}

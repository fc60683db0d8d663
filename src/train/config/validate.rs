//! [`TrainConfig::validate`]: every value checked before a run starts, each error naming its
//! key, the value expected and the value found.

use super::*;

impl TrainConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, expected: &str, found: &dyn std::fmt::Display| -> Result<()> {
            Err(ConfigError::value(key, expected, found).into())
        };
        let positive = "a positive number";
        let d = &self.data;
        if d.batch_size == 0 {
            return bad("data.batch_size", positive, &0);
        }
        if !(d.in_chans == 1 || d.in_chans == 3) {
            return bad("data.in_chans", "1 or 3", &d.in_chans);
        }
        // A crop's area as a fraction of the image: both crop scales follow this rule.
        let crop_scale = |key: &str, (lo, hi): (f64, f64)| -> Result<()> {
            if 0.0 < lo && lo <= hi && hi <= 1.0 {
                Ok(())
            } else {
                bad(
                    key,
                    "[a, b] with 0 < a <= b <= 1",
                    &format_args!("{:?}", (lo, hi)),
                )
            }
        };
        crop_scale("data.crop_scale", d.crop_scale)?;
        let (mean, std) = self.normalisation();
        if mean.len() != d.in_chans || std.len() != d.in_chans || std.iter().any(|s| *s <= 0.0) {
            return bad(
                "data.mean / data.std",
                &format!("{} values each (std > 0)", d.in_chans),
                &format_args!("mean {mean:?}, std {std:?}"),
            );
        }
        let o = &self.optimization;
        if o.epochs == 0 {
            return bad("optimization.epochs", positive, &0);
        }
        if o.accum_steps == 0 {
            return bad("optimization.accum_steps", positive, &0);
        }
        for (k, v) in [
            ("lr", o.lr),
            ("start_lr", o.start_lr),
            ("final_lr", o.final_lr),
            ("weight_decay", o.weight_decay),
            ("final_weight_decay", o.final_weight_decay),
            ("warmup", o.warmup),
            ("ipe_scale", o.ipe_scale),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(&format!("optimization.{k}"), "a finite number >= 0", &v);
            }
        }
        if o.ipe_scale <= 0.0 {
            return bad("optimization.ipe_scale", positive, &o.ipe_scale);
        }
        if !(0.0..=1.0).contains(&o.ema.0) || !(0.0..=1.0).contains(&o.ema.1) {
            return bad(
                "optimization.ema",
                "two values in [0, 1]",
                &format_args!("{:?}", o.ema),
            );
        }
        if let Some(c) = o.grad_clip
            && (c.is_nan() || c <= 0.0)
        {
            return bad("optimization.grad_clip", positive, &c);
        }
        let lg = &self.logging;
        if (lg.knn_monitor_bank == 0) != (lg.knn_monitor_queries == 0) {
            return bad(
                "logging.knn_monitor_bank / logging.knn_monitor_queries",
                "both positive (monitor on) or both 0 (off)",
                &format_args!("{} and {}", lg.knn_monitor_bank, lg.knn_monitor_queries),
            );
        }
        let m = &self.meta;
        if let Some(a) = m.target_dyntanh_alpha {
            if m.target_norm != TargetNormKind::Dyntanh {
                return Err(ConfigError::Needs {
                    key: "meta.target_dyntanh_alpha".into(),
                    needs: "meta.target_norm: dyntanh".into(),
                }
                .into());
            }
            if !(a.is_finite() && a > 0.0) {
                return bad("meta.target_dyntanh_alpha", "a finite number > 0", &a);
            }
        }
        if let Some(layers) = m.target_layers {
            let depth = self.encoder_config()?.depth;
            if layers == 0 || layers > depth {
                return bad(
                    "meta.target_layers",
                    &format!("1 ..= the encoder's {depth} blocks"),
                    &layers,
                );
            }
        }
        if !(m.stop_sigma.is_finite() && m.stop_sigma >= 0.0) {
            return bad(
                "meta.stop_sigma",
                "a finite number >= 0 (0: StoP off)",
                &m.stop_sigma,
            );
        }
        let r = &self.regularization;
        for (k, v) in [
            ("sigreg_weight", r.sigreg_weight),
            ("vicreg_variance_weight", r.vicreg_variance_weight),
            ("vicreg_covariance_weight", r.vicreg_covariance_weight),
            ("invariance_weight", r.invariance_weight),
            ("pooled_prediction_weight", r.pooled_prediction_weight),
            ("msn_weight", r.msn_weight),
            ("msn_me_max_weight", r.msn_me_max_weight),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(
                    &format!("regularization.{k}"),
                    "a finite number >= 0 (0: off)",
                    &v,
                );
            }
        }
        if r.sigreg_weight > 0.0 && r.sigreg_projections == 0 {
            return bad(
                "regularization.sigreg_projections",
                "a positive number (regularization.sigreg_weight is on)",
                &0,
            );
        }
        if r.msn_weight > 0.0 {
            if r.msn_prototypes < 2 {
                return bad(
                    "regularization.msn_prototypes",
                    "at least 2 (regularization.msn_weight is on)",
                    &r.msn_prototypes,
                );
            }
            let (anchor, target) = r.msn_temperatures;
            if !(anchor.is_finite() && target.is_finite() && anchor > 0.0 && target > 0.0) {
                return bad(
                    "regularization.msn_temperatures",
                    "two finite numbers > 0: [anchor, target]",
                    &format!("[{anchor}, {target}]"),
                );
            }
        }
        if r.expander > 0
            && r.sigreg_weight == 0.0
            && r.vicreg_variance_weight == 0.0
            && r.vicreg_covariance_weight == 0.0
        {
            return Err(ConfigError::Needs {
                key: "regularization.expander".into(),
                needs: "regularization.sigreg_weight, vicreg_variance_weight or \
                        vicreg_covariance_weight > 0"
                    .into(),
            }
            .into());
        }
        if r.invariance_head > 0 && r.invariance_weight == 0.0 && r.msn_weight == 0.0 {
            return Err(ConfigError::Needs {
                key: "regularization.invariance_head".into(),
                needs: "regularization.invariance_weight > 0 or regularization.msn_weight > 0"
                    .into(),
            }
            .into());
        }
        if r.pooled_prediction_view == PooledView::Full && r.pooled_prediction_weight == 0.0 {
            return Err(ConfigError::Needs {
                key: "regularization.pooled_prediction_view".into(),
                needs: "regularization.pooled_prediction_weight > 0".into(),
            }
            .into());
        }
        if let Some(scale) = r.invariance_crop_scale {
            crop_scale("regularization.invariance_crop_scale", scale)?;
            if !self.second_view() {
                return Err(ConfigError::Needs {
                    key: "regularization.invariance_crop_scale".into(),
                    needs: "regularization.invariance_weight or msn_weight > 0, and invariance_view: crop"
                        .into(),
                }
                .into());
            }
        }
        if self.meta.threads == Some(0) {
            return bad("meta.threads", positive, &0);
        }
        self.encoder_config()?;
        self.predictor_config()?;
        self.mask_config()?;
        Ok(())
    }
}

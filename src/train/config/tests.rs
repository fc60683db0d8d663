//! The training config: files, overrides, defaults and the validation of every key.

use super::*;
use crate::model::config::PatchEmbedKind;

const OFFICIAL_H14: &str = "
data:
  batch_size: 128
  color_jitter_strength: 0.0
  crop_scale: [0.3, 1.0]
  crop_size: 224
  image_folder: imagenet_full_size/061417/
  num_workers: 10
  pin_mem: true
  root_path: $replace_this_with_absolute_path_to_your_datasets_directory
  use_color_distortion: false
  use_gaussian_blur: false
  use_horizontal_flip: false
logging:
  folder: $replace_this_with_absolute_path_to_your_logging_directory
  write_tag: jepa
mask:
  allow_overlap: false
  aspect_ratio: [0.75, 1.5]
  enc_mask_scale: [0.85, 1.0]
  min_keep: 10
  num_enc_masks: 1
  num_pred_masks: 4
  patch_size: 14
  pred_mask_scale: [0.15, 0.2]
meta:
  copy_data: false
  load_checkpoint: false
  model_name: vit_huge
  pred_depth: 12
  pred_emb_dim: 384
  read_checkpoint: null
  use_bfloat16: true
optimization:
  ema: [0.996, 1.0]
  epochs: 300
  final_lr: 1.0e-06
  final_weight_decay: 0.4
  ipe_scale: 1.0
  lr: 0.001
  start_lr: 0.0002
  warmup: 40
  weight_decay: 0.04
";

/// The official ViT-H/14 config with `sets` (`key=value`) applied.
fn with(sets: &[&str]) -> Result<TrainConfig> {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    TrainConfig::from_yaml(OFFICIAL_H14, &sets, Path::new("x.yaml"))
}

#[test]
fn official_config_and_overrides() {
    let cfg = TrainConfig::from_yaml(OFFICIAL_H14, &[], Path::new("h14.yaml")).unwrap();
    let enc = cfg.encoder_config().unwrap();
    assert_eq!((enc.embed_dim, enc.depth, enc.grid()), (1280, 32, 16));
    assert_eq!(cfg.predictor_config().unwrap().num_heads, 16);
    let cfg = TrainConfig::from_yaml(
        OFFICIAL_H14,
        &["optimization.lr=5e-4".into(), "data.max_images=10".into()],
        Path::new("x"),
    )
    .unwrap();
    assert_eq!(cfg.optimization.lr, 5e-4);
    assert_eq!(cfg.data.max_images, Some(10));
    let e = TrainConfig::from_yaml(
        OFFICIAL_H14,
        &["optimization.lr_typo=1".into()],
        Path::new("x.yaml"),
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("lr_typo") && e.to_string().contains("x.yaml"),
        "{e}"
    );
    let e = TrainConfig::from_yaml(
        OFFICIAL_H14,
        &["data.batch_size=0".into()],
        Path::new("x.yaml"),
    )
    .unwrap_err();
    assert!(e.to_string().contains("batch_size"), "{e}");
    assert!(
        TrainConfig::from_yaml("data: [", &[], Path::new("x.yaml"))
            .unwrap_err()
            .to_string()
            .contains("invalid YAML")
    );
}

/// Every option is off unless asked for, and a bad value names its key.
#[test]
fn options_default_off_and_bad_values_name_their_key() {
    let cfg = TrainConfig::from_yaml(OFFICIAL_H14, &[], Path::new("x.yaml")).unwrap();
    assert_eq!(cfg.objective(), Objective::official(LossKind::SmoothL1));
    assert!(!cfg.second_view());
    assert_eq!(
        cfg.encoder_config().unwrap().patch_embed,
        PatchEmbedKind::Shared
    );
    let cfg = with(&[
        "meta.loss=l1",
        "meta.target_norm=dyntanh",
        "meta.target_dyntanh_alpha=0.5",
        "meta.stop_sigma=0.25",
        "meta.target_layers=4",
        "regularization.sigreg_weight=0.1",
        "regularization.sigreg_projections=64",
        "regularization.vicreg_variance_weight=1.0",
        "regularization.vicreg_covariance_weight=0.04",
        "regularization.features=tokens",
        "regularization.invariance_weight=0.5",
        "meta.patch_embed=per_position",
        "regularization.pooled_prediction_weight=0.7",
        "regularization.pooled_prediction_view=full",
        "regularization.expander=32",
    ])
    .unwrap();
    assert_eq!(cfg.predictor_config().unwrap().expander, 32);
    assert!(cfg.second_view());
    assert_eq!(
        cfg.encoder_config().unwrap().patch_embed,
        PatchEmbedKind::PerPosition
    );
    let o = cfg.objective();
    assert_eq!(o.invariance_weight, 0.5);
    assert_eq!(
        (o.pooled_prediction_weight, o.pooled_prediction_view),
        (0.7, PooledView::Full)
    );
    assert_eq!(o.loss, LossKind::L1);
    assert_eq!(o.target_norm, TargetNorm::Dyntanh { alpha: 0.5 });
    assert_eq!(o.target_layers, 4);
    assert_eq!(
        (o.stop_sigma, o.sigreg_weight, o.sigreg_projections),
        (0.25, 0.1, 64)
    );
    assert_eq!(
        (
            o.vicreg_variance_weight,
            o.vicreg_covariance_weight,
            o.features
        ),
        (1.0, 0.04, RegFeatures::Tokens)
    );
    let by_position = with(&["regularization.features=tokens_by_position"]).unwrap();
    assert_eq!(
        by_position.objective().features,
        RegFeatures::TokensByPosition
    );
    for (set, key) in [
        ("meta.loss=huber", "loss"),
        ("meta.patch_embed=untied", "patch_embed"),
        ("meta.target_norm=batch_norm", "target_norm"),
        ("meta.target_dyntanh_alpha=2", "target_dyntanh_alpha"),
        ("meta.stop_sigma=-1", "stop_sigma"),
        ("meta.target_layers=0", "target_layers"),
        ("meta.target_layers=33", "target_layers"),
        ("regularization.sigreg_weight=-0.1", "sigreg_weight"),
        (
            "regularization.vicreg_variance_weight=.nan",
            "vicreg_variance_weight",
        ),
        (
            "regularization.vicreg_covariance_weight=-1",
            "vicreg_covariance_weight",
        ),
        ("regularization.features=cls", "features"),
        ("regularization.invariance_weight=-1", "invariance_weight"),
        ("regularization.invariance_view=other", "invariance_view"),
        (
            "regularization.pooled_prediction_weight=.nan",
            "pooled_prediction_weight",
        ),
        (
            "regularization.pooled_prediction_view=global",
            "pooled_prediction_view",
        ),
        // the whole image's mean is the pooled prediction's: without the prediction it is
        // a setting of nothing
        (
            "regularization.pooled_prediction_view=full",
            "pooled_prediction_view",
        ),
        // an expander in front of no term
        ("regularization.expander=16", "expander"),
        ("regularization.msn_weight=-0.5", "msn_weight"),
        ("regularization.msn_me_max_weight=.inf", "msn_me_max_weight"),
        ("regularization.sigreg_weigth=1", "sigreg_weigth"),
        ("logging.knn_monitor_bank=0", "knn_monitor"),
    ] {
        let e = with(&[set]).unwrap_err().to_string();
        assert!(e.contains(key), "{set}: {e}");
    }
    let e = with(&[
        "regularization.sigreg_weight=1",
        "regularization.sigreg_projections=0",
    ])
    .unwrap_err()
    .to_string();
    assert!(e.contains("sigreg_projections"), "{e}");
    let e = with(&["meta.target_norm=dyntanh", "meta.target_dyntanh_alpha=0"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("target_dyntanh_alpha"), "{e}");
    let e = with(&["regularization.invariance_head=512"])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("invariance_head") && e.contains("invariance_weight"),
        "{e}"
    );
    let head = with(&[
        "regularization.invariance_weight=0.5",
        "regularization.invariance_head=512",
    ])
    .unwrap();
    assert_eq!(head.predictor_config().unwrap().invariance_head, 512);
    assert_eq!(cfg.predictor_config().unwrap().invariance_head, 0);
    // `same` compares with the image itself: no second view is drawn.
    let same = with(&[
        "regularization.invariance_weight=1",
        "regularization.invariance_view=same",
    ])
    .unwrap();
    assert!(!same.second_view());
    let e = with(&["regularization.invariance_crop_scale=[1,1]"])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("invariance_crop_scale") && e.contains("invariance_weight"),
        "{e}"
    );
    let e = with(&[
        "regularization.invariance_weight=1",
        "regularization.invariance_crop_scale=[0.5,1.5]",
    ])
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("invariance_crop_scale") && e.contains("1.5"),
        "{e}"
    );
    let global = with(&[
        "regularization.invariance_weight=1",
        "regularization.invariance_crop_scale=[1,1]",
    ])
    .unwrap();
    assert_eq!(
        global.regularization.invariance_crop_scale,
        Some((1.0, 1.0))
    );
}

/// MSN's keys: off by default (no prototypes in the predictor); on, the prototypes and
/// temperatures reach the model and the objective, and the view follows
/// `invariance_view` as the invariance term's does; bad values are named.
#[test]
fn msn_keys() {
    let off = with(&[]).unwrap();
    assert_eq!(off.predictor_config().unwrap().prototypes, 0);
    assert_eq!(off.objective().msn_weight, 0.0);
    let on = with(&[
        "regularization.msn_weight=0.3",
        "regularization.msn_prototypes=64",
        "regularization.msn_temperatures=[0.2,0.05]",
        "regularization.invariance_view=same",
    ])
    .unwrap();
    assert_eq!(on.predictor_config().unwrap().prototypes, 64);
    let o = on.objective();
    assert_eq!((o.msn_weight, o.msn_me_max_weight), (0.3, 1.0));
    assert_eq!(
        (o.msn_temperatures.anchor, o.msn_temperatures.target),
        (0.2, 0.05)
    );
    assert!(o.needs_view() && !on.second_view());
    assert!(
        with(&["regularization.msn_weight=0.3"])
            .unwrap()
            .second_view()
    );
    for (sets, key) in [
        (&["regularization.msn_prototypes=1"][..], "msn_prototypes"),
        (
            &["regularization.msn_temperatures=[0,0.05]"][..],
            "msn_temperatures",
        ),
    ] {
        let mut all = vec!["regularization.msn_weight=0.3"];
        all.extend_from_slice(sets);
        let e = with(&all).unwrap_err().to_string();
        assert!(e.contains(key), "{sets:?}: {e}");
    }
    let head = with(&[
        "regularization.msn_weight=0.3",
        "regularization.invariance_head=32",
    ])
    .unwrap();
    assert_eq!(head.predictor_config().unwrap().invariance_head, 32);
}

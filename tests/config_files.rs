//! The four official config files and the two Fashion-MNIST recipes load and describe the intended
//! models; a bad config is rejected with the file and key in the message.

use std::path::PathBuf;

use ijepa::masks::MaskMode;
use ijepa::train::config::{InvarianceView, TrainConfig};
use ijepa::train::objective::RegFeatures;

fn configs() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("configs")
}

/// The encoder's `[image_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_hidden]`.
fn encoder_shape(cfg: &TrainConfig) -> [usize; 7] {
    let e = cfg.encoder_config().unwrap();
    [
        e.image_size,
        e.patch_size,
        e.in_chans,
        e.embed_dim,
        e.depth,
        e.num_heads,
        e.mlp_hidden,
    ]
}

/// The predictor's `[predictor_embed_dim, depth, num_heads]`.
fn predictor_shape(cfg: &TrainConfig) -> [usize; 3] {
    let p = cfg.predictor_config().unwrap();
    [p.predictor_embed_dim, p.depth, p.num_heads]
}

/// The masks' `([npred, nenc, min_keep], [pred_mask_scale, enc_mask_scale, aspect_ratio])`.
fn mask_shape(cfg: &TrainConfig) -> ([usize; 3], [(f64, f64); 3]) {
    let m = cfg.mask_config().unwrap();
    (
        [m.npred, m.nenc, m.min_keep],
        [m.pred_mask_scale, m.enc_mask_scale, m.aspect_ratio],
    )
}

#[test]
fn official_configs_parse() {
    let expect = [
        ("in1k_vith14_ep300.yaml", 1280, 32, 16, 12, 128, 300),
        ("in1k_vith16-448_ep300.yaml", 1280, 32, 28, 12, 16, 300),
        ("in22k_vith14_ep66.yaml", 1280, 32, 16, 12, 32, 66),
        ("in22k_vitg16_ep44.yaml", 1408, 40, 14, 16, 16, 44),
    ];
    for (file, dim, depth, grid, pred_depth, batch, epochs) in expect {
        let cfg = TrainConfig::from_file(&configs().join("official").join(file), &[])
            .unwrap_or_else(|e| panic!("{e}"));
        let enc = cfg.encoder_config().unwrap();
        assert_eq!(
            (enc.embed_dim, enc.depth, enc.grid()),
            (dim, depth, grid),
            "{file}"
        );
        assert_eq!(predictor_shape(&cfg), [384, pred_depth, 16], "{file}");
        assert_eq!(
            (cfg.data.batch_size, cfg.optimization.epochs),
            (batch, epochs),
            "{file}"
        );
        assert_eq!(cfg.mask_config().unwrap().npred, 4);
    }
}

#[test]
fn recipe_is_the_documented_one() {
    let cfg = TrainConfig::from_file(&configs().join("fmnist_vit.yaml"), &[]).unwrap();
    assert_eq!(encoder_shape(&cfg), [32, 4, 1, 128, 6, 4, 512]);
    assert_eq!(predictor_shape(&cfg), [64, 3, 4]);
    assert_eq!(
        mask_shape(&cfg),
        ([2, 1, 4], [(0.15, 0.2), (0.85, 1.0), (0.75, 1.5)])
    );
    let o = &cfg.optimization;
    assert_eq!(
        (
            o.epochs,
            o.warmup,
            o.start_lr,
            o.lr,
            o.final_lr,
            o.weight_decay,
            o.final_weight_decay,
            o.ema,
            o.ipe_scale
        ),
        (10, 1.0, 2e-4, 1e-3, 1e-6, 0.04, 0.4, (0.996, 1.0), 1.0)
    );
    assert_eq!(
        (
            cfg.data.batch_size,
            cfg.data.pad,
            cfg.data.crop_size,
            cfg.data.crop_scale
        ),
        (128, 2, 32, (0.3, 1.0))
    );
    assert_eq!(
        (
            cfg.data.mean.clone().unwrap(),
            cfg.data.std.clone().unwrap()
        ),
        (vec![0.2860], vec![0.3530])
    );
    assert_eq!(cfg.meta.seed, 0);
    assert!(!cfg.meta.use_bfloat16);
}

/// `configs/fmnist_best.yaml` is the recipe docs/recipes.md and the README describe (run j07),
/// and the quickstart's short variant of it (scripts/quickstart.sh's `--set`s) loads.
#[test]
fn best_recipe_is_the_documented_one() {
    let path = configs().join("fmnist_best.yaml");
    let cfg = TrainConfig::from_file(&path, &[]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(encoder_shape(&cfg), [28, 4, 1, 256, 6, 8, 1024]);
    assert_eq!(predictor_shape(&cfg), [128, 3, 4]);
    assert_eq!(
        mask_shape(&cfg),
        ([4, 1, 4], [(0.15, 0.25), (0.5, 0.7), (0.75, 1.5)])
    );
    assert_eq!(cfg.mask_config().unwrap().mode, MaskMode::Fixed);
    let o = &cfg.optimization;
    assert_eq!(
        (o.epochs, o.warmup, o.start_lr, o.lr, o.final_lr, o.ema),
        (3, 1.0, 1e-4, 5e-4, 1e-6, (0.996, 1.0))
    );
    let r = &cfg.regularization;
    assert_eq!(
        (
            r.vicreg_variance_weight,
            r.vicreg_covariance_weight,
            r.sigreg_weight
        ),
        (1.0, 0.04, 0.0)
    );
    assert_eq!(r.features, RegFeatures::Tokens);
    assert_eq!(
        (r.invariance_weight, r.invariance_view),
        (0.5, InvarianceView::Same)
    );
    assert_eq!(
        (cfg.data.batch_size, cfg.data.pad, cfg.data.crop_size),
        (128, 0, 28)
    );
    assert!(cfg.meta.use_bfloat16);

    let quick: Vec<String> = [
        "data.max_images=20000",
        "logging.knn_monitor_bank=2000",
        "logging.knn_monitor_queries=500",
    ]
    .map(String::from)
    .to_vec();
    let script = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/quickstart.sh"),
    )
    .unwrap();
    for set in &quick {
        assert!(
            script.contains(&format!("--set {set}")),
            "scripts/quickstart.sh no longer sets {set}: update this test"
        );
    }
    let short = TrainConfig::from_file(&path, &quick).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (short.optimization.epochs, short.data.max_images),
        (3, Some(20000))
    );
}

#[test]
fn bad_configs_name_the_problem() {
    let path = configs().join("fmnist_vit.yaml");
    for (set, needle) in [
        ("mask.min_keep=40", "min_keep"),
        ("meta.num_heads=3", "heads"),
        ("optimization.lr=-1", "optimization.lr"),
        ("data.crop_scale=[0.5,0.2]", "crop_scale"),
        ("data.in_chans=2", "in_chans"),
        ("meta.bogus=1", "bogus"),
    ] {
        let e = TrainConfig::from_file(&path, &[set.to_string()])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(needle) && e.contains("fmnist_vit.yaml"),
            "{set}: {e}"
        );
    }
}

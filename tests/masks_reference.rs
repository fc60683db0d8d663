//! Statistics of `ijepa masks` against the official collator's statistics in
//! `reference/masks/*.json` (every file there; 2000 batches of 8 images each in the
//! public set).
//!
//! `fixed_mode_statistics` prints a markdown table of official vs fixed means;
//! set `IJEPA_FIXED_STATS_OUT=<file>` to also write it to that file.

mod common;

use ijepa::masks::{MaskConfig, MaskMode, mask_stats};
use serde_json::Value;

/// Every statistics file of the reference set.
fn reference_files() -> Vec<String> {
    let dir = common::reference_dir().join("masks");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no mask statistics in {}", dir.display());
    files
}

/// `ijepa masks ... --stats` with the reference file's settings.
fn cli_stats(reference: &Value) -> Value {
    let c = &reference["config"];
    let dir = common::tmp("masks");
    let out = dir.join(format!("{}.json", c["name"].as_str().unwrap_or("x")));
    let pair = |k: &str| format!("{},{}", num(&c[k][0]), num(&c[k][1]));
    let mut args: Vec<String> = [
        "masks",
        "--image-size",
        &c["input_size"].to_string(),
        "--patch-size",
        &c["patch_size"].to_string(),
        "--batch-size",
        &c["batch_size"].to_string(),
        "--batches",
        &c["n_batches"].to_string(),
        "--min-keep",
        &c["min_keep"].to_string(),
        "--num-pred",
        &c["npred"].to_string(),
        "--num-enc",
        &c["nenc"].to_string(),
        "--seed",
        "0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for (flag, key) in [
        ("--pred-scale", "pred_mask_scale"),
        ("--enc-scale", "enc_mask_scale"),
        ("--aspect-ratio", "aspect_ratio"),
    ] {
        args.push(flag.into());
        args.push(pair(key));
    }
    if c["allow_overlap"].as_bool() == Some(true) {
        args.push("--allow-overlap".into());
    }
    args.extend(["--stats".to_string(), out.display().to_string()]);
    let run = std::process::Command::new(common::ijepa_bin())
        .args(&args)
        .output()
        .expect("run ijepa");
    assert!(
        run.status.success(),
        "ijepa {args:?}: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let text = std::fs::read_to_string(&out).expect("stats written");
    serde_json::from_str(&text).expect("stats are JSON")
}
const SEED: u64 = 0;

fn load(name: &str) -> Value {
    let path = common::reference_dir().join("masks").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {} ({e}); set IJEPA_REFERENCE to the reference folder",
            path.display()
        )
    });
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad JSON in {}: {e}", path.display()))
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn pair(v: &Value) -> (f64, f64) {
    (num(&v[0]), num(&v[1]))
}

fn count(v: &Value) -> usize {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}")) as usize
}

/// The sampler config equivalent to a reference file's `config`.
fn config_of(reference: &Value, mode: MaskMode) -> MaskConfig {
    let c = &reference["config"];
    let base = MaskConfig::from_image(count(&c["input_size"]), count(&c["patch_size"]))
        .expect("reference grid");
    let cfg = MaskConfig {
        enc_mask_scale: pair(&c["enc_mask_scale"]),
        pred_mask_scale: pair(&c["pred_mask_scale"]),
        aspect_ratio: pair(&c["aspect_ratio"]),
        nenc: count(&c["nenc"]),
        npred: count(&c["npred"]),
        min_keep: count(&c["min_keep"]),
        allow_overlap: c["allow_overlap"].as_bool().expect("allow_overlap"),
        mode,
        ..base
    };
    assert_eq!(
        cfg.grid,
        (count(&c["grid"][0]), count(&c["grid"][1])),
        "grid of {}",
        c["name"]
    );
    cfg
}

fn stats_of(reference: &Value, mode: MaskMode) -> Value {
    let c = &reference["config"];
    let cfg = config_of(reference, mode);
    let stats = mask_stats(&cfg, SEED, count(&c["batch_size"]), count(&c["n_batches"]))
        .expect("sampling with the reference config");
    serde_json::to_value(stats).expect("statistics are JSON")
}

#[test]
fn cli_statistics_match_the_official_collator() {
    for file in reference_files() {
        let file = file.as_str();
        let reference = load(file);
        let ours = cli_stats(&reference);
        for key in [
            "K_enc",
            "K_pred",
            "context_patches_kept",
            "target_block_area",
            "target_union_patches",
        ] {
            let (r, o) = (num(&reference[key]["mean"]), num(&ours[key]["mean"]));
            println!("{file} {key}: reference {r:.3}, ours {o:.3}");
            assert!(
                (o / r - 1.0).abs() < 0.02,
                "{file} {key}: mean {o} vs reference {r}"
            );
            assert_eq!(ours[key]["n"], reference[key]["n"], "{file} {key} n");
        }
        for key in [
            "target_block_height",
            "target_block_width",
            "context_block_height",
            "context_block_width",
        ] {
            for stat in ["min", "max"] {
                assert_eq!(
                    num(&ours[key][stat]),
                    num(&reference[key][stat]),
                    "{file} {key} {stat}"
                );
            }
        }
        for key in [
            "target_context_overlap_fraction",
            "target_context_overlap_fraction_truncated",
        ] {
            if num(&reference[key]["max"]) == 0.0 {
                assert_eq!(num(&ours[key]["max"]), 0.0, "{file} {key}");
            }
        }
        if reference["relaxation_warnings"]["count"] == 0 {
            assert_eq!(ours["images_with_overlap"], 0, "{file}");
            assert_eq!(ours["relaxation_warnings"]["count"], 0, "{file}");
        }
        // The last patch row and column are never used (coverage maps).
        let map = ours["coverage_context"]["map"].as_array().expect("map");
        let last_row_used = map.last().expect("rows").as_array().expect("row");
        assert!(last_row_used.iter().all(|v| num(v) == 0.0));
        assert!(
            map.iter()
                .all(|row| num(&row[row.as_array().expect("row").len() - 1]) == 0.0)
        );
        // Same config values, except what only the torch run has (image/patch size:
        // the sampler sees the grid; the global torch seed: ours is `seed`).
        let (rc, oc) = (&reference["config"], &ours["config"]);
        for (key, value) in rc.as_object().expect("config") {
            match key.as_str() {
                "input_size" | "patch_size" | "global_torch_seed" => {}
                "name" | "collator_seeds" => assert!(oc.get(key).is_some(), "{file}: config.{key}"),
                _ => assert_eq!(&oc[key], value, "{file}: config.{key}"),
            }
        }
        // Same layout: every reference key (and its sub-keys) exists in ours.
        for (key, value) in reference.as_object().expect("object") {
            if key == "config" {
                continue;
            }
            let mine = ours
                .get(key)
                .unwrap_or_else(|| panic!("{file}: missing key {key}"));
            if let (Some(r), Some(m)) = (value.as_object(), mine.as_object()) {
                for sub in r.keys() {
                    assert!(m.contains_key(sub), "{file}: missing {key}.{sub}");
                }
            }
        }
    }
}

#[test]
fn fixed_mode_statistics() {
    let mut table = String::from(
        "| config | sampler | K_enc | K_pred | context_patches_kept | target_block_area | \
         target_union_patches |\n|---|---|---|---|---|---|---|\n",
    );
    for file in reference_files() {
        let file = file.as_str();
        let reference = load(file);
        let name = reference["config"]["name"]
            .as_str()
            .unwrap_or(file)
            .to_string();
        let official = stats_of(&reference, MaskMode::Official);
        let fixed = stats_of(&reference, MaskMode::Fixed);
        for (label, st) in [
            ("torch official (reference)", &reference),
            ("rust official", &official),
            ("rust fixed", &fixed),
        ] {
            table.push_str(&format!(
                "| {name} | {label} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |\n",
                num(&st["K_enc"]["mean"]),
                num(&st["K_pred"]["mean"]),
                num(&st["context_patches_kept"]["mean"]),
                num(&st["target_block_area"]["mean"]),
                num(&st["target_union_patches"]["mean"]),
            ));
        }
        println!(
            "{name} fixed: target h {}..{}, w {}..{}, context h {}..{}, relaxations {}, \
             images_with_overlap {}",
            fixed["target_block_height"]["min"],
            fixed["target_block_height"]["max"],
            fixed["target_block_width"]["min"],
            fixed["target_block_width"]["max"],
            fixed["context_block_height"]["min"],
            fixed["context_block_height"]["max"],
            fixed["relaxation_warnings"]["count"],
            fixed["images_with_overlap"],
        );
        // Fixed mode reaches the last row and column.
        let map = fixed["coverage_targets"]["map"].as_array().expect("map");
        let last = map.last().expect("rows").as_array().expect("row");
        assert!(last.iter().any(|v| num(v) > 0.0), "{name}: last row unused");
        assert!(
            map.iter()
                .any(|row| num(&row[row.as_array().expect("row").len() - 1]) > 0.0)
        );
        // No overlap without relaxations; every context keeps more than min_keep.
        if fixed["relaxation_warnings"]["count"] == 0 {
            assert_eq!(num(&fixed["target_context_overlap_fraction"]["max"]), 0.0);
        }
        let min_keep = num(&reference["config"]["min_keep"]);
        assert!(num(&fixed["context_patches_kept"]["min"]) > min_keep);
        assert!(num(&fixed["K_enc"]["min"]) > min_keep);
    }
    println!("\n{table}");
    if let Some(out) = std::env::var_os("IJEPA_FIXED_STATS_OUT") {
        std::fs::write(&out, &table).expect("write IJEPA_FIXED_STATS_OUT");
    }
}

//! The encoder against Hugging Face transformers' `IJepaModel` (`../shared/reference/hf`):
//! every hidden state and the last hidden state within 1e-5; the photo's preprocessing within
//! one 8-bit level and its embedding within 1e-3.

mod common;

use burn::tensor::Tensor;
use common::{assert_close, npy, reference};
use ijepa::Cpu;
use ijepa::checkpoint::{Checkpoint, EncoderChoice, HostTensor, LoadOptions};

#[test]
fn hidden_states_match() {
    let dev = Default::default();
    let ck = Checkpoint::read(&reference("hf"), &LoadOptions::default()).unwrap();
    let model = ck
        .build_encoder::<Cpu>(EncoderChoice::Context, &dev)
        .unwrap();
    let x: Tensor<Cpu, 4> = npy("hf/pixel_values.npy").to_tensor(&dev);
    let (last, hidden) = model.forward_hidden(x);
    assert_close(
        "last_hidden_state",
        &HostTensor::from_tensor(last),
        &npy("hf/last_hidden_state.npy"),
        1e-5,
    );
    for (i, h) in hidden.into_iter().enumerate() {
        let want = npy(&format!("hf/hidden_state_{i}.npy"));
        assert_close(
            &format!("hidden_state_{i}"),
            &HostTensor::from_tensor(h),
            &want,
            1e-5,
        );
    }
}

#[test]
fn photo_preprocessing_and_embedding_match() {
    let ck = Checkpoint::read(&reference("hf"), &LoadOptions::default()).unwrap();
    let pre = &ck.description.preprocess;
    let pixels = ijepa::eval::features::load_image(&reference("hf/photo.png"), pre).unwrap();
    let want = npy("hf/photo_pixel_values.npy");
    let got = HostTensor::new(want.shape.clone(), pixels);
    // one 8-bit level after the 0.5 / 0.5 normalisation
    assert_close("photo_pixel_values", &got, &want, 2.0 / 255.0 + 1e-6);

    let dev = Default::default();
    let model = ck
        .build_encoder::<Cpu>(EncoderChoice::Context, &dev)
        .unwrap();
    let out = model.forward(got.to_tensor(&dev), None);
    assert_close(
        "photo_last_hidden_state",
        &HostTensor::from_tensor(out),
        &npy("hf/photo_last_hidden_state.npy"),
        1e-3,
    );
}

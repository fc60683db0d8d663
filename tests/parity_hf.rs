//! The encoder against Hugging Face transformers' `IJepaModel` (`../shared/reference/hf`):
//! every hidden state and the last hidden state within 1e-5; the photo's preprocessing within
//! one 8-bit level and its embedding within 1e-3.

mod common;

use burn::tensor::Tensor;
use common::{assert_close, npy, reference};
use ijepa::Cpu;
use ijepa::checkpoint::{Checkpoint, EncoderChoice, HostTensor, LoadOptions};
use ijepa::ops::IjepaBackend;

#[test]
fn hidden_states_match() {
    hidden_states_match_on::<Cpu>(&Default::default(), 1e-5);
}

/// On a GPU within 1e-4 (reductions run in another order there).
#[cfg(feature = "cuda")]
#[test]
fn hidden_states_match_on_cuda() {
    hidden_states_match_on::<ijepa::Cuda>(&ijepa::device::cuda_device(0).unwrap(), 1e-4);
}

fn hidden_states_match_on<B: IjepaBackend>(dev: &B::Device, tol: f32) {
    let dev = dev.clone();
    let ck = Checkpoint::read(&reference("hf"), &LoadOptions::default()).unwrap();
    let model = ck.build_encoder::<B>(EncoderChoice::Context, &dev).unwrap();
    let x: Tensor<B, 4> = npy("hf/pixel_values.npy").to_tensor(&dev);
    let (last, hidden) = model.forward_hidden(x);
    assert_close(
        "last_hidden_state",
        &HostTensor::from_tensor(last),
        &npy("hf/last_hidden_state.npy"),
        tol,
    );
    for (i, h) in hidden.into_iter().enumerate() {
        let want = npy(&format!("hf/hidden_state_{i}.npy"));
        assert_close(
            &format!("hidden_state_{i}"),
            &HostTensor::from_tensor(h),
            &want,
            tol,
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

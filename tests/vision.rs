//! The vision encoder on real photos: classification, the `.pth` loader's
//! errors, spatial and temporal token pruning.

mod common;

use std::sync::{Arc, OnceLock};

use duplex::models::ModelStore;
use duplex::vision::efficientnet::EfficientNetLite0;

fn model() -> Arc<EfficientNetLite0> {
    static MODEL: OnceLock<Arc<EfficientNetLite0>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            Arc::new(
                EfficientNetLite0::from_store(&ModelStore::from_env())
                    .expect("EfficientNet-Lite0 (duplex models install)"),
            )
        })
        .clone()
}

const PHOTOS: [&str; 14] = [
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "astronaut.png",
    "camera.png",
    "coins.png",
    "moon.png",
    "horse.png",
    "hubble_deep_field.jpg",
    "grass.png",
    "gravel.png",
    "brick.png",
];

#[test]
fn real_photos_are_classified_sensibly() {
    let model = model();
    for name in PHOTOS {
        let top = model
            .classify(&common::test_photo_rgb(name), 3)
            .expect("classify");
        let shown: Vec<String> = top
            .iter()
            .map(|p| format!("{} {:.2}", p.label, p.probability))
            .collect();
        println!("{name:24} {}", shown.join(", "));
    }
}

fn top3(name: &str) -> Vec<&'static str> {
    let top = model()
        .classify(&common::test_photo_rgb(name), 3)
        .expect("classify");
    top.iter().map(|p| p.label).collect()
}

#[test]
fn what_the_real_model_sees() {
    // What EfficientNet-Lite0 really answers (printed by the test above).
    let cat = top3("chelsea.png");
    assert!(
        ["tabby", "tiger cat", "Egyptian cat"].contains(&cat[0]),
        "{cat:?}"
    );
    let coffee = top3("coffee.png");
    assert!(
        coffee
            .iter()
            .any(|l| ["espresso", "cup", "coffee mug"].contains(l)),
        "{coffee:?}"
    );
    assert_eq!(coffee[0], "espresso");
    let rocket = top3("rocket.jpg");
    assert!(["missile", "projectile"].contains(&rocket[0]), "{rocket:?}");
    for bike in ["motorcycle_left.png", "motorcycle_right.png"] {
        let top = top3(bike);
        assert!(
            ["moped", "motor scooter"].contains(&top[0]),
            "{bike}: {top:?}"
        );
    }
    assert_eq!(top3("camera.png")[0], "tripod");
}

#[test]
fn loader_errors_say_what_is_wrong() {
    use duplex::vision::pth::PthTensors;
    let path = ModelStore::from_env()
        .file(
            duplex::models::ids::EFFICIENTNET_LITE0,
            duplex::models::files::EFFICIENTNET_LITE0_PTH,
        )
        .expect("model installed");
    let bytes = std::fs::read(&path).expect("read .pth");
    // Cut in the state dict pickle, and in the storages.
    for cut in [2_000, bytes.len() / 2, bytes.len() - 10] {
        let err = PthTensors::parse(&bytes[..cut]).expect_err("truncated");
        let msg = format!("{err:#}");
        assert!(msg.contains("truncated"), "cut at {cut}: {msg}");
    }
    // A real zip file (the newer torch format) is refused with the reason.
    let mut zip_bytes = Vec::new();
    {
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(&mut zip_bytes));
        zip.start_file("archive/data.pkl", zip::write::SimpleFileOptions::default())
            .expect("zip");
        std::io::Write::write_all(&mut zip, b"\x80\x02}q\x00.").expect("zip");
        zip.finish().expect("zip");
    }
    let err = PthTensors::parse(&zip_bytes).expect_err("zip");
    assert!(format!("{err:#}").contains("zip-format"), "{err:#}");
    // A missing tensor is named.
    let weights = PthTensors::parse(&bytes).expect("whole file");
    assert_eq!(weights.len(), 296);
    let err = weights
        .get("_blocks.99._expand_conv.weight")
        .expect_err("missing");
    assert!(
        format!("{err:#}").contains("_blocks.99._expand_conv.weight"),
        "{err:#}"
    );
    let dir = common::TempDir::new("pth");
    let cut = dir.path().join("cut.pth");
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).expect("write");
    let err = EfficientNetLite0::load(&cut)
        .err()
        .expect("truncated file refused");
    assert!(format!("{err:#}").contains("cut.pth"), "{err:#}");
}

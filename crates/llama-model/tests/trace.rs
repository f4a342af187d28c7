//! The layer trace locates where two runs diverge.

use llama_model::{KvType, LoadOptions, LogitsMode, Model, SessionOptions, Step, Trace};

use crate::common::fixture;

#[test]
fn trace_diff_finds_the_first_step_a_change_touches() {
    let model = Model::load(fixture("synth/synth-F32.gguf"), &LoadOptions::default()).unwrap();
    let toks: Vec<u32> = (1..17).collect();
    let run = |kv_type| {
        let mut s = model
            .session(&SessionOptions {
                n_ctx: 16,
                kv_type,
                ..Default::default()
            })
            .unwrap();
        let mut t = Trace::new();
        s.forward_traced(&toks, LogitsMode::All, &mut t).unwrap();
        t
    };
    let (a, b) = (run(KvType::F16), run(KvType::F32));
    // embedding, then 2 layers of 13 steps, result_norm, logits.
    assert_eq!(a.entries.len(), 1 + 2 * 13 + 2);
    let logits = a.get(None, Step::Logits).unwrap();
    assert_eq!((logits.n_rows, logits.width), (16, 384));
    // The KV cache type changes nothing before attention reads the cache.
    let d = a
        .first_divergence(&b, 0.0)
        .expect("f16 and f32 caches differ");
    assert_eq!((d.layer, d.step), (Some(0), Step::Kqv), "{d}");
    assert!(d.max_abs > 0.0 && d.max_abs < 1e-2, "{d}");
    assert_eq!(
        a.diff(&a).iter().map(|d| d.max_abs).fold(0.0, f32::max),
        0.0
    );
    assert!(a.to_string().contains("attn_norm"));
}

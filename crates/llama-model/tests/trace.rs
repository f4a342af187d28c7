//! The layer trace locates where two runs diverge.

use llama_model::{KvType, LoadOptions, LogitsMode, Model, SessionOptions, Trace};

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
    // One entry per graph node, named as llama.cpp names them.
    assert_eq!(a.entries.len(), model.graph().nodes.len());
    assert_eq!(a.entries[0].name, "inp_embd");
    let logits = a.get("result_output").unwrap();
    assert_eq!((logits.n_rows, logits.width), (16, 384));
    // The KV cache type changes nothing before attention reads the cache.
    let d = a
        .first_divergence(&b, 0.0)
        .expect("f16 and f32 caches differ");
    assert_eq!((d.layer, d.name.as_str()), (Some(0), "kqv_out-0"), "{d}");
    assert!(d.max_abs > 0.0 && d.max_abs < 1e-2, "{d}");
    assert_eq!(
        a.diff(&a).iter().map(|d| d.max_abs).fold(0.0, f32::max),
        0.0
    );
    assert!(a.to_string().contains("attn_norm"));
}

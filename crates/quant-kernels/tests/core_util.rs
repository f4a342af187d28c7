//! Helpers shared by the core-format test modules.

use quant_kernels::{formats, quantize_row, row_bytes, GgmlType};

/// The formats owned by the core kernels (weights with a dot product).
pub const CORE_WEIGHT_TYPES: [GgmlType; 8] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
];

/// A fixture file of `tests/fixtures/quant`.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/../../tests/fixtures/quant/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Little-endian f32s.
pub fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// Quantizes `x` (whole rows of `cols`) to `ty` with the reference quantizer.
pub fn quantize(ty: GgmlType, x: &[f32]) -> Vec<u8> {
    let mut out = vec![0u8; row_bytes(ty, x.len()).unwrap()];
    quantize_row(ty, x, &mut out).unwrap();
    out
}

/// Dequantizes all of `bytes` (`n` elements of `ty`).
pub fn dequantize(ty: GgmlType, bytes: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; n];
    quant_kernels::dequantize_row(ty, bytes, &mut out).unwrap();
    out
}

/// Quantizes activations to `ty`'s `vec_dot_type` with the portable quantizer.
pub fn quantize_activations(ty: GgmlType, x: &[f32]) -> Vec<u8> {
    let act = formats::kernels(ty).unwrap().vec_dot_type;
    let mut out = vec![0u8; row_bytes(act, x.len()).unwrap()];
    (quant_kernels::simd::portable_from_float(act).unwrap())(x, &mut out);
    out
}

/// Dequantizes activation bytes of `ty`'s `vec_dot_type`.
pub fn dequantize_activations(ty: GgmlType, bytes: &[u8], n: usize) -> Vec<f32> {
    let act = formats::kernels(ty).unwrap().vec_dot_type;
    dequantize(act, bytes, n)
}

/// A deterministic pseudo-random stream (xorshift), so failures reproduce.
pub struct Rng(pub u64);

impl Rng {
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in [-1, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    /// Activations like a transformer's: mostly small, a few outliers.
    pub fn activations(&mut self, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let v = self.unit();
                if self.next_u64().is_multiple_of(64) {
                    v * 20.0
                } else {
                    v
                }
            })
            .collect()
    }
}

/// Bound on |Σ w·q(x) − Σ w·x| from quantizing the activations `x` to
/// `ty`'s `vec_dot_type`: half a step (amax/127, f16 scale rounding
/// included) per Q8 element, or the f16/bf16 rounding of each element.
pub fn activation_error_bound(ty: GgmlType, w: &[f32], x: &[f32]) -> f64 {
    let act = formats::kernels(ty).unwrap().vec_dot_type;
    let rel = match act {
        GgmlType::F32 => return 1e-6 * abs_sum_product(w, x),
        GgmlType::F16 => return 1e-3 * abs_sum_product(w, x),
        GgmlType::BF16 => return 8e-3 * abs_sum_product(w, x),
        _ => 0.57 / 127.0,
    };
    let bs = act.block_size();
    x.chunks(bs)
        .zip(w.chunks(bs))
        .map(|(xc, wc)| {
            let amax = f64::from(xc.iter().fold(0f32, |m, v| m.max(v.abs())));
            rel * amax * wc.iter().map(|v| f64::from(v.abs())).sum::<f64>()
        })
        .sum()
}

/// Σ|a·b| in f64.
pub fn abs_sum_product(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| f64::from(x * y).abs()).sum()
}

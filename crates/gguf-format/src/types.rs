//! The ggml tensor type table: every type ggml defines, described once.

use std::fmt;

/// A ggml tensor element type, with its on-disk id.
///
/// Ids removed from ggml (4, 5: `Q4_2`/`Q4_3`; 31–33: `Q4_0_4_4` and its
/// siblings; 36–38: `IQ4_NL_4_4` and its siblings) are not representable and
/// are rejected by [`GgmlType::from_id`].
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u32)]
pub enum GgmlType {
    /// 32-bit IEEE float.
    F32 = 0,
    /// 16-bit IEEE float.
    F16 = 1,
    /// 32 weights: f16 scale, 4-bit quants; `x = d·(q − 8)`.
    Q4_0 = 2,
    /// 32 weights: f16 scale and min, 4-bit quants; `x = d·q + m`.
    Q4_1 = 3,
    /// 32 weights: f16 scale, 5-bit quants; `x = d·(q − 16)`.
    Q5_0 = 6,
    /// 32 weights: f16 scale and min, 5-bit quants; `x = d·q + m`.
    Q5_1 = 7,
    /// 32 weights: f16 scale, 8-bit quants; `x = d·q`.
    Q8_0 = 8,
    /// 32 weights: f16 scale, f16 sum, 8-bit quants (activation format).
    Q8_1 = 9,
    /// 256-weight super-block, 2-bit quants with 4-bit scales and mins.
    Q2_K = 10,
    /// 256-weight super-block, 3-bit quants with 6-bit scales.
    Q3_K = 11,
    /// 256-weight super-block, 4-bit quants with 6-bit scales and mins.
    Q4_K = 12,
    /// 256-weight super-block, 5-bit quants with 6-bit scales and mins.
    Q5_K = 13,
    /// 256-weight super-block, 6-bit quants with 8-bit scales.
    Q6_K = 14,
    /// 256-weight super-block, f32 scale, 8-bit quants (activation format).
    Q8_K = 15,
    /// 2.06 bits per weight, E8 lattice codebook.
    IQ2_XXS = 16,
    /// 2.31 bits per weight, E8 lattice codebook.
    IQ2_XS = 17,
    /// 3.06 bits per weight codebook.
    IQ3_XXS = 18,
    /// 1.56 bits per weight codebook.
    IQ1_S = 19,
    /// 32 weights: f16 scale, 4-bit indices into a non-linear table.
    IQ4_NL = 20,
    /// 3.44 bits per weight codebook.
    IQ3_S = 21,
    /// 2.5 bits per weight codebook.
    IQ2_S = 22,
    /// 256-weight super-block of non-linear 4-bit values with 6-bit scales.
    IQ4_XS = 23,
    /// 8-bit signed integer.
    I8 = 24,
    /// 16-bit signed integer.
    I16 = 25,
    /// 32-bit signed integer.
    I32 = 26,
    /// 64-bit signed integer.
    I64 = 27,
    /// 64-bit IEEE float.
    F64 = 28,
    /// 1.75 bits per weight codebook.
    IQ1_M = 29,
    /// bfloat16.
    BF16 = 30,
    /// Ternary, 1.69 bits per weight.
    TQ1_0 = 34,
    /// Ternary, 2.06 bits per weight.
    TQ2_0 = 35,
    /// Microscaling FP4 (E2M1 values, E8M0 shared scale per 32).
    MXFP4 = 39,
    /// NVIDIA FP4: 64 E2M1 values, one UE4M3 scale per 16.
    NVFP4 = 40,
    /// 128 weights: f16 scale, one sign bit each; `x = ±d`.
    Q1_0 = 41,
    /// 64 weights: f16 scale, 2-bit quants; `x = d·(q − 1)`.
    Q2_0 = 42,
}

/// Size facts for one ggml type: the row of ggml's type-traits table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TypeInfo {
    /// ggml's name for the type (`"q4_K"` is written `"Q4_K"` here).
    pub name: &'static str,
    /// Elements per block.
    pub block_size: usize,
    /// Bytes per block.
    pub type_size: usize,
    /// Whether the type is a block-quantized format.
    pub quantized: bool,
}

const QK_K: usize = 256;

impl GgmlType {
    /// Every type, in id order.
    pub const ALL: [GgmlType; 35] = [
        Self::F32,
        Self::F16,
        Self::Q4_0,
        Self::Q4_1,
        Self::Q5_0,
        Self::Q5_1,
        Self::Q8_0,
        Self::Q8_1,
        Self::Q2_K,
        Self::Q3_K,
        Self::Q4_K,
        Self::Q5_K,
        Self::Q6_K,
        Self::Q8_K,
        Self::IQ2_XXS,
        Self::IQ2_XS,
        Self::IQ3_XXS,
        Self::IQ1_S,
        Self::IQ4_NL,
        Self::IQ3_S,
        Self::IQ2_S,
        Self::IQ4_XS,
        Self::I8,
        Self::I16,
        Self::I32,
        Self::I64,
        Self::F64,
        Self::IQ1_M,
        Self::BF16,
        Self::TQ1_0,
        Self::TQ2_0,
        Self::MXFP4,
        Self::NVFP4,
        Self::Q1_0,
        Self::Q2_0,
    ];

    /// The type with on-disk id `id`, or `None` for unknown and removed ids.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        Self::ALL.iter().copied().find(|t| *t as u32 == id)
    }

    /// The type named `name` (case-insensitive, as ggml and gguf-py spell it).
    pub fn from_name(name: &str) -> Option<GgmlType> {
        Self::ALL
            .iter()
            .copied()
            .find(|t| t.info().name.eq_ignore_ascii_case(name))
    }

    /// The on-disk id.
    pub fn id(self) -> u32 {
        self as u32
    }

    /// ggml's name for the type.
    pub fn name(self) -> &'static str {
        self.info().name
    }

    /// Elements per block.
    pub fn block_size(self) -> usize {
        self.info().block_size
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        self.info().type_size
    }

    /// Whether this is a block-quantized format (not a plain number type).
    pub fn is_quantized(self) -> bool {
        self.info().quantized
    }

    /// Bytes taken by `n_elements` elements, or `None` when `n_elements` is
    /// not a whole number of blocks or the size overflows.
    pub fn bytes_for(self, n_elements: u64) -> Option<u64> {
        let bs = self.block_size() as u64;
        if !n_elements.is_multiple_of(bs) {
            return None;
        }
        (n_elements / bs).checked_mul(self.type_size() as u64)
    }

    /// The row of the type-traits table for this type (ggml's
    /// `type_traits[]`, sizes from `ggml-common.h`).
    pub fn info(self) -> TypeInfo {
        let (name, block_size, type_size, quantized) = match self {
            Self::F32 => ("F32", 1, 4, false),
            Self::F16 => ("F16", 1, 2, false),
            Self::Q4_0 => ("Q4_0", 32, 2 + 16, true),
            Self::Q4_1 => ("Q4_1", 32, 2 + 2 + 16, true),
            Self::Q5_0 => ("Q5_0", 32, 2 + 4 + 16, true),
            Self::Q5_1 => ("Q5_1", 32, 2 + 2 + 4 + 16, true),
            Self::Q8_0 => ("Q8_0", 32, 2 + 32, true),
            Self::Q8_1 => ("Q8_1", 32, 2 + 2 + 32, true),
            Self::Q2_K => ("Q2_K", QK_K, QK_K / 16 + QK_K / 4 + 2 + 2, true),
            Self::Q3_K => ("Q3_K", QK_K, QK_K / 8 + QK_K / 4 + 12 + 2, true),
            Self::Q4_K => ("Q4_K", QK_K, 2 + 2 + 12 + QK_K / 2, true),
            Self::Q5_K => ("Q5_K", QK_K, 2 + 2 + 12 + QK_K / 8 + QK_K / 2, true),
            Self::Q6_K => ("Q6_K", QK_K, QK_K / 2 + QK_K / 4 + QK_K / 16 + 2, true),
            Self::Q8_K => ("Q8_K", QK_K, 4 + QK_K + QK_K / 16 * 2, true),
            Self::IQ2_XXS => ("IQ2_XXS", QK_K, 2 + QK_K / 8 * 2, true),
            Self::IQ2_XS => ("IQ2_XS", QK_K, 2 + QK_K / 8 * 2 + QK_K / 32, true),
            Self::IQ3_XXS => ("IQ3_XXS", QK_K, 2 + 3 * (QK_K / 8), true),
            Self::IQ1_S => ("IQ1_S", QK_K, 2 + QK_K / 8 + QK_K / 16, true),
            Self::IQ4_NL => ("IQ4_NL", 32, 2 + 16, true),
            Self::IQ3_S => (
                "IQ3_S",
                QK_K,
                2 + QK_K / 4 + QK_K / 32 + QK_K / 8 + QK_K / 64,
                true,
            ),
            Self::IQ2_S => ("IQ2_S", QK_K, 2 + QK_K / 4 + QK_K / 16, true),
            Self::IQ4_XS => ("IQ4_XS", QK_K, 2 + 2 + QK_K / 64 + QK_K / 2, true),
            Self::I8 => ("I8", 1, 1, false),
            Self::I16 => ("I16", 1, 2, false),
            Self::I32 => ("I32", 1, 4, false),
            Self::I64 => ("I64", 1, 8, false),
            Self::F64 => ("F64", 1, 8, false),
            Self::IQ1_M => ("IQ1_M", QK_K, QK_K / 8 + QK_K / 16 + QK_K / 32, true),
            Self::BF16 => ("BF16", 1, 2, false),
            Self::TQ1_0 => (
                "TQ1_0",
                QK_K,
                (QK_K - 4 * QK_K / 64) / 5 + QK_K / 64 + 2,
                true,
            ),
            Self::TQ2_0 => ("TQ2_0", QK_K, 2 + QK_K / 4, true),
            Self::MXFP4 => ("MXFP4", 32, 1 + 16, true),
            Self::NVFP4 => ("NVFP4", 64, 64 / 16 + 64 / 2, true),
            Self::Q1_0 => ("Q1_0", 128, 2 + 128 / 8, true),
            Self::Q2_0 => ("Q2_0", 64, 2 + 64 / 4, true),
        };
        TypeInfo {
            name,
            block_size,
            type_size,
            quantized,
        }
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_ggml() {
        // Values from ggml-common.h static_asserts.
        let expect = [
            (GgmlType::Q4_0, 18),
            (GgmlType::Q4_1, 20),
            (GgmlType::Q5_0, 22),
            (GgmlType::Q5_1, 24),
            (GgmlType::Q8_0, 34),
            (GgmlType::Q8_1, 36),
            (GgmlType::Q2_K, 84),
            (GgmlType::Q3_K, 110),
            (GgmlType::Q4_K, 144),
            (GgmlType::Q5_K, 176),
            (GgmlType::Q6_K, 210),
            (GgmlType::Q8_K, 292),
            (GgmlType::IQ2_XXS, 66),
            (GgmlType::IQ2_XS, 74),
            (GgmlType::IQ3_XXS, 98),
            (GgmlType::IQ1_S, 50),
            (GgmlType::IQ4_NL, 18),
            (GgmlType::IQ3_S, 110),
            (GgmlType::IQ2_S, 82),
            (GgmlType::IQ4_XS, 136),
            (GgmlType::IQ1_M, 56),
            (GgmlType::TQ1_0, 54),
            (GgmlType::TQ2_0, 66),
            (GgmlType::MXFP4, 17),
            (GgmlType::NVFP4, 36),
            (GgmlType::Q1_0, 18),
            (GgmlType::Q2_0, 18),
        ];
        for (t, size) in expect {
            assert_eq!(t.type_size(), size, "{t}");
        }
    }

    #[test]
    fn removed_ids_rejected() {
        for id in [4, 5, 31, 32, 33, 36, 37, 38, 43, 1000] {
            assert!(GgmlType::from_id(id).is_none(), "{id}");
        }
        for t in GgmlType::ALL {
            assert_eq!(GgmlType::from_id(t.id()), Some(t));
            assert_eq!(GgmlType::from_name(t.name()), Some(t));
        }
    }
}

//! matvec/matmul against a naive loop over the portable kernels, and
//! against the f64 product of dequantized weights and activations.

use proptest::prelude::*;
use quant_kernels::{matmul, matvec, row_bytes, simd, GgmlType, QMatrix, QuantError, Scratch};

use crate::core_util::{
    activation_error_bound, dequantize, quantize, quantize_activations, Rng, CORE_WEIGHT_TYPES,
};

fn cols_for(ty: GgmlType, blocks: usize) -> usize {
    if ty.block_size() == 1 {
        blocks * 32 + 3
    } else {
        blocks * ty.block_size()
    }
}

/// y[b][r] by the portable dot product, row by row.
fn naive(ty: GgmlType, w: &[u8], rows: usize, cols: usize, x: &[f32], n: usize) -> Vec<f32> {
    let rb = row_bytes(ty, cols).unwrap();
    let dot = simd::portable_vec_dot(ty).unwrap();
    let mut y = vec![0.0; n * rows];
    for b in 0..n {
        let a = quantize_activations(ty, &x[b * cols..(b + 1) * cols]);
        for r in 0..rows {
            y[b * rows + r] = dot(cols, &w[r * rb..(r + 1) * rb], &a);
        }
    }
    y
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn matvec_and_matmul_match_naive(seed in 1u64.., rows in 1usize..70, blocks in 1usize..5, n in 1usize..37) {
        let mut scratch = Scratch::default();
        for ty in CORE_WEIGHT_TYPES {
            let cols = cols_for(ty, blocks);
            let mut rng = Rng(seed);
            let wf: Vec<f32> = (0..rows * cols).map(|_| rng.unit()).collect();
            let w = quantize(ty, &wf);
            let x = rng.activations(n * cols);
            let m = QMatrix::new(ty, rows, cols, &w).unwrap();
            let want = naive(ty, &w, rows, cols, &x, n);
            let wd = dequantize(ty, &w, rows * cols);

            let mut y = vec![f32::NAN; n * rows];
            matmul(&m, &x, n, &mut y, &mut scratch);
            let mut y1 = vec![f32::NAN; rows];
            matvec(&m, &x[..cols], &mut y1, &mut scratch);
            for b in 0..n {
                for r in 0..rows {
                    let xs = &x[b * cols..(b + 1) * cols];
                    let ws = &wd[r * cols..(r + 1) * cols];
                    let scale: f64 = ws.iter().zip(xs).map(|(a, c)| f64::from(a * c).abs()).sum();
                    let got = y[b * rows + r];
                    let w_ = want[b * rows + r];
                    prop_assert!(f64::from((got - w_).abs()) <= 1e-5 * scale + 1e-6,
                        "{ty} b={b} r={r}: {got} vs naive {w_}");
                    // Against the unquantized activations.
                    let exact: f64 = ws.iter().zip(xs).map(|(a, c)| f64::from(*a) * f64::from(*c)).sum();
                    let bound = activation_error_bound(ty, ws, xs) + 2e-3 * scale + 1e-5;
                    prop_assert!((f64::from(got) - exact).abs() <= bound, "{ty}: {got} vs {exact}");
                }
            }
            // Every batch row is bit for bit its own matvec, whatever
            // panel (whole, padded with zeros, or none) it went through.
            for b in 0..n {
                matvec(&m, &x[b * cols..(b + 1) * cols], &mut y1, &mut scratch);
                for r in 0..rows {
                    prop_assert_eq!(y1[r].to_bits(), y[b * rows + r].to_bits(), "{} matvec vs matmul batch row {} row {}", ty, b, r);
                }
            }
        }
    }
}

#[test]
fn many_rows_one_block() {
    // Enough rows to split over many rayon tasks, with the shortest row.
    let (rows, cols) = (4099, 32);
    let mut rng = Rng(3);
    let wf: Vec<f32> = (0..rows * cols).map(|_| rng.unit()).collect();
    let w = quantize(GgmlType::Q4_0, &wf);
    let m = QMatrix::new(GgmlType::Q4_0, rows, cols, &w).unwrap();
    let x = rng.activations(cols * 3);
    let mut y = vec![0.0; rows * 3];
    matmul(&m, &x, 3, &mut y, &mut Scratch::default());
    let want = naive(GgmlType::Q4_0, &w, rows, cols, &x, 3);
    for (a, b) in y.iter().zip(&want) {
        assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0));
    }
}

#[test]
fn qmatrix_validates() {
    assert!(matches!(
        QMatrix::new(GgmlType::Q4_0, 2, 33, &[0u8; 36]),
        Err(QuantError::PartialBlock { .. })
    ));
    assert!(matches!(
        QMatrix::new(GgmlType::Q4_0, 2, 32, &[0u8; 35]),
        Err(QuantError::BadLength {
            expected: 36,
            actual: 35,
            ..
        })
    ));
    assert!(matches!(
        QMatrix::new(GgmlType::I8, 1, 1, &[0u8; 1]),
        Err(QuantError::UnsupportedType(GgmlType::I8))
    ));
    assert!(matches!(
        QMatrix::new(GgmlType::F32, usize::MAX / 2, 4, &[]),
        Err(QuantError::TooLarge { .. })
    ));
    let m = QMatrix::new(GgmlType::Q8_0, 2, 64, &[0u8; 136]).unwrap();
    assert_eq!(
        (m.ty(), m.rows(), m.cols(), m.row_bytes(), m.data().len()),
        (GgmlType::Q8_0, 2, 64, 68, 136)
    );
}

#[test]
fn misaligned_matrix_data() {
    let (rows, cols) = (5, 64);
    let mut rng = Rng(11);
    let wf: Vec<f32> = (0..rows * cols).map(|_| rng.unit()).collect();
    let x = rng.activations(cols);
    for ty in CORE_WEIGHT_TYPES {
        let w = quantize(ty, &wf);
        let mut shifted = vec![0u8; w.len() + 1];
        shifted[1..].copy_from_slice(&w);
        let (mut a, mut b) = (vec![0.0; rows], vec![0.0; rows]);
        matvec(
            &QMatrix::new(ty, rows, cols, &w).unwrap(),
            &x,
            &mut a,
            &mut Scratch::default(),
        );
        matvec(
            &QMatrix::new(ty, rows, cols, &shifted[1..]).unwrap(),
            &x,
            &mut b,
            &mut Scratch::default(),
        );
        assert_eq!(a, b, "{ty}");
    }
}

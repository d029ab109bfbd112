//! Pooling of token vectors into one sentence vector, and L2 normalization.
//!
//! Works on the flat `[batch, seq, hidden]` output of the model, knowing each row's real length and on which side
//! the row was padded. Results are accumulated in f64 so that long inputs lose no precision.

use super::model::Pooling;

/// Pools one row of `[seq, hidden]` hidden states whose real tokens are `len` long.
///
/// `left_padded` rows have their real tokens at the end (positions `seq - len .. seq`).
pub fn pool_row(hidden: &[f32], seq: usize, dim: usize, len: usize, pooling: Pooling, left_padded: bool) -> Vec<f32> {
    debug_assert_eq!(hidden.len(), seq * dim);
    debug_assert!(len >= 1 && len <= seq);
    let first = if left_padded { seq - len } else { 0 };
    let token = |pos: usize| &hidden[pos * dim..(pos + 1) * dim];
    match pooling {
        Pooling::Mean => {
            let mut sum = vec![0f64; dim];
            for pos in first..first + len {
                for (acc, &x) in sum.iter_mut().zip(token(pos)) {
                    *acc += f64::from(x);
                }
            }
            sum.into_iter().map(|x| (x / len as f64) as f32).collect()
        }
        Pooling::Cls => token(first).to_vec(),
        Pooling::LastToken => token(first + len - 1).to_vec(),
    }
}

/// Scales a vector to unit L2 norm (a zero vector stays zero).
pub fn l2_normalize(vector: &mut [f32]) {
    let norm = vector.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt();
    if norm > 1e-12 {
        for x in vector.iter_mut() {
            *x = (f64::from(*x) / norm) as f32;
        }
    }
}

/// Cosine similarity of two vectors (used by tests and benchmarks).
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| f64::from(x) * f64::from(y)).sum();
    let na: f64 = a.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb).max(1e-300)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Two rows of seq 3, hidden 2: row tokens are [1,2], [3,4], [pad].
    const ROW: [f32; 6] = [1.0, 2.0, 3.0, 4.0, 100.0, 100.0];

    #[test]
    fn mean_ignores_padding() {
        assert_eq!(pool_row(&ROW, 3, 2, 2, Pooling::Mean, false), vec![2.0, 3.0]);
    }

    #[test]
    fn cls_and_last_token() {
        assert_eq!(pool_row(&ROW, 3, 2, 2, Pooling::Cls, false), vec![1.0, 2.0]);
        assert_eq!(pool_row(&ROW, 3, 2, 2, Pooling::LastToken, false), vec![3.0, 4.0]);
        // Left padded: real tokens are the last two positions.
        assert_eq!(pool_row(&ROW, 3, 2, 2, Pooling::LastToken, true), vec![100.0, 100.0]);
        assert_eq!(pool_row(&ROW, 3, 2, 2, Pooling::Mean, true), vec![51.5, 52.0]);
    }

    #[test]
    fn normalize_gives_unit_norm_and_keeps_zero() {
        let mut v = vec![3.0, 4.0];
        l2_normalize(&mut v);
        assert_eq!(v, vec![0.6, 0.8]);
        let mut zero = vec![0.0; 4];
        l2_normalize(&mut zero);
        assert_eq!(zero, vec![0.0; 4]);
        assert!((cosine(&[1.0, 0.0], &[2.0, 0.0]) - 1.0).abs() < 1e-12);
    }
}

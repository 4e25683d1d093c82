//! How good a set of predictions is: AUC, log-loss and a calibration table
//! by decile. Pure.

use serde::Serialize;

/// The area under the ROC curve: the probability that a random refunded
/// sale scores above a random kept one (ties count half). `None` without
/// both kinds.
pub fn auc(scores: &[f64], labels: &[bool]) -> Option<f64> {
    let mut pairs: Vec<(f64, bool)> = scores.iter().copied().zip(labels.iter().copied()).collect();
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let positives = labels.iter().filter(|l| **l).count() as f64;
    let negatives = labels.len() as f64 - positives;
    if positives == 0.0 || negatives == 0.0 {
        return None;
    }
    // Mann–Whitney U with average ranks for ties.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < pairs.len() {
        let mut j = i;
        while j + 1 < pairs.len() && pairs[j + 1].0 == pairs[i].0 {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += pairs[i..=j].iter().filter(|p| p.1).count() as f64 * rank;
        i = j + 1;
    }
    Some((rank_sum - positives * (positives + 1.0) / 2.0) / (positives * negatives))
}

/// Mean negative log-likelihood (natural log), predictions clipped away from 0 and 1.
pub fn log_loss(scores: &[f64], labels: &[bool]) -> f64 {
    let n = scores.len().max(1) as f64;
    scores
        .iter()
        .zip(labels)
        .map(|(p, y)| {
            let p = p.clamp(1e-6, 1.0 - 1e-6);
            if *y {
                -p.ln()
            } else {
                -(1.0 - p).ln()
            }
        })
        .sum::<f64>()
        / n
}

/// One decile of predictions: how many, what they predicted, what happened.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decile {
    pub sales: usize,
    pub predicted: f64,
    pub observed: f64,
}

/// Sales sorted by prediction, cut into ten groups of (nearly) equal size.
pub fn calibration(scores: &[f64], labels: &[bool]) -> Vec<Decile> {
    let mut pairs: Vec<(f64, bool)> = scores.iter().copied().zip(labels.iter().copied()).collect();
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let n = pairs.len();
    (0..10)
        .filter_map(|d| {
            let group = &pairs[d * n / 10..(d + 1) * n / 10];
            (!group.is_empty()).then(|| Decile {
                sales: group.len(),
                predicted: group.iter().map(|p| p.0).sum::<f64>() / group.len() as f64,
                observed: group.iter().filter(|p| p.1).count() as f64 / group.len() as f64,
            })
        })
        .collect()
}

/// The figures of one predictor on the holdout.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scores {
    pub name: String,
    pub auc: Option<f64>,
    pub log_loss: f64,
    pub calibration: Vec<Decile>,
}

pub fn scores(name: &str, predictions: &[f64], labels: &[bool]) -> Scores {
    Scores {
        name: name.to_owned(),
        auc: auc(predictions, labels),
        log_loss: log_loss(predictions, labels),
        calibration: calibration(predictions, labels),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_is_the_probability_of_ranking_a_pair_right() {
        assert_eq!(
            auc(&[0.1, 0.2, 0.8, 0.9], &[false, false, true, true]),
            Some(1.0)
        );
        assert_eq!(
            auc(&[0.9, 0.8, 0.2, 0.1], &[false, false, true, true]),
            Some(0.0)
        );
        assert_eq!(
            auc(&[0.5, 0.5, 0.5, 0.5], &[false, true, false, true]),
            Some(0.5)
        );
        // One pair of four wrong.
        assert_eq!(
            auc(&[0.1, 0.6, 0.5, 0.9], &[false, false, true, true]),
            Some(0.75)
        );
        assert_eq!(auc(&[0.1], &[true]), None);
    }

    #[test]
    fn log_loss_and_calibration_read_as_expected() {
        let l = log_loss(&[0.5, 0.5], &[true, false]);
        assert!((l - 2f64.ln()).abs() < 1e-12);
        let scores: Vec<f64> = (0..100).map(|i| f64::from(i) / 100.0).collect();
        let labels: Vec<bool> = (0..100).map(|i| i >= 90).collect();
        let c = calibration(&scores, &labels);
        assert_eq!(c.len(), 10);
        assert_eq!(c[9].observed, 1.0);
        assert_eq!(c[0].observed, 0.0);
        assert!((c[0].predicted - 0.045).abs() < 1e-9);
    }
}

//! Output agreement between a shadow's answer and the stable answer to the
//! same request: per output, whether they agree (type-aware: floats within a
//! tolerance, everything else exactly), the largest and mean absolute
//! difference, and for outputs with classes along the last dimension whether
//! each row's argmax is the same; and `Agreement`, those comparisons added
//! up over an interval for the rollout gates. Pure; `traffic` records them.

use std::collections::BTreeMap;

use serde::Serialize;
use switchyard_runtimes::{DataType, Tensor};

use crate::config::routes::Tolerance;

/// How one output of a shadow compares with the stable one.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub output: String,
    pub verdict: Verdict,
    /// Floating-point outputs of equal shape: the largest and mean |stable − shadow|.
    pub max_abs_diff: Option<f64>,
    pub mean_abs_diff: Option<f64>,
    /// Rows whose argmax over the last dimension is the same, of the rows
    /// compared (numeric outputs of rank ≥ 2 with more than one class).
    pub argmax: Option<(u64, u64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Agree,
    Disagree,
    /// Different datatype or shape, or missing from the shadow's answer.
    Mismatch,
}

impl Verdict {
    pub fn as_label(self) -> &'static str {
        match self {
            Verdict::Agree => "agree",
            Verdict::Disagree => "disagree",
            Verdict::Mismatch => "mismatch",
        }
    }
}

fn is_float(datatype: DataType) -> bool {
    matches!(
        datatype,
        DataType::Fp16 | DataType::Bf16 | DataType::Fp32 | DataType::Fp64
    )
}

/// Compares every output of the stable answer with the shadow's of the same name.
pub fn compare(stable: &[Tensor], shadow: &[Tensor], tolerance: Tolerance) -> Vec<Comparison> {
    stable
        .iter()
        .map(|expected| {
            let found = shadow.iter().find(|t| t.name() == expected.name());
            compare_one(expected, found, tolerance)
        })
        .collect()
}

fn compare_one(stable: &Tensor, shadow: Option<&Tensor>, tolerance: Tolerance) -> Comparison {
    let mut comparison = Comparison {
        output: stable.name().to_owned(),
        verdict: Verdict::Mismatch,
        max_abs_diff: None,
        mean_abs_diff: None,
        argmax: None,
    };
    let Some(shadow) = shadow else {
        return comparison;
    };
    if shadow.datatype() != stable.datatype() || shadow.shape() != stable.shape() {
        return comparison;
    }
    let numeric = !matches!(stable.datatype(), DataType::Bytes | DataType::Bool);
    if !numeric || !is_float(stable.datatype()) {
        // Integers, booleans and strings: exact, byte for byte.
        comparison.verdict = if stable.data() == shadow.data() {
            Verdict::Agree
        } else {
            Verdict::Disagree
        };
    }
    if numeric {
        let (Ok((a, _)), Ok((b, _))) = (
            crate::serve::classify::numbers(stable),
            crate::serve::classify::numbers(shadow),
        ) else {
            return comparison;
        };
        if is_float(stable.datatype()) {
            let mut agree = true;
            let (mut max, mut sum) = (0.0f64, 0.0f64);
            for (&x, &y) in a.iter().zip(&b) {
                let diff = (x - y).abs();
                // NaN equals NaN here: the same model answers NaN the same way.
                let same =
                    diff <= tolerance.abs + tolerance.rel * x.abs() || (x.is_nan() && y.is_nan());
                agree &= same;
                if diff.is_finite() {
                    max = max.max(diff);
                    sum += diff;
                }
            }
            comparison.verdict = if agree {
                Verdict::Agree
            } else {
                Verdict::Disagree
            };
            comparison.max_abs_diff = Some(max);
            comparison.mean_abs_diff = Some(if a.is_empty() {
                0.0
            } else {
                sum / a.len() as f64
            });
        }
        let classes = stable.shape().last().copied().unwrap_or(0);
        if stable.shape().len() >= 2 && classes > 1 {
            let classes = classes as usize;
            let argmax = |row: &[f64]| {
                row.iter()
                    .enumerate()
                    .max_by(|x, y| x.1.total_cmp(y.1))
                    .map(|(i, _)| i)
            };
            let rows = a.len() / classes;
            let same = a
                .chunks_exact(classes)
                .zip(b.chunks_exact(classes))
                .filter(|(x, y)| argmax(x) == argmax(y))
                .count();
            comparison.argmax = Some((same as u64, rows as u64));
        }
    }
    comparison
}

/// Comparisons of one shadow over an interval: requests, and each output.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Agreement {
    /// Requests compared, and those whose every output agreed.
    pub compared: u64,
    pub agreed: u64,
    pub outputs: BTreeMap<String, OutputAgreement>,
}

/// One output's comparisons over an interval.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct OutputAgreement {
    pub compared: u64,
    pub agreed: u64,
    /// Different datatype or shape, or missing from the shadow's answer.
    pub mismatched: u64,
    /// The largest |stable − shadow| seen (float outputs).
    pub max_abs_diff: Option<f64>,
    /// The mean over requests of each request's mean |stable − shadow|.
    pub mean_abs_diff: Option<f64>,
    /// Rows whose argmax was the same, of the rows compared.
    pub argmax_same: u64,
    pub argmax_rows: u64,
    #[serde(skip)]
    mean_sum: f64,
    #[serde(skip)]
    mean_count: u64,
}

impl Agreement {
    /// Adds one request's comparisons.
    pub fn add(&mut self, comparisons: &[Comparison]) {
        self.compared += 1;
        if comparisons.iter().all(|c| c.verdict == Verdict::Agree) {
            self.agreed += 1;
        }
        for c in comparisons {
            let output = self.outputs.entry(c.output.clone()).or_default();
            output.compared += 1;
            match c.verdict {
                Verdict::Agree => output.agreed += 1,
                Verdict::Disagree => {}
                Verdict::Mismatch => output.mismatched += 1,
            }
            if let Some(max) = c.max_abs_diff {
                output.max_abs_diff = Some(output.max_abs_diff.map_or(max, |m| m.max(max)));
            }
            if let Some(mean) = c.mean_abs_diff {
                output.mean_sum += mean;
                output.mean_count += 1;
                output.mean_abs_diff = Some(output.mean_sum / output.mean_count as f64);
            }
            if let Some((same, rows)) = c.argmax {
                output.argmax_same += same;
                output.argmax_rows += rows;
            }
        }
    }

    /// Percent of compared requests whose every output agreed (100 when none).
    pub fn agreement_rate(&self) -> f64 {
        if self.compared == 0 {
            100.0
        } else {
            self.agreed as f64 * 100.0 / self.compared as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp32(name: &str, shape: Vec<i64>, values: &[f32]) -> Tensor {
        Tensor::from_slice(name, DataType::Fp32, shape, values).unwrap()
    }

    #[test]
    fn floats_agree_within_the_tolerance_and_report_differences() {
        let tolerance = Tolerance {
            abs: 1e-3,
            rel: 0.0,
        };
        let stable = [fp32("p", vec![2, 3], &[0.1, 0.7, 0.2, 0.5, 0.3, 0.2])];
        let close = [fp32("p", vec![2, 3], &[0.1005, 0.7, 0.2, 0.5, 0.3, 0.2])];
        let far = [fp32("p", vec![2, 3], &[0.1, 0.2, 0.7, 0.5, 0.3, 0.2])];
        let c = &compare(&stable, &close, tolerance)[0];
        assert_eq!(c.verdict, Verdict::Agree);
        assert!(c.max_abs_diff.unwrap() < 1e-3);
        assert_eq!(c.argmax, Some((2, 2)));
        let c = &compare(&stable, &far, tolerance)[0];
        assert_eq!(c.verdict, Verdict::Disagree);
        assert!((c.max_abs_diff.unwrap() - 0.5).abs() < 1e-6);
        assert!((c.mean_abs_diff.unwrap() - 1.0 / 6.0).abs() < 1e-6);
        assert_eq!(
            c.argmax,
            Some((1, 2)),
            "row 0's class changed, row 1's did not"
        );
    }

    #[test]
    fn an_interval_adds_up_requests_and_outputs() {
        let tolerance = Tolerance {
            abs: 1e-3,
            rel: 0.0,
        };
        let stable = [fp32("p", vec![1, 2], &[0.2, 0.8])];
        let mut total = Agreement::default();
        total.add(&compare(&stable, &stable, tolerance));
        total.add(&compare(
            &stable,
            &[fp32("p", vec![1, 2], &[0.9, 0.1])],
            tolerance,
        ));
        total.add(&compare(&stable, &[], tolerance));
        assert_eq!((total.compared, total.agreed), (3, 1));
        let p = &total.outputs["p"];
        assert_eq!((p.compared, p.agreed, p.mismatched), (3, 1, 1));
        assert!((p.max_abs_diff.unwrap() - 0.7).abs() < 1e-6);
        assert!((p.mean_abs_diff.unwrap() - 0.35).abs() < 1e-6, "{p:?}");
        assert_eq!((p.argmax_same, p.argmax_rows), (1, 2));
        assert!((total.agreement_rate() - 100.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn integers_and_strings_must_be_equal_and_shapes_must_match() {
        let tolerance = Tolerance::default();
        let ints = |v: &[i64]| Tensor::from_slice("label", DataType::Int64, vec![2], v).unwrap();
        assert_eq!(
            compare(&[ints(&[1, 2])], &[ints(&[1, 2])], tolerance)[0].verdict,
            Verdict::Agree
        );
        assert_eq!(
            compare(&[ints(&[1, 2])], &[ints(&[1, 3])], tolerance)[0].verdict,
            Verdict::Disagree
        );
        let text = |v: &[&[u8]]| {
            Tensor::from_byte_strings("t", vec![v.len() as i64], v.iter().copied()).unwrap()
        };
        assert_eq!(
            compare(&[text(&[b"a"])], &[text(&[b"a"])], tolerance)[0].verdict,
            Verdict::Agree
        );
        assert_eq!(
            compare(&[text(&[b"a"])], &[text(&[b"b"])], tolerance)[0].verdict,
            Verdict::Disagree
        );
        let other_shape = [fp32("p", vec![1, 2], &[0.0, 1.0])];
        let stable = [fp32("p", vec![2, 1], &[0.0, 1.0])];
        assert_eq!(
            compare(&stable, &other_shape, tolerance)[0].verdict,
            Verdict::Mismatch
        );
        assert_eq!(
            compare(&stable, &[], tolerance)[0].verdict,
            Verdict::Mismatch
        );
    }
}

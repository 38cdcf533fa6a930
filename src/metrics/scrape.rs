//! [`Scrape`]: what a collector writes, in the few shapes our metrics have.

use prometheus_client::encoding::{DescriptorEncoder, EncodeGaugeValue, NoLabelSet};
use prometheus_client::metrics::MetricType;

/// One scrape of one collector. Counter names are given without `_total` (the encoder adds
/// it); every metric gets its `# HELP` and `# TYPE` lines from the help text given here.
#[derive(Debug)]
pub struct Scrape<'a>(DescriptorEncoder<'a>);

impl<'a> Scrape<'a> {
    /// Wraps the encoder a [`super::Collector`] is handed.
    pub fn new(encoder: DescriptorEncoder<'a>) -> Self {
        Self(encoder)
    }

    /// A counter without labels.
    pub fn counter(&mut self, name: &str, help: &str, value: u64) -> std::fmt::Result {
        debug_assert!(!name.ends_with("_total"), "{name}: the encoder adds _total");
        self.0
            .encode_descriptor(name, help, None, MetricType::Counter)?
            .encode_counter::<NoLabelSet, _, u64>(&value, None)
    }

    /// A gauge without labels.
    pub fn gauge(
        &mut self,
        name: &str,
        help: &str,
        value: impl EncodeGaugeValue,
    ) -> std::fmt::Result {
        self.0
            .encode_descriptor(name, help, None, MetricType::Gauge)?
            .encode_gauge(&value)
    }

    /// A counter family with one label: one series per `(label value, count)`.
    pub fn counters<'v>(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        series: impl IntoIterator<Item = (&'v str, u64)>,
    ) -> std::fmt::Result {
        debug_assert!(!name.ends_with("_total"), "{name}: the encoder adds _total");
        let mut family = self
            .0
            .encode_descriptor(name, help, None, MetricType::Counter)?;
        for (value, count) in series {
            family
                .encode_family(&[(label, value)])?
                .encode_counter::<NoLabelSet, _, u64>(&count, None)?;
        }
        Ok(())
    }

    /// A gauge family whose series each carry the labels given with them.
    pub fn gauges<'v, V: EncodeGaugeValue, const N: usize>(
        &mut self,
        name: &str,
        help: &str,
        series: impl IntoIterator<Item = ([(&'v str, &'v str); N], V)>,
    ) -> std::fmt::Result {
        let mut family = self
            .0
            .encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (labels, value) in series {
            family.encode_family(&labels)?.encode_gauge(&value)?;
        }
        Ok(())
    }

    /// An info metric (`<name>_info{labels} 1`): what is running, as labels.
    pub fn info(&mut self, name: &str, help: &str, labels: &[(&str, &str)]) -> std::fmt::Result {
        self.0
            .encode_descriptor(name, help, None, MetricType::Info)?
            .encode_info(&labels)
    }

    /// A histogram: `buckets` holds each bucket's upper bound and its own count (not
    /// cumulative); `count` includes the observations above the last bound.
    pub fn histogram(
        &mut self,
        name: &str,
        help: &str,
        sum: f64,
        count: u64,
        buckets: &[(f64, u64)],
    ) -> std::fmt::Result {
        self.0
            .encode_descriptor(name, help, None, MetricType::Histogram)?
            .encode_histogram::<NoLabelSet>(sum, count, buckets, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Collector, Registry, render};

    #[derive(Debug)]
    struct Sample;

    impl Collector for Sample {
        fn encode(&self, encoder: DescriptorEncoder) -> std::fmt::Result {
            let mut out = Scrape::new(encoder);
            out.counter("t_events", "Events.", 3)?;
            out.counters("t_drops", "Drops.", "reason", [("a\"b", 1), ("c", 2)])?;
            out.gauge("t_age_seconds", "Age.", -1.5)?;
            out.info("t_model", "Model.", &[("version", "v1")])?;
            out.histogram(
                "t_latency_seconds",
                "Latency.",
                0.5,
                3,
                &[(0.1, 1), (1.0, 1)],
            )
        }
    }

    #[test]
    fn writes_help_type_suffixes_and_escapes_labels() {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Sample));
        let text = render(&registry);
        let expected = "\
# HELP t_events_total Events.
# TYPE t_events_total counter
t_events_total 3
# HELP t_drops_total Drops.
# TYPE t_drops_total counter
t_drops_total{reason=\"a\\\"b\"} 1
t_drops_total{reason=\"c\"} 2
# HELP t_age_seconds Age.
# TYPE t_age_seconds gauge
t_age_seconds -1.5
# HELP t_model_info Model.
# TYPE t_model_info gauge
t_model_info{version=\"v1\"} 1
# HELP t_latency_seconds Latency.
# TYPE t_latency_seconds histogram
t_latency_seconds_bucket{le=\"0.1\"} 1
t_latency_seconds_bucket{le=\"1\"} 2
t_latency_seconds_bucket{le=\"+Inf\"} 3
t_latency_seconds_sum 0.5
t_latency_seconds_count 3
";
        assert_eq!(text, expected);
    }
}

//! When each node was unfit to serve, as the harness made it so (or saw it die): the basis of
//! the enforce rule. A node counts as unfit from the moment a fault starts until SETTLE_MS
//! after it ends (restart, election, catch-up, reconnects).

/// Grace after a fault ends before the node counts as fit again.
pub const SETTLE_MS: u64 = 5_000;

#[derive(Clone, Debug)]
pub struct Interval {
    pub node: u64,
    pub from_ms: u64,
    pub to_ms: Option<u64>,
    pub cause: &'static str,
}

#[derive(Default, Debug)]
pub struct Timeline {
    pub intervals: Vec<Interval>,
}

impl Timeline {
    pub fn down(&mut self, node: u64, at_ms: u64, cause: &'static str) {
        self.intervals.push(Interval {
            node,
            from_ms: at_ms,
            to_ms: None,
            cause,
        });
    }

    /// Ends node's open intervals of `cause` (every cause if `None`).
    pub fn up(&mut self, node: u64, at_ms: u64, cause: Option<&'static str>) {
        for i in &mut self.intervals {
            if i.node == node && i.to_ms.is_none() && cause.is_none_or(|c| c == i.cause) {
                i.to_ms = Some(at_ms);
            }
        }
    }

    pub fn fit(&self, node: u64, t_ms: u64) -> bool {
        !self.intervals.iter().any(|i| {
            i.node == node && i.from_ms <= t_ms && i.to_ms.is_none_or(|to| t_ms < to + SETTLE_MS)
        })
    }

    /// True if at every instant of `[from, to]` (sampled every 50 ms) a majority of `all` and a
    /// majority of `replicas` (if known) were fit.
    pub fn majority_fit_throughout(
        &self,
        all: &[u64],
        replicas: &[u64],
        from: u64,
        to: u64,
    ) -> bool {
        let majority_of = |set: &[u64], t| {
            set.is_empty() || set.iter().filter(|n| self.fit(**n, t)).count() > set.len() / 2
        };
        (from..=to)
            .step_by(50)
            .chain(std::iter::once(to))
            .all(|t| majority_of(all, t) && majority_of(replicas, t))
    }

    /// Human-readable, for the report.
    pub fn describe(&self) -> Vec<String> {
        self.intervals
            .iter()
            .map(|i| {
                let to = i
                    .to_ms
                    .map_or("end".to_string(), |t| format!("{:.1}s", t as f64 / 1000.0));
                format!(
                    "node {} {} {:.1}s..{to}",
                    i.node,
                    i.cause,
                    i.from_ms as f64 / 1000.0
                )
            })
            .collect()
    }
}
